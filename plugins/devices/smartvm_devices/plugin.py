"""Entry point of the smartvm-devices plugin (group ``smartvm``, name ``devices``).

Registers one device type per model, each with documented parameters, and
two named sets: ``isa-debug`` (a UART and the debug ports) and ``pc``
(everything PC firmware such as SeaBIOS needs). With the kvm engine's
in-kernel irqchip (``[engine] irqchip = "kernel"``) the ``pic`` and ``pit``
types create nothing: KVM emulates both (and port 0x61).

ISA device factories describe their device for the DSDT
(``services["acpi_isa_devices"]``), the PM block publishes where its
registers are (``services["acpi_pm_block"]``); ``fw_cfg`` turns that, the
vCPU count and the RAM map into ACPI and SMBIOS tables once the machine is
complete (``setup_machine``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from smartvm_core import hookimpl
from smartvm_core.devices import DeviceContext, DeviceSpec, DeviceType, Param
from smartvm_core.errors import SmartVMError

from .char.backends import BACKEND_DOC, make_backend
from .char.uart16550 import Uart16550
from .common import claim_irq, publish
from .display.vga_text import TEXT_BASE, TEXT_SIZE, VgaText, start_echo
from .firmware import acpi, smbios
from .fw_cfg import E820_RAM, FwCfg
from .input.i8042 import A20Gate, I8042
from .intc.i8259 import I8259Pair
from .misc.debug_ports import DebugCon, IsaDebugExit, PostPort
from .pci.host import I440FXHostBridge, PciHost, Piix3IsaBridge, Piix4Pm, ShadowRam
from .rtc.mc146818 import Mc146818
from .timer.i8254 import I8254, SpeakerPort
from .timer.pm_timer import AcpiPm

FOUR_GIB = 1 << 32

PORT = (int,)


def _port(default: int, what: str) -> Param:
    return Param(int, default, f"base I/O port of the {what}")


def _ram_map(ctx: DeviceContext) -> list[tuple[int, int]]:
    """Guest RAM as merged (address, length) ranges."""
    out: list[tuple[int, int]] = []
    for r in sorted(ctx.memory.ram_regions(), key=lambda r: r.gpa):
        if out and out[-1][0] + out[-1][1] == r.gpa:
            out[-1] = (out[-1][0], out[-1][1] + r.size)
        else:
            out.append((r.gpa, r.size))
    return out


def _ram_split(ctx: DeviceContext) -> tuple[int, int]:
    """(top of RAM below 4 GiB, bytes of RAM above 4 GiB)."""
    low_top = 0
    high = 0
    for gpa, size in _ram_map(ctx):
        if gpa < FOUR_GIB:
            low_top = max(low_top, min(gpa + size, FOUR_GIB))
        if gpa + size > FOUR_GIB:
            high += gpa + size - max(gpa, FOUR_GIB)
    return low_top, high


def _describe(ctx: DeviceContext, dev: acpi.IsaDevice) -> None:
    """List an ISA device for the DSDT."""
    ctx.services.setdefault("acpi_isa_devices", []).append(dev)


# -- factories ---------------------------------------------------------------------------------

def make_uart(ctx: DeviceContext, p: dict[str, Any]) -> Uart16550:
    claim_irq(ctx, p["irq"], " (set irq = ... to another line)")
    n = sum(1 for d in ctx.services.get("acpi_isa_devices", ()) if d.hid == "PNP0501") + 1
    _describe(ctx, acpi.IsaDevice(f"COM{n}", "PNP0501", ((p["port"], 8),), (p["irq"],), uid=n))
    uart = Uart16550(ctx.irq_line(p["irq"]), lambda data: None, ctx.clock, name=ctx.name)
    ctx.map_pio(p["port"], 8, uart)
    backend = make_backend(p["backend"], ctx.console)
    uart._out = backend.write
    uart.backend = backend
    backend.attach(uart.enqueue)
    return uart


def make_pic(ctx: DeviceContext, p: dict[str, Any]) -> I8259Pair | None:
    _describe(ctx, acpi.IsaDevice("PIC", "PNP0000", ((0x20, 2), (0xA0, 2)), (2,)))
    ctx.services["pic_present"] = True
    if ctx.irqchip == "kernel":
        return None  # KVM's in-kernel 8259 pair takes the ports
    pic = I8259Pair(name=ctx.name)
    ctx.map_pio(0x20, 2, pic.port("master"), f"{ctx.name}-master")
    ctx.map_pio(0xA0, 2, pic.port("slave"), f"{ctx.name}-slave")
    if p["elcr"]:
        ctx.map_pio(0x4D0, 2, pic.port("elcr"), f"{ctx.name}-elcr")
    try:
        ctx.set_interrupt_controller(pic)
    except ValueError as e:
        raise SmartVMError(f"{e}: only one interrupt controller per machine") from None
    publish(ctx, "pic", pic)
    return pic


def make_pit(ctx: DeviceContext, p: dict[str, Any]) -> I8254 | None:
    if ctx.irqchip == "kernel":
        _describe(ctx, acpi.IsaDevice("TMR", "PNP0100", ((0x40, 4),), (0,)))
        return None  # KVM's in-kernel PIT (and its port 0x61)
    claim_irq(ctx, p["irq"])
    _describe(ctx, acpi.IsaDevice("TMR", "PNP0100", ((p["port"], 4),), (p["irq"],)))
    pit = I8254(ctx.clock, ctx.irq_line(p["irq"]), name=ctx.name)
    ctx.map_pio(p["port"], 4, pit)
    if p["port61"]:
        port61 = SpeakerPort(pit, name=f"{ctx.name}-port61")
        ctx.map_pio(0x61, 1, port61, port61.name)
        pit.parts[port61.name] = port61
    publish(ctx, "pit", pit)
    return pit


def _parse_base_time(value: str) -> int | None:
    if value in ("host", "utc"):
        return None
    try:
        return int(value, 0)
    except ValueError:
        pass
    import calendar  # imported here: it costs start-up time (locale) and only dates need it
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return calendar.timegm(time.strptime(value, fmt))
        except ValueError:
            continue
    raise SmartVMError(f"base: {value!r} is not 'host', seconds since 1970 or a date YYYY-MM-DD[THH:MM:SS]")


def make_rtc(ctx: DeviceContext, p: dict[str, Any]) -> Mc146818:
    claim_irq(ctx, p["irq"])
    low_top, high = _ram_split(ctx)
    _describe(ctx, acpi.IsaDevice("RTC", "PNP0B00", ((p["port"], 2),), (p["irq"],)))
    rtc = Mc146818(ctx.clock, ctx.irq_line(p["irq"]), base_seconds=_parse_base_time(p["base"]),
                   ram_size=low_top, ram_above_4g=high, cpus=ctx.vcpus, name=ctx.name)
    ctx.map_pio(p["port"], 2, rtc)
    publish(ctx, "cmos", rtc)
    return rtc


def make_i8042(ctx: DeviceContext, p: dict[str, Any]) -> I8042:
    claim_irq(ctx, p["irq"])
    claim_irq(ctx, p["aux_irq"])
    _describe(ctx, acpi.IsaDevice("KBD", "PNP0303", ((0x60, 1), (0x64, 1)), (p["irq"],)))
    _describe(ctx, acpi.IsaDevice("MOU", "PNP0F13", (), (p["aux_irq"],)))
    a20 = ctx.services.get("a20") or A20Gate()
    kbc = I8042(ctx.irq_line(p["irq"]), ctx.irq_line(p["aux_irq"]), a20=a20,
                request_reset=ctx.request_reset, name=ctx.name)
    ctx.map_pio(0x60, 1, kbc.data_port(), f"{ctx.name}-data")
    ctx.map_pio(0x64, 1, kbc.command_port(), f"{ctx.name}-command")
    if p["port92"]:
        ctx.map_pio(0x92, 1, kbc.port92_device(), f"{ctx.name}-port92")
    publish(ctx, "a20", a20)
    publish(ctx, "i8042", kbc)
    return kbc


def make_post(ctx: DeviceContext, p: dict[str, Any]) -> PostPort:
    post = PostPort(ctx.console.write if p["echo"] else None, name=ctx.name)
    ctx.map_pio(p["port"], 1, post)
    return post


def make_debug_exit(ctx: DeviceContext, p: dict[str, Any]) -> IsaDebugExit:
    dev = IsaDebugExit(ctx.request_exit, p["iosize"], name=ctx.name)
    ctx.map_pio(p["iobase"], p["iosize"], dev)
    return dev


def _line_stamp(clock: Any) -> Any:
    """``[host seconds since now, virtual seconds] `` for each debug console line."""
    t0 = time.monotonic()

    def stamp() -> bytes:
        return f"[{time.monotonic() - t0:10.6f} host {clock.now_ns() / 1e9:10.6f} vm] ".encode()
    return stamp


def make_debugcon(ctx: DeviceContext, p: dict[str, Any]) -> DebugCon:
    dev = DebugCon(lambda data: None, p["readback"], name=ctx.name,
                   stamp=_line_stamp(ctx.clock) if p["timestamps"] else None)
    ctx.map_pio(p["port"], 1, dev)
    backend = make_backend(p["backend"], ctx.console)
    dev.out = backend.write
    dev.backend = backend
    return dev


def make_pci(ctx: DeviceContext, p: dict[str, Any]) -> PciHost:
    host = PciHost(map_io=ctx.map_pio, map_mmio=ctx.map_mmio, unmap=ctx.unmap,
                   request_reset=ctx.request_reset, name=ctx.name)
    ctx.map_pio(0xCF8, 8, host)
    if p["pam"]:
        host.shadow = ShadowRam(ctx.memory)
    host.add_function(I440FXHostBridge(host.shadow), 0, 0)
    host.add_function(Piix3IsaBridge(), 1, 0)
    if p["pm"]:
        claim_irq(ctx, p["sci_irq"])
        pm = AcpiPm(ctx.clock, ctx.irq_line(p["sci_irq"]), on_soft_off=lambda: ctx.request_exit(0),
                    name=f"{ctx.name}-acpi-pm")
        pm_function = Piix4Pm(pm)
        host.add_function(pm_function, 1, 3)
        host.parts[pm.name] = pm
        publish(ctx, "acpi_pm", pm)
        # firmware programs PMBASE: the tables read it when the guest fetches them
        publish(ctx, "acpi_pm_block", acpi.PmBlock(
            lambda: pm_function.get(Piix4Pm.PMBASE, 4) & 0xFFC0, p["sci_irq"], pm.soft_off_type))
    publish(ctx, "pci", host)
    ctx.services["reset_port"] = 0xCF9  # the PIIX reset control register
    return host


def make_acpi_pm(ctx: DeviceContext, p: dict[str, Any]) -> AcpiPm:
    claim_irq(ctx, p["irq"])
    pm = AcpiPm(ctx.clock, ctx.irq_line(p["irq"]), on_soft_off=lambda: ctx.request_exit(0), name=ctx.name)
    ctx.map_pio(p["port"], 0x40, pm)
    publish(ctx, "acpi_pm", pm)
    port = p["port"]
    publish(ctx, "acpi_pm_block", acpi.PmBlock(lambda: port, p["irq"], pm.soft_off_type))
    return pm


def make_fw_cfg(ctx: DeviceContext, p: dict[str, Any]) -> FwCfg:
    low_top, high = _ram_split(ctx)
    fw = FwCfg(ctx.memory, cpus=ctx.vcpus, ram_size=ctx.memory.ram_size, dma=p["dma"], name=ctx.name)
    ctx.map_pio(p["port"], 2, fw.port_device(), f"{ctx.name}-ports")
    if p["dma"]:
        ctx.map_pio(p["port"] + 4, 8, fw.dma_device(), f"{ctx.name}-dma")
    fw.set_e820([(gpa, size, E820_RAM) for gpa, size in _ram_map(ctx)])
    if p["acpi"]:
        _describe(ctx, acpi.IsaDevice("FWCF", "QEMU0002", ((p["port"], 12 if p["dma"] else 2),), (), sta=0x0B))
        apic = {"auto": ctx.irqchip == "kernel", "yes": True, "no": False}[p["madt"]]
        fw.add_preparer(lambda fw: _install_acpi(fw, ctx, apic))
    if p["smbios"]:
        ram = tuple(_ram_map(ctx))
        fw.add_preparer(lambda fw: _install_smbios(fw, ctx, ram))
    if p["sercon_port"]:
        fw.add_file("etc/sercon-port", p["sercon_port"].to_bytes(8, "little"))
    if p["boot_fail_wait"] >= 0:
        fw.add_file("etc/boot-fail-wait", p["boot_fail_wait"].to_bytes(4, "little"))
    for item in filter(None, (s.strip() for s in p["files"].split(";"))):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SmartVMError(f"files: {item!r} is not NAME=PATH (several are separated by ';')")
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise SmartVMError(f"files: cannot read {path}: {e.strerror}") from None
        try:
            fw.add_file(name, data)
        except ValueError as e:
            raise SmartVMError(f"files: {e}") from None
    publish(ctx, "fw_cfg", fw)
    return fw


def _install_acpi(fw: FwCfg, ctx: DeviceContext, apic: bool) -> None:
    """ACPI tables from what the machine's devices described (runs once the machine is complete)."""
    services = ctx.services
    platform = acpi.AcpiPlatform(
        cpus=ctx.vcpus, pm=services.get("acpi_pm_block"), devices=tuple(services.get("acpi_isa_devices", ())),
        apic=apic, pic=bool(services.get("pic_present")), i8042="i8042" in services,
        reset_port=services.get("reset_port"), pci="pci" in services)
    try:
        blobs = acpi.build(platform)
    except ValueError as e:
        raise SmartVMError(f"ACPI tables: {e}") from None
    cache: dict[str, Any] = {"pm": platform.pm.base() if platform.pm else None, "blobs": blobs}

    def current(which: str) -> Any:
        def refresh() -> bytes:
            base = platform.pm.base() if platform.pm else None
            if base != cache["pm"]:  # firmware moved the PM block since the tables were built
                cache["pm"], cache["blobs"] = base, acpi.build(platform)
            return getattr(cache["blobs"], which)
        return refresh

    fw.add_file(acpi.TABLES_FILE, blobs.tables, refresh=current("tables"))
    fw.add_file(acpi.RSDP_FILE, blobs.rsdp, refresh=current("rsdp"))
    fw.add_file(acpi.LOADER_FILE, blobs.loader, refresh=current("loader"))


