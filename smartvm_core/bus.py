"""Buses: a mapping between disjoint address ranges and devices.

One :class:`Bus` class serves port I/O and MMIO. Devices see offsets from
the base of the range they were registered at. Accesses that no device
claims, or that straddle the end of a range, go to one bus-level policy:
reads float (all ones), writes are dropped, both are counted.
"""

from __future__ import annotations

import bisect
from typing import Any, Protocol, runtime_checkable

import attrs

from .errors import BusConflict


@runtime_checkable
class Device(Protocol):
    """What a bus needs from a device.

    ``read``/``write`` are called with the offset from the start of the
    registered range and the access size in bytes (1, 2, 4 or 8). A device
    answers a wrong-size or unknown access as the real part would (and may
    count it); it never raises for guest behaviour.
    """

    name: str

    def read(self, offset: int, size: int) -> int:
        """Return the value the device puts on the bus."""

    def write(self, offset: int, size: int, value: int) -> None:
        """Accept a value from the bus."""


@attrs.define(frozen=True)
class BusRange:
    base: int
    size: int
    device: Any
    name: str

    @property
    def end(self) -> int:
        return self.base + self.size


_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}


class Bus:
    """Disjoint ranges of one address space, each owned by a device."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit  # one past the highest address
        self._bases: list[int] = []
        self._ranges: list[BusRange] = []
        self.unclaimed_reads = 0
        self.unclaimed_writes = 0
        #: the last few unclaimed addresses (for reports)
        self.unclaimed_log: list[tuple[str, int, int]] = []

    def register(self, base: int, size: int, device: Any, name: str | None = None) -> BusRange:
        """Map ``[base, base + size)`` to ``device``; overlap is refused."""
        name = name or getattr(device, "name", type(device).__name__)
        if size <= 0 or base < 0 or base + size > self.limit:
            raise BusConflict(f"{self.name} bus: {name} range [{base:#x}, +{size:#x}) is outside the bus")
        rng = BusRange(base, size, device, name)
        i = bisect.bisect_left(self._bases, base)
        for other in self._ranges[max(0, i - 1):i + 1]:
            if other.base < rng.end and base < other.end:
                raise BusConflict(
                    f"{self.name} bus: {name} at [{base:#x}, {rng.end - 1:#x}] overlaps "
                    f"{other.name} at [{other.base:#x}, {other.end - 1:#x}]")
        self._bases.insert(i, base)
        self._ranges.insert(i, rng)
        return rng

    def unregister(self, rng: BusRange) -> None:
        i = self._ranges.index(rng)
        del self._ranges[i]
        del self._bases[i]

    @property
    def ranges(self) -> tuple[BusRange, ...]:
        return tuple(self._ranges)

    def find(self, addr: int) -> BusRange | None:
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            rng = self._ranges[i]
            if addr < rng.base + rng.size:
                return rng
        return None

    def read(self, addr: int, size: int) -> int:
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            rng = self._ranges[i]
            if addr + size <= rng.base + rng.size:
                return rng.device.read(addr - rng.base, size)
        self.unclaimed_reads += 1
        self._log("read", addr, size)
        return _ONES.get(size, (1 << (8 * size)) - 1)

    def write(self, addr: int, size: int, value: int) -> None:
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            rng = self._ranges[i]
            if addr + size <= rng.base + rng.size:
                rng.device.write(addr - rng.base, size, value)
                return
        self.unclaimed_writes += 1
        self._log("write", addr, size)

    def _log(self, kind: str, addr: int, size: int) -> None:
        log = self.unclaimed_log
        if len(log) >= 16:
            del log[0]
        log.append((kind, addr, size))
