"""PVH boot: ``hvm_start_info`` (Xen public/arch-x86/hvm/start_info.h, version 1).

Layout written by :func:`write`, in one claimed block: the 56-byte start
info (magic 0x336EC578, version 1, flags 0, ``nr_modules``,
``modlist_paddr``, ``cmdline_paddr``, ``rsdp_paddr`` 0, ``memmap_paddr``,
``memmap_entries``), the module list (32 bytes each: paddr, size,
cmdline_paddr, reserved), the memory map (24 bytes each: addr, size, type,
reserved; types as e820), then the strings.
"""

from __future__ import annotations

import struct

from smartvm_core.arch.e820 import E820Entry

from ..layout import Placement

MAGIC = 0x336EC578
START_INFO_SIZE = 56
MODLIST_ENTRY = 32
MEMMAP_ENTRY = 24


def write(place: Placement, *, cmdline: bytes, modules: list[tuple[int, int, bytes]], e820: list[E820Entry],
          low: int = 0) -> int:
    """Write hvm_start_info (modules as ``(paddr, size, cmdline)``); returns its address (EBX at entry)."""
    mod_off = START_INFO_SIZE + (-START_INFO_SIZE % 16)
    map_off = mod_off + MODLIST_ENTRY * len(modules)
    str_off = map_off + MEMMAP_ENTRY * len(e820)
    total = str_off + len(cmdline) + sum(len(m[2]) for m in modules)
    base = place.alloc(total, "the PVH start info", align=4096, low=low, high=1 << 32)
    blob = bytearray(total)
    pos = str_off

    def put(s: bytes) -> int:
        nonlocal pos
        blob[pos:pos + len(s)] = s
        pos += len(s)
        return base + pos - len(s)

    cmdline_addr = put(cmdline) if cmdline else 0
    for i, (paddr, size, string) in enumerate(modules):
        struct.pack_into("<QQQQ", blob, mod_off + MODLIST_ENTRY * i, paddr, size, put(string) if string else 0, 0)
    for i, e in enumerate(e820):
        struct.pack_into("<QQII", blob, map_off + MEMMAP_ENTRY * i, e.addr, e.size, e.type, 0)
    struct.pack_into("<IIIIQQQQII", blob, 0, MAGIC, 1, 0, len(modules), base + mod_off if modules else 0,
                     cmdline_addr, 0, base + map_off, len(e820), 0)
    place.memory.write(base, blob)
    return base
