"""The plugin contract: every hook Smart-VM calls, in the order it calls them.

Implement a hook with ``@smartvm_core.hookimpl`` on a function or method of
the same name. Hooks are called with keyword arguments; an implementation may
accept fewer arguments than the specification lists, so new arguments never
break existing plugins.

Orders that matter:

* implementations run last-registered first (pluggy's LIFO), adjusted by
  ``tryfirst``/``trylast``. Built-in plugins are registered first, then entry
  points, then plugins given on the command line or in the experiment;
* ``firstresult`` hooks stop at the first implementation returning non-``None``.

"Use in experiment plugins" says whether a plugin module named in an
experiment file (``[plugins] load = ["mymod"]``) may implement the hook, and
whether it is still consulted if registered after the machine started.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import argparse

    from .config import Experiment
    from .engines.base import Availability, EngineVcpu
    from .exit import VmExit
    from .images import ImageSpec, LoadResult
    from .machine import Machine, StopReason
    from .report import RunReport

hookspec = pluggy.HookspecMarker("smartvm")
hookimpl = pluggy.HookimplMarker("smartvm")


# ---------------------------------------------------------------------------
# Initialization hooks: called once per plugin manager, before any machine
# ---------------------------------------------------------------------------


@hookspec(historic=True)
def add_cli_options(parser: "argparse.ArgumentParser") -> None:
    """Add command-line options to ``smartvm run``.

    Called once when the CLI builds its parser, before the command line is
    parsed. Options land in ``Experiment.cli`` under their ``dest`` names.

    :param parser: the ``argparse`` parser of the ``run`` sub-command. Use an
        option group named after your plugin.

    .. note:: Historic: a plugin registered later still receives the call.

    Use in experiment plugins: yes; plugins named by ``-p MODULE`` or in the
    ``[plugins] load`` list of the experiment file given on the command line
    are registered before the parser is built.
    """


@hookspec
def register_config_sections(register: Callable[..., None]) -> None:
    """Declare the experiment-file sections this plugin reads.

    Called once while an experiment file is validated. The core refuses any
    top-level section nobody declared, naming the file and the section.

    :param register: call ``register(name, keys, doc="")`` once per section;
        ``keys`` maps each allowed key to a :class:`smartvm_core.config.Key`
        (type, default, check). Unknown keys in the section are refused.

    Use in experiment plugins: yes; they are loaded before their sections are
    validated.
    """


@hookspec(historic=True)
def configure(experiment: "Experiment") -> None:
    """Read the validated experiment before any machine is built.

    Called once, after the file and flags have been validated. Plugins read
    their own sections from ``experiment.sections`` and keep what they need.

    :param experiment: the validated :class:`smartvm_core.config.Experiment`.

    .. note:: Historic: a plugin registered later still receives the call.

    Use in experiment plugins: yes, and still consulted if registered late.
    """


# ---------------------------------------------------------------------------
# Registration hooks: called while a machine is built
# ---------------------------------------------------------------------------


@hookspec
def register_engines(register: Callable[..., None]) -> None:
    """Register engine classes.

    Called once per plugin manager when engines are first needed (``run``,
    ``info``).

    :param register: call ``register(engine_class)`` with a subclass of
        :class:`smartvm_core.engines.base.Engine`, or
        ``register("package.module:Class", name="engine")`` to name it by
        reference: the module is imported only when that engine is chosen,
        probed or listed (an engine whose backend is costly to import, such
        as unicorn, then costs nothing to machines that run another engine).
        A second engine with an existing name is refused with a
        :class:`~smartvm_core.errors.PluginError`; so is a reference that
        does not load, is not an ``Engine`` subclass, or whose ``name``
        differs from the one registered, when it is first used.

    Use in experiment plugins: yes.
    """


@hookspec(firstresult=True)
def select_engine(experiment: "Experiment", available: "dict[str, Availability]") -> str | None:
    """Choose the engine for ``engine = "auto"``.

    Called once per machine when the experiment asks for ``auto``.

    Stops at first non-None result.

    :param experiment: the experiment being built.
    :param available: engine name → :class:`Availability` from each engine's
        ``probe()``.
    :returns: an engine name, or ``None`` to let the next plugin decide. The
        core's default picks ``kvm`` if it is usable and accelerated, else
        ``soft``.

    Use in experiment plugins: yes.
    """


@hookspec
def register_devices(register: Callable[..., None]) -> None:
    """Register device types that experiments can put in their device set.

    Called once per machine build, before the device set is created.

    :param register: call ``register(device_type)`` with a
        :class:`smartvm_core.devices.DeviceType` (name, factory, parameters,
        doc). Also ``register.device_set(name, [specs])`` names a set of
        devices (``pc``, ``isa-debug``). Duplicate names are refused.

    Use in experiment plugins: yes.
    """


@hookspec
def setup_memory(machine: "Machine") -> None:
    """Lay out guest-physical memory beyond the core's RAM.

    Called once per machine after the guest RAM of ``[machine] memory`` has
    been created and before devices exist. A memory policy adds regions, ROM,
    holes or listeners to ``machine.memory`` here.

    :param machine: the machine being built (engine not yet created).

    Use in experiment plugins: yes.
    """


@hookspec
def setup_machine(machine: "Machine") -> None:
    """Finish wiring a machine: memory, buses, devices and engine all exist.

    Called once per machine, after devices were created and the engine and
    its vCPUs exist, before exit handlers are collected and images loaded.

    :param machine: the machine being built.

    Use in experiment plugins: yes.
    """


@hookspec
def register_exit_handlers(register: Callable[..., None], machine: "Machine") -> None:
    """Register VM-exit handlers.

    Called once per machine start, to build the dispatch table; never per
    exit. A handler is ``handler(vcpu, exit) -> bool``: it returns ``True`` if
    it handled the exit, ``False`` to pass it to the next handler in the
    chain. A handler that handled an instruction exit completes it itself
    (``vcpu.skip_instruction()``).

    :param register: ``register(reason, handler, *, name=None, priority=0, ports=None)``;
        ``reason`` is a :class:`smartvm_core.vmx.ExitReason` (an unknown
        reason is refused). ``ports`` (``IO_INSTRUCTION`` only) limits the
        handler to those ports: it is found by one lookup, ahead of the
        handlers registered for every port. Within one reason, handlers run by descending
        ``priority``, then in the order they were registered: hook
        implementations are called last-registered first, so a third-party
        plugin's handler runs before the standard ``smartvm-exits`` one (which
        registers with ``trylast=True``).
    :param machine: the machine; take what the handler needs from it here
        (buses, memory, ``machine.stop``) rather than at exit time.

    Use in experiment plugins: yes; not consulted once the machine runs (the
    table is fixed at start).
    """


@hookspec
def register_hypercalls(register: Callable[..., None], machine: "Machine") -> None:
    """Register hypercall services (the ABI of ``docs/hypercalls.md``).

    Called once per machine start by the ``smartvm-exits`` plugin, while it
    registers its exit handlers; never per hypercall. Not called if that
    plugin is disabled.

    :param register: ``register(number, service, *, name=None)``; ``number``
        is the value the guest puts in RAX (0x100 and above: 0x00-0xFF are
        the standard services). ``service(call) -> int`` is given a
        :class:`smartvm_exits.hypercall.HypercallContext` (``vcpu``,
        ``machine``, ``args``, ``read``/``write`` of guest-linear memory) and
        returns the value for RAX (negative for errors). A number registered
        twice is refused with a :class:`~smartvm_core.errors.PluginError`.
    :param machine: the machine being started.

    Use in experiment plugins: yes; not consulted once the machine runs.
    """


@hookspec
def register_msrs(register: Callable[..., None], machine: "Machine") -> None:
    """Add model-specific registers to every vCPU's MSR store.

    Called once per machine start by the ``smartvm-exits`` plugin, after its
    architectural MSRs are defined and before vCPUs are configured. Not
    called if that plugin is disabled.

    :param register: ``register(msr, *, replace=False)`` with a
        :class:`smartvm_exits.msr.Msr` (index, name, reset value, writable
        bits, ``check``/``read``/``write`` callbacks). An index already defined
        is refused with a :class:`~smartvm_core.errors.PluginError` unless
        ``replace=True``. On ``kvm`` the MSR is put in KVM's MSR filter so the
        guest's accesses reach the store.
    :param machine: the machine being started.

    Use in experiment plugins: yes; not consulted once the machine runs.
    """


@hookspec
def register_v8086_services(register: Callable[..., None], machine: "Machine") -> None:
    """Register services that answer the INT n of 8086 programs (BIOS, DOS, your own).

    Called once per machine by the ``smartvm-v8086`` plugin, while it sets up
    its virtual-8086 monitor (after the devices exist, before images are
    loaded); never per interrupt. Not called if that plugin is disabled.
    The plugin's own BIOS and DOS services are registered first.

    :param register: ``register(vector, service, *, ah=None, replace=False)``.
        ``service(call)`` is given a :class:`smartvm_v8086.services.ServiceCall`
        (``call.state``: the program's registers and flags, changed in place;
        ``call.memory``; ``call.machine``; ``call.chain(vector)``;
        ``call.halt()``). With ``ah`` the service answers only that function
        of the vector. A vector (or vector and AH) already served is refused
        with a :class:`~smartvm_core.errors.PluginError` unless
        ``replace=True``. A service runs only while the program's IVT entry
        for the vector is the monitor's own; a program that hooked the
        vector gets the interrupt in its handler instead.
    :param machine: the machine being built.

    Use in experiment plugins: yes; not consulted once the machine runs.
    """


@hookspec
def configure_vcpu(vcpu: "EngineVcpu", machine: "Machine") -> None:
    """Set a vCPU's VMX controls and initial state.

    Called once per vCPU after the engine created it and before images are
    loaded. Controls go in ``vcpu.vmcs`` (exception bitmap, I/O and MSR
    bitmaps, CR masks ...). After all implementations ran the engine checks
    the controls and refuses those it cannot honour.

    :param vcpu: the engine's vCPU.
    :param machine: the machine.

    Use in experiment plugins: yes.
    """


@hookspec(firstresult=True)
def load_image(machine: "Machine", image: "ImageSpec") -> "LoadResult | None":
    """Load one guest image into memory.

    Called once per image in the experiment, in order, after
    :func:`setup_machine`. A loader that recognises the format writes guest
    memory and returns a :class:`smartvm_core.images.LoadResult` describing
    the entry state; the core then sets the boot vCPU from it. A loader
    never touches vCPU registers itself.

    Stops at first non-None result.

    :param machine: the machine (``machine.memory`` for writing).
    :param image: the image path, its bytes, and the options the user gave
        (``format``, ``address``, ``entry``, ``mode``, ``cmdline``, ``initrd``).
    :returns: a ``LoadResult``, or ``None`` if this loader does not recognise
        the image. A loader that recognises the format but finds the image
        malformed raises :class:`smartvm_core.errors.ImageError`.

    Use in experiment plugins: yes.
    """


# ---------------------------------------------------------------------------
# Lifecycle hooks
# ---------------------------------------------------------------------------


@hookspec
def vm_started(machine: "Machine") -> None:
    """The machine is about to enter the guest for the first time.

    Called once per run, from the thread that called ``Machine.run``, after
    images are loaded and the dispatch table is built.

    :param machine: the machine, state ``running``.

    Use in experiment plugins: yes.
    """


@hookspec
def vm_stopped(machine: "Machine", reason: "StopReason") -> None:
    """The machine stopped: every vCPU has left the guest.

    Called once per run, after every vCPU thread has finished.

    :param machine: the machine, state ``stopped``.
    :param reason: why it stopped (``kind``: ``exit-code``, ``marker``,
        ``max-exits``, ``timeout``, ``unhandled-exit``, ``triple-fault``,
        ``halted``, ``user``, ``error``), with details.

    Use in experiment plugins: yes.
    """


@hookspec
def vm_reset(machine: "Machine") -> None:
    """The machine was reset: put plugin state back to its power-on values.

    Called after ``Machine.reset`` restored the vCPUs and devices to their
    state at load time (a triple fault with ``action = "reset"``, the i8042
    0xFE command, port 0xCF9, or a call from code). Guest memory is kept, as
    a reset does on hardware.

    :param machine: the machine, between two exits (not running any vCPU).

    Use in experiment plugins: yes.
    """


@hookspec
def vm_closing(machine: "Machine") -> None:
    """The machine is being closed: release what your plugin holds for it.

    Called once per machine, from :meth:`Machine.close <smartvm_core.machine.Machine.close>`
    (``smartvm run`` closes the machine after the run report; a ``with``
    block or a failed build closes it too), while every vCPU is out of the
    guest. Afterwards the core calls ``close()`` on each device that has one
    (last created first), then releases the engine and guest memory: devices
    and memory are still usable during this call. Files, sockets, ptys and
    threads a plugin opened for the machine are released here, not at exit.

    :param machine: the machine, state ``loaded``, ``stopped`` or ``created``
        (a build that failed part-way: not every device may exist).

    .. note:: An exception raised here does not keep the rest of the machine
        open: the core closes devices, engine and memory, then re-raises it.

    Use in experiment plugins: yes.
    """


# ---------------------------------------------------------------------------
# State hooks
# ---------------------------------------------------------------------------


@hookspec
def save_state(machine: "Machine") -> "dict[str, Any] | None":
    """Contribute plugin state to a snapshot.

    Called once per snapshot, while the machine is paused or stopped. The
    core saves vCPUs, memory, devices and the engine itself.

    :param machine: the machine being saved.

    :returns: ``{key: plain data}`` (ints, strings, bytes, lists, dicts) or
        ``None``. Keys must be unique across plugins: prefix them with your
        plugin's name.

    Use in experiment plugins: yes.
    """


@hookspec
def restore_state(machine: "Machine", state: "dict[str, Any]") -> None:
    """Restore plugin state from a snapshot.

    Called once per restore, after vCPUs, memory and devices were restored.

    :param machine: the machine being restored.

    :param state: every key any plugin saved; take yours.

    Use in experiment plugins: yes.
    """


# ---------------------------------------------------------------------------
# Report hooks
# ---------------------------------------------------------------------------


@hookspec
def report_unhandled_exit(vcpu: "EngineVcpu", exit: "VmExit", lines: "list[str]") -> None:
    """Add lines to the report of an exit no handler took.

    Called once, before the VM stops with ``unhandled-exit``. The core has
    already put the exit reason, the decoded qualification, the registers and
    the disassembly at RIP in ``lines``.

    :param vcpu: the vCPU that exited (state readable, not running).
    :param exit: the :class:`~smartvm_core.exit.VmExit` nobody handled.
    :param lines: the report so far; append to it.

    Use in experiment plugins: yes.
    """


@hookspec
def run_report(machine: "Machine", report: "RunReport") -> None:
    """Add sections to the end-of-run report.

    Called once per run after :func:`vm_stopped`.

    :param machine: the stopped machine (statistics in ``machine.stats``).
    :param report: the :class:`smartvm_core.report.RunReport`; add with
        ``report.add_section(title, lines)`` and ``report.add_counter(name, value)``.

    Use in experiment plugins: yes.
    """
