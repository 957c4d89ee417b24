"""Device types, device sets and what a device is given.

A plugin registers a :class:`DeviceType` through ``register_devices``. The
experiment's device set (``[[device]]`` tables, ``--device NAME,key=value``,
or a named set such as ``pc``) picks types and parameters; the builder
checks the parameters against the type's declaration and calls its factory
with a :class:`DeviceContext`: the only door a device has to the machine.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import attrs

from .bus import Bus, BusRange
from .clock import VirtualClock
from .console import Console
from .errors import ConfigError, PluginError
from .irq import InterruptRouter, IrqLine
from .memory import GuestMemory


@attrs.define(frozen=True)
class Param:
    """One device parameter: its type, default and a one-line doc."""

    type: type | tuple[type, ...]
    default: Any = None
    doc: str = ""
    choices: tuple[Any, ...] | None = None


class StatefulDevice(Protocol):
    name: str

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...

    def state(self) -> Any: ...

    def restore(self, state: Any) -> None: ...


class DeviceContext:
    """What a device factory may use: nothing else of the machine is reachable."""

    def __init__(self, *, name: str, memory: GuestMemory, pio: Bus, mmio: Bus,
                 irq: InterruptRouter, clock: VirtualClock, console: Console,
                 request_exit: Callable[[int], None], request_reset: Callable[[], None],
                 services: dict[str, Any], irqchip: str = "user", vcpus: int = 1,
                 ram_size: int = 0) -> None:
        self.name = name
        #: ``"user"``: device-model interrupt controller; ``"kernel"``: the engine's own (KVM in-kernel irqchip)
        self.irqchip = irqchip
        #: number of vCPUs (fw_cfg, CMOS)
        self.vcpus = vcpus
        #: guest RAM in bytes as the experiment asked (CMOS, fw_cfg)
        self.ram_size = ram_size
        self.memory = memory
        self.clock = clock
        self.console = console
        self._pio = pio
        self._mmio = mmio
        self._irq = irq
        self.request_exit = request_exit
        self.request_reset = request_reset
        #: objects devices publish for each other by name (``"pic"``, ``"pci"``, ``"fw_cfg"``)
        self.services = services
        self.mapped: list[tuple[Bus, BusRange]] = []

    def irq_line(self, n: int) -> IrqLine:
        return self._irq.line(n)

    def set_interrupt_controller(self, controller: Any) -> None:
        """Attach a user-space interrupt controller (the PIC) to the machine's router."""
        self._irq.set_controller(controller)

    def map_pio(self, base: int, size: int, device: Any, name: str | None = None) -> BusRange:
        rng = self._pio.register(base, size, device, name or self.name)
        self.mapped.append((self._pio, rng))
        return rng

    def map_mmio(self, base: int, size: int, device: Any, name: str | None = None) -> BusRange:
        rng = self._mmio.register(base, size, device, name or self.name)
        self.mapped.append((self._mmio, rng))
        return rng

    def unmap(self, rng: BusRange) -> None:
        for bus, r in list(self.mapped):
            if r is rng:
                bus.unregister(r)
                self.mapped.remove((bus, r))


DeviceFactory = Callable[[DeviceContext, dict[str, Any]], Any]


@attrs.define(frozen=True)
class DeviceType:
    """A kind of device an experiment can add.

    :ivar factory: ``factory(ctx, params) -> device``; it maps the device on
        the buses through ``ctx`` and returns the object that holds its state
        (``state()``/``restore()``).
    :ivar params: parameter name → :class:`Param`; anything else is refused.
    """

    name: str
    factory: DeviceFactory
    params: dict[str, Param] = attrs.Factory(dict)
    doc: str = ""
    plugin: str = ""


@attrs.define
class DeviceSpec:
    """One device the experiment asked for."""

    type: str
    params: dict[str, Any] = attrs.Factory(dict)
    #: instance name (defaults to the type name, ``uart1`` for a second uart ...)
    name: str | None = None
    source: str = "<command line>"


class DeviceRegistry:
    def __init__(self) -> None:
        self.types: dict[str, DeviceType] = {}
        self.sets: dict[str, list[DeviceSpec]] = {}

    def make_register(self, plugin: str) -> Callable[..., None]:
        def register(device_type: DeviceType) -> None:
            if not isinstance(device_type, DeviceType):
                raise PluginError(f"plugin {plugin}: register_devices wants a DeviceType, got {device_type!r}")
            if device_type.name in self.types:
                other = self.types[device_type.name].plugin
                raise PluginError(f"plugin {plugin}: device type {device_type.name!r} is already registered by {other}")
            self.types[device_type.name] = attrs.evolve(device_type, plugin=plugin)

        def device_set(name: str, specs: list[DeviceSpec]) -> None:
            if name in self.sets:
                raise PluginError(f"plugin {plugin}: device set {name!r} is already registered")
            self.sets[name] = list(specs)

        register.device_set = device_set  # type: ignore[attr-defined]
        return register

    def expand(self, specs: list[DeviceSpec]) -> list[DeviceSpec]:
        """Expand set names (``type = "pc"``) into their devices, in order."""
        out: list[DeviceSpec] = []
        for spec in specs:
            if spec.type in self.sets and spec.type not in self.types:
                for member in self.sets[spec.type]:
                    out.append(attrs.evolve(member, params={**member.params}, source=spec.source))
            else:
                out.append(spec)
        return out

    def check_params(self, spec: DeviceSpec) -> dict[str, Any]:
        """Validate ``spec.params`` against the type; fill defaults."""
        dtype = self.types.get(spec.type)
        if dtype is None:
            known = ", ".join(sorted(self.types) + sorted(f"{s} (set)" for s in self.sets))
            raise ConfigError(spec.source, f"device {spec.type!r}", f"unknown device type; known: {known or 'none'}")
        params: dict[str, Any] = {}
        for key, value in spec.params.items():
            p = dtype.params.get(key)
            if p is None:
                allowed = ", ".join(sorted(dtype.params)) or "none"
                raise ConfigError(spec.source, f"device {spec.type}.{key}", f"unknown parameter (allowed: {allowed})")
            value = _coerce(value, p.type)
            if value is _BAD:
                raise ConfigError(spec.source, f"device {spec.type}.{key}",
                                  f"{spec.params[key]!r} is not of type {_type_name(p.type)}")
            if p.choices is not None and value not in p.choices:
                raise ConfigError(spec.source, f"device {spec.type}.{key}",
                                  f"{value!r} is not one of {', '.join(map(repr, p.choices))}")
            params[key] = value
        for key, p in dtype.params.items():
            params.setdefault(key, p.default)
        return params


_BAD = object()


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return t.__name__


def _coerce(value: Any, t: type | tuple[type, ...]) -> Any:
    types = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool) and bool not in types:
        return _BAD
    if isinstance(value, types):
        return value
    if isinstance(value, str):  # from the command line: --device uart,port=0x2f8
        for ty in types:
            try:
                if ty is int:
                    return int(value, 0)
                if ty is bool:
                    if value.lower() in ("1", "true", "yes", "on"):
                        return True
                    if value.lower() in ("0", "false", "no", "off"):
                        return False
                    continue
                if ty is float:
                    return float(value)
            except ValueError:
                continue
    if float in types and isinstance(value, int):
        return float(value)
    return _BAD
