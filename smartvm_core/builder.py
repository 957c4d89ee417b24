"""The only place where an experiment and a plugin manager become a machine.

:func:`build_machine` wires, in this order: guest RAM, memory policies
(``setup_memory``), the engine, the device set, the vCPUs, ``setup_machine``,
the exit-handler table (``register_exit_handlers``), each vCPU's VMX controls
(``configure_vcpu``, then the engine refuses what it cannot honour), and the
images (``load_image``), whose entry state is applied to the boot vCPU. The
machine comes back loaded and not running.
"""

from __future__ import annotations

import sys
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import pluggy

from .config import Experiment, Section, build_experiment, load_toml
from .console import Console
from .devices import DeviceContext, DeviceRegistry
from .engines.base import Availability, Engine
from .errors import (ConfigError, EngineUnavailable, ImageError, PluginError, SmartVMError,
                     UnsupportedControl)
from .images import LoadResult
from .loop import ExitStats
from .machine import Machine

LOW_RAM_END = 0xA0000        # conventional memory ends here (640 KiB)
HIGH_RAM_START = 0x100000    # extended memory starts at 1 MiB
PCI_HOLE_START = 0xE0000000  # RAM below 4 GiB stops here
FOUR_GIB = 1 << 32


def ram_layout(size: int) -> list[tuple[str, int, int]]:
    """The PC RAM layout for ``size`` bytes: (name, gpa, size) per region.

    Up to 640 KiB the RAM is one region at 0. Above that, the legacy hole
    0xA0000-0xFFFFF (VGA, option and BIOS ROMs) and the hole below 4 GiB are
    left for devices and ROM, as on a PC: the RAM hidden by the legacy hole
    is not relocated, the part that would fall into the high hole moves
    above 4 GiB.
    """
    if size <= LOW_RAM_END:
        return [("ram", 0, size)]
    out = [("ram-low", 0, LOW_RAM_END)]
    if size > HIGH_RAM_START:
        below = min(size, PCI_HOLE_START)
        out.append(("ram-high", HIGH_RAM_START, below - HIGH_RAM_START))
        if size > PCI_HOLE_START:
            out.append(("ram-above-4g", FOUR_GIB, size - PCI_HOLE_START))
    return out


def call_registration(hook: Any, make_register: Callable[[str], Callable[..., None]], **kwargs: Any) -> None:
    """Call a ``register_*`` hook one implementation at a time, in pluggy's order,
    handing each plugin a ``register`` that knows the plugin's name."""
    for impl in reversed(hook.get_hookimpls()):
        args = {k: v for k, v in kwargs.items() if k in impl.argnames}
        if "register" in impl.argnames:
            args["register"] = make_register(impl.plugin_name)
        impl.function(**args)


def config_sections(pm: pluggy.PluginManager) -> dict[str, Section]:
    sections: dict[str, Section] = {}

    def make_register(plugin: str) -> Callable[..., None]:
        def register(name: str, keys: dict[str, Any], doc: str = "", array: bool = False) -> None:
            if name in sections:
                raise PluginError(f"plugin {plugin}: config section [{name}] is already declared by "
                                  f"{sections[name].plugin}")
            sections[name] = Section(name, dict(keys), doc, plugin, array)
        return register

    call_registration(pm.hook.register_config_sections, make_register)
    return sections


def load_experiment(pm: pluggy.PluginManager, path: Path | None = None,
                    overrides: dict[str, Any] | None = None,
                    cli_options: dict[str, Any] | None = None) -> Experiment:
    """Validate an experiment file (or none) with command-line overrides applied.

    ``overrides`` has the TOML shape (``{"machine": {"engine": "soft"}, "device":
    [...], "image": [...]}``); its values are validated as ``<command line>``.
    """
    sections = config_sections(pm)
    raw: dict[str, Any] = {}
    source = "<command line>"
    base_dir = Path.cwd()
    if path is not None:
        raw = load_toml(path)
        source = str(path)
        base_dir = path.resolve().parent
    if overrides:
        # validate the overrides on their own first, so errors name the command line
        cli_raw = {k: v for k, v in overrides.items() if v}
        if cli_raw.get("image"):  # images given on the command line are relative to the current directory
            cli_raw["image"] = [{**im, "path": str(Path(im["path"]).resolve())} if isinstance(im, dict)
                                and isinstance(im.get("path"), str) else im for im in cli_raw["image"]]
        build_experiment(cli_raw, sections, source="<command line>", base_dir=Path.cwd())
        for name, value in cli_raw.items():
            if isinstance(value, list):
                raw[name] = [*raw.get(name, []), *value] if name == "device" else value
            else:
                table = raw.setdefault(name, {})
                if not isinstance(table, dict):
                    raise ConfigError(source, name, "expected a table")
                table.update(value)
    exp = build_experiment(raw, sections, source=source, base_dir=base_dir)
    exp.cli = dict(cli_options or {})
    pm.hook.configure.call_historic(kwargs={"experiment": exp})
    return exp


