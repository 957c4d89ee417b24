"""Multiboot v1 kernels (Multiboot Specification 0.6.96).

The header (magic 0x1BADB002, flags, checksum) must lie 4-byte aligned in
the first 8192 bytes. With flag bit 16 the a.out-kludge address fields say
where the file goes (as QEMU, they win over ELF headers); otherwise the
image must be an ELF32 or ELF64 file whose PT_LOAD segments are loaded at
their physical addresses. Modules (the ``initrd`` first, then ``modules``,
each ``"path [arguments]"``) are loaded page-aligned above the kernel,
then the multiboot information (command line, modules, memory map,
mem_lower/upper, boot-loader name).

Entry (section 3.2): 32-bit protected mode, paging off, flat CS (0x10) and
data (0x18) segments, EFLAGS 0x2 (IF and VM clear), EAX=0x2BADB002, EBX =
the information's physical address.
"""

from __future__ import annotations

import struct
from pathlib import Path

from smartvm_core.arch.e820 import e820_map, lower_upper_kib
from smartvm_core.images import ImageSpec, LoadResult
from smartvm_core.memory import GuestMemory

from ..configurators import multiboot_info
from ..layout import FOUR_GIB, Placement, align_up, encode_cmdline, fail, read_file
from . import elfimage, entry

MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
SEARCH = 8192
FLAG_PAGE_ALIGN = 1 << 0
FLAG_MEMORY_INFO = 1 << 1
FLAG_VIDEO = 1 << 2
FLAG_AOUT_KLUDGE = 1 << 16
KNOWN_REQUIRED = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO
MAX_CMDLINE = 4095
MAX_MODULES = 64


def find_header(data: bytes) -> int | None:
    """Offset of the first header whose checksum is right, or None."""
    for off in range(0, min(len(data), SEARCH) - 11, 4):
        if data[off:off + 4] == b"\x02\xb0\xad\x1b":
            magic, flags, checksum = struct.unpack_from("<III", data, off)
            if (magic + flags + checksum) & 0xFFFFFFFF == 0:
                return off
    return None


def probe(image: ImageSpec) -> bool:
    return find_header(image.data) is not None


def _header(image: ImageSpec) -> tuple[int, int]:
    data = image.data
    off = find_header(data)
    if off is None:
        for o in range(0, min(len(data), SEARCH) - 3, 4):
            if struct.unpack_from("<I", data, o)[0] == MAGIC:
                raise fail(image, "multiboot header: checksum",
                           f"the header at offset {o:#x} has a bad checksum (magic + flags + checksum != 0)")
        raise fail(image, "multiboot header", f"no multiboot header (magic {MAGIC:#x}) in the first {SEARCH} bytes")
    flags = struct.unpack_from("<I", data, off + 4)[0]
    unknown = flags & 0xFFFF & ~KNOWN_REQUIRED
    if unknown:
        raise fail(image, "multiboot header: flags", f"requires features this loader does not know ({unknown:#x})")
    return off, flags


