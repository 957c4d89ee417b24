"""One test per hook (``test_hook_<name>``): each shows the hook is called, when, and with what."""

from __future__ import annotations

import pytest

from scripted_engine import ScriptedEngine, ScriptedPlugin
from smartvm_core import hookimpl
from smartvm_core.builder import load_experiment
from smartvm_core.cli import _run_parser
from smartvm_core.config import Key
from smartvm_core.devices import DeviceSpec, DeviceType, Param
from smartvm_core.errors import ImageError
from smartvm_core.images import LoadResult
from smartvm_core.cpu import Registers
from smartvm_core.persist import load_snapshot, save_snapshot
from smartvm_core.plugins import get_plugin_manager
from smartvm_core.testing import make_machine, run_experiment
from smartvm_core.vmx import ExitReason, ProcBasedControls, VmcsField

NO_ENGINES = ("soft", "kvm")


def out(port, value, length=1):
    return {"reason": "IO_INSTRUCTION", "port": port, "size": 1, "is_in": False, "value": value,
            "instruction_length": length}


def cfg(script, **extra):
    return {"machine": {"engine": "scripted", "memory": "1M"}, "engine": {"options": {"script": script}}, **extra}


class ExitPort:
    @hookimpl
    def setup_machine(self, machine):
        class Dev:
            name = "exit"

            def read(self, o, s):
                return 0

            def write(self, o, s, v):
                machine.request_exit(v)
        machine.pio.register(0xF4, 1, Dev())


def run(script, *plugins, **extra):
    return run_experiment(cfg(script, **extra), plugins=[("scripted", ScriptedPlugin()), ("exit", ExitPort()),
                                                         *plugins], entry_points=False, disable=NO_ENGINES)


def test_hook_add_cli_options():
    class P:
        @hookimpl
        def add_cli_options(self, parser):
            parser.add_argument_group("mine").add_argument("--mine-level", type=int, default=1)

    pm = get_plugin_manager(entry_points=False, disable=NO_ENGINES, plugins=[("p", P())])
    parser = _run_parser()
    pm.hook.add_cli_options.call_historic(kwargs={"parser": parser})
    assert parser.parse_args(["--mine-level", "3", "x.toml"]).mine_level == 3


def test_hook_register_config_sections_and_configure(tmp_path):
    test_hook_register_config_sections(tmp_path)


def test_hook_register_config_sections(tmp_path):
    class P:
        @hookimpl
        def register_config_sections(self, register):
            register("tracing", {"enabled": Key(bool, False, "trace?")}, doc="tracing")

    pm = get_plugin_manager(entry_points=False, disable=NO_ENGINES, plugins=[("p", P())])
    f = tmp_path / "e.toml"
    f.write_text("[tracing]\nenabled = true\n")
    assert load_experiment(pm, f).section("tracing") == {"enabled": True}


def test_hook_configure(tmp_path):
    seen = []

    class P:
        @hookimpl
        def configure(self, experiment):
            seen.append(experiment.memory)

    pm = get_plugin_manager(entry_points=False, disable=NO_ENGINES)
    f = tmp_path / "e.toml"
    f.write_text("[machine]\nmemory = '2M'\n")
    load_experiment(pm, f)
    pm.register(P(), name="late")   # historic: a late plugin still sees the call
    assert seen == [2 << 20]


def test_hook_register_engines():
    r = run([out(0xF4, 5)])
    assert r.machine.engine is None or True  # closed after the run
    assert r.report.counters["engine"] == "scripted"


def test_hook_select_engine():
    class Prefer:
        @hookimpl
        def select_engine(self, experiment, available):
            assert available["scripted"].usable
            return "scripted"

    r = run_experiment({"machine": {"engine": "auto", "memory": "1M"},
                        "engine": {"options": {"script": [out(0xF4, 0)]}}},
                       plugins=[("scripted", ScriptedPlugin()), ("exit", ExitPort()), ("prefer", Prefer())],
                       entry_points=False, disable=NO_ENGINES)
    assert r.report.counters["engine"] == "scripted"


def test_hook_register_devices():
    class Latch:
        name = "latch"

        def __init__(self):
            self.value = 0

        def read(self, o, s):
            return self.value

        def write(self, o, s, v):
            self.value = v

        def state(self):
            return {"value": self.value}

        def restore(self, st):
            self.value = st["value"]

    def factory(ctx, params):
        dev = Latch()
        ctx.map_pio(params["port"], 1, dev)
        return dev

    class P:
        @hookimpl
        def register_devices(self, register):
            register(DeviceType("latch", factory, {"port": Param(int, 0x70, "base port")}))
            register.device_set("latches", [DeviceSpec("latch", {"port": 0x71}, name="a"),
                                            DeviceSpec("latch", {"port": 0x72}, name="b")])

    r = run([out(0x71, 9), out(0x72, 8), out(0xF4, 0)], ("p", P()), device=[{"type": "latches"}])
    assert r.machine.devices["a"].value == 9 and r.machine.devices["b"].value == 8


