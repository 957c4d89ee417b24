"""Flat binary: the file's bytes at ``address``, entered at ``entry`` in ``mode``.

Defaults: ``mode`` real, ``address`` 0x7C00 in real mode and 0x100000
otherwise, ``entry`` = ``address``. The stack pointer starts at the load
address (growing down, below the image).

* real: CS:IP is ``(entry & 0xF0000) >> 4 : entry & 0xFFFF``, the data
  segments and SS equal CS; the image must end below 1 MiB.
* protected32: flat 32-bit protected mode, paging off
  (:func:`smartvm_core.arch.modes.protected_mode_state`).
* long: 64-bit mode with the first 4 GiB identity-mapped
  (:func:`smartvm_core.arch.modes.long_mode_state`).

The GDT and page tables go at their default low addresses (0x500,
0x1000-0x6FFF) when free, elsewhere in RAM otherwise.
"""

from __future__ import annotations

from smartvm_core.images import ImageSpec, LoadResult
from smartvm_core.memory import GuestMemory

from ..layout import Placement, fail
from . import entry

MODES = ("real", "protected32", "long")


def probe(image: ImageSpec) -> bool:
    """A flat binary has no signature: it is only loaded when named or when an address is given."""
    return False


def load(memory: GuestMemory, image: ImageSpec) -> LoadResult:
    mode = image.mode or "real"
    if mode not in MODES:
        raise fail(image, "mode", f"unknown CPU mode {mode!r} (expected one of {', '.join(MODES)})")
    data = image.data
    if not data:
        raise fail(image, "size", "the image is empty")
    address = image.address if image.address is not None else (0x7C00 if mode == "real" else 0x100000)
    start = image.entry if image.entry is not None else address
    place = Placement(memory, image)
    if mode == "real" and address + len(data) > 0x100000:
        raise fail(image, "address", f"a real-mode image must end below 1 MiB ({address:#x} + {len(data):#x})")
    if mode != "long" and address + len(data) > 1 << 32:
        raise fail(image, "address", "a 32-bit image must end below 4 GiB")
    place.put(address, data, "the image", "address")
    if not address <= start < address + len(data):
        raise fail(image, "entry", f"entry {start:#x} is outside the image [{address:#x}, {address + len(data):#x})")
    regs, sregs, extra = entry.enter(place, mode, start)
    if mode == "real":
        offset = address - (start & 0xF0000)  # SP relative to SS (= CS)
        regs.rsp = offset if 0 <= offset <= 0xFFFF else 0
    else:
        regs.rsp = address
    return LoadResult(loader="flat", start=address, end=address + len(data), regs=regs, sregs=sregs,
                      info={"mode": mode, "entry": start, **extra})
