"""The entry/exit loop and its dispatch table.

The table maps each basic exit reason to a tuple of handlers, built once per
run from the ``register_exit_handlers`` hook. Per exit the loop makes no
pluggy call and allocates nothing of its own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterable

from .errors import PluginError
from .vmx import EntryInterruptionInfo, EventInjection, ExitReason

if TYPE_CHECKING:
    from .engines.base import EngineVcpu
    from .exit import VmExit
    from .machine import Machine

Handler = Callable[["EngineVcpu", "VmExit"], bool]

#: table size: every basic exit reason the SDM defines fits below this
TABLE_SIZE = 128
_IO = int(ExitReason.IO_INSTRUCTION)


class ExitStats:
    """Exits per reason and time spent in the VMM per reason, for one vCPU (ns).

    ``counts``, ``times`` and ``total`` are current after every exit;
    ``guest_ns`` when the vCPU's loop parks or ends.
    """

    __slots__ = ("counts", "times", "guest_ns", "total")

    def __init__(self) -> None:
        self.counts = [0] * TABLE_SIZE
        self.times = [0] * TABLE_SIZE
        self.guest_ns = 0
        self.total = 0

    def by_reason(self) -> dict[str, tuple[int, int]]:
        out = {}
        for reason, n in enumerate(self.counts):
            if n:
                try:
                    name = ExitReason(reason).name
                except ValueError:
                    name = f"REASON_{reason}"
                out[name] = (n, self.times[reason])
        return out


class DispatchTable:
    """Exit reason → handler chain, frozen when the machine starts.

    ``IO_INSTRUCTION`` handlers may name the ports they handle
    (``register(..., ports=[0x5356])``): such a handler is called only for
    those ports, through one dictionary lookup, ahead of the handlers
    registered for every port. This keeps doorbells off the path of all
    other port I/O: the inline dispatcher finds an I/O exit's whole chain
    with one dictionary lookup in :attr:`io_chains` (a miss gives
    :attr:`io_chain`). ``table[IO_INSTRUCTION]`` makes the same calls for
    code that indexes the table by reason alone (:func:`run_vcpu`).
    """

    def __init__(self) -> None:
        self._entries: dict[int, list[tuple[int, int, str, Handler]]] = {}
        self._port_entries: dict[int, list[tuple[int, int, str, Handler]]] = {}
        self._seq = 0
        self.table: list[tuple[Handler, ...]] = [()] * TABLE_SIZE
        #: port → handlers registered for that port (frozen)
        self.port_table: dict[int, tuple[Handler, ...]] = {}
        #: port → the whole ``IO_INSTRUCTION`` chain for that port: its own handlers, then
        #: :attr:`io_chain` (frozen); the loop looks a port up here once per I/O exit
        self.io_chains: dict[int, tuple[Handler, ...]] = {}
        #: the ``IO_INSTRUCTION`` chain of a port no handler named (frozen)
        self.io_chain: tuple[Handler, ...] = ()

    def make_register(self, plugin: str) -> Callable[..., None]:
        def register(reason: ExitReason | int, handler: Handler, *, name: str | None = None,
                     priority: int = 0, ports: Iterable[int] | None = None) -> None:
            try:
                reason = ExitReason(reason)
            except ValueError:
                raise PluginError(f"plugin {plugin}: {reason!r} is not an SDM basic exit reason") from None
            if not callable(handler):
                raise PluginError(f"plugin {plugin}: handler for {reason.name} is not callable: {handler!r}")
            label = f"{plugin}:{name or getattr(handler, '__name__', type(handler).__name__)}"
            entry = (-priority, self._seq, label, handler)
            self._seq += 1
            if ports is None:
                self._entries.setdefault(int(reason), []).append(entry)
                return
            if reason != ExitReason.IO_INSTRUCTION:
                raise PluginError(f"plugin {plugin}: ports= only applies to IO_INSTRUCTION handlers, not {reason.name}")
            port_list = list(ports)
            if not port_list or not all(isinstance(p, int) and 0 <= p <= 0xFFFF for p in port_list):
                raise PluginError(f"plugin {plugin}: handler {label}: ports= must list port numbers 0-0xFFFF")
            for port in port_list:
                self._port_entries.setdefault(port, []).append(entry)
        return register

    @staticmethod
    def _ordered(entries: list[tuple[int, int, str, Handler]]) -> list[tuple[int, int, str, Handler]]:
        """Call order: descending priority, then registration order."""
        return sorted(entries, key=lambda e: (e[0], e[1]))

    def freeze(self) -> None:
        table: list[tuple[Handler, ...]] = [()] * TABLE_SIZE
        for reason, entries in self._entries.items():
            table[reason] = tuple(h for _, _, _, h in self._ordered(entries))
        self.port_table = {port: tuple(h for _, _, _, h in self._ordered(entries))
                           for port, entries in self._port_entries.items()}
        io = int(ExitReason.IO_INSTRUCTION)
        self.io_chain = table[io]
        self.io_chains = {port: chain + table[io] for port, chain in self.port_table.items()}
        if self.port_table:
            table[io] = (self._make_port_dispatch(),) + table[io]
        self.table = table

    def _make_port_dispatch(self) -> Handler:
        get = self.port_table.get

        def dispatch_port_handlers(vcpu: "EngineVcpu", exit: "VmExit") -> bool:
            chain = get(exit.port)
            if chain is not None:
                for handler in chain:
                    if handler(vcpu, exit):
                        return True
            return False

        return dispatch_port_handlers

    def chain(self, reason: ExitReason | int) -> list[str]:
        """Names of the handlers for ``reason``, in call order (port handlers as ``port 0x..: name``)."""
        out = []
        if int(reason) == ExitReason.IO_INSTRUCTION:
            for port in sorted(self._port_entries):
                for _, _, label, _ in self._ordered(self._port_entries[port]):
                    out.append(f"port {port:#x}: {label}")
        return out + [label for _, _, label, _ in self._ordered(self._entries.get(int(reason), []))]

    def describe(self) -> dict[str, list[str]]:
        reasons = set(self._entries) | ({int(ExitReason.IO_INSTRUCTION)} if self._port_entries else set())
        return {ExitReason(r).name: self.chain(r) for r in sorted(reasons)}


def run_vcpu(machine: "Machine", vcpu: "EngineVcpu", stats: ExitStats, *, boot: bool) -> None:
    """Run one vCPU until the machine stops. The whole core, on one screen.

    Time per exit reason is measured around each dispatch; guest time is the
    rest of the loop's wall time (parked time excluded), added to
    ``stats.guest_ns`` when the loop parks or ends.
    """
    table = machine.dispatch.table
    run = vcpu.run
    counts, times = stats.counts, stats.times
    perf = time.perf_counter_ns
    irq = machine.irq
    clock = machine.clock
    control = machine.control
    last_deadline = None
    t_start = perf()
    vmm_start = sum(times)  # handler time (this loop's and inline dispatches') is not guest time
    try:
        while not control.stop_requested:
            if control.pause_requested:
                t_park = perf()
                stats.guest_ns += t_park - t_start - (sum(times) - vmm_start)
                machine._park(vcpu)
                t_start = perf()
                vmm_start = sum(times)
                continue
            if irq.controller is not None and irq.pending():               # event injection
                if vcpu.interrupt_window_open():
                    vcpu.inject_event(EventInjection(EntryInterruptionInfo.external_interrupt(irq.acknowledge())))
                else:
                    vcpu.set_interrupt_window_exiting(True)
            if boot and clock.earliest_host_ns != last_deadline:            # VMX-preemption timer
                last_deadline = clock.earliest_host_ns
                vcpu.set_timer_deadline(last_deadline)
            exit = run()                                                     # VM entry ... VM exit
            if exit is None:          # the engine dispatched inline (see make_inline_dispatcher)
                continue
            t0 = perf()
            reason = exit.reason
            for handler in table[reason]:                                    # dispatch
                if handler(vcpu, exit):
                    break
            else:
                machine.unhandled_exit(vcpu, exit)
                return
            counts[reason] += 1
            total = stats.total + 1
            stats.total = total
            times[reason] += perf() - t0
            if total >= control.max_exits:                                   # stop conditions
                machine.stop("max-exits", f"{total} exits on vCPU {vcpu.index}")
    finally:
        stats.guest_ns += perf() - t_start - (sum(times) - vmm_start)


def make_inline_dispatcher(machine: "Machine", vcpu: "EngineVcpu", stats: ExitStats,
                           *, boot: bool) -> Callable[["VmExit"], bool]:
    """The loop body for engines that can handle an exit without leaving the guest.

    The ``soft`` engine calls the returned ``dispatch(exit)`` from inside its
    CPU hooks, the ``kvm`` engine between one ``KVM_RUN`` and the next: it
    runs the same handler chain with the same accounting as
    :func:`run_vcpu`. It returns ``True`` if the guest may continue at once,
    ``False`` if the engine must return from ``run()`` (with ``None``) so the
    loop can stop, pause, inject an interrupt or re-arm the timer. An
    unhandled exit has already been reported when it returns ``False``.
    """
    table = machine.dispatch.table
    # I/O exits: one lookup for the port's whole chain, where some handler named ports
    io_chain_for = machine.dispatch.io_chains.get if machine.dispatch.io_chains else None
    io_chain = machine.dispatch.io_chain
    counts, times = stats.counts, stats.times
    perf = time.perf_counter_ns
    irq = machine.irq
    clock = machine.clock
    control = machine.control

    def dispatch(exit: "VmExit") -> bool:
        t0 = perf()
        reason = exit.reason
        for handler in table[reason] if reason != _IO or io_chain_for is None else io_chain_for(exit.port, io_chain):
            if handler(vcpu, exit):
                break
        else:
            machine.unhandled_exit(vcpu, exit)
            return False
        counts[reason] += 1
        total = stats.total + 1
        stats.total = total
        times[reason] += perf() - t0
        if total >= control.max_exits:
            machine.stop("max-exits", f"{total} exits on vCPU {vcpu.index}")
        if control.stop_requested or control.pause_requested:
            return False
        if irq.controller is not None and irq.pending():
            return False
        if boot and clock.earliest_host_ns != vcpu.timer_deadline_ns:
            return False
        return True

    return dispatch
