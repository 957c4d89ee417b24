"""State get/set round trips, CPUID, memory slots, dirty logging, teardown."""

from __future__ import annotations

import gc

import pytest

from .rig import Rig, open_fds, require_kvm
from smartvm_core.cpu import RFLAGS_FIXED, Registers
from smartvm_core.engines.base import EngineOptions
from smartvm_core.engines.kvm.engine import KvmEngine
from smartvm_core.errors import EngineError, UnsupportedControl
from smartvm_core.memory import GuestMemory
from smartvm_core.vmx import (EntryInterruptionInfo, EventInjection, ExitReason, PinBasedControls,
                              ProcBasedControls, ProcBasedControls2, Vector, Vmcs, VmcsField)


def test_probe_never_raises_and_reports():
    a = KvmEngine.probe()
    assert isinstance(a.usable, bool)
    if a.usable:
        assert a.details["api_version"] == 12
        assert a.accelerated == (a.details["cpu_virtualization"] in ("vmx", "svm"))
        assert "v8086" not in a.details       # a test VM: smartvm info asks host_details() for it
        assert isinstance(KvmEngine.host_details()["v8086"], bool)
    else:
        assert a.reason


def test_probe_reports_a_missing_device(monkeypatch):
    import smartvm_core.engines.kvm.engine as eng
    monkeypatch.setattr(eng, "Kvm", lambda: eng.Kvm.__new__(eng.Kvm) if False else (_ for _ in ()).throw(
        eng.KvmUnavailable("cannot open /nonexistent: No such file")))
    a = eng.KvmEngine.probe()
    assert not a.usable and "cannot open" in a.reason


def test_v8086_probe_matches_set_regs(rig):
    vcpu = rig.vcpu
    sr = vcpu.get_sregs()
    sr.cr0 |= 1
    vcpu.set_sregs(sr)
    vcpu.set_regs(Registers(rflags=RFLAGS_FIXED | (1 << 17)))
    sticks = bool(vcpu.get_regs().rflags & (1 << 17))
    assert KvmEngine.host_supports_v8086() == sticks


def test_regs_sregs_round_trip(rig):
    vcpu = rig.vcpu
    regs = Registers(rax=1, rbx=2, rcx=3, rdx=4, rsi=5, rdi=6, rsp=0x7000, rbp=8, r8=9, r15=0xFFFF_FFFF_FFFF_FFFF,
                     rip=0x1234, rflags=RFLAGS_FIXED | 1)
    vcpu.set_regs(regs)
    assert vcpu.get_regs() == regs
    sr = vcpu.get_sregs()
    sr.ds.selector, sr.ds.base = 0x40, 0x400
    sr.cr2 = 0xDEAD000
    vcpu.set_sregs(sr)
    back = vcpu.get_sregs()
    assert back.ds == sr.ds and back.cr2 == 0xDEAD000 and back.cs == sr.cs


def test_full_state_round_trip_into_a_fresh_vcpu(make_rig):
    a = make_rig()
    v = a.load_real("kvm/step16")
    v.set_msr(0x174, 0x1234)  # IA32_SYSENTER_CS
    fpu = v.fd.get_fpu()
    fpu.fcw = 0x27F
    fpu.xmm[3][0] = 0xAB
    v.fd.set_fpu(fpu)
    dr = v.fd.get_debugregs()
    dr.db[1] = 0xC0FFEE
    v.fd.set_debugregs(dr)
    v.set_cpuid([(0, 0, 0, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69), (1, 0, 0, 0x306A9, 0, 0, 0)])
    state = v.save_state()
    import json
    state = json.loads(json.dumps(state))  # plain data
    b = make_rig()
    b.memory.write(0, a.memory.read(0, 0x10000))  # guest memory is the machine's, not the vCPU's
    w = b.vcpu
    w.restore_state(state)
    assert w.get_regs() == v.get_regs()
    assert w.get_sregs() == v.get_sregs()
    assert w.get_msr(0x174) == 0x1234
    assert w.fd.get_fpu().fcw == 0x27F and w.fd.get_fpu().xmm[3][0] == 0xAB
    assert w.fd.get_debugregs().db[1] == 0xC0FFEE
    assert w.get_mp_state() == v.get_mp_state()
    assert w.get_cpuid() == v.get_cpuid() and w.get_cpuid()[1].eax == 0x306A9
    assert bytes(w.fd.get_xcrs()) == bytes(v.fd.get_xcrs())
    # and the restored vCPU runs on from the same place
    e = w.run()
    assert (e.reason, e.port) == (ExitReason.IO_INSTRUCTION, 0x80)


def test_restore_refuses_garbage(rig):
    with pytest.raises(EngineError, match="bad saved state"):
        rig.vcpu.restore_state({"regs": {"rax": 1}})
    state = rig.vcpu.save_state()
    state["fpu"] = "00"
    with pytest.raises(EngineError, match="kvm_fpu blob"):
        rig.vcpu.restore_state(state)


