"""Where a load may put things: guest RAM, claimed range by range.

A :class:`Placement` tracks the guest-physical ranges one image's load has
claimed (kernel segments, modules, boot structures). Every claim must lie in
guest RAM and overlap no earlier claim; anything else is refused with an
:class:`~smartvm_core.errors.ImageError` naming the file and the field, so a
hostile image can neither overlap itself nor write outside guest memory.
"""

from __future__ import annotations

from smartvm_core.errors import ImageError
from smartvm_core.images import ImageSpec
from smartvm_core.memory import GuestMemory

FOUR_GIB = 1 << 32


def fail(image: ImageSpec, field: str, reason: str) -> ImageError:
    """The error to raise for ``image`` (``raise fail(...) from cause``)."""
    return ImageError(str(image.path), field, reason)


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


class Placement:
    def __init__(self, memory: GuestMemory, image: ImageSpec) -> None:
        self.memory = memory
        self.image = image
        #: (start, end, what) of everything claimed so far
        self.claims: list[tuple[int, int, str]] = []

    # -- queries ------------------------------------------------------------------
    def in_ram(self, addr: int, size: int) -> bool:
        """True if ``[addr, addr + size)`` is all guest RAM (adjacent regions may join)."""
        if addr < 0 or size < 0:
            return False
        end = addr + size
        while addr < end:
            r = self.memory.region_at(addr)
            if r is None or r.kind != "ram" or r.readonly:
                return False
            addr = r.end
        return True

    def overlap(self, addr: int, size: int) -> str | None:
        for start, end, what in self.claims:
            if start < addr + size and addr < end:
                return what
        return None

    def is_free(self, addr: int, size: int) -> bool:
        return self.in_ram(addr, size) and self.overlap(addr, size) is None

    # -- claims -------------------------------------------------------------------
    def claim(self, addr: int, size: int, what: str, field: str) -> int:
        """Claim ``[addr, addr + size)`` for ``what``; ``field`` names the image field responsible."""
        if size == 0:
            return addr
        if addr < 0 or size < 0 or addr + size > 1 << 52:
            raise fail(self.image, field, f"{what} at {addr:#x} (+{size:#x}) is outside the physical address space")
        if not self.in_ram(addr, size):
            raise fail(self.image, field,
                       f"{what} [{addr:#x}, {addr + size:#x}) does not fit in guest RAM "
                       f"({self.memory.ram_size >> 20} MiB: {self.ram_ranges()})")
        other = self.overlap(addr, size)
        if other is not None:
            raise fail(self.image, field, f"{what} [{addr:#x}, {addr + size:#x}) overlaps {other}")
        self.claims.append((addr, addr + size, what))
        return addr

    def put(self, addr: int, data: bytes, what: str, field: str, *, size: int | None = None) -> int:
        """Claim ``size`` (default ``len(data)``) bytes at ``addr``, write ``data`` and zero the rest."""
        size = len(data) if size is None else size
        self.claim(addr, size, what, field)
        if data:
            self.memory.write(addr, data)
        if size > len(data):
            self.memory.fill(addr + len(data), size - len(data))
        return addr

    def alloc(self, size: int, what: str, *, align: int = 4096, low: int = 0, high: int = FOUR_GIB,
              top_down: bool = False, field: str = "") -> int:
        """Claim the lowest (or highest) free RAM range of ``size`` bytes in ``[low, high)``."""
        size = max(size, 1)
        candidates: list[int] = []
        for r in self.memory.ram_regions():
            if r.readonly:
                continue
            lo, hi = max(r.gpa, low), min(r.end, high)
            bounds = sorted({lo, *(e for _, e, _ in self.claims if lo <= e < hi)}
                            | {align_up(lo, align)})
            for start in bounds:
                start = align_up(start, align)
                if start + size <= hi:
                    candidates.append(start)
            # top-down: the highest aligned start below each claim and below hi
            for end in sorted({hi, *(s for s, _, _ in self.claims if lo < s <= hi)}):
                start = (end - size) // align * align
                if start >= lo:
                    candidates.append(start)
        for start in sorted(set(candidates), reverse=top_down):
            if self.is_free(start, size):
                self.claims.append((start, start + size, what))
                return start
        raise fail(self.image, field or what,
                   f"no room for {what} ({size:#x} bytes) in guest RAM between {low:#x} and {high:#x}")

    def ram_ranges(self) -> str:
        return ", ".join(f"[{r.gpa:#x}, {r.end:#x})" for r in self.memory.ram_regions()) or "none"

    @property
    def end(self) -> int:
        return max((e for _, e, _ in self.claims), default=0)

    @property
    def start(self) -> int:
        return min((s for s, _, _ in self.claims), default=0)


def encode_cmdline(image: ImageSpec, text: str, max_len: int, field: str = "cmdline") -> bytes:
    """``text`` as a NUL-terminated byte string of at most ``max_len`` bytes before the NUL."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as e:
        raise fail(image, field, f"command line must be ASCII ({e.reason} at {e.start})") from e
    if b"\0" in raw:
        raise fail(image, field, "command line contains a NUL byte")
    if len(raw) > max_len:
        raise fail(image, field, f"command line is {len(raw)} bytes, this protocol allows {max_len}")
    return raw + b"\0"


def read_file(image: ImageSpec, path, field: str, *, limit: int = 1 << 32) -> bytes:
    """Read an extra file (initrd, module) with its errors as ImageError."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise fail(image, field, f"{path}: {size} bytes is larger than {limit} bytes")
        return path.read_bytes()
    except OSError as e:
        raise fail(image, field, f"cannot read {path}: {e.strerror or e}") from e
