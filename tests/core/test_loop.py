"""The loop, dispatch table, stop conditions and reports, on the scripted engine."""

from __future__ import annotations

import pytest

from scripted_engine import ScriptedPlugin
from smartvm_core import hookimpl
from smartvm_core.errors import PluginError
from smartvm_core.exit import VmExit
from smartvm_core.loop import DispatchTable
from smartvm_core.testing import make_machine, run_experiment
from smartvm_core.vmx import ExitReason

NO_ENGINES = ("soft", "kvm")


def out(port, value, size=1, length=1):
    return {"reason": "IO_INSTRUCTION", "port": port, "size": size, "is_in": False, "value": value,
            "instruction_length": length}


def inp(port, size=1, length=1):
    return {"reason": "IO_INSTRUCTION", "port": port, "size": size, "is_in": True, "instruction_length": length}


def config(script, **machine):
    return {"machine": {"engine": "scripted", "memory": "1M", **machine},
            "engine": {"options": {"script": script}}}


class Recorder:
    """A port device that records writes and answers reads with a counter."""

    name = "recorder"

    def __init__(self):
        self.writes = []
        self.reads = 0

    def read(self, offset, size):
        self.reads += 1
        return 0x40 + self.reads

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


class RecorderPlugin:
    def __init__(self, base=0x3F8):
        self.device = Recorder()
        self.base = base

    @hookimpl
    def setup_machine(self, machine):
        machine.pio.register(self.base, 8, self.device)


class ExitOnPort:
    """Stops the VM with the value written to port 0xF4 (like isa-debug-exit)."""

    @hookimpl
    def setup_machine(self, machine):
        class Dev:
            name = "exit-port"

            def read(self, offset, size):
                return 0xFF

            def write(self, offset, size, value):
                machine.request_exit(value)

        machine.pio.register(0xF4, 1, Dev())


def plugins(*extra):
    return [("scripted", ScriptedPlugin()), *extra]


def test_io_exits_reach_bus_devices_and_in_values_reach_engine():
    rec = RecorderPlugin()
    script = [out(0x3F8, ord("h")), inp(0x3FD), out(0x3F9, 7), out(0xF4, 3)]
    r = run_experiment(config(script), plugins=plugins(("rec", rec), ("exit", ExitOnPort())),
                       entry_points=False, disable=NO_ENGINES)
    assert r.stop.kind == "exit-code" and r.stop.exit_code == 3
    assert rec.device.writes == [(0, 1, ord("h")), (1, 1, 7)]
    vcpu = r.machine.vcpus[0]
    assert vcpu.answers == [("in", 0x41)]
    assert vcpu.regs.rip == 4  # every handled exit completed its instruction
    assert r.exit_counts == {"IO_INSTRUCTION": 4}


def test_unclaimed_port_reads_float_and_are_counted():
    script = [inp(0x1234, size=2), out(0x1234, 5), out(0xF4, 0)]
    r = run_experiment(config(script), plugins=plugins(("exit", ExitOnPort())),
                       entry_points=False, disable=NO_ENGINES)
    assert r.machine.vcpus[0].answers == [("in", 0xFFFF)]
    assert (r.machine.pio.unclaimed_reads, r.machine.pio.unclaimed_writes) == (1, 1)
    assert r.report.counters["unclaimed pio accesses"] == "1 reads, 1 writes"


def test_handler_chain_order_priority_then_lifo_and_false_passes_on():
    calls = []

    class First:
        @hookimpl
        def register_exit_handlers(self, register):
            def a(vcpu, exit):
                calls.append("a")
                return False
            register(ExitReason.CPUID, a)

    class Second:
        @hookimpl
        def register_exit_handlers(self, register):
            def b(vcpu, exit):
                calls.append("b")
                return False

            def hi(vcpu, exit):
                calls.append("hi")
                return False

            def c(vcpu, exit):
                calls.append("c")
                vcpu.skip_instruction()
                return True
            register(ExitReason.CPUID, b)
            register(ExitReason.CPUID, hi, priority=10)
            register(ExitReason.CPUID, c, priority=-10)

    script = [{"reason": "CPUID", "instruction_length": 2}, out(0xF4, 0)]
    r = run_experiment(config(script), plugins=plugins(("exit", ExitOnPort()), ("first", First()),
                                                       ("second", Second())),
                       entry_points=False, disable=NO_ENGINES)
    # priority first; same priority: the later-registered plugin's hook ran first
    assert calls == ["hi", "b", "a", "c"]
    chain = r.machine.dispatch.chain(ExitReason.CPUID)
    assert chain == ["second:hi", "second:b", "first:a", "second:c"]


def test_register_refuses_unknown_reason():
    class Bad:
        @hookimpl
        def register_exit_handlers(self, register):
            register(999, lambda v, e: True)

    with pytest.raises(PluginError, match="999 is not an SDM basic exit reason"):
        make_machine(config([]), plugins=plugins(("bad", Bad())), entry_points=False, disable=NO_ENGINES)


