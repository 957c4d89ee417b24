"""Reports: the unhandled-exit report and the end-of-run report (the ``report`` plugin).

The unhandled-exit report says everything needed to understand a stop:
the exit reason, the decoded qualification, the vCPU registers and the
instructions at RIP, disassembled with capstone. The run report lists exits
per reason with the time the VMM spent on them, what stopped the VM, and the
event counts each device kept (see :func:`device_counters`); plugins add
sections through the ``run_report`` hook.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .cpu import GPR_NAMES, cpu_mode
from .hookspec import hookimpl
from .vmx import ExitReason, format_qualification

if TYPE_CHECKING:
    from .engines.base import EngineVcpu
    from .exit import VmExit
    from .machine import Machine
    from .memory import GuestMemory


def disassemble(code: bytes, address: int, mode: str, count: int = 6) -> list[str]:
    """Disassemble up to ``count`` instructions with capstone (16/32/64-bit by CPU mode)."""
    import capstone
    cs_mode = {"real": capstone.CS_MODE_16, "v8086": capstone.CS_MODE_16, "protected16": capstone.CS_MODE_16,
               "protected32": capstone.CS_MODE_32, "compat": capstone.CS_MODE_32,
               "long": capstone.CS_MODE_64}[mode]
    md = capstone.Cs(capstone.CS_ARCH_X86, cs_mode)
    out = []
    for insn in md.disasm(code, address):
        out.append(f"{insn.address:#010x}: {insn.bytes.hex():<16} {insn.mnemonic} {insn.op_str}".rstrip())
        if len(out) >= count:
            break
    if not out:
        out.append(f"{address:#010x}: {code[:16].hex()}  (not decodable)")
    return out


def code_at_rip(vcpu: "EngineVcpu", memory: "GuestMemory", size: int = 48) -> tuple[int, bytes, str]:
    regs = vcpu.get_regs()
    sregs = vcpu.get_sregs()
    mode = cpu_mode(sregs, regs.rflags)
    ip = regs.rip & 0xFFFF if mode in ("real", "v8086", "protected16") else regs.rip
    linear = ip if mode == "long" else (sregs.cs.base + ip) & 0xFFFFFFFF
    gpa = vcpu.translate(linear)
    if gpa is None:
        return ip, b"", mode
    code = bytearray()
    for i in range(size):  # stop at the end of backed memory
        r = memory.region_at(gpa + i)
        if r is None:
            break
        code.append(memory.read_u8(gpa + i))
    return ip, bytes(code), mode


def register_lines(vcpu: "EngineVcpu") -> list[str]:
    regs = vcpu.get_regs()
    sregs = vcpu.get_sregs()
    lines = []
    row = []
    for i, name in enumerate(GPR_NAMES):
        row.append(f"{name.upper():>3}={getattr(regs, name):016x}")
        if i % 4 == 3:
            lines.append("  " + " ".join(row))
            row = []
    lines.append(f"  RIP={regs.rip:016x} RFLAGS={regs.rflags:08x}  mode={cpu_mode(sregs, regs.rflags)}")
    for name in ("cs", "ds", "es", "ss", "fs", "gs", "tr"):
        s = getattr(sregs, name)
        lines.append(f"  {name.upper()}={s.selector:04x} base={s.base:016x} limit={s.limit:08x} ar={s.access_rights:05x}")
    lines.append(f"  CR0={sregs.cr0:08x} CR2={sregs.cr2:016x} CR3={sregs.cr3:016x} CR4={sregs.cr4:08x} "
                 f"EFER={sregs.efer:x}")
    lines.append(f"  GDT={sregs.gdt.base:016x}/{sregs.gdt.limit:04x} IDT={sregs.idt.base:016x}/{sregs.idt.limit:04x}")
    return lines


def unhandled_exit_report(vcpu: "EngineVcpu", exit: "VmExit", memory: "GuestMemory") -> list[str]:
    try:
        reason_name = ExitReason(exit.reason).name
    except ValueError:
        reason_name = f"unknown basic exit reason {exit.reason}"
    lines = [f"unhandled VM exit on vCPU {vcpu.index}: {reason_name} ({int(exit.reason)})",
             f"  exit: {exit.describe()}"]
    lines.append(f"  qualification {exit.qualification:#x}: {format_qualification(exit.reason, exit.qualification)}")
    if exit.interruption_info:
        lines.append(f"  interruption info {exit.interruption_info:#x} error code {exit.interruption_error_code:#x}")
    if exit.guest_physical_address:
        lines.append(f"  guest-physical address {exit.guest_physical_address:#x}")
    if exit.detail:
        for k, v in exit.detail.items():
            lines.append(f"  {k}: {v}")
    try:
        lines.append("registers:")
        lines += register_lines(vcpu)
        ip, code, mode = code_at_rip(vcpu, memory)
        lines.append(f"code at RIP ({mode} mode):")
        if code:
            lines += ["  " + line for line in disassemble(code, ip, mode)]
        else:
            lines.append("  (RIP is not in guest memory)")
    except Exception as e:  # the report must not hide the original problem
        lines.append(f"  (could not read vCPU state: {type(e).__name__}: {e})")
    return lines


@attrs.define
class RunReport:
    """The end-of-run report: stop reason, exits per reason, and plugin sections."""

    stop: dict[str, Any] = attrs.Factory(dict)
    exits: dict[str, dict[str, float]] = attrs.Factory(dict)
    counters: dict[str, Any] = attrs.Factory(dict)
    #: device (or device part) name -> its counters (``reads``, ``writes``, ``dropped`` ...)
    devices: dict[str, dict[str, int]] = attrs.Factory(dict)
    sections: list[tuple[str, list[str]]] = attrs.Factory(list)

    def add_section(self, title: str, lines: list[str]) -> None:
        self.sections.append((title, list(lines)))

    def add_counter(self, name: str, value: Any) -> None:
        self.counters[name] = value

    def add_device_counters(self, name: str, counts: dict[str, int]) -> None:
        """Record one device's counters (a second call for the same name adds to them)."""
        row = self.devices.setdefault(name, {})
        for key, value in counts.items():
            row[key] = row.get(key, 0) + int(value)

    def to_json(self) -> str:
        import json
        return json.dumps({"stop": self.stop, "exits": self.exits, "counters": self.counters,
                           "devices": self.devices,
                           "sections": {t: lines for t, lines in self.sections}}, indent=2, default=str)

    def to_text(self) -> str:
        out = ["== smartvm run report =="]
        s = self.stop
        line = f"stopped: {s.get('kind')}"
        if s.get("detail"):
            line += f" ({s['detail']})"
        if s.get("exit_code") is not None:
            line += f", exit code {s['exit_code']}"
        out.append(line)
        for name, value in self.counters.items():
            out.append(f"{name}: {value}")
        if self.exits:
            out.append(f"{'exit reason':<32} {'count':>10} {'VMM time':>12} {'per exit':>10}")
            for reason, e in sorted(self.exits.items(), key=lambda kv: -kv[1]["count"]):
                n = int(e["count"])
                out.append(f"{reason:<32} {n:>10} {e['ms']:>10.3f}ms {e['us_per_exit']:>8.2f}us")
        if self.devices:
            out.append("-- devices --")
            width = max(len(name) for name in self.devices)
            for name, counts in self.devices.items():
                shown = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items() if v)
                out.append(f"{name:<{width}}  {shown or 'no accesses'}")
        for title, lines in self.sections:
            out.append(f"-- {title} --")
            out += lines
        if s.get("report"):
            out.append("-- stop report --")
            out += s["report"]
        return "\n".join(out)