class EngineTable(Mapping[str, "type[Engine]"]):
    """Registered engines by name; an engine registered by reference is imported when first looked up.

    ``register_engines`` may hand over a class or a reference ``"package.module:Class"``
    with its ``name``, so that naming an engine costs nothing until it is
    chosen, probed or listed: ``"kvm" in table`` and ``list(table)`` import
    nothing, ``table["soft"]`` imports the soft engine (and unicorn).
    """

    def __init__(self) -> None:
        #: name -> (registering plugin, the class or its "module:Class" reference)
        self._entries: dict[str, tuple[str, "type[Engine] | str"]] = {}

    def add(self, plugin: str, engine: "type[Engine] | str", name: str | None = None) -> None:
        if isinstance(engine, str):
            module, sep, qualname = engine.partition(":")
            if not sep or not module or not qualname or not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin}: register_engines wants an Engine subclass or "
                                  f"register('package.module:Class', name='engine'), got {engine!r} name={name!r}")
        else:
            if not (isinstance(engine, type) and issubclass(engine, Engine)):
                raise PluginError(f"plugin {plugin}: register_engines wants an Engine subclass, got {engine!r}")
            if name is not None and name != engine.name:
                raise PluginError(f"plugin {plugin}: engine class {engine.__qualname__} is named "
                                  f"{engine.name!r}, not {name!r}")
            name = engine.name
        if name in self._entries:
            raise PluginError(f"plugin {plugin}: engine {name!r} is already registered "
                              f"(by {self._entries[name][0]})")
        self._entries[name] = (plugin, engine)

    def __getitem__(self, name: str) -> "type[Engine]":
        plugin, engine = self._entries[name]
        if isinstance(engine, str):
            engine = self._resolve(plugin, name, engine)
            self._entries[name] = (plugin, engine)
        return engine

    @staticmethod
    def _resolve(plugin: str, name: str, ref: str) -> "type[Engine]":
        import importlib
        module, _, qualname = ref.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise PluginError(f"plugin {plugin}: engine {name!r}: cannot load {ref}: {type(e).__name__}: {e}") from e
        if not (isinstance(obj, type) and issubclass(obj, Engine)):
            raise PluginError(f"plugin {plugin}: engine {name!r}: {ref} is not an Engine subclass")
        if obj.name != name:
            raise PluginError(f"plugin {plugin}: engine {name!r}: {ref} is named {obj.name!r}")
        return obj

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def registered_engines(pm: pluggy.PluginManager) -> EngineTable:
    """Every engine the plugins register (see :class:`EngineTable`: references load on first use)."""
    engines = EngineTable()

    def make_register(plugin: str) -> Callable[..., None]:
        def register(engine: "type[Engine] | str", *, name: str | None = None) -> None:
            engines.add(plugin, engine, name)
        return register

    call_registration(pm.hook.register_engines, make_register)
    return engines


def probe_engines(engines: Mapping[str, type[Engine]]) -> dict[str, Availability]:
    """Each engine's :class:`Availability` (this loads engines registered by reference)."""
    out = {}
    for name in engines:
        try:
            out[name] = engines[name].probe()
        except PluginError as e:  # an engine that cannot even be loaded
            out[name] = Availability(False, str(e))
        except Exception as e:  # a probe must not raise; report it as unusable
            out[name] = Availability(False, f"probe failed: {type(e).__name__}: {e}")
    return out


def choose_engine(pm: pluggy.PluginManager, experiment: Experiment) -> type[Engine]:
    engines = registered_engines(pm)
    if not engines:
        raise EngineUnavailable("no engine is registered (are the soft and kvm plugins disabled?)")
    name = experiment.engine
    if name == "auto":
        available = probe_engines(engines)
        chosen = pm.hook.select_engine(experiment=experiment, available=available)
        if chosen is None:
            why = "; ".join(f"{n}: {a.reason}" for n, a in available.items())
            raise EngineUnavailable(f"no usable engine on this host ({why})")
        name = chosen
    if name not in engines:
        raise ConfigError(experiment.source, "machine.engine",
                          f"unknown engine {name!r} (registered: {', '.join(sorted(engines))})")
    avail = engines[name].probe()
    if not avail.usable:
        raise EngineUnavailable(f"engine {name} cannot run here: {avail.reason}")
    return engines[name]


