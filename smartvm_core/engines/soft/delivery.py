"""Event delivery as the CPU does it: IVT in real mode, IDT in protected and long mode.

Used for exceptions the exception bitmap lets through and for events injected
through the VM-entry interruption-information field. A fault raised while
delivering is reported as :class:`DeliveryFault`; the caller forms the double
fault (and from a failing double fault the triple fault) per SDM Vol. 3,
Table 6-5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...cpu import CR0_PE, CR0_PG, CR4_PAE, CR4_PSE, EFER_LMA, RFLAGS_IF, RFLAGS_NT, RFLAGS_RF, RFLAGS_TF, RFLAGS_VM
from ...errors import GuestMemoryError
from .ucstate import DESC_B, DESC_L, HF_ADDSEG, HF_CPL_MASK, HF_CS32, HF_CS64, HF_INHIBIT_IRQ, HF_LMA, HF_PE, HF_SS32, Blob

if TYPE_CHECKING:
    from ...memory import GuestMemory

RFLAGS_AC = 1 << 18
#: contributory exceptions (SDM Table 6-4)
CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})


class DeliveryFault(Exception):
    """An exception raised while delivering an event (vector, error code)."""

    def __init__(self, vector: int, error_code: int = 0, cr2: int | None = None) -> None:
        super().__init__(vector, error_code)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


def is_double_fault(first: int, second: int) -> bool:
    """SDM Table 6-5: does ``second``, raised while delivering ``first``, make a #DF?"""
    if first in CONTRIBUTORY and second in CONTRIBUTORY:
        return True
    return first == 14 and (second == 14 or second in CONTRIBUTORY)


# --- paging ------------------------------------------------------------------

def translate(mem: "GuestMemory", cr0: int, cr3: int, cr4: int, efer: int, linear: int,
              write: bool = False, user: bool = False) -> int:
    """Walk the guest page tables; raises DeliveryFault(#PF) when not present."""
    if not cr0 & CR0_PG:
        return linear & (0xFFFFFFFFFFFFFFFF if efer & EFER_LMA else 0xFFFFFFFF)

    def fault() -> DeliveryFault:
        return DeliveryFault(14, (1 << 1 if write else 0) | (1 << 2 if user else 0), cr2=linear)

    def entry(addr: int, size: int) -> int:
        try:
            return mem.read_u64(addr) if size == 8 else mem.read_u32(addr)
        except GuestMemoryError:
            raise fault() from None

    if efer & EFER_LMA or cr4 & CR4_PAE:
        if efer & EFER_LMA:
            levels = [(39, cr3 & 0x000FFFFFFFFFF000)]
            shifts = (39, 30, 21, 12)
        else:
            pdpte = entry((cr3 & 0xFFFFFFE0) + ((linear >> 30) & 3) * 8, 8)
            if not pdpte & 1:
                raise fault()
            levels = [(21, pdpte & 0x000FFFFFFFFFF000)]
            shifts = (21, 12)
        table = levels[0][1]
        for shift in shifts:
            e = entry(table + ((linear >> shift) & 0x1FF) * 8, 8)
            if not e & 1:
                raise fault()
            if shift == 12 or (shift in (21, 30) and e & 0x80):
                mask = (1 << shift) - 1
                return (e & 0x000FFFFFFFFFF000 & ~mask) | (linear & mask)
            table = e & 0x000FFFFFFFFFF000
        raise fault()
    pde = entry((cr3 & 0xFFFFF000) + ((linear >> 22) & 0x3FF) * 4, 4)
    if not pde & 1:
        raise fault()
    if pde & 0x80 and cr4 & CR4_PSE:
        return (pde & 0xFFC00000) | (linear & 0x3FFFFF)
    pte = entry((pde & 0xFFFFF000) + ((linear >> 12) & 0x3FF) * 4, 4)
    if not pte & 1:
        raise fault()
    return (pte & 0xFFFFF000) | (linear & 0xFFF)


