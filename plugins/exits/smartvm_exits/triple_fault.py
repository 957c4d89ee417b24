"""``handle_triple_fault``: stop or reset, as ``[triple_fault] action`` says.

``stop`` ends the run with ``triple-fault`` and a report (registers, the code
at RIP). ``reset`` puts the machine back in its state at load time, as the
shutdown cycle of a PC's chipset does, and the guest starts over; after
``max_resets`` resets in one run the next triple fault stops the VM anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smartvm_core.engines.base import EngineVcpu
    from smartvm_core.exit import VmExit
    from smartvm_core.machine import Machine


class TripleFaultHandler:
    def __init__(self, machine: "Machine", action: str = "stop", max_resets: int = 16,
) -> None:
        self.machine = machine
        self.action = action
        self.max_resets = max_resets
        self.resets = 0

    def report(self, vcpu: "EngineVcpu") -> list[str]:
        from smartvm_core.report import code_at_rip, disassemble, register_lines
        lines = [f"triple fault on vCPU {vcpu.index} (shutdown: an exception while delivering a double fault)"]
        if self.resets:
            lines.append(f"  after {self.resets} reset(s) in this run (max_resets = {self.max_resets})")
        try:
            lines.append("registers:")
            lines += register_lines(vcpu)
            ip, code, mode = code_at_rip(vcpu, self.machine.memory)
            lines.append(f"code at RIP ({mode} mode):")
            lines += ["  " + line for line in disassemble(code, ip, mode)] if code else ["  (RIP is not in guest memory)"]
        except Exception as e:  # the report must not hide why the VM stopped
            lines.append(f"  (could not read vCPU state: {type(e).__name__}: {e})")
        return lines

    def handle_triple_fault(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        m = self.machine
        if self.action == "reset" and self.resets < self.max_resets:
            self.resets += 1
            m.reset()   # plugins reset their own state in the vm_reset hook
            return True
        detail = f"triple fault on vCPU {vcpu.index}"
        if self.action == "reset":
            detail += f" after {self.resets} resets (max_resets reached)"
        m.stop("triple-fault", detail, report=self.report(vcpu), vcpu=vcpu.index)
        return True
