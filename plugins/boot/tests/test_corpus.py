"""A corpus of damaged images: each is refused with the file and the reason, never a crash."""

from __future__ import annotations

import struct

import pytest
from build import build_guest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartvm_core.errors import ImageError
from smartvm_core.images import ImageSpec, LoadResult
from smartvm_boot.plugin import load

from boot_test_images import make_bzimage, make_elf, multiboot_header, note

SEG = [(0x200000, 0x200000, b"\xf4" * 16, 16)]


def elf32(**kw):
    return make_elf(is64=False, entry=0x200000, segments=kw.pop("segments", SEG), **kw)


def patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


CORPUS = {
    # name: (image bytes, format, expected field in the message)
    "elf-truncated-header": (elf32()[:40], "elf", "ELF header"),
    "elf-bad-class": (patch(elf32(), 4, "<B", 7), "elf", "EI_CLASS"),
    "elf-big-endian": (patch(elf32(), 5, "<B", 2), "elf", "EI_DATA"),
    "elf-arm": (elf32(machine=40), "elf", "e_machine"),
    "elf-phoff-past-end": (patch(elf32(), 28, "<I", 0x7FFFFFF0), "elf", "e_phoff"),
    "elf-absurd-phnum": (elf32(phnum=60000), "elf", "e_phnum"),
    "elf-no-phdrs": (elf32(phnum=0), "elf", "e_phnum"),
    "elf-bad-phentsize": (patch(elf32(), 42, "<H", 20), "elf", "e_phentsize"),
    "elf-filesz-gt-memsz": (elf32(segments=[(0x200000, 0x200000, b"\xf4" * 16, 8)]), "elf", "p_filesz"),
    "elf-segment-past-file": (patch(elf32(), 52 + 4, "<I", 0x100000), "elf", "p_offset"),
    "elf-segment-past-ram": (elf32(segments=[(0x3FFF000, 0x3FFF000, b"x", 0x10000000)]), "elf", "guest RAM"),
    "elf-segment-in-hole": (elf32(segments=[(0xB8000, 0xB8000, b"x", 16)]), "elf", "guest RAM"),
    "elf-segment-huge": (make_elf(is64=True, entry=0, segments=[(1 << 60, 0, b"x", 1 << 60)]), "elf",
                         "p_paddr"),
    "elf-overlapping-segments": (elf32(segments=[(0x200000, 0x200000, b"a" * 32, 32),
                                                 (0x200010, 0x200010, b"b" * 32, 32)]), "elf", "overlaps"),
    "elf-bad-pvh-note": (make_elf(is64=True, entry=0x200000, segments=SEG, notes=note(b"Xen", 18, b"\1\2")),
                         "elf", "PVH note"),
    "elf-note-past-segment": (make_elf(is64=True, entry=0x200000, segments=SEG,
                                       notes=struct.pack("<III", 4, 0x10000, 18) + b"Xen\0"), "elf", "note"),
    "multiboot-bad-checksum": (patch(multiboot_header() + bytes(64), 8, "<I", 0), "multiboot", "checksum"),
    "multiboot-no-header": (bytes(256), "multiboot", "multiboot header"),
    "multiboot-entry-outside": (multiboot_header(1 << 16, (0x100000, 0x100000, 0, 0, 0x900000)) + bytes(64),
                                "multiboot", "entry_addr"),
    "multiboot-load-above-header": (multiboot_header(1 << 16, (0x100000, 0x100010, 0, 0, 0x100010)) + bytes(64),
                                    "multiboot", "load_addr"),
    "multiboot-truncated-aout": (multiboot_header(1 << 16, (0x100000,)), "multiboot", "address fields"),
    "multiboot-entry-not-in-segment": (elf32(payload_prefix=multiboot_header()).replace(
        struct.pack("<I", 0x200000), struct.pack("<I", 0x900000), 1), "multiboot", "e_entry"),
    "bzimage-truncated": (make_bzimage()[:0x250], "bzimage", "setup header"),
    "bzimage-old": (make_bzimage(version=0x0200), "bzimage", "version"),
    "bzimage-setup-past-end": (make_bzimage()[:0x800] + bytes(0x10), "bzimage", "setup_sects"),
    "bzimage-no-hdrs": (patch(make_bzimage(), 0x202, "<I", 0), "bzimage", "header"),
    "bzimage-huge-init-size": (make_bzimage(init_size=0xFFFFFFFF), "bzimage", "init_size"),
    "bootsector-no-signature": (bytes(512), "bootsector", "boot signature"),
    "bootsector-short": (b"\xeb\xfe", "bootsector", "size"),
    "com-empty": (b"", "com", "size"),
    "com-mz": (b"MZ\x90\x00" + bytes(60), "com", "signature"),
    "bios-no-jump": (bytes(64 << 10), "bios", "reset vector"),
    "bios-odd-size": (bytes(70000), "bios", "size"),
    "flat-empty": (b"", "flat", "size"),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_damaged_image_refused(memory, tmp_path, name):
    data, fmt, field = CORPUS[name]
    path = tmp_path / f"{name}.img"
    path.write_bytes(data)
    before = {r.name: (r.gpa, r.size) for r in memory.regions}
    with pytest.raises(ImageError) as e:
        load(memory, ImageSpec(path=path, format=fmt, address=0x200000 if fmt == "flat" else None))
    assert str(path) in str(e.value)
    assert field in str(e.value)
    assert {r.name: (r.gpa, r.size) for r in memory.regions} == before


def test_program_header_cut_in_half(memory, tmp_path):
    data = elf32()[:52 + 16]
    path = tmp_path / "cut.elf"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="e_phoff"):
        load(memory, ImageSpec(path=path))


def test_unknown_image_left_to_others(memory, make_image):
    assert load(memory, make_image(b"\x00\x01garbage" * 10, name="x.dat")) is None
    assert load(memory, make_image(b"", name="empty")) is None
    assert load(memory, make_image(b"abc", name="x.img", format="qcow2")) is None


def test_unreadable_image(memory, tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        load(memory, ImageSpec(path=tmp_path / "missing.bin"))


def base_images():
    return {
        "multiboot": build_guest("boot/multiboot").read_bytes(),
        "aout": build_guest("boot/multiboot", defines={"AOUT": 1}).read_bytes(),
        "elf64": make_elf(is64=True, entry=0x200000, segments=SEG,
                          notes=note(b"Xen", 18, struct.pack("<I", 0x200000))),
        "bzimage": make_bzimage(),
    }


BASES = None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["multiboot", "aout", "elf64", "bzimage"]),
       edits=st.lists(st.tuples(st.integers(0, 0x3FF), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 0x1000)))
def test_mutated_images_never_crash(make_memory, tmp_path, which, edits, cut):
    global BASES
    if BASES is None:
        BASES = base_images()
    data = bytearray(BASES[which])
    for off, val in edits:
        if off < len(data):
            data[off] = val
    if cut is not None:
        data = data[:cut]
    path = tmp_path / "mutant"
    path.write_bytes(bytes(data))
    memory = make_memory(32 << 20)
    try:
        result = load(memory, ImageSpec(path=path))
    except ImageError as e:
        assert str(path) in str(e)
    else:
        assert result is None or isinstance(result, LoadResult)