def test_unhandled_exit_stops_with_report_and_disassembly():
    class Code:
        @hookimpl
        def setup_machine(self, machine):
            # mov eax, 1 ; cpuid  -- 16-bit real mode at CS:IP = 0xF000:0xFFF0 is outside 1M RAM here,
            # so put the vCPU at 0x0000:0x1000 first.
            machine.memory.write(0x1000, bytes.fromhex("66b8010000000fa2f4"))

    script = [{"reason": "CPUID", "instruction_length": 2}]
    m = make_machine(config(script), plugins=plugins(("code", Code())), entry_points=False, disable=NO_ENGINES)
    from smartvm_core.cpu import Segment
    v = m.vcpus[0]
    s = v.get_sregs()
    s.cs = Segment.real_mode(0, code=True)
    v.set_sregs(s)
    r = v.get_regs()
    r.rip = 0x1006
    r.rax = 1
    v.set_regs(r)
    try:
        stop = m.run()
    finally:
        m.close()
    assert stop.kind == "unhandled-exit" and stop.failed
    text = "\n".join(stop.report)
    assert "unhandled VM exit on vCPU 0: CPUID (10)" in text
    assert "RAX=0000000000000001" in text
    assert "code at RIP (real mode):" in text
    assert "cpuid" in text and "hlt" in text  # capstone decoded the bytes at CS:IP


def test_unhandled_report_decodes_the_qualification():
    q = 3 | (1 << 4) | (1 << 8)  # MOV RCX, DR3 (SDM Table 28-4)
    script = [{"reason": "MOV_DR", "qualification": q, "instruction_length": 3}]
    m = make_machine(config(script), plugins=plugins(), entry_points=False, disable=NO_ENGINES)
    try:
        stop = m.run()
    finally:
        m.close()
    text = "\n".join(stop.report)
    assert stop.kind == "unhandled-exit"
    assert "MOV_DR" in text
    assert "qualification 0x113: " in text and "DR3" in text.upper() and "RCX" in text.upper()


def test_max_exits_stops_the_run():
    r = run_experiment({**config([out(0x80, 1)]), "engine": {"options": {"script": [out(0x80, 1)], "repeat": True}},
                        "stop": {"max_exits": 50}}, plugins=plugins(), entry_points=False, disable=NO_ENGINES)
    assert r.stop.kind == "max-exits"
    assert r.exit_counts["IO_INSTRUCTION"] == 50


def test_wall_time_limit_stops_an_endless_guest():
    r = run_experiment({**config([]), "engine": {"options": {"script": [out(0x80, 1)], "repeat": True}},
                        "stop": {"timeout": 0.2}}, plugins=plugins(), entry_points=False, disable=NO_ENGINES)
    assert r.stop.kind == "timeout"
    assert r.exit_counts["IO_INSTRUCTION"] > 0


def test_console_marker_stops_the_run():
    class Con:
        @hookimpl
        def setup_machine(self, machine):
            class Debugcon:
                name = "debugcon"

                def read(self, o, s):
                    return 0xE9

                def write(self, o, s, v):
                    machine.console.write(bytes([v]))
            machine.pio.register(0xE9, 1, Debugcon())

    script = [out(0xE9, c) for c in b"boot OK\nafter"]
    r = run_experiment({**config(script), "stop": {"marker": "OK"}}, plugins=plugins(("con", Con())),
                       entry_points=False, disable=NO_ENGINES)
    assert r.stop.kind == "marker"
    assert r.console == "boot OK"


def test_engine_error_stops_with_reason():
    r = run_experiment(config([out(0x80, 1)]), plugins=plugins(), entry_points=False, disable=NO_ENGINES)
    assert r.stop.kind == "error" and "exhausted" in r.stop.detail


def test_stats_count_and_time_per_reason():
    script = [out(0x80, 1), out(0x80, 2), {"reason": "CPUID", "instruction_length": 2}, out(0xF4, 0)]

    class Cpuid:
        @hookimpl
        def register_exit_handlers(self, register):
            def handle_cpuid(vcpu, exit):
                vcpu.skip_instruction()
                return True
            register(ExitReason.CPUID, handle_cpuid)

    r = run_experiment(config(script), plugins=plugins(("exit", ExitOnPort()), ("c", Cpuid())),
                       entry_points=False, disable=NO_ENGINES)
    stats = r.machine.stats[0]
    assert stats.counts[ExitReason.IO_INSTRUCTION] == 3
    assert stats.counts[ExitReason.CPUID] == 1
    assert stats.times[ExitReason.IO_INSTRUCTION] > 0
    assert r.report.exits["CPUID"]["count"] == 1
    text = r.report.to_text()
    assert "IO_INSTRUCTION" in text and "stopped: exit-code" in text


