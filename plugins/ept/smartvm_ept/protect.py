"""Per-page protection on any engine.

Engines that can restrict pages themselves (``Engine.page_protection_bits``:
the ``soft`` engine, through unicorn's ``mem_protect``) are used directly.
For the others (``kvm``) write protection is made from the memory layout:
each protected page becomes a one-page read-only RAM region, which the
engine maps read-only (``KVM_MEM_READONLY``: guest writes exit as MMIO, that
is ``EPT_VIOLATION`` with ``is_write``). Such an engine has already completed
the faulting instruction, so a write that a handler lets through is stored
by this module (:attr:`PageProtector.manual_retry`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smartvm_core.engines.base import EPT_ALL, EPT_WRITE
from smartvm_core.memory import PAGE_SIZE, MemoryRegion

if TYPE_CHECKING:
    from smartvm_core.engines.base import Engine
    from smartvm_core.memory import GuestMemory

WP_SUFFIX = "@wp"


class PageProtector:
    def __init__(self, engine: "Engine", memory: "GuestMemory") -> None:
        self.engine = engine
        self.memory = memory
        self.native_bits = int(getattr(engine, "page_protection_bits", 0))
        #: the engine does not perform a write that became allowed: store it ourselves
        self.manual_retry = not self.native_bits & EPT_WRITE

    def supports(self, bits: int) -> bool:
        """Can pages be denied every access in ``bits``?"""
        return (self.native_bits & bits) == bits or bits == EPT_WRITE

    def set(self, gpa: int, size: int, allowed: int) -> None:
        if self.native_bits:
            self.engine.set_page_protection(gpa, size, allowed | (EPT_ALL & ~self.native_bits))
            return
        for page in range(gpa >> 12, (gpa + size) >> 12):
            if allowed & EPT_WRITE:
                self._unprotect(page << 12)
            else:
                self._protect(page << 12)

    # -- the layout fallback ---------------------------------------------------------
    def _protect(self, gpa: int) -> None:
        r = self.memory.region_at(gpa)
        if r is None or r.kind != "ram" or r.readonly:
            return
        if r.size == PAGE_SIZE:
            self._replace(r, readonly=True)
            return
        self.memory.remove_region(r)
        off = gpa - r.gpa
        if off:
            self.memory.add_region(MemoryRegion(r.name, r.gpa, off, r.backing, r.offset, False, r.kind))
        self.memory.add_region(MemoryRegion(f"{r.name}{WP_SUFFIX}", gpa, PAGE_SIZE, r.backing, r.offset + off,
                                            True, r.kind))
        if off + PAGE_SIZE < r.size:
            rest = off + PAGE_SIZE
            self.memory.add_region(MemoryRegion(f"{r.name}+{rest:#x}", gpa + PAGE_SIZE, r.size - rest, r.backing,
                                                r.offset + rest, False, r.kind))
        r.view.release()

    def _unprotect(self, gpa: int) -> None:
        r = self.memory.region_at(gpa)
        if r is not None and r.kind == "ram" and r.readonly and r.size == PAGE_SIZE:
            self._replace(r, readonly=False)

    def _replace(self, r: MemoryRegion, *, readonly: bool) -> None:
        self.memory.remove_region(r)
        self.memory.add_region(MemoryRegion(r.name, r.gpa, r.size, r.backing, r.offset, readonly, r.kind))
        r.view.release()
