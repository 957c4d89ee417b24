"""The multiboot v1 information structure (Multiboot Specification 0.6.96, section 3.3).

:func:`write` lays out, in one block it claims: the 116-byte
``multiboot_info``, the module list (16 bytes per module), the memory map
(24 bytes per entry: ``size`` = 20, ``base_addr``, ``length``, ``type``),
then the command line, module strings and boot-loader name.
"""

from __future__ import annotations

import struct

import attrs

from smartvm_core.arch.e820 import E820Entry

from ..layout import Placement

MBI_SIZE = 116
MBI_MEM = 1 << 0
MBI_BOOTDEV = 1 << 1
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9
BOOT_LOADER_NAME = "smartvm"


@attrs.define
class Module:
    start: int
    end: int
    string: bytes  # NUL-terminated


def write(place: Placement, *, cmdline: bytes, modules: list[Module], e820: list[E820Entry],
          mem_lower_kib: int, mem_upper_kib: int, low: int) -> int:
    """Write the information block (above ``low``, below 4 GiB); returns its address (EBX)."""
    name = BOOT_LOADER_NAME.encode() + b"\0"
    mods_off = MBI_SIZE + (-MBI_SIZE % 16)
    mmap_off = mods_off + 16 * len(modules)
    strings_off = mmap_off + 24 * len(e820)
    total = strings_off + len(cmdline) + sum(len(m.string) for m in modules) + len(name)
    base = place.alloc(total, "the multiboot information", align=4096, low=low, high=1 << 32)
    blob = bytearray(total)
    pos = strings_off

    def put_string(s: bytes) -> int:
        nonlocal pos
        addr = base + pos
        blob[pos:pos + len(s)] = s
        pos += len(s)
        return addr

    cmdline_addr = put_string(cmdline)
    for i, m in enumerate(modules):
        struct.pack_into("<IIII", blob, mods_off + 16 * i, m.start, m.end, put_string(m.string), 0)
    for i, e in enumerate(e820):
        struct.pack_into("<IQQI", blob, mmap_off + 24 * i, 20, e.addr, e.size, e.type)
    name_addr = put_string(name)
    flags = MBI_MEM | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER_NAME
    struct.pack_into("<IIIIIIII", blob, 0, flags, mem_lower_kib, mem_upper_kib, 0, cmdline_addr,
                     len(modules), base + mods_off, 0)
    struct.pack_into("<II", blob, 44, 24 * len(e820), base + mmap_off)
    struct.pack_into("<I", blob, 64, name_addr)
    place.memory.write(base, blob)
    return base
