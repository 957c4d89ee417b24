"""The machine: memory, buses, clock, interrupt routing, vCPUs and lifecycle.

A machine is made by :mod:`smartvm_core.builder` (the only place where an
experiment and a plugin manager become a machine). Its lifecycle::

    created --load--> loaded --run--> running --(stop condition)--> stopped
                                        |  ^
                                  pause |  | resume
                                        v  |
                                       paused

``reset`` puts vCPUs and devices back in the state they had when the
machine was loaded; ``close`` releases what plugins hold (``vm_closing``),
the devices (their ``close()``: backends' files, sockets and ptys), the
engine and guest memory.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import attrs

from .bus import Bus
from .clock import VirtualClock
from .console import Console
from .irq import InterruptRouter
from .loop import DispatchTable, ExitStats, run_vcpu
from .memory import GuestMemory

if TYPE_CHECKING:
    from .config import Experiment
    from .engines.base import Engine, EngineVcpu
    from .exit import VmExit


@attrs.define
class StopReason:
    """Why a run ended.

    ``kind`` is one of ``exit-code`` (the guest asked, ``exit_code`` set),
    ``marker`` (the console printed the stop marker), ``max-exits``,
    ``timeout``, ``unhandled-exit``, ``triple-fault``, ``halted`` (HLT with
    nothing that could wake the vCPU), ``user`` (``Machine.stop`` or Ctrl-C)
    and ``error`` (an engine or plugin failure).
    """

    kind: str
    detail: str = ""
    exit_code: int | None = None
    #: the full report for unhandled exits and errors
    report: list[str] = attrs.Factory(list)
    vcpu: int | None = None

    #: kinds that mean the VM failed
    FAILURES = ("unhandled-exit", "triple-fault", "error")

    @property
    def failed(self) -> bool:
        return self.kind in self.FAILURES


class RunControl:
    """Flags the loop reads on every exit: plain attributes, no locks."""

    __slots__ = ("stop_requested", "pause_requested", "max_exits")

    def __init__(self) -> None:
        self.stop_requested = False
        self.pause_requested = False
        self.max_exits = 1 << 62


class Machine:
    def __init__(self, experiment: "Experiment", hook: Any, console: Console | None = None) -> None:
        self.experiment = experiment
        self.hook = hook
        self.memory = GuestMemory()
        self.pio = Bus("pio", 0x10000)
        self.mmio = Bus("mmio", 1 << 52)
        self.clock = VirtualClock()
        self.irq = InterruptRouter()
        self.console = console or Console()
        self.devices: dict[str, Any] = {}
        #: objects plugins publish for each other by name
        self.services: dict[str, Any] = {}
        self.engine: "Engine | None" = None
        self.vcpus: list["EngineVcpu"] = []
        self.stats: list[ExitStats] = []
        self.dispatch = DispatchTable()
        self.control = RunControl()
        self.state = "created"
        self.stop_reason: StopReason | None = None
        self.load_results: list[Any] = []
        self.started_at: float | None = None
        self.wall_seconds = 0.0
        self._stop_lock = threading.Lock()
        self._resume = threading.Condition()
        self._parked = 0
        self._idle = threading.Condition()
        self._initial_state: dict[str, Any] | None = None
        #: resets since the machine was built
        self.resets = 0
        self.irq.on_change = self._wake_idle
        self.clock.on_new_deadline = self._on_new_deadline

    # -- lifecycle ------------------------------------------------------------
    def mark_loaded(self) -> None:
        from . import persist
        self._initial_state = persist.capture_cpu_and_devices(self)
        self.state = "loaded"

    def run(self) -> StopReason:
        """Run every vCPU until a stop condition; returns why it stopped."""
        if self.state not in ("loaded", "stopped"):
            raise RuntimeError(f"cannot run a machine that is {self.state}")
        self.dispatch.freeze()
        self.control.stop_requested = False
        self.stop_reason = None
        self.state = "running"
        self.hook.vm_started(machine=self)
        self.started_at = time.monotonic()
        timeout = self.experiment.stop.timeout
        watchdog = None
        if timeout:
            watchdog = threading.Timer(timeout, lambda: self.stop("timeout", f"wall time {timeout:g} s elapsed"))
            watchdog.daemon = True
            watchdog.start()
        from .loop import make_inline_dispatcher
        for i, (vcpu, stats) in enumerate(zip(self.vcpus, self.stats)):
            vcpu.set_inline_dispatcher(make_inline_dispatcher(self, vcpu, stats, boot=i == 0))
        threads = []
        try:
            for vcpu, stats in list(zip(self.vcpus, self.stats))[1:]:
                t = threading.Thread(target=self._run_guarded, args=(vcpu, stats, False),
                                     name=f"vcpu{vcpu.index}", daemon=True)
                t.start()
                threads.append(t)
            self._run_guarded(self.vcpus[0], self.stats[0], True)
        except KeyboardInterrupt:
            self.stop("user", "interrupted (Ctrl-C)")
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self.stop("user", "run ended")  # no-op if a reason is already set
            for t in threads:
                t.join()
            self.wall_seconds = time.monotonic() - self.started_at
            self.state = "stopped"
        assert self.stop_reason is not None
        self.hook.vm_stopped(machine=self, reason=self.stop_reason)
        return self.stop_reason

    def _run_guarded(self, vcpu: "EngineVcpu", stats: ExitStats, boot: bool) -> None:
        from .errors import SmartVMError
        try:
            run_vcpu(self, vcpu, stats, boot=boot)
        except SmartVMError as e:
            self.stop("error", str(e), vcpu=vcpu.index)
        except Exception as e:  # a plugin or engine bug: stop with its traceback in the report
            import traceback
            self.stop("error", f"{type(e).__name__}: {e}", vcpu=vcpu.index,
                      report=traceback.format_exc().splitlines())

    def stop(self, kind: str, detail: str = "", *, exit_code: int | None = None,
             report: list[str] | None = None, vcpu: int | None = None) -> None:
        """Stop the machine (from any thread); the first reason given wins."""
        with self._stop_lock:
            if self.stop_reason is None:
                self.stop_reason = StopReason(kind, detail, exit_code, report or [], vcpu)
            self.control.stop_requested = True
        self._kick_all()
        self.resume()

    def request_exit(self, code: int) -> None:
        """The guest asked to end the run with ``code`` (isa-debug-exit, hypercall, DOS exit)."""
        self.stop("exit-code", f"guest exit code {code}", exit_code=code)

    def request_reset(self) -> None:
        """The guest asked for a reset (i8042 0xFE, port 0xCF9): done between exits."""
        self.services["reset_requested"] = True
        self._kick_all()

    def pause(self, timeout: float = 5.0) -> bool:
        """Stop entering the guest; returns once every running vCPU has parked."""
        if self.state != "running":
            return True
        self.clock.pause()
        self.control.pause_requested = True
        self._kick_all()
        deadline = time.monotonic() + timeout
        with self._resume:
            while self._parked < len(self.vcpus) and not self.control.stop_requested:
                if not self._resume.wait(max(0.0, deadline - time.monotonic())):
                    return False
        self.state = "paused"
        return True

    def resume(self) -> None:
        with self._resume:
            if self.control.pause_requested:
                self.control.pause_requested = False
                self.clock.resume()
                if self.state == "paused":
                    self.state = "running"
            self._resume.notify_all()

    def _park(self, vcpu: "EngineVcpu") -> None:
        with self._resume:
            self._parked += 1
            self._resume.notify_all()
            while self.control.pause_requested and not self.control.stop_requested:
                self._resume.wait()
            self._parked -= 1

    def reset(self) -> None:
        """Put vCPUs and devices back in their state at load time (memory is kept)."""
        from . import persist
        if self._initial_state is None:
            raise RuntimeError("reset before the machine was loaded")
        persist.restore_cpu_and_devices(self, self._initial_state)
        self.services.pop("reset_requested", None)
        self.resets += 1
        self.hook.vm_reset(machine=self)

    def close(self) -> None:
        """Release everything the machine holds; a second call does nothing.

        In this order: the ``vm_closing`` hook (plugins release their own
        resources), ``close()`` of every device that has one, last created
        first (backends: files, sockets, ptys, reader threads), the engine,
        guest memory. Every step runs even if an earlier one raised; the first
        exception is raised at the end.
        """
        if self.state == "closed":
            return
        errors: list[BaseException] = []
        try:
            self.hook.vm_closing(machine=self)
        except Exception as e:
            errors.append(e)
        for device in reversed(list(self.devices.values())):
            close = getattr(device, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as e:
                    errors.append(e)
        if self.engine is not None:
            try:
                self.engine.close()
            except Exception as e:
                errors.append(e)
            self.engine = None
        self.memory.close()
        self.state = "closed"
        if errors:
            raise errors[0]

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- services for handlers ---------------------------------------------------
    def wait_for_interrupt(self, vcpu: "EngineVcpu", rflags_if: bool) -> bool:
        """Block a halted vCPU until an interrupt is pending or the next timer is due.

        Returns ``False`` (and stops the machine with ``halted``) if nothing can
        ever wake it: interrupts disabled, nothing pending and no timer armed,
        on a single-vCPU machine.
        """
        while not self.control.stop_requested and not self.control.pause_requested:
            if self.services.get("reset_requested"):
                return True
            if rflags_if and self.irq.pending():
                return True
            if self.irq.controller is None and self.irq.engine_routed and rflags_if:
                return True  # the engine's own irqchip delivers
            deadline = self.clock.next_deadline()
            now = self.clock.now_ns()
            if deadline is not None and deadline <= now:
                self.clock.run_due()
                continue
            if deadline is None and (not rflags_if or self.irq.controller is None) and len(self.vcpus) == 1:
                self.stop("halted", "HLT with interrupts disabled and nothing that could wake the vCPU"
                          if not rflags_if else "HLT with no interrupt controller and no timer armed",
                          vcpu=vcpu.index)
                return False
            wait = 1.0 if deadline is None else max(0.0, (deadline - now) / 1e9)
            with self._idle:
                self._idle.wait(min(wait, 1.0))
        return True

    def _wake_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()

    def _on_new_deadline(self) -> None:
        self._wake_idle()
        if self.vcpus and self.state == "running":
            self.vcpus[0].kick()

    def _kick_all(self) -> None:
        for v in self.vcpus:
            try:
                v.kick()
            except Exception:  # kicking a vCPU that is not running is harmless
                pass
        self._wake_idle()

    def unhandled_exit(self, vcpu: "EngineVcpu", exit: "VmExit") -> None:
        from .report import unhandled_exit_report
        lines = unhandled_exit_report(vcpu, exit, self.memory)
        self.hook.report_unhandled_exit(vcpu=vcpu, exit=exit, lines=lines)
        self.stop("unhandled-exit", exit.describe(), report=lines, vcpu=vcpu.index)

    # -- introspection -------------------------------------------------------------
    def exit_counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for s in self.stats:
            for name, (n, _) in s.by_reason().items():
                total[name] = total.get(name, 0) + n
        return total