def test_lapic_and_irqchip_state_with_kernel_irqchip(make_rig):
    r = make_rig(irqchip="kernel")
    st = r.vcpu.save_state()
    assert len(bytes.fromhex(st["lapic"])) == 1024
    est = r.engine.save_state()
    assert set(est["chips"]) == {"0", "1", "2"} and "pit2" in est
    r.engine.restore_state(est)
    assert r.engine.save_state()["chips"] == est["chips"]


def test_vcpu_events_and_exception_injection(rig):
    vcpu = rig.load_real("kvm/msr16")  # has a #GP handler at IVT 13 writing port 0x83
    e = vcpu.run()  # WRMSR of an unknown MSR: KVM itself raises #GP unless intercepted... run until a port
    while e.reason != ExitReason.IO_INSTRUCTION:
        e = vcpu.run()
    assert e.port == 0x83
    # inject #GP by hand: the handler runs again
    r = vcpu.get_regs()
    r.rip = 0x1000 + 0
    vcpu.inject_event(EventInjection(EntryInterruptionInfo.hardware_exception(Vector.GP, deliver_error_code=False)))
    ev = vcpu.fd.get_vcpu_events()
    assert ev.exception.injected == 1 and ev.exception.nr == Vector.GP
    e = vcpu.run()
    assert (e.reason, e.port) == (ExitReason.IO_INSTRUCTION, 0x83)


def test_software_interrupt_injection_is_refused(rig):
    with pytest.raises(UnsupportedControl, match="instruction length"):
        rig.vcpu.inject_event(EventInjection(EntryInterruptionInfo.software_interrupt(0x21), instruction_length=2))


def test_set_cpuid_is_what_the_guest_sees(rig):
    entries = [e for e in rig.vcpu.supported_cpuid() if e.function in (0, 1)]
    patched = []
    for e in entries:
        if e.function == 0:
            e = type(e)(0, e.index, e.flags, 1, int.from_bytes(b"Smar", "little"), int.from_bytes(b"tVM!", "little"),
                        int.from_bytes(b"-kvm", "little"))
        patched.append(e)
    rig.vcpu.set_cpuid(patched)
    # CPUID leaf 0 then store ebx/edx/ecx at 0x600 and out
    code = bytes([0x66, 0x31, 0xC0,                   # xor eax, eax
                  0x0F, 0xA2,                          # cpuid
                  0x66, 0x89, 0x1E, 0x00, 0x06,        # mov [0x600], ebx
                  0x66, 0x89, 0x16, 0x04, 0x06,        # mov [0x604], edx
                  0x66, 0x89, 0x0E, 0x08, 0x06,        # mov [0x608], ecx
                  0xE6, 0x80, 0xF4])
    rig.memory.write(0x1000, code)
    from smartvm_core.arch.modes import real_mode_state
    r, sr = real_mode_state(0, 0x1000)
    rig.vcpu.set_sregs(sr)
    rig.vcpu.set_regs(r)
    assert rig.vcpu.run().port == 0x80
    assert rig.memory.read(0x600, 12) == b"SmartVM!-kvm".replace(b"SmartVM!-kvm", b"Smar-kvmtVM!")


def test_unsupported_controls_are_refused_with_reasons(rig):
    eng = rig.engine
    vmcs = Vmcs({VmcsField.CPU_BASED_VM_EXEC_CONTROL: int(ProcBasedControls.HLT_EXITING
                                                          | ProcBasedControls.UNCONDITIONAL_IO_EXITING)})
    assert eng.unsupported_controls(vmcs) == []
    vmcs[VmcsField.EXCEPTION_BITMAP] = (1 << Vector.DB) | (1 << Vector.BP)
    assert eng.unsupported_controls(vmcs) == []
    vmcs[VmcsField.EXCEPTION_BITMAP] |= 1 << Vector.PF
    vmcs[VmcsField.CR0_GUEST_HOST_MASK] = 1
    vmcs[VmcsField.CPU_BASED_VM_EXEC_CONTROL] |= (ProcBasedControls.RDTSC_EXITING
                                                  | ProcBasedControls.ACTIVATE_SECONDARY_CONTROLS)
    vmcs[VmcsField.SECONDARY_VM_EXEC_CONTROL] = int(ProcBasedControls2.WBINVD_EXITING)
    vmcs[VmcsField.PIN_BASED_VM_EXEC_CONTROL] = int(PinBasedControls.NMI_EXITING)
    problems = eng.unsupported_controls(vmcs)
    text = "\n".join(problems)
    for needle in ("bit 14 (#PF)", "CR0_GUEST_HOST_MASK", "RDTSC_EXITING", "WBINVD_EXITING", "NMI_EXITING"):
        assert needle in text
    assert len(problems) == 5
    rig.vcpu.vmcs = vmcs
    with pytest.raises(UnsupportedControl):
        rig.vcpu.apply_controls()


def test_capability_table_lists_what_kvm_cannot_report():
    table = KvmEngine.capability_table()
    for key in ("CPUID exits", "CR_ACCESS exits", "exception bitmap"):
        assert table[key].startswith(("no", "only"))
    assert table["IO_INSTRUCTION exits"].startswith("yes")


