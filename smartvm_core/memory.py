"""Guest-physical memory.

Guest RAM and ROM live in host ``mmap`` objects. Each :class:`MemoryRegion`
maps a window of one backing object at a guest-physical address; two regions
may share a backing (an alias, such as the BIOS ROM's copy below 1 MiB). The
engines map the same host pages into the guest (KVM memory slots, unicorn's
``mem_map_ptr``), so devices, loaders and the guest all see one copy and
nothing is copied on the way.

Every accessor checks bounds: an access that leaves guest memory raises
:class:`~smartvm_core.errors.GuestMemoryError` and never touches host memory
outside the backing.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import struct
from typing import Callable, Iterator

import attrs

from .errors import GuestMemoryError

PAGE_SIZE = 4096
PAGE_SHIFT = 12

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def page_align_up(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class Backing:
    """Host memory behind one or more regions: an anonymous or file mmap.

    ``fileno >= 0`` maps that file (``MAP_SHARED``: writes reach the file);
    ``copy_on_write=True`` maps it ``MAP_PRIVATE`` instead, so writes stay in
    this mapping and never reach the file. See :meth:`memfd`,
    :meth:`from_file` and :meth:`cow_clone`.
    """

    def __init__(self, size: int, *, fileno: int = -1, shared: bool = False, name: str = "anon",
                 copy_on_write: bool = False, offset: int = 0) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"backing {name}: size {size:#x} is not a positive multiple of {PAGE_SIZE:#x}")
        flags = mmap.MAP_SHARED if (shared or fileno >= 0) and not copy_on_write else mmap.MAP_PRIVATE
        self.name = name
        self.size = size
        #: the file descriptor behind the mapping (-1: anonymous); owned if ``_owns_fd``
        self.fd = fileno
        self._owns_fd = False
        self.shared = flags == mmap.MAP_SHARED
        self.offset = offset
        self.mmap = mmap.mmap(fileno, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                              offset=offset)
        # The host virtual address, for engines that map it into the guest.
        self._anchor = ctypes.c_char.from_buffer(self.mmap)
        self.host_address = ctypes.addressof(self._anchor)

    @classmethod
    def memfd(cls, size: int, name: str = "memfd") -> "Backing":
        """Shared memory (``memfd_create``, ``MAP_SHARED``): other mappings of
        :attr:`fd` see the same pages; :meth:`cow_clone` can start from it."""
        fd = os.memfd_create(f"smartvm-{name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            backing = cls(size, fileno=fd, shared=True, name=name)
        except BaseException:
            os.close(fd)
            raise
        backing._owns_fd = True
        return backing

    @classmethod
    def from_file(cls, path: "str | os.PathLike[str]", size: int | None = None, *, shared: bool = False,
                  name: str | None = None) -> "Backing":
        """Map a file: ``shared=True`` writes go to the file, otherwise copy-on-write.

        ``size`` defaults to the file size rounded up to a page; a private
        mapping may be larger than the file (the tail reads as zeros), a
        shared one grows the file. Raises :class:`GuestMemoryError` naming the
        file if it cannot be opened.
        """
        label = name or os.path.basename(str(path))
        try:
            fd = os.open(path, (os.O_RDWR if shared else os.O_RDONLY) | os.O_CLOEXEC)
        except OSError as e:
            raise GuestMemoryError(0, size or 0, f"backing file {path}: {e.strerror}") from None
        try:
            length = os.fstat(fd).st_size
            size = page_align_up(size if size is not None else max(length, 1))
            if shared and length < size:
                os.ftruncate(fd, size)
            if not shared and length < size:
                # MAP_PRIVATE past the end of a file faults (SIGBUS): map an
                # anonymous copy-on-write area and lay the file over its head
                backing = cls(size, name=label)
                with open(fd, "rb", closefd=False) as f:
                    f.readinto(backing.mmap)  # type: ignore[arg-type]
                os.close(fd)
                return backing
            backing = cls(size, fileno=fd, shared=shared, copy_on_write=not shared, name=label)
        except BaseException:
            os.close(fd)
            raise
        backing._owns_fd = True
        return backing

    def cow_clone(self, name: str | None = None) -> "Backing":
        """A copy-on-write clone: same contents now, no copy made, writes never shared.

        Needs a shared file mapping (:meth:`memfd`, or :meth:`from_file` with
        ``shared=True``). This backing is first *frozen*: it is remapped
        ``MAP_PRIVATE`` over the same file at the same host address (engines
        that map it keep working), so from now on neither its writes nor the
        clone's reach the file, and each sees only its own writes.
        """
        if self.fd < 0:
            raise GuestMemoryError(0, self.size, f"backing {self.name!r} is anonymous memory: "
                                   "use a memfd or shared file backing to clone it without copying")
        if not self.shared:
            # already frozen: our own writes since then live only in our
            # private pages, so the base file is stale; make a new base once
            fd = os.memfd_create(f"smartvm-{self.name}-base", os.MFD_CLOEXEC)
            os.ftruncate(fd, self.size)
            os.pwrite(fd, self.mmap, 0)  # type: ignore[arg-type]
            if self._owns_fd:
                os.close(self.fd)
            self.fd, self._owns_fd, self.offset = fd, True, 0
        _remap_private(self.host_address, self.size, self.fd, self.offset)
        self.shared = False
        clone = Backing(self.size, fileno=self.fd, copy_on_write=True, name=name or f"{self.name}-clone",
                        offset=self.offset)
        clone.fd = os.dup(self.fd)
        clone._owns_fd = True
        return clone

    def close(self) -> None:
        self._anchor = None  # release the buffer export before closing
        try:
            self.mmap.close()
        except BufferError:  # a view is still alive somewhere; the GC closes it
            pass
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_libc = None


def _remap_private(address: int, size: int, fd: int, offset: int) -> None:
    """Replace the mapping at ``address`` by a private mapping of ``fd`` (``MAP_FIXED``)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                               ctypes.c_int, ctypes.c_long)
    map_fixed = 0x10
    got = _libc.mmap(address, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | map_fixed, fd, offset)
    if got != address:
        err = ctypes.get_errno()
        raise GuestMemoryError(0, size, f"cannot remap backing copy-on-write: {os.strerror(err)}")


