"""Entry point of the smartvm-v8086 plugin (group ``smartvm``, name ``v8086``).

When the boot plugin loads a .COM program or a boot sector, this plugin
turns the real-mode entry state into a virtual-8086 one under its monitor
(or, on KVM hosts without virtual-8086 mode, keeps real mode with the IVT
on the monitor's stubs), picks the route for the engine, and serves the
program's interrupts with its BIOS and DOS services. ``docs/v8086.md``
describes the routes, the services and the ``[v8086]`` section.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from smartvm_core import hookimpl
from smartvm_core.builder import call_registration
from smartvm_core.config import Key
from smartvm_core.errors import ConfigError, ImageError
from smartvm_core.vmx import ExitReason, VmcsField

from . import layout
from .layout import ROUTES
from .services.bios import Disk
from .state import ProgramMemory

if TYPE_CHECKING:
    from smartvm_core.images import ImageSpec, LoadResult
    from smartvm_core.machine import Machine
    from smartvm_core.report import RunReport

    from .monitor import Monitor

SECTION = "v8086"
#: loaders whose images are 8086 programs
PROGRAM_LOADERS = ("com", "bootsector")
VGA_TEXT, VGA_TEXT_SIZE = 0xB8000, 0x8000


def _port(value: int) -> int:
    if not 0 <= value <= 0xFE:
        raise ValueError(f"{value:#x}: the doorbell uses this port and the next, both below 0x100")
    return value


def _iopl(value: int) -> int:
    if not 0 <= value <= 3:
        raise ValueError(f"IOPL is 0-3, not {value}")
    return value


def _ports(value: list) -> list:
    for p in value:
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= 0xFFFF:
            raise ValueError(f"{p!r} is not a port number 0-0xffff")
    return value


KEYS = {
    "enabled": Key(bool, True, "run .COM programs and boot sectors under the virtual-8086 monitor"),
    "route": Key(str, "auto", "how sensitive instructions reach the monitor: auto, exception-bitmap, stub, "
                 "real-mode", choices=("auto", *ROUTES)),
    "iopl": Key(int, 0, "the program's IOPL (3: CLI/STI/PUSHF/POPF/IRET run without trapping)", _iopl),
    "vme": Key(bool, False, "set CR4.VME (virtual-8086 mode extensions) where the engine has them"),
    "doorbell_port": Key(int, 0xEE, "the real-mode stubs' port; the protected-mode stubs use the next one", _port),
    "trap_ports": Key(list, [], "ports whose IN/OUT the monitor emulates (denied in the I/O permission bitmap)",
                      _ports),
    "keyboard": Key(str, "", "characters the INT 16h keyboard queue starts with (\\r for Enter)"),
    "disk": Key(str, "", "disk image for INT 13h (default: the boot sector's image)"),
    "disk_drive": Key(int, -1, "BIOS drive number of `disk` (default: the boot drive, or 0x80)"),
    "disk_write": Key(str, "overlay", "where INT 13h writes go: overlay (memory) or file",
                      choices=("overlay", "file")),
    "dos_root": Key(str, "", "host directory DOS file services work in (default: none, file calls fail)"),
}


@hookimpl
def register_config_sections(register: Callable[..., None]) -> None:
    register(SECTION, KEYS, doc="the virtual-8086 monitor for .COM programs and boot sectors")


def monitor_of(machine: "Machine") -> "Monitor | None":
    return machine.services.get("v8086")


def _config(machine: "Machine") -> dict[str, Any]:
    cfg = machine.experiment.section(SECTION)
    return cfg if cfg else {k: key.default for k, key in KEYS.items()}


@hookimpl
def setup_machine(machine: "Machine") -> None:
    cfg = _config(machine)
    if not cfg["enabled"]:
        return
    memory = ProgramMemory(machine.memory, machine.mmio)
    from .monitor import Monitor  # capstone is imported only when a program runs under the monitor
    monitor = Monitor(machine, memory, rm_port=cfg["doorbell_port"], pm_port=cfg["doorbell_port"] + 1,
                      iopl=cfg["iopl"], vme=cfg["vme"], trap_ports=tuple(cfg["trap_ports"]))
    if cfg["dos_root"]:
        root = Path(cfg["dos_root"])
        root = root if root.is_absolute() else machine.experiment.base_dir / root
        if not root.is_dir():
            raise ConfigError(machine.experiment.source, "v8086.dos_root", f"no such directory: {root}")
        monitor.dos.root = root.resolve()
    monitor.bios.feed_keys(cfg["keyboard"].replace("\n", "\r"))
    machine.services["v8086"] = monitor
    call_registration(machine.hook.register_v8086_services, monitor.services.make_register, machine=machine)


@hookimpl(tryfirst=True)
def register_v8086_services(register: Callable[..., None], machine: "Machine") -> None:
    monitor = monitor_of(machine)
    if monitor is None:
        return
    monitor.bios.register(register)
    monitor.dos.register(register)


@hookimpl
def register_exit_handlers(register: Callable[..., None], machine: "Machine") -> None:
    monitor = monitor_of(machine)
    if monitor is None:
        return
    # the monitor's handlers stop the machine with its report themselves (MonitorStop)
    register(ExitReason.EXCEPTION_NMI, monitor.handle_exception_nmi, name="v8086-gp", priority=50)
    register(ExitReason.IO_INSTRUCTION, monitor.handle_rm_doorbell, name="v8086-rm-doorbell", ports=[monitor.rm_port])
    register(ExitReason.IO_INSTRUCTION, monitor.handle_pm_doorbell, name="v8086-pm-doorbell", ports=[monitor.pm_port])


def choose_route(machine: "Machine", requested: str) -> str:
    """The route for this machine's engine (``auto``: see docs/v8086.md)."""
    engine = machine.engine
    name = engine.name if engine is not None else ""
    probe = getattr(type(engine), "host_supports_v8086", None)
    v86 = bool(probe()) if callable(probe) else True
    if requested == "auto":
        if name == "soft":
            return "exception-bitmap"
        return "stub" if v86 else "real-mode"
    if requested != "real-mode" and not v86:
        raise ConfigError(machine.experiment.source, "v8086.route",
                          f"engine {name} cannot run virtual-8086 mode on this host (EFLAGS.VM does not stick); "
                          "use route = \"real-mode\" or \"auto\"")
    if requested == "exception-bitmap" and engine is not None:
        from smartvm_core.vmx import Vmcs
        vmcs = Vmcs()
        vmcs[VmcsField.EXCEPTION_BITMAP] = 1 << 13
        problems = engine.unsupported_controls(vmcs)
        if problems:
            raise ConfigError(machine.experiment.source, "v8086.route",
                              f"engine {name} cannot exit on #GP through the exception bitmap: {'; '.join(problems)}")
    return requested


