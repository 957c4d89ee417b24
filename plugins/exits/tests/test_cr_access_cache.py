"""CR access, INVD/WBINVD and XSETBV handlers.

KVM handles these in the kernel; the soft engine produces the exits. Each
handler is first driven with the exit an engine delivers, against a real
soft vCPU (every qualification case), then with guests on soft.
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


def test_cr_access_from_a_guest_under_the_cr0_mask_and_cr3_load_exiting():
    """A real guest's MOV CR0, CLTS and MOV CR3 exit on soft and the standard handler emulates them."""
    require_engine("soft")
    from exits_guests import guest, machine_for

    m = machine_for(guest("cr16"), "soft", extra={"vmx": {"cr0_guest_host_mask": 0x0A, "cr0_read_shadow": 0,
                                                          "proc_based": ["CR3_LOAD_EXITING"]}})
    try:
        stop = m.run()
        regs = m.vcpus[0].get_regs()
        sregs = m.vcpus[0].get_sregs()
        counts = m.exit_counts()
        handler_counts = dict(m.services["exits"].cr.counts)
    finally:
        m.close()
    assert stop.kind == "halted", stop
    start = regs.rsi & 0xFFFFFFFF
    assert regs.rbx & 0x0A == 0x0A                   # the guest reads back what it wrote
    assert regs.rcx & 0x0A == 0x02                   # CLTS cleared TS only
    assert (regs.rcx & ~0x0A) & 0xFFFFFFFF == start & ~0x0A & 0xFFFFFFFF
    assert regs.rdx & 0xFFFFFFFF == 0x5000 and sregs.cr3 == 0x5000
    assert sregs.cr0 & 0x0A == 0x02                  # the real CR0 follows the emulation
    assert counts["CR_ACCESS"] == 3, counts
    assert sum(handler_counts.values()) == 3, handler_counts


def test_invd_and_wbinvd_from_a_guest():
    require_engine("soft")
    from exits_guests import guest, machine_for

    m = machine_for(guest("cache16"), "soft", extra={"vmx": {"proc_based2": ["WBINVD_EXITING"]}})
    try:
        stop = m.run()
        regs = m.vcpus[0].get_regs()
        counts = m.exit_counts()
    finally:
        m.close()
    assert stop.kind == "halted", stop
    assert regs.rax & 0xFFFF == 2                  # both completed (skipped by their handlers)
    assert counts.get("INVD") == 1 and counts.get("WBINVD") == 1, counts
