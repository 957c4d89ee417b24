"""``handle_invd``, ``handle_wbinvd``, ``handle_xsetbv``.

The VMM models no caches, so INVD and WBINVD (WBNOINVD) only complete; they
are counted. XSETBV loads XCR0 after the SDM's checks (Vol. 2C, XSETBV):
#UD unless CR4.OSXSAVE = 1; #GP(0) for an XCR other than 0, for CPL > 0, for
bits the CPUID policy does not offer, with bit 0 (x87) clear, or AVX without
SSE. The value is kept per vCPU for CPUID.(0DH,0):EBX and for snapshots, and
handed to the engine (``vcpu.set_xcr0``) where it has one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smartvm_core.cpu import CR4_OSXSAVE
from smartvm_core.vmx import EntryInterruptionInfo, EventInjection, Vector

from .cpuid import XCR0_AVX, XCR0_SSE, XCR0_X87

if TYPE_CHECKING:
    from smartvm_core.engines.base import EngineVcpu
    from smartvm_core.exit import VmExit


def inject_exception(vcpu: "EngineVcpu", vector: Vector) -> None:
    """Raise a hardware exception in the guest on the next entry (error code 0 where it has one)."""
    vcpu.inject_event(EventInjection(EntryInterruptionInfo.hardware_exception(vector), error_code=0))


class CacheHandlers:
    def __init__(self, supported_xcr0: int = XCR0_X87) -> None:
        self.invd = 0
        self.wbinvd = 0
        self.supported_xcr0 = supported_xcr0
        #: vCPU index → XCR0 (x87 only at reset)
        self.xcr0: dict[int, int] = {}

    def handle_invd(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        self.invd += 1
        vcpu.skip_instruction()
        return True

    def handle_wbinvd(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        self.wbinvd += 1
        vcpu.skip_instruction()
        return True

    def handle_xsetbv(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        sregs = vcpu.get_sregs()
        if not sregs.cr4 & CR4_OSXSAVE:
            inject_exception(vcpu, Vector.UD)
            return True
        regs = vcpu.get_regs()
        xcr, value = regs.rcx & 0xFFFF_FFFF, (regs.rdx & 0xFFFF_FFFF) << 32 | regs.rax & 0xFFFF_FFFF
        cpl = sregs.cs.dpl if sregs.cr0 & 1 else 0
        if (xcr != 0 or cpl != 0 or value & ~self.supported_xcr0 or not value & XCR0_X87
                or (value & XCR0_AVX and not value & XCR0_SSE)):
            inject_exception(vcpu, Vector.GP)
            return True
        self.xcr0[vcpu.index] = value
        set_xcr0 = getattr(vcpu, "set_xcr0", None)
        if set_xcr0 is not None:
            set_xcr0(value)
        vcpu.skip_instruction()
        return True