def _map_if_free(machine: "Machine", gpa: int, size: int, name: str) -> None:
    mem = machine.memory
    if mem.is_backed(gpa, size):
        return
    if any(r.gpa < gpa + size and gpa < r.end for r in mem.regions) or machine.mmio.find(gpa) is not None:
        return  # something else is there (a device's RAM or MMIO): leave it
    mem.add_ram(gpa, size, name)


def _init_pc_devices(machine: "Machine") -> None:
    """What a PC BIOS programs before booting: 8259A pair at vectors 08h/70h, PIT channel 0 at 18.2 Hz."""
    pio = machine.pio
    if pio.find(0x20) is not None and pio.find(0xA0) is not None:
        for port, value in ((0x20, 0x11), (0xA0, 0x11), (0x21, 0x08), (0xA1, 0x70), (0x21, 0x04), (0xA1, 0x02),
                            (0x21, 0x01), (0xA1, 0x01), (0x21, 0xF8), (0xA1, 0xFF)):
            pio.write(port, 1, value)
    if pio.find(0x40) is not None and pio.find(0x43) is not None:
        pio.write(0x43, 1, 0x36)  # channel 0, lobyte/hibyte, mode 3
        pio.write(0x40, 1, 0)
        pio.write(0x40, 1, 0)     # divisor 65536: 18.2 Hz


