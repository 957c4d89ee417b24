"""The EPT policies of one machine: dirty tracking, access tracing, write watches.

Each policy says which accesses it wants to see on each RAM page; a page's
protection is what none of them wants to see (:meth:`EptPolicy.allowed`).
One ``EPT_VIOLATION`` handler (priority 100, before the core's MMIO/ROM
handler at -100) decodes the exit, lets each policy record it, and sets the
page's new protection; the engine then retries the access if it is now
allowed (see ``Engine.set_page_protection``). Exits on pages no policy
restricts (MMIO, ROM) are left to the core.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import attrs

from smartvm_core.engines.base import EPT_ALL, EPT_EXEC, EPT_READ, EPT_WRITE
from smartvm_core.errors import SnapshotError
from smartvm_core.memory import PAGE_SIZE

from .protect import PageProtector

if TYPE_CHECKING:
    from smartvm_core.engines.base import EngineVcpu
    from smartvm_core.exit import VmExit
    from smartvm_core.machine import Machine
    from smartvm_core.memory import MemoryRegion

ACCESS_NAMES = {EPT_READ: "read", EPT_WRITE: "write", EPT_EXEC: "fetch"}
ACCESS_BITS = {v: k for k, v in ACCESS_NAMES.items()}
#: what a write-protect callback may answer
ACTIONS = ("unprotect", "allow", "drop", "stop")
#: above this many dirty pages a harvest re-protects whole regions (one engine call each)
BULK_REPROTECT = 64


def bitmap_pages(bitmap: bytes, first: int) -> list[int]:
    """Page numbers of the set bits of a dirty bitmap (bit n of byte i: page ``first + 8*i + n``)."""
    out = []
    n = len(bitmap) & ~7
    words = memoryview(bitmap)[:n].cast("Q")
    for i, w in enumerate(words):
        if w:
            base = first + 64 * i
            while w:
                low = w & -w
                out.append(base + low.bit_length() - 1)
                w ^= low
    for j in range(n, len(bitmap)):
        byte = bitmap[j]
        out.extend(first + 8 * j + b for b in range(8) if byte >> b & 1)
    return out


@attrs.define(frozen=True)
class EptAccess:
    """An EPT violation, decoded: what the guest did, where, and what the page allowed."""

    gpa: int
    size: int
    access: str          # "read", "write" or "fetch"
    allowed: int         # EPT_* bits the page allowed
    value: int = 0       # for writes
    linear: int | None = None
    vcpu: int = 0
    rip: int = 0

    @classmethod
    def decode(cls, vcpu: "EngineVcpu", exit: "VmExit") -> "EptAccess":
        # imported on the first violation a policy sees, not at start-up
        from smartvm_core.vmx.exit_info import EptViolationQualification
        q = EptViolationQualification.decode(exit.qualification & EptViolationQualification.DEFINED_MASK)
        access = "fetch" if q.fetch else "write" if (q.write or exit.is_write) else "read"
        allowed = (EPT_READ if q.readable else 0) | (EPT_WRITE if q.writable else 0) | (EPT_EXEC if q.executable else 0)
        return cls(exit.guest_physical_address, exit.size, access, allowed, exit.value if access == "write" else 0,
                   exit.guest_linear_address if q.guest_linear_address_valid else None, vcpu.index,
                   vcpu.get_regs().rip)


@attrs.define
class WatchRange:
    """Write-protected guest-physical pages with what to do on a guest write.

    ``action``: ``unprotect`` (default: the callback fires on the first write
    to each page, the write goes through and the page becomes writable),
    ``allow`` (every write fires and goes through; the page stays protected),
    ``drop`` (every write fires and is ignored) or ``stop`` (stop the VM).
    ``callback(access) -> str | None`` may answer another action.
    """

    gpa: int
    size: int
    action: str = "unprotect"
    callback: Callable[[EptAccess], str | None] | None = None
    name: str = ""

    def __attrs_post_init__(self) -> None:
        if self.gpa % PAGE_SIZE or self.size % PAGE_SIZE or self.size <= 0:
            raise ValueError(f"write-protect range {self.gpa:#x}+{self.size:#x} is not page aligned")
        if self.action not in ACTIONS:
            raise ValueError(f"write-protect action {self.action!r} is not one of {', '.join(ACTIONS)}")


class EptPolicy:
    """Every EPT policy of one machine (``machine.services["ept"]``)."""

    def __init__(self, machine: "Machine") -> None:
        self.machine = machine
        self.memory = machine.memory
        self.protector: PageProtector | None = None
        # dirty tracking
        self.dirty_enabled = False
        self.native_dirty = False
        self.dirty: set[int] = set()           # pages written since the last harvest (not in the engine's log)
        self.harvests = 0
        # access tracing
        self.trace_bits = 0
        self.trace_path: Path | None = None
        self.seen: dict[int, int] = {}         # page -> access bits already recorded
        self.trace_events: list[dict[str, Any]] = []
        self._trace_written = 0
        # write watches
        self.watches: list[WatchRange] = []
        #: ranges from the experiment, protected once the engine exists
        self.pending_watches: list[WatchRange] = []
        self.watched: dict[int, WatchRange] = {}   # page -> range, while protected
        self.watch_fired: dict[int, int] = {}      # page -> callbacks fired
        self.violations = 0
        self._undo_listener: Callable[[], None] | None = None

    # -- set-up ------------------------------------------------------------------------
    def attach(self) -> None:
        """Called once the engine exists (``setup_machine``)."""
        assert self.machine.engine is not None
        self.protector = PageProtector(self.machine.engine, self.memory)
        self._undo_listener = self.memory.add_listener(self._on_layout)

    def _ram(self) -> list["MemoryRegion"]:
        return [r for r in self.memory.regions if r.kind == "ram"]

    def _on_layout(self, what: str, region: "MemoryRegion") -> None:
        if what == "add" and self.native_dirty and region.kind == "ram" and not region.readonly:
            self.machine.engine.start_dirty_log(region)

    # -- protection ------------------------------------------------------------------------
    def allowed(self, page: int) -> int:
        """The EPT permissions page ``page`` (a page number) gets from all policies together."""
        bits = EPT_ALL & ~(self.trace_bits & ~self.seen.get(page, 0))
        if page in self.watched:
            bits &= ~EPT_WRITE
        if self.dirty_enabled and not self.native_dirty and page not in self.dirty:
            bits &= ~EPT_WRITE
        return bits

    def _base_allowed(self) -> int:
        bits = EPT_ALL & ~self.trace_bits
        if self.dirty_enabled and not self.native_dirty:
            bits &= ~EPT_WRITE
        return bits

    def refresh(self, pages: "set[int] | list[int] | None" = None) -> None:
        """Apply :meth:`allowed` to ``pages`` (page numbers), or to all RAM."""
        assert self.protector is not None
        if pages is None:
            base = self._base_allowed()
            pages = set(self.watched) | set(self.seen) | self.dirty
            if self.protector.native_bits:
                for r in self._ram():
                    self.protector.set(r.gpa, r.size, base)
            else:  # the layout fallback only write-protects single pages: revisit those
                pages |= {r.gpa >> 12 for r in self._ram() if r.readonly and r.size == PAGE_SIZE}
        for page in sorted(pages):
            if self.memory.is_backed(page << 12):
                self.protector.set(page << 12, PAGE_SIZE, self.allowed(page))

    # -- dirty tracking --------------------------------------------------------------------
    def start_dirty_tracking(self) -> None:
        """Log guest writes from now on: the engine's dirty log, or write-protect on first write."""
        engine = self.machine.engine
        self.dirty_enabled = True
        self.dirty.clear()
        self.native_dirty = bool(engine.has_native_dirty_log)
        if self.native_dirty:
            for r in self._ram():
                if not r.readonly:
                    engine.start_dirty_log(r)
                    engine.dirty_log(r)  # start clean
        else:
            if not self.protector.supports(EPT_WRITE):
                raise NotImplementedError(f"engine {engine.name} has neither dirty logging nor page protection")
            self.refresh()

    def harvest(self) -> list[int]:
        """Guest-physical addresses of the pages written since the last harvest (sorted); clears the log."""
        if not self.dirty_enabled:
            return []
        pages = set(self.dirty)
        if self.native_dirty:
            engine = self.machine.engine
            for r in self._ram():
                if r.readonly:
                    continue
                pages.update(bitmap_pages(engine.dirty_log(r), r.gpa >> 12))
            self.dirty.clear()
        else:
            self.dirty.clear()
            # protect them again, so the next write is logged: page by page, or
            # (many pages) the whole RAM in one call per region
            self.refresh(pages if len(pages) <= BULK_REPROTECT else None)
        self.harvests += 1
        return [p << 12 for p in sorted(pages)]

    # -- write watches ---------------------------------------------------------------------
    def watch(self, rng: WatchRange) -> WatchRange:
        """Write-protect ``rng`` now; its callback fires on guest writes (see :class:`WatchRange`)."""
        self.watches.append(rng)
        pages = range(rng.gpa >> 12, (rng.gpa + rng.size) >> 12)
        for p in pages:
            self.watched[p] = rng
        if self.protector is not None:
            self.refresh(list(pages))
        return rng

    # -- access tracing ------------------------------------------------------------------
    def start_tracing(self, kinds: list[str], path: Path | None) -> None:
        self.trace_bits = 0
        for k in kinds:
            self.trace_bits |= ACCESS_BITS[k]
        self.trace_path = path
        if path is not None:
            path.write_text("")
        self.refresh()

    def _trace(self, page: int, bit: int, access: EptAccess) -> None:
        first = page not in self.seen
        self.seen[page] = self.seen.get(page, 0) | bit
        self.trace_events.append({"seq": len(self.trace_events), "page": page << 12, "access": ACCESS_NAMES[bit],
                                  "first_touch": first, "gpa": access.gpa, "rip": access.rip, "vcpu": access.vcpu})

    def flush_trace(self) -> None:
        if self.trace_path is None or self._trace_written >= len(self.trace_events):
            return
        import json  # only a traced run writes JSON lines: not a start-up import
        with open(self.trace_path, "a") as f:
            for ev in self.trace_events[self._trace_written:]:
                f.write(json.dumps(ev) + "\n")
        self._trace_written = len(self.trace_events)

    # -- the EPT-violation handler ---------------------------------------------------------
    def handle_ept_violation(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        gpa = exit.guest_physical_address
        region = self.memory.region_at(gpa)
        if region is None or region.kind != "ram":
            return False  # MMIO or ROM: the core's
        page = gpa >> 12
        q = exit.qualification
        bit = EPT_EXEC if q & 4 else EPT_WRITE if exit.is_write else EPT_READ
        before = self.allowed(page)
        if before & bit:
            return False  # no policy of ours restricts this access
        self.violations += 1
        access = EptAccess.decode(vcpu, exit)
        if self.trace_bits & bit and not self.seen.get(page, 0) & bit:
            self._trace(page, bit, access)
        store = False
        if bit == EPT_WRITE:
            rng = self.watched.get(page)
            goes_through = True
            if rng is not None:
                action = rng.action
                if rng.callback is not None:
                    answer = rng.callback(access)
                    if answer is not None:
                        if answer not in ACTIONS:
                            self.machine.stop("error", f"ept: write-protect callback of {rng.name or hex(rng.gpa)} "
                                              f"answered {answer!r}, not one of {', '.join(ACTIONS)}")
                            return True
                        action = answer
                self.watch_fired[page] = self.watch_fired.get(page, 0) + 1
                if action == "unprotect":
                    del self.watched[page]
                elif action == "allow":
                    store = True
                elif action == "drop":
                    goes_through = False
                else:  # stop
                    self.machine.stop("user", f"ept: guest write to protected page {page << 12:#x} "
                                      f"(gpa {gpa:#x}, value {exit.value:#x})", vcpu=vcpu.index)
                    return True
            if goes_through and self.dirty_enabled:
                self.dirty.add(page)
        after = self.allowed(page)
        if after != before:
            self.protector.set(page << 12, PAGE_SIZE, after)
        if bit == EPT_WRITE and (store or (after & EPT_WRITE and self.protector.manual_retry)):
            size = exit.size if 0 < exit.size <= 8 else 8
            self.memory.write(gpa, (exit.value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        return True

    # -- state -----------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        """Policy state as plain data (the engine's pending dirty log is folded in)."""
        if self.dirty_enabled and self.native_dirty:
            engine = self.machine.engine
            for r in self._ram():
                if not r.readonly:
                    self.dirty.update(bitmap_pages(engine.dirty_log(r), r.gpa >> 12))
        self.flush_trace()
        return {
            "dirty_enabled": self.dirty_enabled,
            "dirty": sorted(self.dirty),
            "harvests": self.harvests,
            "trace_bits": self.trace_bits,
            "seen": [[p, b] for p, b in sorted(self.seen.items())],
            "trace_events": len(self.trace_events),
            "watched": sorted(self.watched),
            "watch_fired": [[p, n] for p, n in sorted(self.watch_fired.items())],
            "violations": self.violations,
        }

    def restore(self, state: dict[str, Any]) -> None:
        try:
            dirty = {int(p) for p in state["dirty"]}
            seen = {int(p): int(b) for p, b in state["seen"]}
            watched = [int(p) for p in state["watched"]]
            fired = {int(p): int(n) for p, n in state["watch_fired"]}
            dirty_enabled = bool(state["dirty_enabled"])
            trace_bits = int(state["trace_bits"]) & EPT_ALL
            harvests, violations = int(state["harvests"]), int(state["violations"])
        except (KeyError, TypeError, ValueError) as e:
            raise SnapshotError(f"ept policy state: {type(e).__name__}: {e}") from None
        unknown = [p for p in watched if p not in self.watched and not any(
            w.gpa >> 12 <= p < (w.gpa + w.size) >> 12 for w in self.watches)]
        if unknown:
            raise SnapshotError(f"ept policy state: page {unknown[0] << 12:#x} is watched in the snapshot "
                                "but no write-protect range of this machine covers it")
        by_page = {p: w for w in self.watches for p in range((w.gpa >> 12), (w.gpa + w.size) >> 12)}
        old_pages = set(self.watched) | set(self.seen) | self.dirty
        if dirty_enabled and not self.dirty_enabled:
            self.start_dirty_tracking()
        elif self.dirty_enabled and self.native_dirty:
            self.harvest()  # drop what the engine logged before the restore
        self.dirty = dirty
        self.seen = seen
        self.trace_bits = trace_bits
        self.watched = {p: by_page[p] for p in watched}
        self.watch_fired = fired
        self.harvests, self.violations = harvests, violations
        self.refresh()
        self.refresh(old_pages)

    def close(self) -> None:
        self.flush_trace()
        if self._undo_listener is not None:
            self._undo_listener()
            self._undo_listener = None
