"""``handle_hlt``: the vCPU waits for an interrupt or the next timer.

HLT completes (RIP moves past it) and the vCPU sleeps in
:meth:`Machine.wait_for_interrupt` until an interrupt is pending (with
RFLAGS.IF = 1) or the machine's next timer is due. When nothing can ever
wake it (IF = 0 or no interrupt controller, nothing pending, no timer armed,
one vCPU) the machine stops with ``halted`` and a report that says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smartvm_core.cpu import RFLAGS_IF

if TYPE_CHECKING:
    from smartvm_core.engines.base import EngineVcpu
    from smartvm_core.exit import VmExit
    from smartvm_core.machine import Machine


class HltHandler:
    def __init__(self, machine: "Machine") -> None:
        self.machine = machine
        #: halts per vCPU index
        self.halts: dict[int, int] = {}

    def report(self, vcpu: "EngineVcpu", rip: int, rflags: int) -> list[str]:
        """Why the vCPU can never leave HLT."""
        from smartvm_core.report import register_lines
        m = self.machine
        controller = m.irq.controller
        lines = [
            f"vCPU {vcpu.index} halted forever: HLT ending at RIP={rip:#x}",
            f"  RFLAGS={rflags:#x} IF={int(bool(rflags & RFLAGS_IF))}",
            "  interrupt controller: " + (type(controller).__name__ if controller is not None
                                          else "engine's own" if m.irq._engine_set_irq is not None else "none"),
            f"  interrupt pending: {'yes' if m.irq.pending() else 'no'}",
            "  next timer: " + ("none armed" if m.clock.next_deadline() is None
                                else f"at {m.clock.next_deadline()} ns"),
            f"  vCPUs: {len(m.vcpus)}",
            "registers:",
        ]
        try:
            lines += register_lines(vcpu)
        except Exception as e:  # the report must not hide why the VM stopped
            lines.append(f"  (could not read registers: {type(e).__name__}: {e})")
        return lines

    def handle_hlt(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        self.halts[vcpu.index] = self.halts.get(vcpu.index, 0) + 1
        vcpu.skip_instruction()  # HLT completes; an interrupt returns past it
        regs = vcpu.get_regs()
        m = self.machine
        if not m.wait_for_interrupt(vcpu, bool(regs.rflags & RFLAGS_IF)):
            reason = m.stop_reason
            if reason is not None and reason.kind == "halted" and not reason.report:
                reason.report.extend(self.report(vcpu, regs.rip, regs.rflags))
        return True
