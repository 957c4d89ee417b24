"""Test helpers: real core objects (buses, router, clock, memory) around the device models."""

from __future__ import annotations

from smartvm_core.bus import Bus
from smartvm_core.clock import VirtualClock
from smartvm_core.console import Console
from smartvm_core.devices import DeviceContext, DeviceRegistry
from smartvm_core.irq import InterruptRouter
from smartvm_core.memory import GuestMemory


class ManualClock(VirtualClock):
    """A virtual clock the test advances by hand (paused at 0 until told)."""

    def __init__(self) -> None:
        super().__init__()
        self.pause()
        self.set_now(0)

    def advance(self, ns: int) -> int:
        self.set_now(self.now_ns() + ns)
        return self.run_due()


class Lines:
    """Records every level change of every line (a stand-in interrupt controller)."""

    def __init__(self) -> None:
        self.levels: dict[int, bool] = {}
        self.events: list[tuple[int, bool]] = []

    def set_irq(self, line: int, level: bool) -> None:
        self.levels[line] = level
        self.events.append((line, level))

    def pending(self) -> bool:
        return False

    def acknowledge(self) -> int:
        return 0

    def rising(self, line: int) -> int:
        n, prev = 0, False
        for ln, lv in self.events:
            if ln == line:
                if lv and not prev:
                    n += 1
                prev = lv
        return n


class Rig:
    def __init__(self, ram: int = 16 << 20, irqchip: str = "user", vcpus: int = 1) -> None:
        self.memory = GuestMemory()
        if ram:
            self.memory.add_ram(0, min(ram, 0xA0000), "ram-low")
            if ram > 0x100000:
                self.memory.add_ram(0x100000, ram - 0x100000, "ram-high")
        self.pio = Bus("pio", 0x10000)
        self.mmio = Bus("mmio", 1 << 52)
        self.irq = InterruptRouter()
        self.clock = ManualClock()
        self.console = Console(None)
        self.services: dict = {}
        self.exits: list[int] = []
        self.resets = 0
        self.irqchip = irqchip
        self.vcpus = vcpus
        self.registry = DeviceRegistry()
        from smartvm_devices import plugin
        plugin.register_devices(self.registry.make_register("devices"))
        self.devices: dict = {}

    def ctx(self, name: str) -> DeviceContext:
        def reset() -> None:
            self.resets += 1
        return DeviceContext(name=name, memory=self.memory, pio=self.pio, mmio=self.mmio, irq=self.irq,
                             clock=self.clock, console=self.console, request_exit=self.exits.append,
                             request_reset=reset, services=self.services, irqchip=self.irqchip,
                             vcpus=self.vcpus, ram_size=self.memory.ram_size)

    def add(self, type_name: str, name: str | None = None, **params):
        from smartvm_core.devices import DeviceSpec
        spec = DeviceSpec(type_name, params)
        checked = self.registry.check_params(spec)
        name = name or type_name
        dev = self.registry.types[type_name].factory(self.ctx(name), checked)
        if dev is not None:
            self.devices[name] = dev
        return dev

    def add_set(self, set_name: str) -> None:
        from smartvm_core.devices import DeviceSpec
        for spec in self.registry.expand([DeviceSpec(set_name)]):
            self.add(spec.type, spec.name or (spec.type if spec.type not in self.devices else spec.type + "1"),
                     **spec.params)

    def outb(self, port: int, value: int, size: int = 1) -> None:
        self.pio.write(port, size, value)

    def inb(self, port: int, size: int = 1) -> int:
        return self.pio.read(port, size)

    def close(self) -> None:
        self.memory.close()


