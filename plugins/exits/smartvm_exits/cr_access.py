"""``handle_cr_access``: MOV to/from CR0, CR3, CR4, CR8, CLTS and LMSW.

These exit on the ``soft`` engine under the VMCS controls (SDM Vol. 3,
26.1.3): MOV to CR0/CR4 when the new value differs from the read shadow in
a bit the guest/host mask owns, CLTS and LMSW likewise, MOV to/from CR3 with
CR3-load/-store exiting, MOV to/from CR8 with CR8-load/-store exiting.

The standard handler emulates the instruction as the CPU would: it checks
the new value (#GP(0) for reserved bits, PG without PE, NW without CD,
clearing PAE in IA-32e mode, turning on paging with LME but without PAE, a
CR4 bit whose feature the CPUID policy hides), updates IA32_EFER.LMA when
paging turns on or off with LME set, writes the register, and keeps the read
shadow equal to what the guest wrote for the owned bits, so the guest reads
back what it wrote. MOV from CR0/CR4 (which never exits on hardware) returns
the shadowed value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smartvm_core.cpu import (CR0_CD, CR0_ET, CR0_NW, CR0_PE, CR0_PG, CR0_TS, CR4_PAE, EFER_LMA,
                              EFER_LME, GPR_NAMES, cpu_mode)
from smartvm_core.vmx import Vector, VmcsField, cr_read_value

from .cache import inject_exception

if TYPE_CHECKING:
    from smartvm_core.engines.base import EngineVcpu
    from smartvm_core.exit import VmExit

#: CR0 bits that exist (PE MP EM TS ET NE WP AM NW CD PG)
CR0_DEFINED = 0x0000_003F | 1 << 16 | 1 << 18 | 1 << 29 | 1 << 30 | 1 << 31
#: CR4 bit → the CPUID feature it needs ("" = always available)
CR4_BITS: dict[int, str] = {
    0: "vme", 1: "vme", 2: "tsc", 3: "de", 4: "pse", 5: "pae", 6: "mce", 7: "pge",
    8: "", 9: "fxsr", 10: "sse", 11: "umip", 13: "vmx", 16: "fsgsbase", 17: "pcid",
    18: "xsave", 20: "smep", 21: "smap", 22: "pku",
}


def cr4_allowed(features: frozenset[str]) -> int:
    """The CR4 bits a guest may set under a CPUID policy with ``features``."""
    mask = 0
    for bit, feature in CR4_BITS.items():
        if not feature or feature in features:
            mask |= 1 << bit
    return mask


class CrAccessHandler:
    def __init__(self, features: frozenset[str] = frozenset(), phys_bits: int = 39) -> None:
        self.cr4_allowed = cr4_allowed(features)
        self.cr3_reserved = ((1 << 64) - 1) & ~((1 << phys_bits) - 1)
        self.counts: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def handle_cr_access(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        # imported here, not at start-up: a run whose guest never makes a CR-access
        # exit (any run on kvm) does not build the decoder classes
        from smartvm_core.vmx.exit_info import CrAccessQualification, CrAccessType
        try:
            q = CrAccessQualification.decode(exit.qualification, strict=False)
        except ValueError:
            return False  # not a qualification the SDM defines: leave it to the report
        regs = vcpu.get_regs()
        sregs = vcpu.get_sregs()
        long_mode = cpu_mode(sregs, regs.rflags) == "long"
        vmcs = vcpu.vmcs
        kind = q.access_type
        if kind is CrAccessType.MOV_FROM_CR:
            self._count(f"mov-from-cr{q.cr}")
            if q.cr == 0:
                value = cr_read_value(vmcs[VmcsField.CR0_GUEST_HOST_MASK], vmcs[VmcsField.CR0_READ_SHADOW], sregs.cr0)
            elif q.cr == 4:
                value = cr_read_value(vmcs[VmcsField.CR4_GUEST_HOST_MASK], vmcs[VmcsField.CR4_READ_SHADOW], sregs.cr4)
            elif q.cr == 3:
                value = sregs.cr3
            elif q.cr == 8:
                value = sregs.cr8
            else:
                inject_exception(vcpu, Vector.UD)
                return True
            if not long_mode:
                value &= 0xFFFF_FFFF
            setattr(regs, GPR_NAMES[q.gpr], value)
            vcpu.set_regs(regs)
            vcpu.skip_instruction()
            return True
        if kind is CrAccessType.MOV_TO_CR:
            self._count(f"mov-to-cr{q.cr}")
            value = getattr(regs, GPR_NAMES[q.gpr])
            if not long_mode:
                value &= 0xFFFF_FFFF
            ok = {0: self._write_cr0, 3: self._write_cr3, 4: self._write_cr4, 8: self._write_cr8}.get(q.cr)
            if ok is None:
                inject_exception(vcpu, Vector.UD)
                return True
            if not ok(vcpu, sregs, value):
                inject_exception(vcpu, Vector.GP)
                return True
            vcpu.skip_instruction()
            return True
        if kind is CrAccessType.CLTS:
            self._count("clts")
            self._write_cr0(vcpu, sregs, sregs.cr0 & ~CR0_TS,
                            shadow=vmcs[VmcsField.CR0_READ_SHADOW] & ~CR0_TS)
            vcpu.skip_instruction()
            return True
        # LMSW: loads PE, MP, EM, TS; cannot clear PE
        self._count("lmsw")
        src = q.lmsw_source_data & 0xF
        cr0 = sregs.cr0
        self._write_cr0(vcpu, sregs, (cr0 & ~0xF) | src | (cr0 & CR0_PE))
        vcpu.skip_instruction()
        return True

    # -- writes (return False for #GP) -----------------------------------------
    def _write_cr0(self, vcpu: "EngineVcpu", sregs, value: int, shadow: int | None = None) -> bool:
        if value >> 32 or (value & CR0_PG and not value & CR0_PE) or (value & CR0_NW and not value & CR0_CD):
            return False
        value |= CR0_ET  # hardwired to 1 since the i486
        old = sregs.cr0
        if value & CR0_PG and not old & CR0_PG and sregs.efer & EFER_LME:
            if not sregs.cr4 & CR4_PAE or sregs.cs.l:
                return False
            sregs.efer |= EFER_LMA
        elif not value & CR0_PG and old & CR0_PG and sregs.efer & EFER_LMA:
            if sregs.cs.l:
                return False  # SDM: clearing PG in 64-bit code is #GP
            sregs.efer &= ~EFER_LMA
        sregs.cr0 = value & CR0_DEFINED
        vcpu.set_sregs(sregs)
        mask = vcpu.vmcs[VmcsField.CR0_GUEST_HOST_MASK]
        if mask:
            vcpu.vmcs[VmcsField.CR0_READ_SHADOW] = (value if shadow is None else shadow) & mask
        return True

    def _write_cr4(self, vcpu: "EngineVcpu", sregs, value: int) -> bool:
        if value & ~self.cr4_allowed:
            return False
        if sregs.efer & EFER_LMA and not value & CR4_PAE:
            return False
        sregs.cr4 = value
        vcpu.set_sregs(sregs)
        mask = vcpu.vmcs[VmcsField.CR4_GUEST_HOST_MASK]
        if mask:
            vcpu.vmcs[VmcsField.CR4_READ_SHADOW] = value & mask
        return True

    def _write_cr3(self, vcpu: "EngineVcpu", sregs, value: int) -> bool:
        if value & self.cr3_reserved:
            return False
        sregs.cr3 = value
        vcpu.set_sregs(sregs)
        return True

    def _write_cr8(self, vcpu: "EngineVcpu", sregs, value: int) -> bool:
        if value & ~0xF:
            return False
        sregs.cr8 = value
        vcpu.set_sregs(sregs)
        return True