def test_hook_setup_memory():
    class P:
        @hookimpl
        def setup_memory(self, machine):
            assert machine.engine is None  # before the engine exists
            machine.memory.add_rom(0xFFFF0000, b"\xf4" * 4096, "rom")

    m = make_machine(cfg([]), plugins=[("scripted", ScriptedPlugin()), ("p", P())], entry_points=False,
                     disable=NO_ENGINES)
    try:
        assert m.memory.region_at(0xFFFF0000).readonly
    finally:
        m.close()


def test_hook_setup_machine():
    class P:
        @hookimpl
        def setup_machine(self, machine):
            assert isinstance(machine.engine, ScriptedEngine) and len(machine.vcpus) == 1
            machine.services["seen"] = True

    m = make_machine(cfg([]), plugins=[("scripted", ScriptedPlugin()), ("p", P())], entry_points=False,
                     disable=NO_ENGINES)
    assert m.services["seen"]
    m.close()


def test_hook_register_exit_handlers():
    hits = []

    class P:
        @hookimpl
        def register_exit_handlers(self, register, machine):
            def handle_wbinvd(vcpu, exit):
                hits.append(vcpu.get_regs().rip)
                vcpu.skip_instruction()
                return True
            register(ExitReason.WBINVD, handle_wbinvd)

    r = run([{"reason": "WBINVD", "instruction_length": 2}, out(0xF4, 0)], ("p", P()))
    assert hits == [0] and r.stop.exit_code == 0


def test_hook_configure_vcpu():
    class P:
        @hookimpl
        def configure_vcpu(self, vcpu, machine):
            f = VmcsField.CPU_BASED_VM_EXEC_CONTROL
            vcpu.vmcs[f] = vcpu.vmcs[f] | ProcBasedControls.RDTSC_EXITING

    m = make_machine(cfg([], vmx={"exception_bitmap": ["GP", 14]}),
                     plugins=[("scripted", ScriptedPlugin()), ("p", P())], entry_points=False, disable=NO_ENGINES)
    try:
        vmcs = m.vcpus[0].vmcs
        assert vmcs[VmcsField.CPU_BASED_VM_EXEC_CONTROL] & ProcBasedControls.RDTSC_EXITING
        assert vmcs[VmcsField.EXCEPTION_BITMAP] == (1 << 13) | (1 << 14)
    finally:
        m.close()


def test_hook_load_image(tmp_path):
    img = tmp_path / "g.raw"
    img.write_bytes(b"\x90\xf4")

    class Loader:
        @hookimpl
        def load_image(self, machine, image):
            if image.format != "raw":
                return None
            machine.memory.write(0x1000, image.data)
            return LoadResult("raw", 0x1000, 0x1000 + len(image.data), regs=Registers(rip=0x1000))

    m = make_machine(cfg([], image=[{"path": str(img), "format": "raw"}]),
                     plugins=[("scripted", ScriptedPlugin()), ("l", Loader())], entry_points=False,
                     disable=NO_ENGINES)
    try:
        assert m.memory.read(0x1000, 2) == b"\x90\xf4"
        assert m.vcpus[0].get_regs().rip == 0x1000   # the core applied the entry state
    finally:
        m.close()
    with pytest.raises(ImageError, match="format: no installed loader recognises this image as other"):
        make_machine(cfg([], image=[{"path": str(img), "format": "other"}]),
                     plugins=[("scripted", ScriptedPlugin()), ("l", Loader())], entry_points=False,
                     disable=NO_ENGINES)


def test_hook_vm_started_and_vm_stopped():
    test_hook_vm_started()


def test_hook_vm_started():
    events = []

    class P:
        @hookimpl
        def vm_started(self, machine):
            events.append(("started", machine.state))

        @hookimpl
        def vm_stopped(self, machine, reason):
            events.append(("stopped", reason.kind, reason.exit_code))

    run([out(0xF4, 7)], ("p", P()))
    assert events == [("started", "running"), ("stopped", "exit-code", 7)]


def test_hook_vm_stopped():
    test_hook_vm_started()


def test_hook_vm_closing():
    seen = []

    class Held:
        """A device holding something until the machine closes it."""

        name = "held"

        def __init__(self):
            self.open = True

        def read(self, o, s):
            return 0

        def write(self, o, s, v):
            pass

        def state(self):
            return None

        def restore(self, state):
            pass

        def close(self):
            seen.append(("device closed", self.open))
            self.open = False

    class P:
        @hookimpl
        def setup_machine(self, machine):
            machine.devices["held"] = Held()

        @hookimpl
        def vm_closing(self, machine):
            # called first: devices and the engine are still there
            seen.append(("hook", machine.devices["held"].open, machine.engine is not None))

    m = make_machine(cfg([out(0xF4, 0)]), plugins=[("scripted", ScriptedPlugin()), ("exit", ExitPort()),
                                                  ("p", P())], entry_points=False, disable=NO_ENGINES)
    m.run()
    m.close()
    assert seen == [("hook", True, True), ("device closed", True)]
    assert m.state == "closed" and m.engine is None
    m.close()  # a second close does nothing
    assert len(seen) == 2