def _load_aout(place: Placement, image: ImageSpec, off: int) -> tuple[int, int, int]:
    data = image.data
    if off + 32 > len(data):
        raise fail(image, "multiboot header: address fields", "the header is truncated")
    header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr = struct.unpack_from("<5I", data, off + 12)
    if load_addr > header_addr:
        raise fail(image, "multiboot header: load_addr", f"{load_addr:#x} is above header_addr {header_addr:#x}")
    file_start = off - (header_addr - load_addr)
    if file_start < 0:
        raise fail(image, "multiboot header: header_addr",
                   f"header_addr - load_addr = {header_addr - load_addr:#x} is beyond the header's file offset {off:#x}")
    if load_end_addr == 0:
        load_end_addr = load_addr + len(data) - file_start
    if load_end_addr < load_addr or file_start + (load_end_addr - load_addr) > len(data):
        raise fail(image, "multiboot header: load_end_addr",
                   f"{load_end_addr:#x}: the text+data part [{load_addr:#x}, {load_end_addr:#x}) is not in the file")
    if bss_end_addr == 0:
        bss_end_addr = load_end_addr
    if bss_end_addr < load_end_addr:
        raise fail(image, "multiboot header: bss_end_addr", f"{bss_end_addr:#x} is below load_end_addr {load_end_addr:#x}")
    if bss_end_addr > FOUR_GIB:
        raise fail(image, "multiboot header: bss_end_addr", "the kernel must end below 4 GiB")
    if not load_addr <= entry_addr < load_end_addr:
        raise fail(image, "multiboot header: entry_addr",
                   f"{entry_addr:#x} is outside the loaded image [{load_addr:#x}, {load_end_addr:#x})")
    size = load_end_addr - load_addr
    place.put(load_addr, data[file_start:file_start + size], "the kernel", "multiboot header: load_addr",
              size=bss_end_addr - load_addr)
    return load_addr, bss_end_addr, entry_addr


def _load_elf(place: Placement, image: ImageSpec) -> tuple[int, int, int]:
    if not elfimage.is_elf(image.data):
        raise fail(image, "multiboot header: flags",
                   "not an ELF file and the a.out kludge (flag bit 16) is not set: nothing says where to load it")
    elf = elfimage.parse(image)
    low, high = elfimage.load_segments(place, elf, below=FOUR_GIB)
    start = elf.entry_physical()
    if not any(s.paddr <= start < s.paddr + s.memsz for s in elf.segments):
        raise fail(image, "ELF e_entry", f"entry {start:#x} is not inside a loaded segment")
    return low, high, start


def module_specs(image: ImageSpec) -> list[tuple[Path, str]]:
    """(path, string) per module: the initrd first, then each ``modules`` entry ``"path [args]"``."""
    specs = []
    if image.initrd is not None:
        specs.append((Path(image.initrd), str(image.initrd)))
    for m in image.modules:
        text = m.strip()
        if not text:
            raise fail(image, "modules", "an empty module entry")
        specs.append((Path(text.split()[0]), text))
    if len(specs) > MAX_MODULES:
        raise fail(image, "modules", f"{len(specs)} modules (at most {MAX_MODULES})")
    return specs


def load(memory: GuestMemory, image: ImageSpec) -> LoadResult:
    off, flags = _header(image)
    place = Placement(memory, image)
    if flags & FLAG_AOUT_KLUDGE:
        low, high, start = _load_aout(place, image, off)
    else:
        low, high, start = _load_elf(place, image)
    cmdline = encode_cmdline(image, image.cmdline, MAX_CMDLINE)
    modules = []
    cursor = align_up(high, 4096)
    for path, string in module_specs(image):
        blob = read_file(image, path, "modules")
        addr = place.alloc(len(blob), f"module {path.name}", align=4096, low=cursor, high=FOUR_GIB, field="modules")
        memory.write(addr, blob)
        modules.append(multiboot_info.Module(addr, addr + len(blob),
                                             encode_cmdline(image, string, MAX_CMDLINE, "modules")))
        cursor = align_up(addr + len(blob), 4096)
    lower, upper = lower_upper_kib(memory)
    mbi = multiboot_info.write(place, cmdline=cmdline, modules=modules, e820=e820_map(memory),
                               mem_lower_kib=lower, mem_upper_kib=upper, low=cursor)
    regs, sregs, info = entry.enter(place, "protected32", start)
    regs.rax = BOOTLOADER_MAGIC
    regs.rbx = mbi
    return LoadResult(loader="multiboot", start=low, end=high, regs=regs, sregs=sregs,
                      info={"entry": start, "mbi": mbi, "header_offset": off, "flags": flags,
                            "modules": [(m.start, m.end) for m in modules],
                            "format": "a.out kludge" if flags & FLAG_AOUT_KLUDGE else "ELF", **info})
