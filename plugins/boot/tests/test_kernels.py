"""Multiboot, ELF (PVH and direct entry) and bzImage layouts against their specifications."""

from __future__ import annotations

import struct

import pytest
from build import build_guest

from smartvm_core.arch.e820 import e820_map
from smartvm_core.cpu import CR0_PG, EFER_LMA, RFLAGS_IF, cpu_mode
from smartvm_core.errors import ImageError
from smartvm_core.images import ImageSpec
from smartvm_boot.plugin import detect, load

from boot_test_images import make_bzimage, make_elf, multiboot_header, note


def read_mbi(memory, addr):
    flags, lower, upper, _, cmdline, mods_count, mods_addr = struct.unpack("<7I", memory.read(addr, 28))
    mmap_length, mmap_addr = struct.unpack("<II", memory.read(addr + 44, 8))
    name = memory.read_u32(addr + 64)
    mmap = []
    p = mmap_addr
    while p < mmap_addr + mmap_length:
        size, base, length, kind = struct.unpack("<IQQI", memory.read(p, 24))
        mmap.append((base, length, kind))
        p += size + 4
    mods = [struct.unpack("<IIII", memory.read(mods_addr + 16 * i, 16)) for i in range(mods_count)]
    return {"flags": flags, "lower": lower, "upper": upper, "cmdline": memory.read_cstring(cmdline),
            "mods": mods, "mmap": mmap, "name": memory.read_cstring(name)}