def test_vm_closing_error_still_closes_devices_and_engine():
    closed = []

    class Dev:
        name = "d"

        def close(self):
            closed.append("d")

    class Bad:
        @hookimpl
        def setup_machine(self, machine):
            machine.devices["d"] = Dev()

        @hookimpl
        def vm_closing(self, machine):
            raise RuntimeError("plugin bug")

    m = make_machine(cfg([out(0xF4, 0)]), plugins=[("scripted", ScriptedPlugin()), ("bad", Bad())],
                     entry_points=False, disable=NO_ENGINES)
    with pytest.raises(RuntimeError, match="plugin bug"):
        m.close()
    assert closed == ["d"] and m.engine is None and m.state == "closed"


def test_hook_vm_reset():
    seen = []

    class P:
        @hookimpl
        def vm_reset(self, machine):
            seen.append((machine.resets, machine.vcpus[0].get_regs().rip))

    m = make_machine(cfg([out(0x80, 1, length=2)] * 2), plugins=[("scripted", ScriptedPlugin()), ("p", P())],
                     entry_points=False, disable=NO_ENGINES)
    try:
        m.control.max_exits = 2
        m.run()
        assert m.vcpus[0].get_regs().rip == 4
        m.reset()
        assert seen == [(1, 0)]   # called after vCPUs were put back
    finally:
        m.close()


def test_hook_save_state(tmp_path):
    class P:
        def __init__(self):
            self.counter = 0

        @hookimpl
        def save_state(self, machine):
            return {"p.counter": self.counter}

        @hookimpl
        def restore_state(self, machine, state):
            self.counter = state["p.counter"]

    p = P()
    m = make_machine(cfg([out(0x80, 1, length=3)] * 2), plugins=[("scripted", ScriptedPlugin()), ("p", p)],
                     entry_points=False, disable=NO_ENGINES)
    try:
        m.control.max_exits = 2
        m.run()
        m.memory.write(0x500, b"snapshot me")
        p.counter = 42
        snap = tmp_path / "vm.snap"
        save_snapshot(m, snap)
        rip = m.vcpus[0].get_regs().rip
        m.memory.write(0x500, b"XXXXXXXXXXX")
        p.counter = 0
        m.reset()
        load_snapshot(m, snap)
        assert m.memory.read(0x500, 11) == b"snapshot me"
        assert m.vcpus[0].get_regs().rip == rip
        assert p.counter == 42
    finally:
        m.close()


def test_hook_restore_state(tmp_path):
    test_hook_save_state(tmp_path)


def test_hook_report_unhandled_exit():
    class P:
        @hookimpl
        def report_unhandled_exit(self, vcpu, exit, lines):
            lines.append(f"hint: nobody handles {ExitReason(exit.reason).name} yet")

    r = run([{"reason": "RDPMC", "instruction_length": 2}], ("p", P()))
    assert r.stop.kind == "unhandled-exit"
    assert r.stop.report[-1] == "hint: nobody handles RDPMC yet"


def test_hook_run_report():
    class P:
        @hookimpl
        def run_report(self, machine, report):
            report.add_section("mine", [f"ports used: {machine.pio.unclaimed_writes}"])
            report.add_counter("mine", 1)

    r = run([out(0x80, 1), out(0xF4, 0)], ("p", P()))
    assert ("mine", ["ports used: 1"]) in r.report.sections
    assert "-- mine --" in r.report.to_text()
    assert '"mine": 1' in r.report.to_json()


def test_damaged_snapshot_is_refused_naming_the_file(tmp_path):
    import json
    import zipfile

    from smartvm_core.errors import SnapshotError

    m = make_machine(cfg([]), plugins=[("scripted", ScriptedPlugin())], entry_points=False, disable=NO_ENGINES)
    try:
        snap = tmp_path / "vm.snap"
        save_snapshot(m, snap)
        with zipfile.ZipFile(snap) as z:
            meta = json.loads(z.read("machine.json"))
            members = {n: z.read(n) for n in z.namelist()}
        meta["cpu"]["vcpus"][0] = {"regs": "garbage"}
        members["machine.json"] = json.dumps(meta).encode()
        bad = tmp_path / "bad.snap"
        with zipfile.ZipFile(bad, "w") as z:
            for n, data in members.items():
                z.writestr(n, data)
        with pytest.raises(SnapshotError, match="bad.snap: state does not fit this machine"):
            load_snapshot(m, bad)
        (tmp_path / "junk.snap").write_bytes(b"not a zip")
        with pytest.raises(SnapshotError, match="not a snapshot file"):
            load_snapshot(m, tmp_path / "junk.snap")
    finally:
        m.close()