class Cpu:
    """The register view delivery works on (read from unicorn, written back by the caller)."""

    def __init__(self, mem: "GuestMemory", blob: Blob, rip: int, rsp: int, rflags: int,
                 cr0: int, cr3: int, cr4: int, efer: int) -> None:
        self.mem, self.blob = mem, blob
        self.rip, self.rsp, self.rflags = rip, rsp, rflags
        self.cr0, self.cr3, self.cr4, self.efer = cr0, cr3, cr4, efer

    def phys(self, linear: int, write: bool = False) -> int:
        return translate(self.mem, self.cr0, self.cr3, self.cr4, self.efer, linear, write)

    def read(self, linear: int, size: int, fault: tuple[int, int] = (13, 0)) -> int:
        try:
            data = b"".join(self.mem.read(self.phys(linear + i), 1) for i in range(size)) \
                if (linear & 0xFFF) + size > 0x1000 else self.mem.read(self.phys(linear), size)
        except GuestMemoryError:
            raise DeliveryFault(*fault) from None
        return int.from_bytes(data, "little")

    def write(self, linear: int, size: int, value: int, fault: tuple[int, int] = (12, 0)) -> None:
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        try:
            for i in range(size):
                if i == 0 or (linear + i) & 0xFFF == 0:
                    pa = self.phys(linear + i, True)
                    run = min(size - i, 0x1000 - ((linear + i) & 0xFFF))
                    self.mem.guest_write(pa, data[i:i + run])
        except GuestMemoryError:
            raise DeliveryFault(*fault) from None

    # segments ------------------------------------------------------------
    def descriptor(self, selector: int, vector_err: int) -> tuple[int, int, int]:
        """(base, limit, flags) of a GDT/LDT descriptor; #GP(selector) if outside the table."""
        if selector & 4:
            _, tbase, tlimit, _ = self.blob.seg("ldt")
        else:
            tbase, tlimit = self.blob.u64(self.blob.lay.gdt + 8), self.blob.u32(self.blob.lay.gdt + 16)
        index = selector & ~7
        if selector & ~3 == 0 or index + 7 > tlimit:
            raise DeliveryFault(13, (selector & ~3) | vector_err)
        lo = self.read(tbase + index, 4)
        hi = self.read(tbase + index + 4, 4)
        base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0xF0000)
        if hi & (1 << 23):
            limit = (limit << 12) | 0xFFF
        if self.efer & EFER_LMA and not hi & (1 << 12):  # system descriptors are 16 bytes
            base |= self.read(tbase + index + 8, 4) << 32
        if not hi & (1 << 15):
            raise DeliveryFault(11, (selector & ~3) | vector_err)
        return base, limit, hi & 0x00FFFF00


def fix_hflags(blob: Blob, rflags: int) -> None:
    """Recompute the hflags bits that follow from CR0, EFER and the CS/SS caches."""
    lay = blob.lay
    h = blob.u32(lay.hflags)
    cr0 = blob.u64(lay.cr)
    efer = blob.u64(lay.efer)
    _, _, _, csf = blob.seg("cs")
    _, ssbase, _, ssf = blob.seg("ss")
    h &= ~(HF_CPL_MASK | HF_CS32 | HF_SS32 | HF_CS64 | HF_ADDSEG | HF_PE | HF_LMA)
    if cr0 & CR0_PE:
        h |= HF_PE
    if efer & EFER_LMA:
        h |= HF_LMA
    if efer & EFER_LMA and csf & DESC_L:
        h |= HF_CS32 | HF_SS32 | HF_CS64
    else:
        if csf & DESC_B:
            h |= HF_CS32
        if ssf & DESC_B:
            h |= HF_SS32
    if not cr0 & CR0_PE:
        cpl = 0
    elif rflags & RFLAGS_VM:
        cpl = 3
    else:
        cpl = (ssf >> 13) & 3
    h |= cpl
    if not h & HF_CS64:
        if not cr0 & CR0_PE or rflags & RFLAGS_VM or not h & HF_CS32:
            h |= HF_ADDSEG
        elif blob.seg("ds")[1] | blob.seg("es")[1] | ssbase:
            h |= HF_ADDSEG
    blob.put32(lay.hflags, h)


def clear_shadow(blob: Blob) -> None:
    blob.put32(blob.lay.hflags, blob.u32(blob.lay.hflags) & ~HF_INHIBIT_IRQ)