def build_run_report(machine: "Machine") -> RunReport:
    report = RunReport()
    reason = machine.stop_reason
    if reason is not None:
        report.stop = {"kind": reason.kind, "detail": reason.detail, "exit_code": reason.exit_code,
                       "vcpu": reason.vcpu, "report": reason.report}
    machine.hook.run_report(machine=machine, report=report)
    return report


def device_counters(device: Any) -> dict[str, int] | None:
    """A device's ``counters`` as plain ints, or ``None`` if it keeps none.

    ``counters`` is a mapping of name to count, or an object with
    ``as_dict()`` returning one (the ``smartvm-devices`` models' ``Counters``).
    """
    counters = getattr(device, "counters", None)
    if counters is None:
        return None
    if hasattr(counters, "as_dict"):
        counters = counters.as_dict()
    if not isinstance(counters, Mapping):
        return None
    return {str(k): int(v) for k, v in counters.items() if isinstance(v, int)}


def add_devices(machine: "Machine", report: RunReport) -> None:
    """One row per device of ``machine.devices`` that keeps ``counters``, then one per part.

    A device made of parts mapped on their own (port 0x61 of the PIT, the PM
    function of the PCI host) lists them in ``parts``: name -> object with
    ``counters``.
    """
    for name, device in machine.devices.items():
        counts = device_counters(device)
        if counts is not None:
            report.add_device_counters(name, counts)
        for part_name, part in dict(getattr(device, "parts", None) or {}).items():
            counts = device_counters(part)
            if counts is not None:
                report.add_device_counters(str(part_name), counts)


@hookimpl(tryfirst=True)
def run_report(machine: "Machine", report: RunReport) -> None:
    counts: dict[str, list[int]] = {}
    guest_ns = 0
    for stats in machine.stats:
        guest_ns += stats.guest_ns
        for name, (n, ns) in stats.by_reason().items():
            c = counts.setdefault(name, [0, 0])
            c[0] += n
            c[1] += ns
    for name, (n, ns) in counts.items():
        report.exits[name] = {"count": n, "ms": ns / 1e6, "us_per_exit": ns / n / 1e3}
    report.add_counter("engine", machine.engine.name if machine.engine else "-")
    report.add_counter("wall time", f"{machine.wall_seconds:.3f} s")
    report.add_counter("time in guest", f"{guest_ns / 1e9:.3f} s")
    report.add_counter("total exits", sum(n for n, _ in counts.values()))
    dropped = sum(machine.memory.rom_writes_dropped.values())
    if dropped:
        report.add_counter("guest writes to ROM dropped", dropped)
    for bus in (machine.pio, machine.mmio):
        if bus.unclaimed_reads or bus.unclaimed_writes:
            report.add_counter(f"unclaimed {bus.name} accesses",
                               f"{bus.unclaimed_reads} reads, {bus.unclaimed_writes} writes")
    add_devices(machine, report)
