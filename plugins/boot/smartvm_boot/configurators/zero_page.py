"""The Linux zero page (``struct boot_params``, Documentation/arch/x86/boot.rst and zero-page.rst).

:func:`write` fills one 4 KiB page: the kernel's setup header copied to
0x1F1 (bzImage) or a minimal one (ELF vmlinux: boot flag, ``HdrS``),
``type_of_loader`` 0xFF, the command-line pointer and size, the initrd
(``ramdisk_image``/``ramdisk_size`` and their ``ext_`` high halves) and the
e820 table (``e820_entries`` at 0x1E8, 20-byte entries at 0x2D0).
"""

from __future__ import annotations

import struct

from smartvm_core.arch.e820 import E820Entry

from ..layout import Placement

ZERO_PAGE_SIZE = 4096
SETUP_HEADER = 0x1F1
EXT_RAMDISK_IMAGE = 0x0C0
EXT_RAMDISK_SIZE = 0x0C4
EXT_CMD_LINE_PTR = 0x0C8
E820_ENTRIES = 0x1E8
BOOT_FLAG = 0x1FE
HEADER = 0x202
VERSION = 0x206
TYPE_OF_LOADER = 0x210
LOADFLAGS = 0x211
RAMDISK_IMAGE = 0x218
RAMDISK_SIZE = 0x21C
CMD_LINE_PTR = 0x228
KERNEL_ALIGNMENT = 0x230
CMDLINE_SIZE = 0x238
E820_TABLE = 0x2D0
E820_MAX = 128
PREFERRED_ADDR = 0x7000


def write(place: Placement, *, setup_header: bytes | None, cmdline_addr: int, cmdline_size: int,
          initrd: tuple[int, int] | None, e820: list[E820Entry], loadflags_set: int = 0) -> int:
    """Write boot_params; returns its address (RSI/ESI at entry)."""
    if place.is_free(PREFERRED_ADDR, ZERO_PAGE_SIZE):
        addr = place.claim(PREFERRED_ADDR, ZERO_PAGE_SIZE, "the zero page", "zero page")
    else:
        addr = place.alloc(ZERO_PAGE_SIZE, "the zero page")
    bp = bytearray(ZERO_PAGE_SIZE)
    if setup_header is not None:
        bp[SETUP_HEADER:SETUP_HEADER + len(setup_header)] = setup_header
    else:
        struct.pack_into("<H", bp, BOOT_FLAG, 0xAA55)
        bp[HEADER:HEADER + 4] = b"HdrS"
        struct.pack_into("<H", bp, VERSION, 0x020F)
        struct.pack_into("<I", bp, KERNEL_ALIGNMENT, 0x01000000)
    bp[TYPE_OF_LOADER] = 0xFF
    bp[LOADFLAGS] |= loadflags_set
    struct.pack_into("<I", bp, CMD_LINE_PTR, cmdline_addr & 0xFFFFFFFF)
    struct.pack_into("<I", bp, EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    struct.pack_into("<I", bp, CMDLINE_SIZE, cmdline_size)
    if initrd is not None:
        start, size = initrd
        struct.pack_into("<II", bp, RAMDISK_IMAGE, start & 0xFFFFFFFF, size & 0xFFFFFFFF)
        struct.pack_into("<II", bp, EXT_RAMDISK_IMAGE, start >> 32, size >> 32)
    entries = e820[:E820_MAX]
    bp[E820_ENTRIES] = len(entries)
    for i, e in enumerate(entries):
        struct.pack_into("<QQI", bp, E820_TABLE + 20 * i, e.addr, e.size, e.type)
    place.memory.write(addr, bp)
    return addr
