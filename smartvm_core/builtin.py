"""The essential ``core`` plugin: what every machine needs, as ordinary hooks.

* the core's experiment sections;
* ``auto`` engine selection (``kvm`` where hardware-backed, ``soft`` otherwise);
* the exit handlers that belong to the machine itself: port I/O to the
  port-I/O bus, EPT violations outside RAM to the MMIO bus (and guest writes
  to ROM dropped and counted), the VMX-preemption timer to the clock, and
  the interrupt-window and external-interrupt exits the loop uses;
* the ``[vmx]`` section applied to every vCPU's VMCS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .config import CORE_SECTIONS
from .errors import ConfigError
from .hookspec import hookimpl
from .vmx import (ExitReason, PinBasedControls, ProcBasedControls, ProcBasedControls2, Vector,
                  VmcsField)

if TYPE_CHECKING:
    from .config import Experiment
    from .engines.base import Availability, EngineVcpu
    from .exit import VmExit
    from .machine import Machine


@hookimpl
def register_config_sections(register: Callable[..., None]) -> None:
    for s in CORE_SECTIONS:
        register(s.name, s.keys, doc=s.doc, array=s.array)


@hookimpl(trylast=True)
def select_engine(experiment: "Experiment", available: "dict[str, Availability]") -> str | None:
    kvm = available.get("kvm")
    if kvm is not None and kvm.usable and kvm.accelerated:
        return "kvm"
    if "soft" in available and available["soft"].usable:
        return "soft"
    for name, a in available.items():
        if a.usable:
            return name
    return None


def _completes_at_exit(machine: "Machine") -> bool:
    """True if every vCPU's engine completed the I/O or MMIO instruction before reporting it.

    Such engines (KVM) set ``io_completed_at_exit = True`` on their vCPUs;
    their ``skip_instruction`` is a no-op for these exits, so the handlers
    below need not call it.
    """
    return bool(machine.vcpus) and all(getattr(v, "io_completed_at_exit", False) for v in machine.vcpus)


def make_io_handler(machine: "Machine") -> Callable[["EngineVcpu", "VmExit"], bool]:
    pio = machine.pio
    read, write = pio.read, pio.write
    unclaimed_read, unclaimed_write = pio.unclaimed_read, pio.unclaimed_write
    cache = pio.cache

    def string_io(exit: "VmExit", data: bytearray) -> None:
        # string I/O: the engine moved memory to/from ``data``
        size, port = exit.size, exit.port
        for off in range(0, exit.count * size, size):
            if exit.is_in:
                data[off:off + size] = read(port, size).to_bytes(size, "little")
            else:
                write(port, size, int.from_bytes(data[off:off + size], "little"))

    def handle_io_instruction(vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        data = exit.data
        if data is None:
            if exit.is_in:
                exit.value = read(exit.port, exit.size)
            else:
                write(exit.port, exit.size, exit.value)
        else:
            string_io(exit, data)
        vcpu.skip_instruction()
        return True

    def handle_io_instruction_completed(vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        # The same for engines that already moved RIP past the instruction, with
        # the bus lookup inlined: a port seen before goes straight to its device.
        port = exit.port
        size = exit.size
        entry = cache.get(port)
        if entry is not None and exit.data is None:
            base, end, device = entry
            if port + size <= end:
                if exit.is_in:
                    exit.value = device.read(port - base, size)
                else:
                    device.write(port - base, size, exit.value)
            elif exit.is_in:
                exit.value = unclaimed_read(port, size)
            else:
                unclaimed_write(port, size)
        elif exit.data is None:
            if exit.is_in:
                exit.value = read(port, size)
            else:
                write(port, size, exit.value)
        else:
            string_io(exit, exit.data)
        return True

    if _completes_at_exit(machine):
        handle_io_instruction_completed.__name__ = "handle_io_instruction"
        return handle_io_instruction_completed
    return handle_io_instruction


def make_mmio_handler(machine: "Machine") -> Callable[["EngineVcpu", "VmExit"], bool]:
    memory, mmio = machine.memory, machine.mmio
    region_at = memory.region_at
    skip = not _completes_at_exit(machine)  # KVM: RIP is already past the instruction

    def handle_ept_violation(vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        gpa = exit.guest_physical_address
        region = region_at(gpa)
        if region is not None:
            if region.readonly and exit.is_write:  # ROM: the write is dropped, as on hardware
                memory.rom_writes_dropped[region.name] = memory.rom_writes_dropped.get(region.name, 0) + 1
                if skip:
                    vcpu.skip_instruction()
                return True
            return False  # a RAM page a memory policy protects: not ours
        if exit.is_write:
            mmio.write(gpa, exit.size, exit.value)
        else:
            exit.value = mmio.read(gpa, exit.size)
        if skip:
            vcpu.skip_instruction()
        return True

    return handle_ept_violation


@hookimpl(trylast=True)
def register_exit_handlers(register: Callable[..., None], machine: "Machine") -> None:
    clock = machine.clock

    def handle_vmx_preemption_timer_expired(vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        clock.run_due()
        return True

    def handle_external_interrupt(vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        # A host event kicked the vCPU out (stop, pause, timer, reset request).
        if machine.services.pop("reset_requested", None):
            machine.reset()
        clock.run_due()
        return True

    def handle_interrupt_window(vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        vcpu.set_interrupt_window_exiting(False)  # the loop injects before the next entry
        return True

    register(ExitReason.IO_INSTRUCTION, make_io_handler(machine), name="pio-bus", priority=-100)
    register(ExitReason.EPT_VIOLATION, make_mmio_handler(machine), name="mmio-bus", priority=-100)
    register(ExitReason.VMX_PREEMPTION_TIMER_EXPIRED, handle_vmx_preemption_timer_expired, name="clock")
    register(ExitReason.EXTERNAL_INTERRUPT, handle_external_interrupt, name="kick")
    register(ExitReason.INTERRUPT_WINDOW, handle_interrupt_window, name="interrupt-window")


def _flags(source: str, key: str, names: list[Any], flag_type: Any) -> int:
    value = 0
    for name in names:
        if not isinstance(name, str) or name.upper() not in flag_type.__members__:
            allowed = ", ".join(flag_type.__members__)
            raise ConfigError(source, f"vmx.{key}", f"{name!r} is not a {flag_type.__name__} name ({allowed})")
        value |= int(flag_type[name.upper()])
    return value


def vmx_section_controls(experiment: "Experiment") -> dict[VmcsField, int]:
    """The ``[vmx]`` section as VMCS field values to OR in (or, for masks, to set)."""
    v = experiment.section("vmx")
    src = experiment.source
    out: dict[VmcsField, int] = {}
    if not v:
        return out
    bitmap = 0
    for item in v["exception_bitmap"]:
        if isinstance(item, str) and item.upper() in Vector.__members__:
            vec = int(Vector[item.upper()])
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 32:
            vec = item
        else:
            raise ConfigError(src, "vmx.exception_bitmap", f"{item!r} is not a vector 0-31 or a name like GP")
        bitmap |= 1 << vec
    out[VmcsField.EXCEPTION_BITMAP] = bitmap
    out[VmcsField.PIN_BASED_VM_EXEC_CONTROL] = _flags(src, "pin_based", v["pin_based"], PinBasedControls)
    proc = _flags(src, "proc_based", v["proc_based"], ProcBasedControls)
    proc2 = _flags(src, "proc_based2", v["proc_based2"], ProcBasedControls2)
    for port in v["io_bitmap_ports"]:
        if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise ConfigError(src, "vmx.io_bitmap_ports", f"{port!r} is not a port number")
    if v["io_bitmap_ports"]:
        proc |= ProcBasedControls.USE_IO_BITMAPS
    for msr in v["msr_bitmap_exits"]:
        if not isinstance(msr, int) or not 0 <= msr <= 0xFFFFFFFF:
            raise ConfigError(src, "vmx.msr_bitmap_exits", f"{msr!r} is not an MSR index")
    if v["msr_bitmap_exits"]:
        proc |= ProcBasedControls.USE_MSR_BITMAPS
    if proc2:
        proc |= ProcBasedControls.ACTIVATE_SECONDARY_CONTROLS
    out[VmcsField.CPU_BASED_VM_EXEC_CONTROL] = proc
    out[VmcsField.SECONDARY_VM_EXEC_CONTROL] = proc2
    out[VmcsField.CR0_GUEST_HOST_MASK] = v["cr0_guest_host_mask"]
    out[VmcsField.CR0_READ_SHADOW] = v["cr0_read_shadow"]
    out[VmcsField.CR4_GUEST_HOST_MASK] = v["cr4_guest_host_mask"]
    out[VmcsField.CR4_READ_SHADOW] = v["cr4_read_shadow"]
    out[VmcsField.PAGE_FAULT_ERROR_CODE_MASK] = v["page_fault_error_code_mask"]
    out[VmcsField.PAGE_FAULT_ERROR_CODE_MATCH] = v["page_fault_error_code_match"]
    return out


_OR_FIELDS = (VmcsField.EXCEPTION_BITMAP, VmcsField.PIN_BASED_VM_EXEC_CONTROL,
              VmcsField.CPU_BASED_VM_EXEC_CONTROL, VmcsField.SECONDARY_VM_EXEC_CONTROL)


@hookimpl(tryfirst=True)
def configure_vcpu(vcpu: "EngineVcpu", machine: "Machine") -> None:
    v = machine.experiment.section("vmx")
    for field, value in vmx_section_controls(machine.experiment).items():
        if field in _OR_FIELDS:
            vcpu.vmcs[field] = vcpu.vmcs[field] | value
        elif value:
            vcpu.vmcs[field] = value
    if v:
        clear = _flags(machine.experiment.source, "proc_based_clear", v["proc_based_clear"], ProcBasedControls)
        if clear:
            field = VmcsField.CPU_BASED_VM_EXEC_CONTROL
            vcpu.vmcs[field] = vcpu.vmcs[field] & ~clear
        if v["io_bitmap_ports"] or v["msr_bitmap_exits"]:
            bitmaps = getattr(vcpu, "bitmaps", None)
            if bitmaps is None:
                raise ConfigError(machine.experiment.source, "vmx",
                                  f"engine {machine.engine.name if machine.engine else '?'} has no I/O or MSR bitmaps")
            for port in v["io_bitmap_ports"]:
                bitmaps.trap_port(port)
            for msr in v["msr_bitmap_exits"]:
                bitmaps.trap_msr(msr)
