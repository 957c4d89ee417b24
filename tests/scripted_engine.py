"""A scripted engine: a real :class:`Engine` that replays a recorded exit sequence.

It lets the loop, dispatch, stop conditions and reports be tested without a
CPU. Each step of the script is a dict with the exit reason (SDM name) and
the VmExit fields to set (``port``, ``size``, ``is_in``, ``value``,
``qualification``, ``instruction_length``, ``guest_physical_address``,
``is_write``, ``msr`` ...). ``skip_instruction`` advances RIP by the step's
``instruction_length``, as a VMM does after emulating. The engine records
what the handlers answered (``answers``: values of IN/MMIO-read/RDMSR exits)
and the events injected, so tests can check them.

Registered under the name ``scripted`` by :class:`ScriptedPlugin`; the script
comes from ``EngineOptions.extra["script"]`` (``[engine] options`` in an
experiment) or from ``ScriptedEngine.default_script``.
"""

from __future__ import annotations

import threading
from typing import Any

import attrs

from smartvm_core import hookimpl
from smartvm_core.cpu import Registers, SpecialRegisters, registers_from_plain, sregs_from_plain
from smartvm_core.engines.base import Availability, Engine, EngineOptions, EngineVcpu, VmxBitmaps
from smartvm_core.errors import EngineError
from smartvm_core.exit import VmExit
from smartvm_core.memory import GuestMemory
from smartvm_core.vmx import EventInjection, ExitReason, Vmcs


class ScriptedVcpu(EngineVcpu):
    def __init__(self, engine: "ScriptedEngine", index: int, script: list[dict[str, Any]], repeat: bool) -> None:
        self.engine = engine
        self.index = index
        self.vmcs = Vmcs()
        self.bitmaps = VmxBitmaps()
        self.exit = VmExit()
        self.script = script
        self.repeat = repeat
        self.pos = 0
        self.regs = Registers()
        self.sregs = SpecialRegisters()
        self.msrs: dict[int, int] = {}
        self.answers: list[tuple[str, int]] = []
        self.injected: list[EventInjection] = []
        self.window_exiting = False
        self._kicked = threading.Event()
        self._pending: dict[str, Any] | None = None

    def _collect(self) -> None:
        step, ex = self._pending, self.exit
        if step is None:
            return
        if ex.reason == ExitReason.IO_INSTRUCTION and ex.is_in:
            self.answers.append(("in", ex.value))
        elif ex.reason == ExitReason.EPT_VIOLATION and not ex.is_write:
            self.answers.append(("mmio-read", ex.value))
        elif ex.reason == ExitReason.RDMSR:
            self.answers.append(("rdmsr", -1 if ex.fault else ex.value))
        self._pending = None

    def run(self) -> VmExit:
        self._collect()
        ex = self.exit
        if self._kicked.is_set():
            self._kicked.clear()
            return ex.reset(ExitReason.EXTERNAL_INTERRUPT)
        if self.pos >= len(self.script):
            if not self.repeat or not self.script:
                raise EngineError(f"scripted engine: script of {len(self.script)} exits exhausted")
            self.pos = 0
        step = self.script[self.pos]
        self.pos += 1
        ex.reset(ExitReason[step["reason"]], step.get("qualification", 0))
        for key, value in step.items():
            if key not in ("reason", "qualification", "regs"):
                setattr(ex, key, bytearray(value) if key == "data" else value)
        for key, value in step.get("regs", {}).items():
            setattr(self.regs, key, value)
        self._pending = step
        return ex

    def kick(self) -> None:
        self._kicked.set()

    def get_regs(self) -> Registers:
        return attrs.evolve(self.regs)

    def set_regs(self, regs: Registers) -> None:
        self.regs = attrs.evolve(regs)

    def get_sregs(self) -> SpecialRegisters:
        return sregs_from_plain(attrs.asdict(self.sregs))

    def set_sregs(self, sregs: SpecialRegisters) -> None:
        self.sregs = sregs_from_plain(attrs.asdict(sregs))

    def get_msr(self, index: int) -> int:
        return self.msrs[index]

    def set_msr(self, index: int, value: int) -> None:
        self.msrs[index] = value

    def skip_instruction(self) -> None:
        self.regs.rip += self.exit.instruction_length

    def inject_event(self, event: EventInjection) -> None:
        self.injected.append(event)

    def interrupt_window_open(self) -> bool:
        return bool(self.regs.rflags & (1 << 9))

    def set_interrupt_window_exiting(self, enabled: bool) -> None:
        self.window_exiting = enabled

    def save_state(self) -> dict[str, Any]:
        return {"regs": attrs.asdict(self.regs), "sregs": attrs.asdict(self.sregs), "pos": self.pos,
                "msrs": {str(k): v for k, v in self.msrs.items()}, "vmcs": self.vmcs.state(),
                "bitmaps": self.bitmaps.state()}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.regs = registers_from_plain(state["regs"])
        self.sregs = sregs_from_plain(state["sregs"])
        self.pos = state["pos"]
        self.msrs = {int(k): v for k, v in state["msrs"].items()}
        self.vmcs = Vmcs.from_state(state["vmcs"])
        self.bitmaps.restore(state["bitmaps"])


class ScriptedEngine(Engine):
    name = "scripted"
    description = "replays a recorded exit sequence (tests)"
    default_script: list[dict[str, Any]] = []

    @classmethod
    def probe(cls) -> Availability:
        return Availability(True, "", {"script": "from [engine] options.script"})

    def __init__(self, memory: GuestMemory, options: EngineOptions) -> None:
        super().__init__(memory, options)
        self.script = list(options.extra.get("script", self.default_script))
        self.repeat = bool(options.extra.get("repeat", False))
        self.vcpus: list[ScriptedVcpu] = []
        self.closed = False

    def create_vcpu(self, index: int) -> ScriptedVcpu:
        vcpu = ScriptedVcpu(self, index, self.script, self.repeat)
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        self.closed = True


class ScriptedPlugin:
    """Registers the scripted engine (``pm.register(ScriptedPlugin(), name="scripted")``)."""

    @hookimpl
    def register_engines(self, register):
        register(ScriptedEngine)


# an experiment plugin module can use this file directly: `[plugins] load = ["scripted_engine.py"]`
register_engines = ScriptedPlugin.register_engines.__get__(ScriptedPlugin())
