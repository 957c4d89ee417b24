"""Buses: a mapping between disjoint address ranges and devices.

One :class:`Bus` class serves port I/O and MMIO. Devices see offsets from
the base of the range they were registered at. Accesses that no device
claims, or that straddle the end of a range, go to one bus-level policy:
reads float (all ones), writes are dropped, both are counted.
"""

from __future__ import annotations

import bisect
import collections
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

#: the per-address lookup cache is dropped when it grows past this many addresses
#: (a guest touching many distinct addresses must not grow host memory without bound)
CACHE_LIMIT = 4096
#: how many unclaimed accesses :attr:`Bus.unclaimed_log` keeps
UNCLAIMED_LOG = 16
#: cache entry of an address no device claims
_UNCLAIMED = (0, 0, None)


class Bus:
    """Disjoint ranges of one address space, each owned by a device."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit  # one past the highest address
        self._bases: list[int] = []
        self._ranges: list[BusRange] = []
        self.unclaimed_reads = 0
        self.unclaimed_writes = 0
        #: the last few unclaimed accesses ``(kind, address, size)``, oldest first (for reports)
        self.unclaimed_log: collections.deque[tuple[str, int, int]] = collections.deque(maxlen=UNCLAIMED_LOG)
        #: address -> ``(base, end, device)`` of the range holding it (``(0, 0, None)``:
        #: unclaimed), filled by :meth:`read`/:meth:`write` on first access and
        #: cleared (the same dict) whenever ranges change. A hot path may look an
        #: address up here and fall back to :meth:`read`/:meth:`write` on a miss.
        self.cache: dict[int, tuple[int, int, Any]] = {}

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
        self.cache.clear()
        return rng

    def unregister(self, rng: BusRange) -> None:
        i = self._ranges.index(rng)
        del self._ranges[i]
        del self._bases[i]
        self.cache.clear()

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

    def _lookup(self, addr: int) -> tuple[int, int, Any]:
        """``(base, end, device)`` of the range holding ``addr`` (cached), or ``(0, 0, None)``."""
        i = bisect.bisect_right(self._bases, addr) - 1
        entry = _UNCLAIMED
        if i >= 0:
            rng = self._ranges[i]
            if addr < rng.base + rng.size:
                entry = (rng.base, rng.base + rng.size, rng.device)
        cache = self.cache
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[addr] = entry
        return entry

    def read(self, addr: int, size: int) -> int:
        try:
            base, end, device = self.cache[addr]
        except KeyError:
            base, end, device = self._lookup(addr)
        if addr + size <= end:
            return device.read(addr - base, size)
        return self.unclaimed_read(addr, size)

    def write(self, addr: int, size: int, value: int) -> None:
        try:
            base, end, device = self.cache[addr]
        except KeyError:
            base, end, device = self._lookup(addr)
        if addr + size <= end:
            device.write(addr - base, size, value)
            return
        self.unclaimed_write(addr, size)

    def unclaimed_read(self, addr: int, size: int) -> int:
        """The bus policy for a read no device claims: counted, logged, all ones (floating)."""
        self.unclaimed_reads += 1
        self.unclaimed_log.append(("read", addr, size))
        try:
            return _ONES[size]
        except KeyError:
            return (1 << (8 * size)) - 1

    def unclaimed_write(self, addr: int, size: int) -> None:
        """The bus policy for a write no device claims: counted, logged, dropped."""
        self.unclaimed_writes += 1
        self.unclaimed_log.append(("write", addr, size))