def test_interrupt_injection_waits_for_the_window():
    class Pic:
        """A minimal controller: one pending vector until acknowledged."""

        def __init__(self):
            self.vector = None

        def set_irq(self, line, level):
            if level:
                self.vector = 0x20 + line

        def pending(self):
            return self.vector is not None

        def acknowledge(self):
            v, self.vector = self.vector, None
            return v

    class P:
        @hookimpl
        def setup_machine(self, machine):
            machine.irq.set_controller(Pic())

            class RaiseOnWrite:
                name = "irq-raiser"

                def read(self, o, s):
                    return 0

                def write(self, o, s, v):
                    machine.irq.line(v).trigger()
            machine.pio.register(0x90, 1, RaiseOnWrite())

    # IF=0 when the line is raised: the loop must ask for an interrupt window, not inject
    script = [out(0x90, 1), {"reason": "INTERRUPT_WINDOW", "regs": {"rflags": 0x202}}, out(0xF4, 0)]
    r = run_experiment(config(script), plugins=plugins(("p", P()), ("exit", ExitOnPort())),
                       entry_points=False, disable=NO_ENGINES)
    v = r.machine.vcpus[0]
    assert [str(e) for e in v.injected] == ["inject external interrupt vector 0x21"]
    assert v.window_exiting is False
    assert r.exit_counts["INTERRUPT_WINDOW"] == 1


def test_pause_and_resume_from_another_thread():
    import threading
    import time

    m = make_machine({**config([]), "engine": {"options": {"script": [out(0x80, 1)], "repeat": True}}},
                     plugins=plugins(), entry_points=False, disable=NO_ENGINES)
    result = {}

    def runner():
        result["stop"] = m.run()

    t = threading.Thread(target=runner)
    t.start()
    try:
        time.sleep(0.05)
        assert m.pause()
        assert m.state == "paused"
        n = m.stats[0].total
        time.sleep(0.05)
        assert m.stats[0].total == n  # nothing ran while paused
        m.resume()
        time.sleep(0.05)
        assert m.stats[0].total > n
    finally:
        m.stop("user", "test done")
        t.join(5)
        m.close()
    assert result["stop"].kind == "user"


def test_reset_restores_load_time_state():
    m = make_machine(config([out(0x80, 1, length=2)] * 3), plugins=plugins(), entry_points=False, disable=NO_ENGINES)
    try:
        v = m.vcpus[0]
        rip0 = v.get_regs().rip
        m.control.max_exits = 3
        m.run()
        assert v.get_regs().rip == rip0 + 6
        m.reset()
        assert v.get_regs().rip == rip0
    finally:
        m.close()


def test_port_handlers_see_only_their_ports_and_run_before_the_bus():
    seen = []

    class Doorbell:
        @hookimpl
        def register_exit_handlers(self, register):
            def doorbell(vcpu, exit):
                seen.append(exit.port)
                vcpu.skip_instruction()
                return True
            register(ExitReason.IO_INSTRUCTION, doorbell, ports=[0x99, 0x9A])

    rec = RecorderPlugin(base=0x98)
    script = [out(0x98, 1), out(0x99, 2), out(0x9A, 3), out(0x9B, 4), out(0xF4, 0)]
    r = run_experiment(config(script), plugins=plugins(("rec", rec), ("exit", ExitOnPort()), ("d", Doorbell())),
                       entry_points=False, disable=NO_ENGINES)
    assert seen == [0x99, 0x9A]
    assert rec.device.writes == [(0, 1, 1), (3, 1, 4)]  # the bus got every other port
    assert r.machine.dispatch.chain(ExitReason.IO_INSTRUCTION)[:2] == ["port 0x99: d:doorbell",
                                                                       "port 0x9a: d:doorbell"]


def test_io_chains_hold_each_named_port_s_whole_chain():
    table = DispatchTable()
    reg = table.make_register("t")
    calls = []

    def bus(vcpu, exit):
        calls.append("bus")
        return True

    def bell(vcpu, exit):
        calls.append("bell")
        return exit.value == 1   # declines other values: the exit goes on to the bus

    reg(ExitReason.IO_INSTRUCTION, bus, priority=-100)
    reg(ExitReason.IO_INSTRUCTION, bell, ports=[0x99])
    table.freeze()
    assert table.io_chains == {0x99: (bell, bus)}
    assert table.io_chain == (bus,)
    # table[IO_INSTRUCTION] makes the same calls for code that indexes by reason alone
    exit = VmExit().reset(ExitReason.IO_INSTRUCTION)
    for port, value, want in ((0x99, 1, ["bell"]), (0x99, 2, ["bell", "bus"]), (0x98, 1, ["bus"])):
        calls.clear()
        exit.port, exit.value = port, value
        assert any(h(None, exit) for h in table.table[ExitReason.IO_INSTRUCTION])
        assert calls == want
        calls.clear()
        assert any(h(None, exit) for h in table.io_chains.get(port, table.io_chain))
        assert calls == want


def test_ports_only_for_io_instruction():
    class Bad:
        @hookimpl
        def register_exit_handlers(self, register):
            register(ExitReason.CPUID, lambda v, e: True, ports=[1])

    with pytest.raises(PluginError, match="ports= only applies to IO_INSTRUCTION"):
        make_machine(config([]), plugins=plugins(("bad", Bad())), entry_points=False, disable=NO_ENGINES)
