"""Each translated KVM exit kind, produced by a real guest on this host's KVM."""

from __future__ import annotations

import pytest

from smartvm_core.errors import EngineError
from smartvm_core.vmx import (EptViolationQualification, ExitInterruptionInfo, ExitReason, InterruptionType,
                              IoQualification, Vector)
from smartvm_core.engines.kvm.exits import KvmInternalError


def test_io_mmio_hlt_sequence(rig):
    vcpu = rig.load_real("kvm/exits16")
    seen = []

    e = vcpu.run()
    assert (e.reason, e.port, e.size, e.is_in, e.value) == (ExitReason.IO_INSTRUCTION, 0x80, 1, False, 0x42)
    q = IoQualification.decode(e.qualification)
    assert (q.port, q.size, q.direction_in, q.string) == (0x80, 1, False, False)

    e = vcpu.run()
    assert (e.reason, e.port, e.size, e.is_in) == (ExitReason.IO_INSTRUCTION, 0x81, 1, True)
    assert IoQualification.decode(e.qualification).direction_in
    e.value = 0x1A7  # wider than the access: only the low byte reaches the guest

    e = vcpu.run()
    assert (e.port, e.size, e.is_in, e.value) == (0x1234, 2, False, 0xBEEF)
    e = vcpu.run()
    assert (e.port, e.size, e.is_in) == (0x1234, 4, True)
    e.value = 0xDEADBEEF

    # string OUT: KVM may split a REP into several exits; collect the bytes
    out = bytearray()
    while len(out) < 4:
        e = vcpu.run()
        assert (e.reason, e.port, e.is_in) == (ExitReason.IO_INSTRUCTION, 0x90, False)
        out += e.data if e.data is not None else bytes([e.value])
        seen.append(e.count)
    assert bytes(out) == b"ABCD"

    got = 0
    feed = b"xyz"
    while got < 3:
        e = vcpu.run()
        assert (e.reason, e.port, e.is_in, e.size) == (ExitReason.IO_INSTRUCTION, 0x91, True, 1)
        if e.data is not None:
            q = IoQualification.decode(e.qualification)
            assert q.string and q.rep
            e.data[:] = feed[got:got + e.count]
            got += e.count
        else:
            e.value = feed[got]
            got += 1

    e = vcpu.run()
    assert e.reason == ExitReason.EPT_VIOLATION
    assert (e.guest_physical_address, e.size, e.is_write, e.value) == (0xE0010, 4, True, 0xCAFEF00D)
    q = EptViolationQualification.decode(e.qualification)
    assert q.write and not q.read and not (q.readable or q.writable)

    e = vcpu.run()
    assert (e.reason, e.guest_physical_address, e.size, e.is_write) == (ExitReason.EPT_VIOLATION, 0xE0020, 4, False)
    assert EptViolationQualification.decode(e.qualification).read
    e.value = 0x87654321
    e = vcpu.run()
    assert (e.guest_physical_address, e.size, e.is_write) == (0xE0021, 1, False)
    e.value = 0x5A

    e = vcpu.run()
    assert e.reason == ExitReason.HLT
    vcpu.skip_instruction()  # no-op: KVM already moved RIP past HLT
    e = vcpu.run()
    assert (e.reason, e.port, e.value) == (ExitReason.IO_INSTRUCTION, 0x82, 0x99)

    mem = rig.memory
    assert mem.read_u8(0x600) == 0xA7
    assert mem.read_u32(0x604) == 0xDEADBEEF
    assert mem.read(0x610, 3) == b"xyz"
    assert mem.read_u32(0x608) == 0x87654321
    assert mem.read_u8(0x60C) == 0x5A


def test_shutdown_is_triple_fault(rig):
    vcpu = rig.load_protected("kvm/triple32")
    assert vcpu.run().port == 0x80
    e = vcpu.run()
    assert e.reason == ExitReason.TRIPLE_FAULT
    assert e.detail["kvm_exit"] == "KVM_EXIT_SHUTDOWN"