def _install_smbios(fw: FwCfg, ctx: DeviceContext, ram: tuple[tuple[int, int], ...]) -> None:
    from smartvm_core import __version__
    platform = smbios.SmbiosPlatform(cpus=ctx.vcpus, ram_size=ctx.ram_size or sum(n for _, n in ram),
                                     ram_ranges=ram, version=__version__, bios_version=__version__)
    try:
        anchor, tables = smbios.build(platform)
    except ValueError as e:
        raise SmartVMError(str(e)) from None
    fw.add_file(smbios.ANCHOR_FILE, anchor)
    fw.add_file(smbios.TABLES_FILE, tables)


def make_vga_text(ctx: DeviceContext, p: dict[str, Any]) -> VgaText:
    vga = VgaText(ctx.memory, name=ctx.name)
    ctx.map_pio(0x3D4, 2, vga.crtc_device(), f"{ctx.name}-crtc")
    ctx.map_pio(0x3DA, 1, vga.status_device(), f"{ctx.name}-status")
    ctx.map_pio(0x3C2, 1, vga.misc_device(), f"{ctx.name}-misc")
    ctx.map_pio(0x3CC, 1, vga.misc_read_device(), f"{ctx.name}-misc-read")
    mem = ctx.memory
    if not any(r.gpa < TEXT_BASE + TEXT_SIZE and TEXT_BASE < r.end for r in mem.regions):
        mem.add_ram(TEXT_BASE, TEXT_SIZE, f"{ctx.name}-buffer")
    elif not mem.is_backed(TEXT_BASE, TEXT_SIZE):
        raise SmartVMError(f"0xB8000-0xBFFFF is partly taken by another memory region: "
                           f"{', '.join(r.name for r in mem.regions if r.gpa < TEXT_BASE + TEXT_SIZE and TEXT_BASE < r.end)}")
    if p["echo"]:
        start_echo(vga, ctx.clock, ctx.console.write, int(p["echo_interval_ms"] * 1_000_000))
    publish(ctx, "vga", vga)
    return vga