def make_console(experiment: Experiment) -> Console:
    out = experiment.console_output
    if out == "stdout":
        return Console(sys.stdout.buffer)
    if out == "none":
        return Console(None)
    path = Path(out[5:])
    try:
        return Console(open(path, "ab"))
    except OSError as e:
        raise ConfigError(experiment.source, "console.output", f"cannot open {path}: {e.strerror}") from None


def build_machine(pm: pluggy.PluginManager, experiment: Experiment, *, console: Console | None = None) -> Machine:
    """Build a loaded machine from a validated experiment (see the module doc for the order)."""
    machine = Machine(experiment, pm.hook, console or make_console(experiment))
    try:
        _wire(pm, experiment, machine)
    except BaseException:
        machine.close()
        raise
    return machine


def _wire(pm: pluggy.PluginManager, experiment: Experiment, machine: Machine) -> None:
    for name, gpa, size in ram_layout(experiment.memory):
        machine.memory.add_ram(gpa, size, name)
    pm.hook.setup_memory(machine=machine)

    engine_cls = choose_engine(pm, experiment)
    machine.engine = engine_cls(machine.memory, experiment.engine_options)
    if experiment.engine_options.irqchip == "kernel":
        machine.irq.route_to_engine(machine.engine.set_irq)

    registry = DeviceRegistry()
    call_registration(pm.hook.register_devices, registry.make_register)
    names: dict[str, int] = {}
    for spec in registry.expand(experiment.devices):
        params = registry.check_params(spec)
        n = names.get(spec.type, 0)
        names[spec.type] = n + 1
        name = spec.name or (spec.type if n == 0 else f"{spec.type}{n}")
        if name in machine.devices:
            raise ConfigError(spec.source, f"device {name!r}", "two devices have this name")
        ctx = DeviceContext(name=name, memory=machine.memory, pio=machine.pio, mmio=machine.mmio,
                            irq=machine.irq, clock=machine.clock, console=machine.console,
                            request_exit=machine.request_exit, request_reset=machine.request_reset,
                            services=machine.services, irqchip=experiment.engine_options.irqchip,
                            vcpus=experiment.vcpus, ram_size=experiment.memory)
        try:
            device = registry.types[spec.type].factory(ctx, params)
        except SmartVMError as e:
            raise ConfigError(spec.source, f"device {name!r}", str(e)) from None
        if device is not None:
            machine.devices[name] = device

    for i in range(experiment.vcpus):
        machine.vcpus.append(machine.engine.create_vcpu(i))
        machine.stats.append(ExitStats())

    pm.hook.setup_machine(machine=machine)
    call_registration(pm.hook.register_exit_handlers, machine.dispatch.make_register, machine=machine)
    machine.dispatch.freeze()

    for vcpu in machine.vcpus:
        pm.hook.configure_vcpu(vcpu=vcpu, machine=machine)
        problems = machine.engine.unsupported_controls(vcpu.vmcs)
        if problems:
            raise UnsupportedControl(
                f"{experiment.source}: engine {machine.engine.name} cannot honour the VMX controls asked for:\n  "
                + "\n  ".join(problems))

    for image in experiment.images:
        result = pm.hook.load_image(machine=machine, image=image)
        if result is None:
            fmt = f" as {image.format}" if image.format != "auto" else ""
            raise ImageError(str(image.path), "format", f"no installed loader recognises this image{fmt} "
                             "(is the smartvm-boot plugin installed and enabled?)")
        apply_entry_state(machine, result)
        machine.load_results.append(result)

    stop = experiment.stop
    if stop.max_exits:
        machine.control.max_exits = stop.max_exits
    if stop.marker:
        machine.console.marker = stop.marker.encode()
        machine.console.on_marker = lambda m: machine.stop("marker", f"console printed {m.decode(errors='replace')!r}")
    machine.mark_loaded()


def apply_entry_state(machine: Machine, result: LoadResult) -> None:
    """Set the boot vCPU from a loader's result (loaders never touch vCPUs)."""
    vcpu = machine.vcpus[0]
    if result.sregs is not None:
        vcpu.set_sregs(result.sregs)
    if result.regs is not None:
        vcpu.set_regs(result.regs)
    for index, value in result.msrs.items():
        vcpu.set_msr(index, value)