def setup_program(machine: "Machine", monitor: "Monitor", result: "LoadResult", image: "ImageSpec") -> None:
    """Turn a .COM or boot-sector load into the monitor's set-up (memory, route, entry state)."""
    cfg = _config(machine)
    route = choose_route(machine, cfg["route"])
    mem = machine.memory
    # the BIOS segment (real-mode stubs) and the VGA text buffer, where nothing else is
    if not mem.is_backed(layout.BIOS_BASE + layout.RM_STUB_OFFSET, 256 * layout.RM_STUB_SIZE):
        _map_if_free(machine, layout.BIOS_BASE, layout.BIOS_SIZE, "v8086-bios")
    mem.write(layout.BIOS_BASE + layout.RM_STUB_OFFSET, layout.rm_stubs(monitor.rm_port))
    _map_if_free(machine, VGA_TEXT, VGA_TEXT_SIZE, "v8086-vga-text")
    low = mem.region_at(0)
    monitor.bios.ram_kb = min(640, (low.end if low is not None else 0) // 1024)
    high = mem.region_at(0x100000)
    monitor.bios.extended_kb = (high.end - 0x100000) // 1024 if high is not None else 0
    if route != "real-mode":
        base = layout.MONITOR_BASE
        if not mem.is_backed(base, layout.MONITOR_SIZE):
            mem.add_ram(base, layout.MONITOR_SIZE, "v8086-monitor")
        mem.write(base, layout.build_monitor_area(base, monitor.pm_port, monitor.trapped_ports))
        monitor.bios.reserved.append((base, base + layout.MONITOR_SIZE))
        if high is not None and high.contains(base):
            monitor.bios.extended_kb = (base - 0x100000) // 1024
    # INT 13h: the named disk, or the boot sector's own image
    disk = cfg["disk"]
    drive = cfg["disk_drive"]
    if result.loader == "bootsector" and drive < 0:
        drive = result.info.get("drive", 0x80)
    drive = 0x80 if drive < 0 else drive
    path = None
    if disk:
        path = Path(disk) if Path(disk).is_absolute() else machine.experiment.base_dir / disk
    elif result.loader == "bootsector":
        path = Path(result.info.get("image", image.path))
    if path is not None:
        try:
            monitor.bios.disks[drive & 0xFF] = Disk(path, drive & 0xFF, write_file=cfg["disk_write"] == "file")
        except OSError as e:
            raise ImageError(str(path), "disk", f"cannot read the disk image: {e.strerror or e}") from None
    _init_pc_devices(machine)
    assert result.regs is not None and result.sregs is not None
    result.regs, result.sregs = monitor.setup(route, result.regs, result.sregs)
    monitor.attach(machine.vcpus[0])
    if route == "exception-bitmap":
        vcpu = machine.vcpus[0]
        vcpu.vmcs[VmcsField.EXCEPTION_BITMAP] = vcpu.vmcs[VmcsField.EXCEPTION_BITMAP] | 1 << 13
        monitor.gp_bitmap_set = True
    result.info["v8086_route"] = route


@hookimpl(wrapper=True)
def load_image(machine: "Machine", image: "ImageSpec") -> Any:
    result = yield
    monitor = monitor_of(machine)
    if result is not None and monitor is not None and not monitor.active and result.loader in PROGRAM_LOADERS:
        setup_program(machine, monitor, result, image)
    return result


@hookimpl
def run_report(machine: "Machine", report: "RunReport") -> None:
    monitor = monitor_of(machine)
    if monitor is None or monitor.route is None:
        return
    if monitor.route == "real-mode" and not monitor.handed_over and machine.vcpus:
        # on this route the program's MOV CR0/LMSW runs without trapping: look whether it left real mode
        monitor.handed_over = bool(machine.vcpus[0].get_cr0() & 1)
    report.add_counter("v8086 route", monitor.route)
    report.add_counter("v8086 emulated instructions", sum(monitor.emulator.counts.values()))
    report.add_counter("v8086 services", sum(monitor.service_counts.values()))
    report.add_section("virtual-8086 monitor", monitor.report_lines())


@hookimpl
def save_state(machine: "Machine") -> dict[str, Any] | None:
    monitor = monitor_of(machine)
    return None if monitor is None else {"v8086": monitor.save()}


@hookimpl
def restore_state(machine: "Machine", state: dict[str, Any]) -> None:
    monitor = monitor_of(machine)
    if monitor is not None and "v8086" in state:
        monitor.restore(state["v8086"])