def deliver(cpu: Cpu, vector: int, *, error_code: int | None, software: bool, return_rip: int) -> None:
    """Deliver one event; updates ``cpu`` (rip, rsp, rflags) and the blob's segments.

    ``error_code`` is pushed when not None; ``software`` marks INT n/INT3/INTO
    (gate DPL checked against CPL); ``return_rip`` is the RIP pushed.
    """
    blob = cpu.blob
    ext = 0 if software else 1
    if not cpu.cr0 & CR0_PE:
        _deliver_real(cpu, vector, return_rip)
        return
    idt_base, idt_limit = blob.u64(blob.lay.idt + 8), blob.u32(blob.lay.idt + 16)
    long_mode = bool(cpu.efer & EFER_LMA)
    gsize = 16 if long_mode else 8
    idt_err = vector * 8 + 2 + ext
    if vector * gsize + gsize - 1 > idt_limit:
        raise DeliveryFault(13, idt_err)
    lo = cpu.read(idt_base + vector * gsize, 4)
    hi = cpu.read(idt_base + vector * gsize + 4, 4)
    gtype = (hi >> 8) & 0x1F
    gate_dpl = (hi >> 13) & 3
    selector = lo >> 16
    offset = (lo & 0xFFFF) | (hi & 0xFFFF0000)
    if long_mode:
        offset |= cpu.read(idt_base + vector * gsize + 8, 4) << 32
        if gtype not in (0xE, 0xF):
            raise DeliveryFault(13, idt_err)
    elif gtype not in (0x6, 0x7, 0xE, 0xF):
        raise DeliveryFault(13, idt_err)  # task gates are not modelled
    sel_cs, _, _, csf = blob.seg("cs")
    vm86 = bool(cpu.rflags & RFLAGS_VM)
    cpl = 3 if vm86 else (blob.seg("ss")[3] >> 13) & 3
    if software and gate_dpl < cpl:
        raise DeliveryFault(13, idt_err)
    if not hi & (1 << 15):
        raise DeliveryFault(11, idt_err)
    cbase, climit, cflags = cpu.descriptor(selector, ext)
    if not cflags & (1 << 11) or not cflags & (1 << 12):  # must be a code segment
        raise DeliveryFault(13, (selector & ~3) | ext)
    dpl = (cflags >> 13) & 3
    conforming = bool(cflags & (1 << 10))
    new_cpl = cpl if conforming or dpl >= cpl else dpl
    if vm86 and new_cpl != 0:
        raise DeliveryFault(13, (selector & ~3) | ext)
    gate32 = bool(gtype & 8)
    old_ss = blob.seg("ss")
    old_rsp = cpu.rsp
    ist = hi & 7 if long_mode else 0
    tr_base = blob.seg("tr")[1]
    if long_mode:
        if ist:
            rsp = cpu.read(tr_base + 0x24 + 8 * (ist - 1), 8, (10, 0))
        elif new_cpl != cpl:
            rsp = cpu.read(tr_base + 4 + 8 * new_cpl, 8, (10, 0))
        else:
            rsp = cpu.rsp
        rsp &= ~0xF
        frame = [old_ss[0], old_rsp, cpu.rflags, sel_cs, return_rip]
        if error_code is not None:
            frame.append(error_code)
        for value in frame:
            rsp -= 8
            cpu.write(rsp, 8, value)
        if new_cpl != cpl:
            blob.put_seg("ss", new_cpl, 0, 0, 0)  # null SS with RPL = new CPL
        cpu.rsp = rsp
    else:
        word = 4 if gate32 else 2
        if new_cpl != cpl:
            ss_sel = cpu.read(tr_base + 8 + 8 * new_cpl, 2, (10, 0))
            esp = cpu.read(tr_base + 4 + 8 * new_cpl, 4, (10, 0))
            sbase, slimit, sflags = cpu.descriptor(ss_sel, ext)
            frame = []
            if vm86:
                frame += [blob.seg(s)[0] for s in ("gs", "fs", "ds", "es")]
            frame += [old_ss[0], old_rsp]
        else:
            ss_sel, sbase, slimit, sflags = old_ss[0], old_ss[1], old_ss[2], old_ss[3]
            esp = cpu.rsp
            frame = []
        frame += [cpu.rflags, sel_cs, return_rip]
        if error_code is not None:
            frame.append(error_code)
        mask = 0xFFFFFFFF if sflags & DESC_B else 0xFFFF
        for value in frame:
            esp = (esp - word) & mask
            cpu.write(sbase + esp, word, value)
        if new_cpl != cpl:
            blob.put_seg("ss", (ss_sel & ~3) | new_cpl, sbase, slimit, sflags)
            if vm86:
                for s in ("gs", "fs", "ds", "es"):
                    blob.put_seg(s, 0, 0, 0, 0)
        cpu.rsp = (cpu.rsp & ~mask) | esp if new_cpl == cpl else esp
    blob.put_seg("cs", (selector & ~3) | new_cpl, cbase, climit, cflags)
    cpu.rip = offset if long_mode or gate32 else offset & 0xFFFF
    cpu.rflags &= ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM)
    if not gtype & 1:  # interrupt gate
        cpu.rflags &= ~RFLAGS_IF


def _deliver_real(cpu: Cpu, vector: int, return_rip: int) -> None:
    blob = cpu.blob
    idt_base, idt_limit = blob.u64(blob.lay.idt + 8), blob.u32(blob.lay.idt + 16)
    if vector * 4 + 3 > idt_limit:
        raise DeliveryFault(13, 0)
    entry = cpu.read(idt_base + vector * 4, 4)
    ss_sel, ss_base, ss_limit, ss_flags = blob.seg("ss")
    sp = cpu.rsp & 0xFFFF
    for value in (cpu.rflags, blob.seg("cs")[0], return_rip):
        sp = (sp - 2) & 0xFFFF
        cpu.write(ss_base + sp, 2, value)
    cpu.rsp = (cpu.rsp & ~0xFFFF) | sp
    cs = entry >> 16
    _, _, _, csf = blob.seg("cs")
    blob.put_seg("cs", cs, cs << 4, 0xFFFF, csf & ~(DESC_B | DESC_L))
    cpu.rip = entry & 0xFFFF
    cpu.rflags &= ~(RFLAGS_IF | RFLAGS_TF | RFLAGS_AC)
