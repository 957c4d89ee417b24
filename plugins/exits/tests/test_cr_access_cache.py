"""CR access, INVD/WBINVD and XSETBV handlers.

No engine here produces these exits (unicorn has no event for MOV CR,
XSETBV, INVD or WBINVD; KVM handles them in the kernel), so each handler is
driven with the exit an engine would deliver, against a real soft vCPU.
"""

import pytest

from exits_guests import require_engine

from smartvm_core.cpu import Registers, Segment, SpecialRegisters
from smartvm_core.vmx import (CrAccessQualification, CrAccessType, ExitReason, Gpr, Vector, VmcsField)
from smartvm_exits.cache import CacheHandlers
from smartvm_exits.cr_access import CrAccessHandler


@pytest.fixture
def vcpu():
    require_engine("soft")
    from smartvm_core.engines.base import EngineOptions
    from smartvm_core.engines.soft import SoftEngine
    from smartvm_core.memory import GuestMemory
    mem = GuestMemory()
    mem.add_ram(0, 0x100000)
    engine = SoftEngine(mem, EngineOptions())
    v = engine.create_vcpu(0)
    sregs = SpecialRegisters()
    sregs.cs = Segment(selector=0x08, base=0, limit=0xFFFFFFFF, type=0xB, db=1, g=1)
    sregs.cr0 = 0x11
    v.set_sregs(sregs)
    v.set_regs(Registers(rip=0x1000))
    yield v
    engine.close()
    mem.close()


def cr_exit(v, handler, cr, kind, gpr=Gpr.RAX, lmsw=0):
    e = v.exit.reset(ExitReason.CR_ACCESS, CrAccessQualification(cr, kind, gpr, lmsw_source_data=lmsw).encode())
    e.instruction_length = 3
    assert handler.handle_cr_access(v, e)


def pending_vector(v):
    ev = v.vmcs.pending_event()
    return None if ev is None else ev.info.vector


def test_mov_to_cr0_under_mask_updates_register_and_shadow(vcpu):
    h = CrAccessHandler()
    vcpu.vmcs[VmcsField.CR0_GUEST_HOST_MASK] = 1 << 3  # the VMM owns TS
    regs = vcpu.get_regs()
    regs.rbx = 0x19  # PE | TS | ET
    vcpu.set_regs(regs)
    cr_exit(vcpu, h, 0, CrAccessType.MOV_TO_CR, Gpr.RBX)
    assert vcpu.get_sregs().cr0 & 0x19 == 0x19
    assert vcpu.vmcs[VmcsField.CR0_READ_SHADOW] == 1 << 3
    assert vcpu.get_regs().rip == 0x1003 and pending_vector(vcpu) is None
    # MOV from CR0 reads the shadow for owned bits
    vcpu.vmcs[VmcsField.CR0_READ_SHADOW] = 0
    cr_exit(vcpu, h, 0, CrAccessType.MOV_FROM_CR, Gpr.RCX)
    assert vcpu.get_regs().rcx & (1 << 3) == 0 and vcpu.get_regs().rcx & 1


def test_clts_and_lmsw(vcpu):
    h = CrAccessHandler()
    vcpu.vmcs[VmcsField.CR0_GUEST_HOST_MASK] = 0xF
    sregs = vcpu.get_sregs()
    sregs.cr0 |= 1 << 3
    vcpu.set_sregs(sregs)
    cr_exit(vcpu, h, 0, CrAccessType.CLTS)
    assert not vcpu.get_sregs().cr0 & (1 << 3)
    cr_exit(vcpu, h, 0, CrAccessType.LMSW, lmsw=0x2)  # sets MP, cannot clear PE
    assert vcpu.get_sregs().cr0 & 0x3 == 0x3