@attrs.define(eq=False)
class MemoryRegion:
    """A window ``[gpa, gpa + size)`` of guest-physical space backed by host memory.

    :ivar kind: ``"ram"`` or ``"rom"`` (ROM is read-only to the guest; writes
        from the guest are dropped and counted, loaders may still write it).
    """

    name: str
    gpa: int
    size: int
    backing: Backing
    offset: int = 0
    readonly: bool = False
    kind: str = "ram"
    view: memoryview = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.view = memoryview(self.backing.mmap)[self.offset:self.offset + self.size]

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def host_address(self) -> int:
        return self.backing.host_address + self.offset

    def contains(self, gpa: int, size: int = 1) -> bool:
        return self.gpa <= gpa and gpa + size <= self.end


RegionListener = Callable[[str, MemoryRegion], None]


class GuestMemory:
    """The guest-physical address space: a sorted set of disjoint regions."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._regions: list[MemoryRegion] = []
        self._listeners: list[RegionListener] = []
        #: guest writes to ROM that were dropped, per region name
        self.rom_writes_dropped: dict[str, int] = {}

    # -- layout -------------------------------------------------------------
    def add_listener(self, listener: RegionListener) -> Callable[[], None]:
        """Call ``listener("add"|"remove", region)`` on layout changes; returns an undo."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def add_region(self, region: MemoryRegion) -> MemoryRegion:
        if region.gpa % PAGE_SIZE or region.size % PAGE_SIZE or region.size <= 0:
            raise GuestMemoryError(region.gpa, region.size, f"region {region.name!r} is not page aligned")
        if region.offset + region.size > region.backing.size:
            raise GuestMemoryError(region.gpa, region.size, f"region {region.name!r} runs past its backing")
        if region.end > 1 << 52:
            raise GuestMemoryError(region.gpa, region.size, "beyond the 52-bit guest-physical space")
        i = bisect.bisect_left(self._starts, region.gpa)
        for other in self._regions[max(0, i - 1):i + 1]:
            if other.gpa < region.end and region.gpa < other.end:
                raise GuestMemoryError(
                    region.gpa, region.size,
                    f"region {region.name!r} overlaps {other.name!r} [{other.gpa:#x}, {other.end:#x})")
        self._starts.insert(i, region.gpa)
        self._regions.insert(i, region)
        for listener in list(self._listeners):
            listener("add", region)
        return region

    def remove_region(self, region: MemoryRegion) -> None:
        i = self._regions.index(region)
        del self._regions[i]
        del self._starts[i]
        for listener in list(self._listeners):
            listener("remove", region)

    def add_ram(self, gpa: int, size: int, name: str = "ram", *, shared: bool = False) -> MemoryRegion:
        backing = Backing(page_align_up(size), shared=shared, name=name)
        return self.add_region(MemoryRegion(name, gpa, page_align_up(size), backing))

    def add_rom(self, gpa: int, data: bytes, name: str = "rom") -> MemoryRegion:
        size = page_align_up(len(data))
        backing = Backing(size, name=name)
        backing.mmap[:len(data)] = data
        return self.add_region(MemoryRegion(name, gpa, size, backing, readonly=True, kind="rom"))

    def add_alias(self, gpa: int, of: MemoryRegion, offset: int, size: int, name: str | None = None) -> MemoryRegion:
        """Map ``size`` bytes of ``of`` starting at ``offset`` again at ``gpa``."""
        if offset < 0 or offset + size > of.size:
            raise GuestMemoryError(gpa, size, f"alias runs outside region {of.name!r}")
        return self.add_region(MemoryRegion(name or f"{of.name}-alias", gpa, size, of.backing,
                                            of.offset + offset, of.readonly, of.kind))

    @property
    def regions(self) -> tuple[MemoryRegion, ...]:
        return tuple(self._regions)

    def ram_regions(self) -> Iterator[MemoryRegion]:
        return (r for r in self._regions if r.kind == "ram")

    @property
    def ram_size(self) -> int:
        return sum(r.size for r in self._regions if r.kind == "ram")

    def region_at(self, gpa: int) -> MemoryRegion | None:
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0:
            region = self._regions[i]
            if gpa < region.end:
                return region
        return None

    def is_backed(self, gpa: int, size: int = 1) -> bool:
        r = self.region_at(gpa)
        return r is not None and gpa + size <= r.end

    # -- access ---------------------------------------------------------------
    def view(self, gpa: int, size: int) -> memoryview:
        """A writable view of ``size`` bytes at ``gpa``; must lie inside one region."""
        if size < 0 or gpa < 0:
            raise GuestMemoryError(gpa, size, "negative address or size")
        r = self.region_at(gpa)
        if r is None:
            raise GuestMemoryError(gpa, size, "no memory at this address")
        if gpa + size > r.end:
            raise GuestMemoryError(gpa, size, f"runs past the end of region {r.name!r} at {r.end:#x}")
        off = gpa - r.gpa
        return r.view[off:off + size]

    def read(self, gpa: int, size: int) -> bytes:
        """Read bytes; the range may span adjacent regions but no hole."""
        if size <= 0 or gpa < 0:
            if size == 0 and gpa >= 0:
                return b""
            raise GuestMemoryError(gpa, size, "negative address or size")
        r = self.region_at(gpa)
        if r is not None and gpa + size <= r.end:
            off = gpa - r.gpa
            return bytes(r.view[off:off + size])
        out = bytearray()
        while size:
            r = self.region_at(gpa)
            if r is None:
                raise GuestMemoryError(gpa, size, "no memory at this address")
            n = min(size, r.end - gpa)
            off = gpa - r.gpa
            out += r.view[off:off + n]
            gpa += n
            size -= n
        return bytes(out)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Write bytes (loader and device path: ROM is writable from here)."""
        size = len(data)
        if size == 0:
            return
        r = self.region_at(gpa)
        if r is not None and gpa + size <= r.end:
            off = gpa - r.gpa
            r.view[off:off + size] = data
            return
        mv = memoryview(data).cast("B")
        pos = 0
        while pos < size:  # check the whole range first: a failing write stores nothing
            r = self.region_at(gpa + pos)
            if r is None:
                raise GuestMemoryError(gpa + pos, size - pos, "no memory at this address")
            pos += min(size - pos, r.end - (gpa + pos))
        pos = 0
        while pos < size:
            r = self.region_at(gpa + pos)
            if r is None:
                raise GuestMemoryError(gpa + pos, size - pos, "no memory at this address")
            n = min(size - pos, r.end - (gpa + pos))
            off = gpa + pos - r.gpa
            r.view[off:off + n] = mv[pos:pos + n]
            pos += n

    def guest_write(self, gpa: int, data: bytes) -> bool:
        """A write on the guest's behalf: dropped (and counted) on ROM. Returns True if stored."""
        r = self.region_at(gpa)
        if r is not None and r.readonly:
            self.rom_writes_dropped[r.name] = self.rom_writes_dropped.get(r.name, 0) + 1
            return False
        self.write(gpa, data)
        return True

    def fill(self, gpa: int, size: int, byte: int = 0) -> None:
        self.write(gpa, bytes([byte]) * size)

    def read_u8(self, gpa: int) -> int:
        return self.view(gpa, 1)[0]

    def read_u16(self, gpa: int) -> int:
        return _U16.unpack(self.read(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return _U32.unpack(self.read(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return _U64.unpack(self.read(gpa, 8))[0]

    def write_u8(self, gpa: int, value: int) -> None:
        self.write(gpa, bytes((value & 0xFF,)))

    def write_u16(self, gpa: int, value: int) -> None:
        self.write(gpa, _U16.pack(value & 0xFFFF))

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, _U32.pack(value & 0xFFFFFFFF))

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, _U64.pack(value & 0xFFFFFFFFFFFFFFFF))

    def read_cstring(self, gpa: int, limit: int = 4096) -> bytes:
        out = bytearray()
        while len(out) < limit:
            b = self.read_u8(gpa + len(out))
            if b == 0:
                return bytes(out)
            out.append(b)
        raise GuestMemoryError(gpa, limit, f"string not terminated within {limit} bytes")

    def close(self) -> None:
        backings = {id(r.backing): r.backing for r in self._regions}
        for r in self._regions:
            r.view.release()
        self._regions.clear()
        self._starts.clear()
        for b in backings.values():
            b.close()
