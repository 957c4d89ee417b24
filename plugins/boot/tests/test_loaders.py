"""Each loader's memory and register layout, checked against its format's specification."""

from __future__ import annotations

import pytest

from smartvm_core.arch import modes
from smartvm_core.arch.e820 import E820_RAM, E820_RESERVED, e820_map
from smartvm_core.cpu import RFLAGS_IF, cpu_mode
from smartvm_core.errors import ImageError
from smartvm_boot.plugin import detect, load



# -- e820 -------------------------------------------------------------------------

def test_e820_from_pc_layout(memory):
    m = [(e.addr, e.size, e.type) for e in e820_map(memory)]
    assert m == [(0, 0xA0000, E820_RAM), (0xA0000, 0x60000, E820_RESERVED), (0x100000, (64 << 20) - 0x100000, E820_RAM)]


def test_e820_with_rom_and_high_ram(make_memory):
    mem = make_memory((4 << 30) + (64 << 20))  # reaches above 4 GiB
    if True:
        rom = mem.add_rom((1 << 32) - 0x40000, b"\0" * 0x40000, name="bios")
        mem.add_alias(0xE0000, rom, 0x20000, 0x20000)
        m = [(e.addr, e.end, e.type) for e in e820_map(mem)]
        assert (0xA0000, 0x100000, E820_RESERVED) in m
        assert ((1 << 32) - 0x40000, 1 << 32, E820_RESERVED) in m
        assert m[-1][0] == 1 << 32 and m[-1][2] == E820_RAM


# -- flat -------------------------------------------------------------------------

@pytest.mark.parametrize("mode, expected", [("real", "real"), ("protected32", "protected32"), ("long", "long")])
def test_flat_modes(memory, make_image, mode, expected):
    code = bytes(range(64))
    addr = 0x8000 if mode == "real" else 0x200000
    img = make_image(code, format="flat", address=addr, entry=addr + 16, mode=mode)
    r = load(memory, img)
    assert memory.read(addr, 64) == code
    assert cpu_mode(r.sregs, r.regs.rflags) == expected
    assert not r.regs.rflags & RFLAGS_IF
    if mode == "real":
        assert (r.sregs.cs.selector, r.regs.rip) == (0, addr + 16)
        assert r.regs.rsp == addr
    else:
        assert r.regs.rip == addr + 16 and r.regs.rsp == addr
        assert memory.read_u64(r.sregs.gdt.base + modes.BOOT_CS) == modes.encode_descriptor(r.sregs.cs)


def test_flat_real_mode_segment_and_limits(memory, make_image, make_memory):
    r = load(memory, make_image(b"\x90" * 16, format="flat", address=0x12340, mode="real"))
    assert (r.sregs.cs.selector, r.regs.rip) == (0x1000, 0x2340)
    with pytest.raises(ImageError, match="below 1 MiB"):
        load(memory, make_image(b"\x90" * 0x100, format="flat", address=0xFFF80, mode="real"))
    with pytest.raises(ImageError, match="entry"):
        load(make_memory(1 << 20), make_image(b"\x90", format="flat", address=0x8000, entry=0x9000))
    with pytest.raises(ImageError, match="mode"):
        load(memory, make_image(b"\x90", format="flat", address=0x8000, mode="v8086"))


def test_flat_moves_boot_structures_out_of_the_way(memory, make_image):
    # An image over the default GDT and page-table addresses: they go elsewhere.
    r = load(memory, make_image(b"\xf4" * 0x8000, format="flat", address=0, mode="long"))
    assert r.sregs.gdt.base >= 0x8000 and r.sregs.cr3 >= 0x8000
    assert memory.read(0, 0x8000) == b"\xf4" * 0x8000


# -- boot sector ------------------------------------------------------------------

def boot_sector(body: bytes = b"\xfa\xf4") -> bytes:
    return body.ljust(510, b"\0") + b"\x55\xaa"


def test_bootsector_layout(memory, make_image):
    img = make_image(boot_sector(), name="boot.img", format="auto", options={"drive": 0x00})
    assert detect(img) == "bootsector"
    r = load(memory, img)
    assert memory.read(0x7C00, 512) == boot_sector()
    assert (r.sregs.cs.selector, r.sregs.cs.base, r.regs.rip) == (0, 0, 0x7C00)
    assert r.regs.rdx & 0xFF == 0x00 and r.info["drive"] == 0
    assert r.sregs.ss.selector == 0 and r.regs.rsp == 0x7C00
    assert cpu_mode(r.sregs, r.regs.rflags) == "real"
    assert load(memory, make_image(boot_sector(), format="bootsector")).regs.rdx == 0x80


def test_bootsector_disk_image(memory, make_image):
    disk = boot_sector() + b"\x11" * 512 * 3
    img = make_image(disk, name="disk.img")
    assert detect(img) == "bootsector"
    r = load(memory, img)
    assert memory.read(0x7C00 + 510, 2) == b"\x55\xaa" and memory.read_u8(0x7E00) == 0
    assert r.info["image_size"] == len(disk)