# -- registration ------------------------------------------------------------------------------------

DEVICE_TYPES = [
    DeviceType("uart", make_uart, {
        "port": _port(0x3F8, "UART (COM1 0x3f8, COM2 0x2f8, COM3 0x3e8, COM4 0x2e8)"),
        "irq": Param(int, 4, "ISA IRQ line (COM1/3: 4, COM2/4: 3)"),
        "backend": Param(str, "stdio", f"where bytes go and come from: {BACKEND_DOC}"),
    }, doc="16550A UART with 16-byte FIFOs"),
    DeviceType("pic", make_pic, {
        "elcr": Param(bool, True, "also map the PIIX edge/level control registers at 0x4d0-0x4d1"),
    }, doc="8259A master/slave pair at 0x20 and 0xa0 (the machine's interrupt controller)"),
    DeviceType("pit", make_pit, {
        "port": _port(0x40, "8254"),
        "irq": Param(int, 0, "IRQ line of counter 0"),
        "port61": Param(bool, True, "map port 0x61 (counter 2 gate and output, speaker)"),
    }, doc="8254 programmable interval timer"),
    DeviceType("rtc", make_rtc, {
        "port": _port(0x70, "RTC index/data pair"),
        "irq": Param(int, 8, "IRQ line"),
        "base": Param(str, "host", "time at power-on: 'host' (UTC now), seconds since 1970, or YYYY-MM-DD[THH:MM:SS]"),
    }, doc="MC146818 RTC and CMOS NVRAM with the PC memory-size fields"),
    DeviceType("i8042", make_i8042, {
        "irq": Param(int, 1, "keyboard IRQ line"),
        "aux_irq": Param(int, 12, "mouse IRQ line"),
        "port92": Param(bool, True, "map System Control Port A (0x92: fast A20, fast reset)"),
    }, doc="8042 keyboard controller with PS/2 keyboard and mouse (0x60/0x64)"),
    DeviceType("post", make_post, {
        "port": _port(0x80, "POST code port"),
        "echo": Param(bool, False, "print each POST code on the console"),
    }, doc="POST code port"),
    DeviceType("isa-debug-exit", make_debug_exit, {
        "iobase": _port(0xF4, "exit port"),
        "iosize": Param(int, 1, "port width in bytes", choices=(1, 2, 4)),
    }, doc="QEMU's isa-debug-exit: writing v ends the run with status (v << 1) | 1"),
    DeviceType("debugcon", make_debugcon, {
        "port": _port(0xE9, "debug console (0xe9 Bochs, 0x402 SeaBIOS)"),
        "backend": Param(str, "stdio", f"where bytes go: {BACKEND_DOC}"),
        "readback": Param(int, 0xE9, "value a read returns"),
        "timestamps": Param(bool, False, "start each line with host seconds since the machine was built "
                                         "and the virtual time: [H host V vm]"),
    }, doc="debug console port: each byte written is printed"),
    DeviceType("pci", make_pci, {
        "pam": Param(bool, True, "emulate the 82441FX PAM shadow RAM at 0xc0000-0xfffff"),
        "pm": Param(bool, True, "add the PIIX4 power-management function (ACPI PM timer at PMBASE)"),
        "sci_irq": Param(int, 9, "ACPI SCI line of the PIIX4 PM function"),
    }, doc="i440FX PCI host bridge (0xcf8/0xcfc) with PIIX3 ISA bridge and PIIX4 PM"),
    DeviceType("acpi-pm", make_acpi_pm, {
        "port": _port(0x608, "PM1 block (PM timer at +8)"),
        "irq": Param(int, 9, "SCI line"),
    }, doc="ACPI PM1 block and PM timer at a fixed port (without PCI)"),
    DeviceType("fw_cfg", make_fw_cfg, {
        "port": _port(0x510, "fw_cfg selector/data (DMA at +4)"),
        "dma": Param(bool, True, "offer the DMA interface"),
        "sercon_port": Param(int, 0x3F8, "etc/sercon-port: SeaBIOS prints its screen on this UART (0: none)"),
        "boot_fail_wait": Param(int, -1, "etc/boot-fail-wait in seconds (-1: not provided)"),
        "files": Param(str, "", "extra files: NAME=PATH;NAME=PATH"),
        "acpi": Param(bool, True, "offer ACPI tables (etc/acpi/rsdp, etc/acpi/tables, etc/table-loader)"),
        "madt": Param(str, "auto", "ACPI MADT (local APICs, I/O APIC): auto = when the machine has APICs "
                                   "(the in-kernel irqchip)", choices=("auto", "yes", "no")),
        "smbios": Param(bool, True, "offer SMBIOS (etc/smbios/smbios-anchor, etc/smbios/smbios-tables)"),
    }, doc="QEMU firmware configuration device: signature, CPUs, RAM, e820, ACPI, SMBIOS, files"),
    DeviceType("vga-text", make_vga_text, {
        "echo": Param(bool, False, "print changed screen lines on the console"),
        "echo_interval_ms": Param(float, 200.0, "how often the screen is checked for changes (virtual time)"),
    }, doc="VGA text mode: 80x25 buffer at 0xb8000 and the CRTC cursor"),
]

DEVICE_SETS = {
    "isa-debug": [
        DeviceSpec("uart"),
        DeviceSpec("post"),
        DeviceSpec("isa-debug-exit"),
        DeviceSpec("debugcon"),
    ],
    "pc": [
        DeviceSpec("pic"),
        DeviceSpec("pit"),
        DeviceSpec("rtc"),
        DeviceSpec("i8042"),
        DeviceSpec("pci"),
        DeviceSpec("fw_cfg"),
        DeviceSpec("uart"),
        DeviceSpec("post"),
        DeviceSpec("isa-debug-exit"),
        DeviceSpec("vga-text"),
    ],
}


@hookimpl
def setup_machine(machine: Any) -> None:
    """Every device exists now: let fw_cfg build the tables that describe them."""
    for dev in machine.devices.values():
        if isinstance(dev, FwCfg):
            dev.prepare()


@hookimpl
def register_devices(register: Any) -> None:
    for dtype in DEVICE_TYPES:
        register(dtype)
    for name, specs in DEVICE_SETS.items():
        register.device_set(name, specs)
