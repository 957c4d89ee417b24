"""The guest-physical layout an experiment asks for: RAM, ROM, MMIO windows, holes.

Entries come from ``[ept] regions`` (a list of tables) and are applied in
``setup_memory``, before the engine exists. Each entry is validated first;
an error names ``ept.regions[i].<key>`` and the reason.

* ``ram``: more RAM at ``gpa`` (anonymous, ``shared = true`` for memfd
  memory, or ``file = "disk.img"``: the file mapped copy-on-write, or with
  ``shared = true`` mapped so guest writes reach the file);
* ``rom``: read-only memory filled from ``file`` (guest writes are ignored,
  as on hardware, and counted in ``GuestMemory.rom_writes_dropped``);
* ``mmio``: a window routed to the MMIO bus (RAM under it is carved out);
* ``hole``: nothing at all (RAM carved out; accesses reach the MMIO bus,
  where nothing answers: reads float high, writes are lost and counted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from smartvm_core.errors import ConfigError, GuestMemoryError
from smartvm_core.memory import PAGE_SIZE, Backing, GuestMemory, MemoryRegion, page_align_up

KINDS = ("ram", "rom", "mmio", "hole")
_ENTRY_KEYS = {"kind", "gpa", "size", "file", "shared", "name", "file_offset"}


@attrs.define(frozen=True)
class LayoutEntry:
    kind: str
    gpa: int
    size: int
    name: str
    file: Path | None = None
    shared: bool = False
    file_offset: int = 0


def parse_entries(source: str, raw: list[Any], base_dir: Path) -> list[LayoutEntry]:
    """Validate ``[ept] regions``; raise :class:`ConfigError` naming the entry and key."""
    out: list[LayoutEntry] = []
    for i, item in enumerate(raw):
        where = f"ept.regions[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(source, where, f"expected a table, got {type(item).__name__}")
        unknown = set(item) - _ENTRY_KEYS
        if unknown:
            raise ConfigError(source, f"{where}.{sorted(unknown)[0]}",
                              f"unknown key (allowed: {', '.join(sorted(_ENTRY_KEYS))})")
        kind = item.get("kind")
        if kind not in KINDS:
            raise ConfigError(source, f"{where}.kind", f"{kind!r} is not one of: {', '.join(KINDS)}")
        gpa = item.get("gpa")
        if not isinstance(gpa, int) or isinstance(gpa, bool) or gpa < 0 or gpa % PAGE_SIZE or gpa >= 1 << 52:
            raise ConfigError(source, f"{where}.gpa", f"{gpa!r} is not a page-aligned guest-physical address")
        file = item.get("file")
        path = None
        if file is not None:
            if not isinstance(file, str) or not file:
                raise ConfigError(source, f"{where}.file", f"expected a path, got {file!r}")
            if kind not in ("ram", "rom"):
                raise ConfigError(source, f"{where}.file", f"a {kind} entry has no contents")
            path = Path(file) if Path(file).is_absolute() else base_dir / file
            if not path.is_file():
                raise ConfigError(source, f"{where}.file", f"no such file: {path}")
        size = item.get("size")
        if size is None and path is not None:
            size = page_align_up(max(1, path.stat().st_size))
        if isinstance(size, str):
            from smartvm_core.config import parse_size
            try:
                size = parse_size(size)
            except ValueError as e:
                raise ConfigError(source, f"{where}.size", str(e)) from None
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or size % PAGE_SIZE:
            raise ConfigError(source, f"{where}.size", f"{size!r} is not a positive multiple of 4 KiB")
        if gpa + size > 1 << 52:
            raise ConfigError(source, f"{where}.size", "runs past the 52-bit guest-physical space")
        shared = item.get("shared", False)
        if not isinstance(shared, bool):
            raise ConfigError(source, f"{where}.shared", f"expected true/false, got {shared!r}")
        if shared and kind != "ram":
            raise ConfigError(source, f"{where}.shared", "only ram entries can be shared")
        if kind == "rom" and path is None:
            raise ConfigError(source, f"{where}.file", "a rom entry needs its contents (file)")
        off = item.get("file_offset", 0)
        if not isinstance(off, int) or off < 0 or off % PAGE_SIZE:
            raise ConfigError(source, f"{where}.file_offset", f"{off!r} is not a page-aligned offset")
        name = item.get("name") or f"{kind}@{gpa:#x}"
        if not isinstance(name, str):
            raise ConfigError(source, f"{where}.name", f"expected a string, got {name!r}")
        out.append(LayoutEntry(kind, gpa, size, name, path, shared, off))
    spans = sorted((e.gpa, e.gpa + e.size, i) for i, e in enumerate(out))
    for (a0, a1, i), (b0, b1, j) in zip(spans, spans[1:]):
        if b0 < a1:
            raise ConfigError(source, f"ept.regions[{j}]", f"overlaps ept.regions[{i}] [{a0:#x}, {a1:#x})")
    return out


def carve(memory: GuestMemory, gpa: int, size: int) -> list[MemoryRegion]:
    """Take ``[gpa, gpa + size)`` out of whatever regions cover it; return what was removed.

    The parts of a region outside the range stay mapped at the same host
    memory (same backing and offsets), so nothing is copied.
    """
    end = gpa + size
    removed = []
    for r in list(memory.regions):
        if r.end <= gpa or r.gpa >= end:
            continue
        memory.remove_region(r)
        removed.append(r)
        if r.gpa < gpa:
            memory.add_region(MemoryRegion(r.name, r.gpa, gpa - r.gpa, r.backing, r.offset, r.readonly, r.kind))
        if r.end > end:
            memory.add_region(MemoryRegion(f"{r.name}+{end - r.gpa:#x}", end, r.end - end, r.backing,
                                           r.offset + end - r.gpa, r.readonly, r.kind))
    return removed


def make_backing(entry: LayoutEntry) -> Backing:
    if entry.file is not None:
        if entry.kind == "rom":
            data = entry.file.read_bytes()[entry.file_offset:entry.file_offset + entry.size]
            backing = Backing(entry.size, name=entry.name)
            backing.mmap[:len(data)] = data
            return backing
        try:
            return Backing.from_file(entry.file, entry.size, shared=entry.shared, name=entry.name)
        except (OSError, ValueError) as e:
            raise GuestMemoryError(entry.gpa, entry.size, f"{entry.file}: {e}") from None
    if entry.shared:
        return Backing.memfd(entry.size, name=entry.name)
    return Backing(entry.size, name=entry.name)


def apply_layout(memory: GuestMemory, entries: list[LayoutEntry]) -> None:
    """Carve each entry's range out of the core's RAM, then map it as its kind says."""
    for e in entries:
        carve(memory, e.gpa, e.size)
        if e.kind in ("mmio", "hole"):
            continue
        backing = make_backing(e)
        memory.add_region(MemoryRegion(e.name, e.gpa, e.size, backing, readonly=e.kind == "rom", kind=e.kind))


def share_ram(memory: GuestMemory) -> None:
    """Move every anonymous RAM backing to memfd memory (before anything is loaded).

    Shared backings can be cloned copy-on-write and handed to another
    process (migration); content is copied once, here.
    """
    regions = list(memory.regions)
    moved: dict[int, Backing] = {}
    for r in regions:
        if r.kind != "ram" or r.backing.fd >= 0:
            continue
        b = moved.get(id(r.backing))
        if b is None:
            b = Backing.memfd(r.backing.size, name=r.backing.name)
            b.mmap[:] = r.backing.mmap[:]
            moved[id(r.backing)] = b
    if not moved:
        return
    old = {}
    for r in regions:
        if id(r.backing) in moved:
            memory.remove_region(r)
            old[id(r.backing)] = r.backing
            memory.add_region(MemoryRegion(r.name, r.gpa, r.size, moved[id(r.backing)], r.offset, r.readonly, r.kind))
    for b in old.values():
        b.close()
