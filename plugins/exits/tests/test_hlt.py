"""HLT: wait for an interrupt or the next timer; 'halted forever' when nothing can wake the vCPU."""

from exits_guests import guest, run_guest

from smartvm_core import hookimpl


def test_halted_forever_with_interrupts_disabled(engine):
    stop, out, counts, st = run_guest(guest("hlt16"), engine)
    assert stop.kind == "halted", stop
    assert "interrupts disabled" in stop.detail
    report = "\n".join(stop.report)
    assert "halted forever: HLT ending at RIP=0x1005" in report   # HLT is at 0x1004, after `mov sp` and `cli`
    assert "IF=0" in report and "interrupt pending: no" in report and "next timer: none armed" in report
    assert "registers:" in report
    assert st.hlt.halts == {0: 1}


def test_halted_forever_without_interrupt_controller(engine):
    stop, out, counts, st = run_guest(guest("hlt16", {"IF_SET": 1}), engine)
    assert stop.kind == "halted", stop
    assert "IF=1" in "\n".join(stop.report) and "interrupt controller: none" in "\n".join(stop.report)


class TimerThatEndsTheRun:
    """Arms a machine timer 20 ms ahead whose callback ends the run with exit code 7."""

    def __init__(self):
        self.fired_at = None

    @hookimpl
    def vm_started(self, machine):
        def fire(now):
            self.fired_at = now
            machine.request_exit(7)
        machine.clock.add_timer(machine.clock.now_ns() + 20_000_000, fire)


def test_halted_vcpu_waits_for_the_next_timer(engine):
    timer = TimerThatEndsTheRun()
    stop, out, counts, st = run_guest(guest("hlt16"), engine, plugins=[("timer", timer)])
    # interrupts are disabled, but a timer is armed: HLT waits for it instead of giving up
    assert (stop.kind, stop.exit_code) == ("exit-code", 7), stop
    assert timer.fired_at is not None and timer.fired_at >= 20_000_000
    assert counts.get("HLT") == 1
