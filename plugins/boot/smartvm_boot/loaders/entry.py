"""Entry states for loaders: the mode helpers of :mod:`smartvm_core.arch.modes`,
with their GDT and page tables placed in free RAM."""

from __future__ import annotations

from smartvm_core.arch import modes
from smartvm_core.cpu import Registers, SpecialRegisters

from ..layout import Placement, fail

GDT_PREFERRED = modes.DEFAULT_GDT_ADDR
TABLES_PREFERRED = modes.DEFAULT_PML4_ADDR


def _gdt_addr(place: Placement) -> int:
    if place.is_free(GDT_PREFERRED, modes.GDT_AREA_SIZE):
        return place.claim(GDT_PREFERRED, modes.GDT_AREA_SIZE, "the boot GDT", "gdt")
    return place.alloc(modes.GDT_AREA_SIZE, "the boot GDT", align=16)


def _tables_addr(place: Placement, size: int) -> int:
    if place.is_free(TABLES_PREFERRED, size):
        return place.claim(TABLES_PREFERRED, size, "the boot page tables", "page tables")
    return place.alloc(size, "the boot page tables", align=4096)


def enter(place: Placement, mode: str, rip: int, *, tss_base: int | None = None,
          map_gib: int = 4) -> tuple[Registers, SpecialRegisters, dict]:
    """Registers and special registers for ``mode`` at ``rip``; info names where the structures went."""
    if mode == "real":
        if not 0 <= rip < 0x100000:
            raise fail(place.image, "entry", f"real-mode entry {rip:#x} is above 1 MiB")
        cs = (rip & 0xF0000) >> 4
        regs, sregs = modes.real_mode_state(cs, rip & 0xFFFF, ds=cs)
        return regs, sregs, {"cs": cs, "ip": rip & 0xFFFF}
    gdt = _gdt_addr(place)
    if mode == "protected32":
        if rip >= 1 << 32:
            raise fail(place.image, "entry", f"32-bit entry {rip:#x} is above 4 GiB")
        regs, sregs = modes.protected_mode_state(place.memory, gdt_addr=gdt)
        info = {"gdt": gdt}
    elif mode == "long":
        size = (2 + map_gib) * 4096
        tables = _tables_addr(place, size)
        regs, sregs = modes.long_mode_state(place.memory, gdt_addr=gdt, pml4_addr=tables, map_gib=map_gib)
        info = {"gdt": gdt, "pml4": tables}
    else:
        raise fail(place.image, "mode", f"unknown CPU mode {mode!r}")
    if tss_base is not None:
        sregs.tr.base = tss_base
        place.memory.write(gdt + modes.TSS_SELECTOR, modes.encode_system_descriptor(sregs.tr))
    regs.rip = rip
    return regs, sregs, info