@pytest.mark.parametrize("variant", ["elf", "aout"])
def test_multiboot_guest_layout(memory, tmp_path, variant):
    path = build_guest("boot/multiboot", defines={"AOUT": 1} if variant == "aout" else None)
    env = tmp_path / "env"
    env.write_bytes(b"TESTNAME=mb\nVAR=1\n")
    memory.fill(0x100000, 0x10000, 0xCC)  # the loader must clear the bss
    img = ImageSpec(path=path, cmdline="console=ttyS0 x=1", initrd=env, modules=[f"{env} arg1 arg2"])
    assert detect(img) == "multiboot"
    r = load(memory, img)
    data = path.read_bytes()
    # The whole file sits at 1 MiB (ELF: one segment at offset 0; a.out: load_addr = file start); bss is zero.
    assert memory.read(0x100000, len(data)) == data
    assert memory.read(0x100000 + len(data), 0x2000) == b"\0" * 0x2000
    assert r.regs.rax == 0x2BADB002
    assert cpu_mode(r.sregs, r.regs.rflags) == "protected32" and not r.sregs.cr0 & CR0_PG
    assert not r.regs.rflags & RFLAGS_IF
    assert r.sregs.cs.limit == 0xFFFFFFFF and r.sregs.cs.base == 0 and r.sregs.ds.limit == 0xFFFFFFFF
    mbi = read_mbi(memory, r.regs.rbx)
    assert mbi["flags"] & 0x24F == 0x24D  # mem, cmdline, mods, mmap, loader name
    assert mbi["cmdline"] == b"console=ttyS0 x=1"
    assert mbi["name"] == b"smartvm"
    assert (mbi["lower"], mbi["upper"]) == (640, (64 << 20) // 1024 - 1024)
    assert mbi["mmap"] == [(e.addr, e.size, e.type) for e in e820_map(memory)]
    assert len(mbi["mods"]) == 2
    for start, end, string, _ in mbi["mods"]:
        assert start % 4096 == 0 and start >= 0x100000 + len(data)
        assert memory.read(start, end - start) == b"TESTNAME=mb\nVAR=1\n"
    assert memory.read_cstring(mbi["mods"][1][2]) == f"{env} arg1 arg2".encode()
    # The entry point is _start, right after the multiboot header.
    hdr = data.index(struct.pack("<I", 0x1BADB002))
    assert r.regs.rip == 0x100000 + hdr + (32 if variant == "aout" else 12)


def test_multiboot_elf64(memory, make_image):
    code = b"\xf4" * 32
    hdr = multiboot_header()
    elf = make_elf(is64=True, entry=0x200000, segments=[(0x200000, 0x200000, code, 0x3000)], payload_prefix=hdr)
    r = load(memory, make_image(elf))
    assert r.loader == "multiboot" and r.regs.rip == 0x200000
    assert memory.read(0x200000, 32) == code and memory.read(0x200020, 0x100) == b"\0" * 0x100


def test_multiboot_refusals(memory, make_image):
    bad = bytearray(multiboot_header()) + b"\0" * 64
    bad[8] ^= 1
    with pytest.raises(ImageError, match="multiboot header: checksum"):
        load(memory, make_image(bytes(bad), format="multiboot"))
    with pytest.raises(ImageError, match="flags"):  # unknown required feature bit
        load(memory, make_image(multiboot_header(flags=1 << 5), format="auto"))
    with pytest.raises(ImageError, match="a.out kludge"):
        load(memory, make_image(multiboot_header() + b"\0" * 64))
    # a.out kludge pointing outside the file / past RAM
    aout = multiboot_header(1 << 16, (0x100000, 0x100000, 0x200000, 0, 0x100000))
    with pytest.raises(ImageError, match="load_end_addr"):
        load(memory, make_image(aout))
    aout = multiboot_header(1 << 16, (0x100000, 0x100000, 0, 0xF0000000, 0x100010))
    with pytest.raises(ImageError, match="does not fit in guest RAM"):
        load(memory, make_image(aout + b"\0" * 64))
    with pytest.raises(ImageError, match="modules"):
        load(memory, make_image(make_elf(is64=False, entry=0x100000, segments=[(0x100000, 0x100000, b"\xf4", 1)],
                                         payload_prefix=multiboot_header()), modules=["/nonexistent/module"]))


def test_elf64_long_mode_entry(memory, make_image, tmp_path):
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"I" * 5000)
    code = b"\x90" * 64
    # A vmlinux-like kernel: virtual addresses high, physical at 16 MiB, e_entry virtual.
    elf = make_elf(is64=True, entry=0xFFFFFFFF81000010,
                   segments=[(0x1000000, 0xFFFFFFFF81000000, code, 0x2000)])
    img = make_image(elf, name="vmlinux", cmdline="root=/dev/vda", initrd=initrd)
    assert detect(img) == "elf"
    r = load(memory, img)
    assert memory.read(0x1000000, 64) == code
    assert r.regs.rip == 0x1000010
    assert cpu_mode(r.sregs, r.regs.rflags) == "long" and r.sregs.efer & EFER_LMA
    zp = r.regs.rsi
    assert memory.read(zp + 0x202, 4) == b"HdrS" and memory.read_u8(zp + 0x210) == 0xFF
    assert memory.read_cstring(memory.read_u32(zp + 0x228)) == b"root=/dev/vda"
    start, size = memory.read_u32(zp + 0x218), memory.read_u32(zp + 0x21C)
    assert size == 5000 and memory.read(start, size) == b"I" * 5000
    n = memory.read_u8(zp + 0x1E8)
    table = [struct.unpack("<QQI", memory.read(zp + 0x2D0 + 20 * i, 20)) for i in range(n)]
    assert table == [(e.addr, e.size, e.type) for e in e820_map(memory)]


def test_elf_pvh_entry(memory, make_image, tmp_path):
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"R" * 100)
    code = b"\xf4" * 16
    elf = make_elf(is64=True, entry=0xFFFFFFFF81000000, segments=[(0x1000000, 0xFFFFFFFF81000000, code, 16)],
                   notes=note(b"GNU", 3, b"\1" * 20) + note(b"Xen", 18, struct.pack("<I", 0x1000008)))
    r = load(memory, make_image(elf, cmdline="console=hvc0", initrd=initrd))
    assert r.info["protocol"] == "pvh"
    assert r.regs.rip == 0x1000008
    assert cpu_mode(r.sregs, r.regs.rflags) == "protected32" and not r.sregs.cr0 & CR0_PG
    assert (r.sregs.tr.base, r.sregs.tr.limit, r.sregs.tr.type) == (0, 0x67, 0xB)
    magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries = struct.unpack(
        "<IIIIQQQQI", memory.read(r.regs.rbx, 52))
    assert (magic, version, nr_modules, rsdp) == (0x336EC578, 1, 1, 0)
    assert memory.read_cstring(cmdline) == b"console=hvc0"
    paddr, size, _, _ = struct.unpack("<QQQQ", memory.read(modlist, 32))
    assert memory.read(paddr, size) == b"R" * 100
    mm = [struct.unpack("<QQI", memory.read(memmap + 24 * i, 20)) for i in range(entries)]
    assert mm == [(e.addr, e.size, e.type) for e in e820_map(memory)]
    # mode = long ignores the PVH note: the 64-bit entry at e_entry's physical address
    r = load(memory, make_image(elf, name="again", mode="long"))
    assert r.info["protocol"] == "linux-64" and r.regs.rip == 0x1000000


