"""The MSR store: architectural MSRs, #GP for what nobody implements, plugin MSRs.

Guest tests run where the engine produces RDMSR/WRMSR exits (kvm, through
the MSR filter); the soft engine has none (unicorn offers no RDMSR/WRMSR
hook), so there the handlers are driven with the exit an engine would
deliver, against a real soft vCPU.
"""

import struct

import pytest

from exits_guests import guest, machine_for, require_engine

from smartvm_core import hookimpl
from smartvm_core.cpu import Segment, SpecialRegisters
from smartvm_core.errors import PluginError, SnapshotError
from smartvm_core.vmx import ExitReason
from smartvm_exits.msr import (IA32_EFER, IA32_LSTAR, IA32_MISC_ENABLE, IA32_MTRR_DEF_TYPE, IA32_MTRRCAP,
                               IA32_PAT, Msr, MsrFault, MsrHandlers, MsrStore, architectural_msrs)

PLUGIN_MSR = 0x1FF0  # inside the low MSR-bitmap range, so the kvm engine can filter it


class PlusOneMsr:
    """A third-party MSR: reads give the value last written plus one."""

    @hookimpl
    def register_msrs(self, register, machine):
        register(Msr(PLUGIN_MSR, "LAB_COUNTER", reset=0, read=lambda vcpu, stored: stored + 1))


def run_msr_guest(engine, plugins=()):
    m = machine_for(guest("msr16", {"PLUGIN_MSR": PLUGIN_MSR}), engine, plugins=plugins)
    try:
        stop = m.run()
        assert (stop.kind, stop.exit_code) == ("exit-code", 0), stop
        data = m.console.data()
        return [struct.unpack_from("<2IL", data, i) for i in range(0, len(data), 12)], m.exit_counts()
    finally:
        m.close()


def test_hook_register_msrs():
    """On kvm the guest's accesses reach the store through the MSR filter (the only engine with MSR exits)."""
    require_engine("kvm")
    rows, counts = run_msr_guest("kvm", plugins=[("counter", PlusOneMsr())])
    # (low, high, #GP count so far) per step of guests/exits/msr16.asm
    assert rows == [
        (0x508, 0, 0),        # MTRRcap
        (0x1800, 0, 0),       # MISC_ENABLE at reset
        (0xC06, 0, 0),        # MTRRdefType written and read back
        (0xC06, 0, 1),        # invalid memory type: #GP, value kept
        (0, 0, 2),            # unknown MSR read: #GP
        (0, 0, 3),            # unknown MSR write: #GP
        (0, 0, 4),            # MTRRcap is read-only: #GP
        (0x80006, 0, 4),      # variable MTRR
        (42, 0, 4),           # the plugin's MSR: 41 written, read + 1
    ]
    assert counts["RDMSR"] >= 5 and counts["WRMSR"] >= 4


def test_plugin_msr_registration_is_checked():
    store = MsrStore(architectural_msrs())
    with pytest.raises(PluginError, match="already defined by exits as IA32_EFER"):
        store.define(Msr(IA32_EFER, "MY_EFER"), plugin="p")
    store.define(Msr(IA32_EFER, "MY_EFER"), plugin="p", replace=True)
    assert store.owner[IA32_EFER] == "p"
    with pytest.raises(PluginError, match="expects an Msr"):
        store.define(0x10, plugin="p")


@pytest.fixture
def soft_vcpu():
    require_engine("soft")
    from smartvm_core.engines.base import EngineOptions
    from smartvm_core.engines.soft import SoftEngine
    from smartvm_core.memory import GuestMemory
    mem = GuestMemory()
    mem.add_ram(0, 0x100000)
    engine = SoftEngine(mem, EngineOptions())
    vcpu = engine.create_vcpu(0)
    sregs = SpecialRegisters()
    sregs.cs = Segment(selector=0x08, base=0, limit=0xFFFFFFFF, type=0xB, db=1, g=1)
    sregs.cr0 = 0x11
    vcpu.set_sregs(sregs)
    yield vcpu
    engine.close()
    mem.close()


def access(handlers, vcpu, reason, msr, value=0):
    e = vcpu.exit.reset(reason)
    e.msr, e.value, e.instruction_length = msr, value, 2
    assert (handlers.handle_rdmsr if reason == ExitReason.RDMSR else handlers.handle_wrmsr)(vcpu, e)
    return e


def test_architectural_msrs_through_the_handlers(soft_vcpu):
    store = MsrStore(architectural_msrs(features={"syscall", "lm", "nx"}))
    h = MsrHandlers(store)
    v = soft_vcpu
    assert access(h, v, ExitReason.RDMSR, IA32_MTRRCAP).value == 0x508
    assert access(h, v, ExitReason.RDMSR, IA32_PAT).value == 0x0007040600070406
    # EFER lives in the engine: the write shows in the vCPU's special registers
    e = access(h, v, ExitReason.WRMSR, IA32_EFER, 0x801)
    assert not e.fault and v.get_sregs().efer & 0x801 == 0x801
    assert access(h, v, ExitReason.RDMSR, IA32_EFER).value & 0x801 == 0x801
    # reserved EFER bit, non-canonical LSTAR, invalid PAT type, MISC_ENABLE read-only bit: #GP
    assert access(h, v, ExitReason.WRMSR, IA32_EFER, 1 << 3).fault
    assert access(h, v, ExitReason.WRMSR, IA32_LSTAR, 0x0000_8000_0000_0000).fault
    assert not access(h, v, ExitReason.WRMSR, IA32_LSTAR, 0xFFFF_8000_0000_1000).fault
    assert access(h, v, ExitReason.RDMSR, IA32_LSTAR).value == 0xFFFF_8000_0000_1000
    assert access(h, v, ExitReason.WRMSR, IA32_PAT, 0x0007040600070402).fault
    assert access(h, v, ExitReason.WRMSR, IA32_MISC_ENABLE, 0).fault
    assert not access(h, v, ExitReason.WRMSR, IA32_MISC_ENABLE, 0x1801).fault
    assert access(h, v, ExitReason.RDMSR, IA32_MISC_ENABLE).value == 0x1801
    # nobody implements it: #GP on both accesses, recorded for the report
    assert access(h, v, ExitReason.RDMSR, 0x4B564D99).fault
    assert access(h, v, ExitReason.WRMSR, 0x4B564D99, 1).fault
    assert h.faults[-2:] == [(0, "rdmsr", 0x4B564D99), (0, "wrmsr", 0x4B564D99)]


def test_efer_lme_cannot_change_with_paging_on(soft_vcpu):
    store = MsrStore(architectural_msrs(features={"lm"}))
    sregs = soft_vcpu.get_sregs()
    sregs.cr0 |= 1 << 31
    sregs.cr4 |= 1 << 5
    soft_vcpu.set_sregs(sregs)
    with pytest.raises(MsrFault, match="LME"):
        store.write(soft_vcpu, IA32_EFER, 1 << 8)


def test_store_state_round_trip(soft_vcpu):
    store = MsrStore(architectural_msrs())
    store.write(soft_vcpu, IA32_MTRR_DEF_TYPE, 0xC06)
    other = MsrStore(architectural_msrs())
    other.restore(store.state())
    assert other.read(soft_vcpu, IA32_MTRR_DEF_TYPE) == 0xC06
    store.reset()
    assert store.read(soft_vcpu, IA32_MTRR_DEF_TYPE) == 0
    with pytest.raises(SnapshotError, match="0x4b564d99"):
        other.restore({"values": {"0": {"0x4b564d99": 1}}})
