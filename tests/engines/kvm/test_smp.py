"""SMP (one thread per vCPU, GIL released in KVM_RUN), kicks, the preemption-timer emulation, interrupt injection."""

from __future__ import annotations

import threading
import time

from smartvm_core.vmx import EntryInterruptionInfo, EventInjection, ExitReason


def _thread(fn):
    result: dict = {}

    def body():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            result["error"] = e
    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, result


def test_kvm_run_releases_the_gil_two_vcpus_progress_together(make_rig):
    r = make_rig(vcpus=2)
    v0, v1 = r.vcpus
    r.load_real("kvm/counter16", vcpu=v0, rbx=0x90)
    r.load_real("kvm/spin16", at=0x3000, vcpu=v1)
    assert v1.run().port == 0x80

    # vCPU 1 now sits inside KVM_RUN for good; if that held the GIL, nothing below could run.
    spinner, spun = _thread(v1.run)
    time.sleep(0.05)
    assert spinner.is_alive()

    def count_exits(vcpu, port, n):
        values = []
        while len(values) < n:
            e = vcpu.run()
            assert (e.reason, e.port) == (ExitReason.IO_INSTRUCTION, port)
            values.append(e.value)
        return values
    worker, got = _thread(lambda: count_exits(v0, 0x90, 40))
    worker.join(30)
    assert not worker.is_alive() and "error" not in got
    assert got["value"] == [16 * (i + 1) for i in range(40)]  # the guest counted on between exits
    assert spinner.is_alive()  # still in the guest all along

    v1.kick()
    spinner.join(10)
    assert not spinner.is_alive() and spun["value"].reason == ExitReason.EXTERNAL_INTERRUPT

    # both vCPUs counting at once, each on its own thread
    r.load_real("kvm/counter16", vcpu=v1, rbx=0x91)
    a, ra = _thread(lambda: count_exits(v0, 0x90, 30))
    b, rb = _thread(lambda: count_exits(v1, 0x91, 30))
    a.join(30)
    b.join(30)
    assert "error" not in ra and "error" not in rb
    assert len(ra["value"]) == len(rb["value"]) == 30


def test_kick_before_run_returns_external_interrupt(rig):
    vcpu = rig.load_real("kvm/spin16", at=0x3000)
    vcpu.kick()
    assert vcpu.run().reason == ExitReason.EXTERNAL_INTERRUPT
    assert vcpu.run().port == 0x80  # the kick was consumed: the guest runs


def test_preemption_timer_deadline(rig):
    vcpu = rig.load_real("kvm/spin16", at=0x3000)
    assert vcpu.run().port == 0x80
    vcpu.set_timer_deadline(time.monotonic_ns() + 20_000_000)
    e = vcpu.run()
    assert e.reason == ExitReason.VMX_PREEMPTION_TIMER_EXPIRED
    assert vcpu.timer_deadline_ns is None
    # an already-passed deadline exits before entering the guest
    vcpu.set_timer_deadline(time.monotonic_ns() - 1)
    assert vcpu.run().reason == ExitReason.VMX_PREEMPTION_TIMER_EXPIRED
    # a disarmed timer never fires: only the kick gets the vCPU out
    vcpu.set_timer_deadline(time.monotonic_ns() + 10_000_000)
    vcpu.set_timer_deadline(None)
    t, res = _thread(vcpu.run)
    time.sleep(0.05)
    assert t.is_alive()
    vcpu.kick()
    t.join(10)
    assert res["value"].reason == ExitReason.EXTERNAL_INTERRUPT


def test_interrupt_window_and_injection(rig):
    vcpu = rig.load_real("kvm/irq16")
    e = vcpu.run()
    assert e.port == 0x80
    assert not vcpu.interrupt_window_open()
    vcpu.set_interrupt_window_exiting(True)
    ports = []
    e = vcpu.run()
    while e.reason != ExitReason.INTERRUPT_WINDOW:
        # VT-x exits right after STI's shadow; a software KVM may notice the window at the next exit
        assert e.reason == ExitReason.IO_INSTRUCTION and e.port == 0x81
        ports.append(e.port)
        e = vcpu.run()
    assert vcpu.interrupt_window_open()
    vcpu.inject_event(EventInjection(EntryInterruptionInfo.external_interrupt(0x20)))
    assert vcpu.run().port == 0x84  # the handler ran first
    e = vcpu.run()
    if not ports:
        assert e.port == 0x81
        e = vcpu.run()
    assert e.reason == ExitReason.HLT
    assert vcpu.interrupt_window_open()
    vcpu.inject_event(EventInjection(EntryInterruptionInfo.external_interrupt(0x20)))
    assert vcpu.run().port == 0x84
    assert vcpu.run().port == 0x85  # IRET returned past the HLT