def test_elf32_protected_entry(memory, make_image):
    elf = make_elf(is64=False, entry=0x300000, segments=[(0x300000, 0x300000, b"\xf4", 1)])
    r = load(memory, make_image(elf))
    assert r.loader == "elf" and cpu_mode(r.sregs, r.regs.rflags) == "protected32" and r.regs.rip == 0x300000


def test_bzimage_layout(make_memory, make_image, tmp_path):
    memory = make_memory(128 << 20)
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"Z" * 10000)
    kernel = bytes(range(256)) * 16
    img = make_image(make_bzimage(kernel=kernel, initrd_addr_max=0x37FFFFFF), name="bzImage",
                     cmdline="earlyprintk=serial console=ttyS0", initrd=initrd)
    assert detect(img) == "bzimage"
    r = load(memory, img)
    assert memory.read(0x100000, len(kernel)) == kernel
    assert r.regs.rip == 0x100200 and cpu_mode(r.sregs, r.regs.rflags) == "long"
    assert r.sregs.cs.selector == 0x10 and r.sregs.ds.selector == 0x18
    zp = r.regs.rsi
    data = img.path.read_bytes()
    # The setup header is copied, then the loader's fields filled in.
    assert memory.read(zp + 0x1F1, 0x210 - 0x1F1) == data[0x1F1:0x210]
    assert memory.read_u8(zp + 0x210) == 0xFF
    assert memory.read_cstring(memory.read_u32(zp + 0x228)) == b"earlyprintk=serial console=ttyS0"
    start, size = memory.read_u32(zp + 0x218), memory.read_u32(zp + 0x21C)
    assert size == 10000 and memory.read(start, size) == b"Z" * 10000
    # As high as possible: page aligned, ending within the last page of RAM, above the decompression area.
    assert start % 4096 == 0 and start + size > (128 << 20) - 4096 and start >= 0x1000000 + 0x400000
    assert memory.read_u8(zp + 0x1E8) == len(e820_map(memory))
    # identity map covers the kernel, the zero page and the command line
    assert r.sregs.cr3 == 0x1000 and memory.read_u64(0x1000) & 1
    # 32-bit entry
    memory2 = make_memory(128 << 20)
    r = load(memory2, make_image(make_bzimage(kernel=kernel), name="bz2", mode="protected32"))
    assert r.regs.rip == 0x100000 and cpu_mode(r.sregs, r.regs.rflags) == "protected32"
    assert r.regs.rsi == r.info["zero_page"]


def test_bzimage_initrd_below_initrd_addr_max(make_memory, make_image, tmp_path):
    memory = make_memory(256 << 20)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"Q" * 8192)
    r = load(memory, make_image(make_bzimage(initrd_addr_max=0x3FFFFFF), initrd=initrd))
    start, size = r.info["initrd"]
    assert start + size - 1 <= 0x3FFFFFF and start + size > 0x3FFFFFF - 4096


def test_bzimage_refusals(make_memory, make_image):
    memory = make_memory(64 << 20)
    with pytest.raises(ImageError, match="version"):
        load(memory, make_image(make_bzimage(version=0x0204)))
    with pytest.raises(ImageError, match="zImage"):
        load(memory, make_image(make_bzimage(loadflags=0)))
    with pytest.raises(ImageError, match="XLF_KERNEL_64"):
        load(memory, make_image(make_bzimage(xloadflags=0), mode="long"))
    with pytest.raises(ImageError, match="init_size"):
        load(memory, make_image(make_bzimage(init_size=0x8000000)))
    with pytest.raises(ImageError, match="setup header"):
        load(memory, make_image(make_bzimage()[:0x230], format="bzimage"))
    with pytest.raises(ImageError, match="command line is"):
        load(memory, make_image(make_bzimage(cmdline_size=10), cmdline="x" * 300))