def test_bootsector_refusals(memory, make_image):
    with pytest.raises(ImageError, match="boot signature"):
        load(memory, make_image(b"\0" * 512, format="bootsector"))
    with pytest.raises(ImageError, match="512 bytes"):
        load(memory, make_image(b"\0" * 100, format="bootsector"))
    with pytest.raises(ImageError, match="options.drive"):
        load(memory, make_image(boot_sector(), format="bootsector", options={"drive": 300}))


# -- .COM -------------------------------------------------------------------------

def test_com_psp_and_entry(memory, make_image):
    prog = b"\xb4\x4c\xcd\x21"
    img = make_image(prog, name="HELLO.COM", cmdline="/x foo")
    assert detect(img) == "com"
    r = load(memory, img)
    seg = r.info["psp_segment"]
    base = seg << 4
    assert seg == 0x1000
    assert memory.read(base, 2) == b"\xcd\x20"                   # INT 20h at PSP:0
    assert memory.read_u16(base + 2) == 0xA000                   # memory top: end of conventional RAM
    assert memory.read(base + 0x50, 3) == b"\xcd\x21\xcb"
    tail = b" /x foo"
    assert memory.read_u8(base + 0x80) == len(tail)
    assert memory.read(base + 0x81, len(tail) + 1) == tail + b"\r"
    assert memory.read(base + 0x100, len(prog)) == prog
    for name in ("cs", "ds", "es", "ss"):
        assert getattr(r.sregs, name).selector == seg
    assert (r.regs.rip, r.regs.rsp) == (0x100, 0xFFFE)
    assert memory.read_u16(base + 0xFFFE) == 0                   # RET goes to PSP:0


def test_com_address_and_refusals(memory, make_image):
    r = load(memory, make_image(b"\xc3", name="a.com", address=0x20000))
    assert r.info["psp_segment"] == 0x2000 and r.sregs.cs.base == 0x20000
    with pytest.raises(ImageError, match="MZ"):
        load(memory, make_image(b"MZ" + b"\0" * 100, name="b.com", format="com"))
    with pytest.raises(ImageError, match="at most 65278"):
        load(memory, make_image(b"\x90" * 65279, name="c.com", format="com"))
    with pytest.raises(ImageError, match="aligned"):
        load(memory, make_image(b"\xc3", name="d.com", address=0x20008))
    with pytest.raises(ImageError, match="126"):
        load(memory, make_image(b"\xc3", name="e.com", cmdline="x" * 200))


# -- BIOS ROM ---------------------------------------------------------------------

def make_rom(size: int) -> bytes:
    rom = bytearray(b"\xAB" * size)
    rom[size - 16:size - 11] = b"\xea\x5b\xe0\x00\xf0"  # JMP F000:E05B
    return bytes(rom)


@pytest.mark.parametrize("size", [64 << 10, 128 << 10, 256 << 10])
def test_bios_rom_mapping(memory, make_image, size):
    rom = make_rom(size)
    img = make_image(rom, name="bios.bin")
    assert detect(img) == "bios"
    r = load(memory, img)
    top = 1 << 32
    high = memory.region_at(top - size)
    assert high.readonly and high.gpa == top - size and high.end == top
    alias = min(size, 128 << 10)
    low = memory.region_at(0x100000 - alias)
    assert low.readonly and low.end == 0x100000
    assert memory.read(0xFFFF0, 16) == rom[-16:] == memory.read(top - 16, 16)
    # The alias shares the backing: one copy, as the guest sees it.
    assert low.backing is high.backing
    # Guest writes are dropped.
    assert memory.guest_write(0xFFFF0, b"\0") is False
    assert (r.sregs.cs.selector, r.sregs.cs.base, r.regs.rip) == (0xF000, 0xFFFF0000, 0xFFF0)
    assert cpu_mode(r.sregs, r.regs.rflags) == "real"
    assert any(e.addr == top - size and e.type == E820_RESERVED for e in e820_map(memory))


def test_bios_refusals(memory, make_image):
    with pytest.raises(ImageError, match="reset vector"):
        load(memory, make_image(b"\0" * (128 << 10), format="bios"))
    with pytest.raises(ImageError, match="size"):
        load(memory, make_image(make_rom(0x11000)[:0x10800], format="bios"))


def test_seabios_detected(memory, make_image):
    from pathlib import Path
    from smartvm_core.images import ImageSpec
    path = Path("/usr/share/seabios/bios-256k.bin")
    if not path.is_file():
        pytest.skip("SeaBIOS is not installed (Debian package seabios)")
    img = ImageSpec(path=path)
    assert detect(img) == "bios"
    r = load(memory, img)
    assert memory.read(0xFFFF0, 1) == b"\xea" and r.info["rom_size"] == 256 << 10