def test_msr_exits_through_filter(rig):
    msr = 0x4B564D77
    if not rig.engine.caps.get("X86_MSR_FILTER"):
        pytest.skip("this host's KVM has no MSR filter")
    rig.engine.set_msr_intercepts(read=[msr], write=[msr])
    vcpu = rig.load_real("kvm/msr16")
    e = vcpu.run()
    assert (e.reason, e.msr, e.value) == (ExitReason.WRMSR, msr, 0x5566778811223344)
    e = vcpu.run()
    assert (e.reason, e.msr) == (ExitReason.RDMSR, msr)
    e.value = 0x0102030405060708
    e = vcpu.run()
    assert (e.reason, e.port) == (ExitReason.IO_INSTRUCTION, 0x80)
    assert rig.memory.read_u32(0x600) == 0x05060708
    assert rig.memory.read_u32(0x604) == 0x01020304


def test_msr_bitmap_control_becomes_filter_and_fault_injects_gp(rig):
    from smartvm_core.vmx import ProcBasedControls, VmcsField
    msr = 0x1F0  # inside the VMX MSR bitmap's low range
    vcpu = rig.vcpu
    vcpu.bitmaps.trap_msr(msr, read=False, write=True)
    vcpu.vmcs[VmcsField.CPU_BASED_VM_EXEC_CONTROL] |= ProcBasedControls.USE_MSR_BITMAPS
    rig.load_real("kvm/msr16", defines={"MSR": msr})
    e = vcpu.run()
    assert (e.reason, e.msr, e.value) == (ExitReason.WRMSR, msr, 0x5566778811223344)
    e.fault = True  # the handler refuses the write: KVM raises #GP(0) in the guest
    e = vcpu.run()
    assert (e.reason, e.port) == (ExitReason.IO_INSTRUCTION, 0x83)


def test_guest_debug_single_step_reports_db(rig):
    vcpu = rig.load_real("kvm/step16")
    vcpu.set_guest_debug(single_step=True)
    rips = []
    for _ in range(3):
        e = vcpu.run()
        assert e.reason == ExitReason.EXCEPTION_NMI
        info = ExitInterruptionInfo.decode(e.interruption_info)
        assert info.valid and info.vector == Vector.DB and info.type == InterruptionType.HARDWARE_EXCEPTION
        assert e.qualification & (1 << 14)  # BS: single step
        rips.append(vcpu.get_regs().rip)
    assert rips == [0x1001, 0x1002, 0x1003]
    vcpu.set_guest_debug()
    e = vcpu.run()
    assert (e.reason, e.port) == (ExitReason.IO_INSTRUCTION, 0x80)


def test_hardware_breakpoint_reports_db(rig):
    vcpu = rig.load_real("kvm/step16")
    vcpu.set_guest_debug(breakpoints=[0x1003])
    e = vcpu.run()
    assert e.reason == ExitReason.EXCEPTION_NMI
    assert ExitInterruptionInfo.decode(e.interruption_info).vector == Vector.DB
    assert e.guest_linear_address == 0x1003
    assert e.qualification & 1  # B0


def test_monitor_trap_flag_control(rig):
    from smartvm_core.vmx import ProcBasedControls, VmcsField
    vcpu = rig.load_real("kvm/step16")
    vcpu.vmcs[VmcsField.CPU_BASED_VM_EXEC_CONTROL] |= ProcBasedControls.MONITOR_TRAP_FLAG
    e = vcpu.run()
    assert e.reason == ExitReason.MONITOR_TRAP_FLAG
    assert vcpu.get_regs().rip == 0x1001


def test_emulation_failure_is_clear_engine_error(rig):
    """An instruction KVM's emulator cannot run becomes an EngineError naming the bytes and CS:RIP."""
    rig.memory.write(0x2000, bytes([0x0F, 0x37]))  # GETSEC (no SMX here) in 32-bit protected mode
    rig.memory.write(0x3000, bytes([0xE6, 0x80]))
    rig.load_protected("kvm/step16", at=0x4000)  # any image; RIP is set below
    r = rig.vcpu.get_regs()
    r.rip = 0x2000
    rig.vcpu.set_regs(r)
    try:
        e = rig.vcpu.run()
    except KvmInternalError as err:
        assert isinstance(err, EngineError)
        text = str(err)
        assert "KVM internal error" in text and "CS:RIP 0x0010:0x2000" in text and "0f 37" in text
    else:
        # a host that runs GETSEC natively raises #UD, and with an empty IDT that is a shutdown
        assert e.reason == ExitReason.TRIPLE_FAULT