@pytest.mark.parametrize("cr, value", [
    (0, 0x8000_0010),          # PG without PE
    (0, 0x2000_0011),          # NW without CD
    (4, 1 << 13),              # VMXE: the default CPUID policy hides VMX
    (4, 1 << 18),              # OSXSAVE: XSAVE hidden
    (4, 1 << 11),              # UMIP: hidden by the default policy
    (8, 0x10),                 # CR8 is 4 bits
])
def test_invalid_writes_raise_gp(vcpu, cr, value):
    h = CrAccessHandler(frozenset({"pae", "pge", "fxsr", "sse"}), phys_bits=39)
    regs = vcpu.get_regs()
    regs.rdx = value
    vcpu.set_regs(regs)
    before = vcpu.get_sregs()
    cr_exit(vcpu, h, cr, CrAccessType.MOV_TO_CR, Gpr.RDX)
    assert pending_vector(vcpu) == Vector.GP
    assert vcpu.get_regs().rip == 0x1000  # the faulting instruction is not completed
    assert vcpu.get_sregs().cr0 == before.cr0 and vcpu.get_sregs().cr4 == before.cr4


def test_cr3_and_cr8(vcpu):
    h = CrAccessHandler()
    regs = vcpu.get_regs()
    regs.rsi = 0x5000
    vcpu.set_regs(regs)
    cr_exit(vcpu, h, 3, CrAccessType.MOV_TO_CR, Gpr.RSI)
    assert vcpu.get_sregs().cr3 == 0x5000
    cr_exit(vcpu, h, 3, CrAccessType.MOV_FROM_CR, Gpr.RDI)
    assert vcpu.get_regs().rdi == 0x5000
    assert h.counts == {"mov-to-cr3": 1, "mov-from-cr3": 1}


def test_paging_with_lme_activates_long_mode(vcpu):
    h = CrAccessHandler(frozenset({"pae"}))
    sregs = vcpu.get_sregs()
    sregs.efer, sregs.cr4, sregs.cr3 = 1 << 8, 1 << 5, 0x10000
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rax = 0x8000_0011
    vcpu.set_regs(regs)
    cr_exit(vcpu, h, 0, CrAccessType.MOV_TO_CR)
    assert vcpu.get_sregs().efer & (1 << 10)


def test_invd_wbinvd_complete_and_count(vcpu):
    c = CacheHandlers()
    for reason, handler in ((ExitReason.INVD, c.handle_invd), (ExitReason.WBINVD, c.handle_wbinvd)):
        e = vcpu.exit.reset(reason)
        e.instruction_length = 2
        assert handler(vcpu, e)
    assert (c.invd, c.wbinvd) == (1, 1) and vcpu.get_regs().rip == 0x1004


def xsetbv(vcpu, c, value, xcr=0):
    regs = vcpu.get_regs()
    regs.rcx, regs.rax, regs.rdx = xcr, value & 0xFFFFFFFF, value >> 32
    vcpu.set_regs(regs)
    e = vcpu.exit.reset(ExitReason.XSETBV)
    e.instruction_length = 3
    assert c.handle_xsetbv(vcpu, e)


def test_xsetbv_checks(vcpu):
    c = CacheHandlers(supported_xcr0=0x7)
    xsetbv(vcpu, c, 0x3)
    assert pending_vector(vcpu) == Vector.UD  # CR4.OSXSAVE = 0
    vcpu.vmcs.write(VmcsField.VM_ENTRY_INTR_INFO_FIELD, 0)
    sregs = vcpu.get_sregs()
    sregs.cr4 |= 1 << 18
    vcpu.set_sregs(sregs)
    for bad, xcr in ((0x2, 0), (0x5, 0), (0x8, 0), (0x3, 1)):
        xsetbv(vcpu, c, bad, xcr)
        assert pending_vector(vcpu) == Vector.GP, (bad, xcr)
        vcpu.vmcs.write(VmcsField.VM_ENTRY_INTR_INFO_FIELD, 0)
    xsetbv(vcpu, c, 0x7)
    assert pending_vector(vcpu) is None and c.xcr0 == {0: 0x7}
