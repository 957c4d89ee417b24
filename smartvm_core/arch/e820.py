"""The BIOS e820 memory map, derived from the guest-physical layout.

Used by every boot protocol that hands the guest a memory map (multiboot
``mmap``, the Linux zero page, PVH ``hvm_start_info``, fw_cfg ``etc/e820``):

* RAM below 640 KiB is usable (type 1);
* the legacy hole 0xA0000-0xFFFFF is reserved (type 2) whenever memory
  exists above it;
* RAM above 1 MiB is usable;
* ROM regions (the BIOS at the top of 4 GiB ...) are reserved.

Adjacent entries of one type are merged; entries come sorted by address.
"""

from __future__ import annotations

import attrs

from ..memory import GuestMemory

E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4
E820_UNUSABLE = 5

LEGACY_HOLE_START = 0xA0000
LEGACY_HOLE_END = 0x100000


@attrs.define(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.addr + self.size


def e820_map(memory: GuestMemory) -> list[E820Entry]:
    """The e820 entries for ``memory``'s regions (see the module docstring)."""
    raw: list[tuple[int, int, int]] = []
    top = 0
    for region in memory.regions:
        top = max(top, region.end)
        if region.kind != "ram" or region.readonly:
            raw.append((region.gpa, region.end, E820_RESERVED))
            continue
        start, end = region.gpa, region.end
        # RAM inside the legacy hole is hidden by it: report the hole, not the RAM.
        if start < LEGACY_HOLE_START:
            raw.append((start, min(end, LEGACY_HOLE_START), E820_RAM))
        if end > LEGACY_HOLE_END:
            raw.append((max(start, LEGACY_HOLE_END), end, E820_RAM))
    if top > LEGACY_HOLE_START:
        raw.append((LEGACY_HOLE_START, LEGACY_HOLE_END, E820_RESERVED))
    # Sweep the boundaries: where entries overlap, reserved wins over RAM.
    points = sorted({p for start, end, _ in raw for p in (start, end)})
    merged: list[list[int]] = []
    for a, b in zip(points, points[1:]):
        kinds = [k for s, e, k in raw if s <= a and b <= e]
        if not kinds:
            continue
        kind = E820_RESERVED if E820_RESERVED in kinds else min(kinds)
        if merged and merged[-1][1] == a and merged[-1][2] == kind:
            merged[-1][1] = b
        else:
            merged.append([a, b, kind])
    return [E820Entry(s, e - s, k) for s, e, k in merged if e > s]


def lower_upper_kib(memory: GuestMemory) -> tuple[int, int]:
    """Multiboot ``mem_lower``/``mem_upper``: KiB of RAM from 0 (at most 640) and
    contiguous RAM from 1 MiB up to the first hole."""
    lower = upper = 0
    for e in e820_map(memory):
        if e.type != E820_RAM:
            continue
        if e.addr == 0:
            lower = min(e.end, LEGACY_HOLE_START) // 1024
        if e.addr <= LEGACY_HOLE_END < e.end:
            upper = (e.end - LEGACY_HOLE_END) // 1024
    return lower, upper