def test_readonly_slot_write_is_ept_violation(rig):
    rom = rig.memory.add_rom(0x20000, b"\x11" * 4096, name="rom")
    assert rig.engine.caps.get("READONLY_MEM")
    code = bytes([0xB8, 0x00, 0x20, 0x8E, 0xC0,           # mov ax, 0x2000; mov es, ax
                  0x26, 0xA0, 0x05, 0x00,                 # mov al, [es:5]  (reads ROM directly)
                  0xA2, 0x00, 0x06,                       # mov [0x600], al
                  0x26, 0xC6, 0x06, 0x05, 0x00, 0x77,     # mov byte [es:5], 0x77 (write: exit)
                  0xE6, 0x80, 0xF4])
    rig.memory.write(0x1000, code)
    from smartvm_core.arch.modes import real_mode_state
    r, sr = real_mode_state(0, 0x1000)
    rig.vcpu.set_sregs(sr)
    rig.vcpu.set_regs(r)
    e = rig.vcpu.run()
    assert (e.reason, e.guest_physical_address, e.is_write, e.value) == (ExitReason.EPT_VIOLATION, 0x20005, True, 0x77)
    from smartvm_core.vmx import EptViolationQualification
    q = EptViolationQualification.decode(e.qualification)
    assert q.write and q.readable and not q.writable
    assert rig.vcpu.run().port == 0x80
    assert rig.memory.read_u8(0x600) == 0x11 and rom.view[5] == 0x11


def test_dirty_logging(rig):
    code = bytes([0xC6, 0x06, 0x00, 0x30, 0x01,   # mov byte [0x3000], 1
                  0xC6, 0x06, 0x00, 0x50, 0x01,   # mov byte [0x5000], 1
                  0xE6, 0x80, 0xF4])
    rig.memory.write(0x1000, code)
    with pytest.raises(EngineError, match="not enabled"):
        rig.engine.get_dirty_log(rig.ram)
    rig.engine.enable_dirty_logging(rig.ram)
    from smartvm_core.arch.modes import real_mode_state
    r, sr = real_mode_state(0, 0x1000)
    rig.vcpu.set_sregs(sr)
    rig.vcpu.set_regs(r)
    assert rig.vcpu.run().port == 0x80
    pages = rig.engine.dirty_pages(rig.ram)
    assert {3, 5} <= pages and 8 not in pages
    assert rig.engine.dirty_pages(rig.ram) <= {1, 0xF}  # cleared by the read (stack page may be touched)


def test_memory_regions_added_later_are_mapped_and_removed(rig):
    extra = rig.memory.add_ram(0x40000, 0x1000, "extra")
    extra.view[0] = 0x5A
    code = bytes([0xB8, 0x00, 0x40, 0x8E, 0xC0, 0x26, 0xA0, 0x00, 0x00, 0xE6, 0x80, 0xF4])  # al = [0x40000]; out
    rig.memory.write(0x1000, code)
    from smartvm_core.arch.modes import real_mode_state
    r, sr = real_mode_state(0, 0x1000)
    rig.vcpu.set_sregs(sr)
    rig.vcpu.set_regs(r)
    e = rig.vcpu.run()
    assert (e.port, e.value) == (0x80, 0x5A)
    rig.memory.remove_region(extra)
    rig.vcpu.set_regs(r)
    e = rig.vcpu.run()
    assert e.reason == ExitReason.EPT_VIOLATION and e.guest_physical_address == 0x40000


def test_kernel_irqchip_irq_line_and_refusals(make_rig):
    r = make_rig(irqchip="kernel")
    r.engine.set_irq(4, True)
    r.engine.set_irq(4, False)
    with pytest.raises(UnsupportedControl):
        r.vcpu.inject_event(EventInjection(EntryInterruptionInfo.external_interrupt(0x20)))
    vmcs = Vmcs({VmcsField.CPU_BASED_VM_EXEC_CONTROL: int(ProcBasedControls.HLT_EXITING)})
    assert any("HLT_EXITING" in p for p in r.engine.unsupported_controls(vmcs))
    u = make_rig()
    with pytest.raises(EngineError, match="irqchip"):
        u.engine.set_irq(4, True)


def test_bad_irqchip_option():
    require_kvm()
    mem = GuestMemory()
    with pytest.raises(EngineError, match="irqchip"):
        KvmEngine(mem, EngineOptions(irqchip="apic"))


def test_teardown_leaks_no_descriptors():
    require_kvm()
    gc.collect()
    before = open_fds()
    for irqchip in ("user", "kernel"):
        r = Rig(irqchip=irqchip, vcpus=2)
        r.load_real("kvm/step16")
        r.vcpu.set_timer_deadline(10**19)  # starts the timer thread
        assert r.vcpu.run().reason in (ExitReason.IO_INSTRUCTION,)
        assert open_fds() > before
        r.close()
    gc.collect()
    assert open_fds() == before
