"""The virtual-8086 monitor: routes, interrupt delivery through the virtual IF, and hand-over.

Three routes bring a sensitive instruction of the 8086 program to the
monitor (``docs/v8086.md`` has the pictures):

``exception-bitmap``
    The program runs with EFLAGS.VM=1 under the monitor's GDT/IDT/TSS; #GP
    is set in the exception bitmap, so the fault itself is the VM exit
    (``EXCEPTION_NMI``, vector 13). The monitor emulates the instruction on
    the vCPU's registers.
``stub``
    Same set-up, #GP left out of the exception bitmap: the IDT sends it to
    a ring-0 stub that rings the protected-mode doorbell (an ``OUT``); the
    monitor reads and edits the virtual-8086 frame on the stub's stack, and
    the stub's IRETD resumes the program. Engine-independent.
``real-mode``
    For KVM hosts that cannot run virtual-8086 mode: the program runs in
    real mode; its IVT points at the real-mode stubs (``OUT rm_port, AL;
    IRET``), so INT n still reaches the monitor. CLI, STI, PUSHF and POPF
    then run without trapping.

Whatever the route, external interrupts reach the monitor (through the IDT
stubs in virtual-8086 mode) and are delivered to the program through its
virtual interrupt flag: at once if the program's IF is set, else held
until an emulated STI, POPF or IRET sets it.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from smartvm_core.cpu import CR0_ET, CR0_PE, CR4_VME, DescriptorTable, Registers, Segment, SpecialRegisters

from . import layout
from .emulator import POPF16_MASK, POPF32_MASK, Emulator, Outcome, ivt_entry, program_flags, reflect
from .services import ServiceCall, ServiceTable
from .services.bios import Bios
from .services.dos import Dos
from .state import (EAX, ECX, EDI, ESI, EBP, EBX, EDX, ESP, FLAG_FIXED, FLAG_IF, FLAG_IOPL, FLAG_RF, FLAG_VIF,
                    FLAG_VIP, FLAG_VM, ProgramMemory, ProgramState)

if TYPE_CHECKING:
    from smartvm_core.engines.base import EngineVcpu
    from smartvm_core.exit import VmExit
    from smartvm_core.machine import Machine

ROUTES = layout.ROUTES
_RM_STUBS = layout.BIOS_BASE + layout.RM_STUB_OFFSET
_RM_STUBS_END = 256 * layout.RM_STUB_SIZE
#: the program's EFLAGS bits a real-mode doorbell keeps (IF is the real one on that route)
_RM_KEEP = ~(FLAG_VIF | FLAG_VIP | FLAG_VM | FLAG_RF) & 0xFFFFFFFF
#: the same, less FLAGS (the low 16 bits come from the INT frame)
_RM_KEEP_HIGH = _RM_KEEP & ~0xFFFF
#: serve()'s int_ip when the INT's address is looked up only if needed
_INT_IP_UNKNOWN = -1
_GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi")
#: how deep services may chain interrupts into each other
MAX_CHAIN = 4
#: CPU exceptions of real-address and virtual-8086 mode that are faults (the saved CS:IP is the faulting
#: instruction's), with their SDM names; a program that does not handle one is stopped (see _no_service)
FAULTS = {0: "#DE (divide error)", 5: "#BR (BOUND range exceeded)", 6: "#UD (invalid opcode)",
          7: "#NM (device not available)", 12: "#SS (stack fault)", 13: "#GP (general protection)"}


def v86_segment(selector: int) -> Segment:
    """A segment register as virtual-8086 mode loads it (SDM 20.1.1; VMX access rights 0xF3)."""
    return Segment(selector=selector, base=selector << 4, limit=0xFFFF, type=3, s=1, dpl=3, present=1)


class MonitorStop(Exception):
    """The monitor cannot go on (the machine is stopped with this message)."""


class Monitor:
    """One 8086 program on the boot vCPU, and everything the monitor keeps for it."""

    def __init__(self, machine: "Machine | None", memory: ProgramMemory, *, rm_port: int = 0xEE,
                 pm_port: int = 0xEF, iopl: int = 0, vme: bool = False,
                 trap_ports: tuple[int, ...] = ()) -> None:
        self.machine = machine
        self.memory = memory
        self.rm_port = rm_port
        self.pm_port = pm_port
        self.iopl = iopl
        self.vme = vme
        self.trapped_ports = {rm_port, pm_port, *trap_ports}
        self.emulator = Emulator(memory, self.io_in, self.io_out)
        self.services = ServiceTable()
        console = machine.console.write if machine is not None else None
        self.bios = Bios(memory, machine, console=console)
        self.dos = Dos(memory, machine, self.bios)
        self.route: str | None = None
        self.active = False
        #: the program's IF when the hardware does not hold it (VME off, IOPL < 3)
        self.vif = False
        #: external interrupts waiting for the program's IF
        self.pending: collections.deque[int] = collections.deque()
        self.service_counts: collections.Counter[str] = collections.Counter()
        self.reflected: collections.Counter[str] = collections.Counter()
        self.external: collections.Counter[str] = collections.Counter()
        self.handed_over = False
        self.gp_bitmap_set = False
        #: the last program state the monitor saw (reports)
        self.last_state: ProgramState | None = None
        self._deliver_while_waiting = False
        #: CLI/STI/PUSHF/POPF take the register-only path (no VME, IOPL < 3; set by setup())
        self._fast = False
        self._iopl_bits = iopl << 12
        #: the IOPL field PUSHF shows the program (program_flags(): 3 with VME)
        self._pushf_iopl = FLAG_IOPL if vme else iopl << 12
        #: the engine reads and writes single registers cheaply (it overrides EngineVcpu.get_reg)
        self._one_reg = False

    # -- port I/O of the program (emulated IN/OUT) -------------------------------------------
    def io_in(self, port: int, size: int) -> int:
        if port in (self.rm_port, self.pm_port) or self.machine is None:
            return (1 << (8 * size)) - 1
        return self.machine.pio.read(port, size)

    def io_out(self, port: int, size: int, value: int) -> None:
        if port in (self.rm_port, self.pm_port) or self.machine is None:
            return
        self.machine.pio.write(port, size, value)

    # -- the program's interrupt flag ---------------------------------------------------------------
    def program_if(self, real_eflags: int) -> bool:
        if self.route == "real-mode" or self.iopl == 3:
            return bool(real_eflags & FLAG_IF)
        if self.vme:
            return bool(real_eflags & FLAG_VIF)
        return self.vif

    def real_eflags(self, state: ProgramState) -> int:
        """The EFLAGS the CPU runs the program with (virtual-8086 routes)."""
        flags = state.eflags & ~(FLAG_IF | FLAG_IOPL | FLAG_VIF | FLAG_VIP | FLAG_RF)
        flags |= FLAG_VM | FLAG_FIXED | self.iopl << 12
        if self.iopl == 3:
            flags |= state.eflags & FLAG_IF
        else:
            flags |= FLAG_IF  # the real IF stays set: interrupts reach the monitor
            if self.vme:
                flags |= FLAG_VIF if state.eflags & FLAG_IF else 0
                flags |= FLAG_VIP if self.pending else 0
            else:
                self.vif = bool(state.eflags & FLAG_IF)
        return flags

    def _state(self, gpr: list[int], eip: int, real_eflags: int, segs: tuple[int, ...]) -> ProgramState:
        es, cs, ss, ds, fs, gs = segs
        eflags = (real_eflags & ~(FLAG_IF | FLAG_VIF | FLAG_VIP | FLAG_VM | FLAG_RF)) | FLAG_FIXED
        if self.program_if(real_eflags):
            eflags |= FLAG_IF
        state = ProgramState(eip=eip & 0xFFFF, eflags=eflags, cs=cs, ds=ds, es=es, ss=ss, fs=fs, gs=gs,
                             gpr=[g & 0xFFFFFFFF for g in gpr], vme=self.vme, iopl=self.iopl)
        state.cr0 = self._cr0
        state.gdtr, state.idtr = self._gdtr, self._idtr
        return state

    _cr0 = CR0_ET
    _gdtr: tuple[int, int] | None = None
    _idtr: tuple[int, int] | None = None

    def _keep(self, state: ProgramState) -> None:
        self._cr0, self._gdtr, self._idtr = state.cr0, state.gdtr, state.idtr
        self.last_state = state

    # -- set-up -------------------------------------------------------------------------------------
    def attach(self, vcpu: "EngineVcpu") -> None:
        """Note how ``vcpu`` (the boot vCPU, which runs the program) is best accessed on the hot paths."""
        from smartvm_core.engines.base import EngineVcpu
        self._one_reg = type(vcpu).get_reg is not EngineVcpu.get_reg

    def setup(self, route: str, regs: Registers, sregs: SpecialRegisters) -> tuple[Registers, SpecialRegisters]:
        """Write the monitor's structures and turn a real-mode entry state into ``route``'s."""
        if route not in ROUTES:
            raise ValueError(f"unknown v8086 route {route!r} (known: {', '.join(ROUTES)})")
        self.route = route
        self.active = True
        self._fast = not self.vme and self.iopl < 3
        mem = self.memory
        # the program's IVT: every vector at its real-mode stub, as a BIOS leaves it
        for vector in range(256):
            seg, off = layout.rm_stub_address(vector)
            mem.write(vector * 4, 4, seg << 16 | off)
        self.bios.init_data_area()
        self.vif = bool(regs.rflags & FLAG_IF)
        if route == "real-mode":
            return regs, sregs
        v_regs = Registers(**{k: getattr(regs, k) for k in (*_GPRS, "r8", "r9", "r10", "r11", "r12", "r13",
                                                               "r14", "r15")})
        v_regs.rip = regs.rip & 0xFFFF
        state = self._state([getattr(regs, n) for n in _GPRS], regs.rip, regs.rflags,
                            tuple(s.selector for s in (sregs.es, sregs.cs, sregs.ss, sregs.ds, sregs.fs, sregs.gs)))
        v_regs.rflags = self.real_eflags(state)
        base = layout.MONITOR_BASE
        v_sregs = SpecialRegisters(
            cs=v86_segment(sregs.cs.selector), ds=v86_segment(sregs.ds.selector), es=v86_segment(sregs.es.selector),
            fs=v86_segment(sregs.fs.selector), gs=v86_segment(sregs.gs.selector), ss=v86_segment(sregs.ss.selector),
            tr=Segment(selector=layout.TSS_SELECTOR, base=base + layout.TSS_OFFSET, limit=layout.TSS_LIMIT,
                       type=0xB, s=0, dpl=0, present=1),
            ldt=Segment(selector=0, base=0, limit=0, type=2, s=0, present=0, unusable=1),
            gdt=DescriptorTable(base + layout.GDT_OFFSET, layout.GDT_LIMIT),
            idt=DescriptorTable(base + layout.IDT_OFFSET, 256 * 8 - 1))
        v_sregs.cr0 = CR0_PE | CR0_ET
        v_sregs.cr4 = CR4_VME if self.vme else 0
        v_sregs.efer = 0
        v_sregs.apic_base = sregs.apic_base
        return v_regs, v_sregs

    # -- exits ----------------------------------------------------------------------------------------
    def handle_exception_nmi(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        """Route ``exception-bitmap``: a #GP of the program is the VM exit.

        CLI, STI, PUSHF(D) and POPF(D) without other prefixes take
        :meth:`_fast_gp` (a handful of registers, no capstone); everything
        else is decoded and emulated on a :class:`ProgramState`.
        """
        if exit.interruption_info & 0x7FF != 0x30D or vcpu.index != 0:  # vector 13, hardware exception
            return False
        if not self.active:
            return False
        try:
            if self._fast:
                done = self._fast_gp(vcpu)
                if done is not None:
                    return done
            return self._slow_gp(vcpu)
        except MonitorStop as e:
            return self._stop(vcpu, e)

    def _slow_gp(self, vcpu: "EngineVcpu") -> bool:
        regs = vcpu.get_regs()
        if not regs.rflags & FLAG_VM:
            return False
        state = self._state([regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi],
                            regs.rip, regs.rflags, vcpu.get_segment_selectors())
        action = self._run(state, self.on_gp)
        self._commit_vcpu(vcpu, regs, state, action)
        return True

    def _fast_gp(self, vcpu: "EngineVcpu") -> bool | None:
        """CLI, STI, PUSHF(D), POPF(D) trapped in virtual-8086 mode, emulated on the registers they touch.

        Only for a monitor without VME and with IOPL < 3, the virtual IF in
        :attr:`vif`; the same semantics as :class:`~.emulator.Emulator` (the
        tests compare both). Returns None when the general path must decide
        (another instruction, a prefix, an interrupt waiting for IF, an
        instruction at the end of its segment ...).
        """
        if self.pending:
            return None
        one = self._one_reg
        get = vcpu.get_reg if one else None
        if one:
            rflags = get("rflags")
            rip = get("rip")
        else:
            regs = vcpu.get_regs()
            rflags, rip = regs.rflags, regs.rip
        if not rflags & FLAG_VM or rip > 0xFFF0:
            return None
        _, cs, ss, _, _, _ = vcpu.get_segment_selectors()
        mem = self.memory
        code = mem.read((cs << 4) + rip, 2)
        op = code & 0xFF
        length = 1
        size = 2
        if op == 0x66:
            op = code >> 8
            length = 2
            size = 4
            if op != 0x9C and op != 0x9D:
                return None
        counts = self.emulator.counts
        if op == 0xFA:                                        # CLI
            self.vif = False
            counts["cli"] += 1
        elif op == 0xFB:                                      # STI (nothing pending: no delivery to consider)
            self.vif = True
            counts["sti"] += 1
        elif op == 0x9C or op == 0x9D:
            rsp = get("rsp") if one else regs.rsp
            sp = rsp & 0xFFFF
            if op == 0x9C:                                    # PUSHF(D): the program's flags image
                image = (rflags & ~(FLAG_IF | FLAG_IOPL | FLAG_VIF | FLAG_VIP | FLAG_VM | FLAG_RF)) \
                    | FLAG_FIXED | self._iopl_bits | (FLAG_IF if self.vif else 0)
                sp = (sp - size) & 0xFFFF
                mem.write_far(ss, sp, size, image if size == 4 else image & 0xFFFF)
                counts["pushfd" if size == 4 else "pushf"] += 1
            else:                                             # POPF(D): IOPL, VM, RF, VIF, VIP kept
                value = mem.read_far(ss, sp, size)
                sp = (sp + size) & 0xFFFF
                mask = POPF32_MASK if size == 4 else POPF16_MASK
                prog = (rflags & ~(FLAG_IF | FLAG_VIF | FLAG_VIP | FLAG_VM | FLAG_RF)) | (FLAG_IF if self.vif else 0)
                prog = (((prog & ~mask) | (value & mask)) | FLAG_FIXED) & ~0x8028
                self.vif = bool(prog & FLAG_IF)
                rflags = prog
                counts["popfd" if size == 4 else "popf"] += 1
            rsp = (rsp & ~0xFFFF) | sp
            if one:
                vcpu.set_reg("rsp", rsp)
            else:
                regs.rsp = rsp
        else:
            return None
        # the flags the CPU runs the program with (real_eflags() without VME): real IF set, IOPL the monitor's
        new_flags = (rflags & ~(FLAG_IOPL | FLAG_VIF | FLAG_VIP | FLAG_RF)) | FLAG_VM | FLAG_FIXED | FLAG_IF \
            | self._iopl_bits
        if one:
            vcpu.set_reg("rip", rip + length)
            if new_flags != rflags:
                vcpu.set_reg("rflags", new_flags)
        else:
            regs.rip = rip + length
            regs.rflags = new_flags
            vcpu.set_regs(regs)
        return True

    def _stop(self, vcpu: "EngineVcpu", e: MonitorStop) -> bool:
        """Stop the machine with the monitor's report (the exit counts as handled)."""
        if self.machine is None:
            raise e
        self.machine.stop("error", str(e), report=self.report_lines(), vcpu=vcpu.index)
        return True

    def handle_io_instruction(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        """The doorbells: the protected-mode stubs' and the real-mode stubs' (either port)."""
        port = exit.port
        if port == self.rm_port:
            return self.handle_rm_doorbell(vcpu, exit)
        return self.handle_pm_doorbell(vcpu, exit)

    def handle_pm_doorbell(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        """The protected-mode stubs' OUT (``IO_INSTRUCTION`` on ``pm_port``): an event of the program."""
        if not self.active or exit.is_in or vcpu.index != 0 or exit.port != self.pm_port:
            return False
        vcpu.skip_instruction()
        try:
            return self._pm_doorbell(vcpu)
        except MonitorStop as e:
            return self._stop(vcpu, e)

    def _pm_doorbell(self, vcpu: "EngineVcpu") -> bool:
        regs = vcpu.get_regs()
        mem = self.memory.memory
        top = layout.MONITOR_BASE + layout.STACK_TOP_OFFSET
        esp = regs.rsp & 0xFFFFFFFF
        depth = top - esp
        if depth not in (40, 44):
            raise MonitorStop(f"v8086 monitor: the stub's frame is not a virtual-8086 frame (ESP {esp:#x}); "
                              "an interrupt arrived outside virtual-8086 mode")
        vector = mem.read_u32(esp)
        has_error = depth == 44
        frame = esp + (8 if has_error else 4)
        f = [mem.read_u32(frame + 4 * i) for i in range(9)]
        eip, cs, eflags, sp, ss, es, ds, fs, gs = f
        if not eflags & FLAG_VM:
            raise MonitorStop(f"v8086 monitor: vector {vector:#x} interrupted protected-mode code at "
                              f"{cs:#x}:{eip:#x}")
        state = self._state([regs.rax, regs.rcx, regs.rdx, regs.rbx, sp, regs.rbp, regs.rsi, regs.rdi],
                            eip, eflags, (es & 0xFFFF, cs & 0xFFFF, ss & 0xFFFF, ds & 0xFFFF, fs & 0xFFFF, gs & 0xFFFF))
        if vector == 13 and has_error:
            action = self._run(state, self.on_gp)
        elif vector in (3, 4) and not has_error:
            name = "int3" if vector == 3 else "into"
            self.emulator.counts[name] += 1
            action = self._run(state, lambda s: self.software_interrupt(s, vector, (s.eip - 1) & 0xFFFF))
        elif self._is_external(vector, has_error):
            action = self._run(state, lambda s: self.external_interrupt(s, vector))
        else:
            action = self._run(state, lambda s: self.exception(s, vector))
        if action == "protected":
            self._hand_over(vcpu, state)
            return True
        # write the frame back and point ESP at its EIP slot for the stub's IRETD
        frame = top - 36
        values = [state.eip & 0xFFFF, state.cs, self.real_eflags(state), state.gpr[ESP] & 0xFFFF, state.ss,
                  state.es, state.ds, state.fs, state.gs]
        mem.write(frame, b"".join(v.to_bytes(4, "little") for v in values))
        new = vcpu.get_regs()
        for i, name in enumerate(_GPRS):
            if i != ESP:
                setattr(new, name, state.gpr[i])
        new.rsp = frame
        vcpu.set_regs(new)
        self._keep(state)
        self._after(vcpu, state, action)
        return True

    def handle_rm_doorbell(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        """A real-mode stub's OUT (``IO_INSTRUCTION`` on ``rm_port``): serve its vector.

        The monitor's hot path on the ``real-mode`` route, registered for that port alone.

        Only what the doorbell needs is read (registers, selectors and CR0
        in one :meth:`~smartvm_core.engines.base.EngineVcpu.get_regs_selectors_cr0`
        call), and only what the service changed is written back: the INT
        frame only if it differs, registers only if they changed, segment
        registers only if a service loaded one.
        """
        if not self.active or exit.is_in or vcpu.index != 0 or exit.port != self.rm_port:
            return False
        vcpu.skip_instruction()
        try:
            (rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8, r9, r10, r11, r12, r13, r14, r15, rip, rflags,
             cs, ds, es, fs, gs, ss, cr0) = vcpu.get_regs_selectors_cr0()
            if cr0 & CR0_PE:
                if rflags & FLAG_VM:
                    return self._v86_doorbell_exit(vcpu, vcpu.get_regs(), vcpu.get_sregs())
                return False  # a doorbell from protected-mode code: not the monitor's any more
            ip = rip & 0xFFFF
            # engines differ in whether RIP is already past the OUT (KVM) or still on it (soft, in its hook)
            rel = (cs << 4) + ip - _RM_STUBS
            if not 0 <= rel < _RM_STUBS_END or rel & 1:
                return False
            vector = rel >> 2
            # what rm_doorbell() does, on the state the INT saw (its frame is on the stack)
            sp = rsp & 0xFFFF
            mem = self.memory
            frame = mem.read((ss << 4) + sp, 6) if sp <= 0xFFFA else self._read_frame(ss, sp)
            before = [rax & 0xFFFFFFFF, rcx & 0xFFFFFFFF, rdx & 0xFFFFFFFF, rbx & 0xFFFFFFFF, rsp & 0xFFFFFFFF,
                      rbp & 0xFFFFFFFF, rsi & 0xFFFFFFFF, rdi & 0xFFFFFFFF]
            gpr = before[:]
            gpr[ESP] = (rsp & 0xFFFF0000) | ((sp + 6) & 0xFFFF)
            int_cs, int_ip = frame >> 16 & 0xFFFF, frame & 0xFFFF
            state = ProgramState.of(gpr, int_ip, (rflags & _RM_KEEP_HIGH) | (frame >> 32 & ~0x8028), es, int_cs, ss,
                                    ds, fs, gs, self.vme, self.iopl, self._cr0, self._gdtr, self._idtr)
            action = self.serve(state, vector, _INT_IP_UNKNOWN)
            # the frame the stub's IRET pops: written only if the service changed it (or moved the stack)
            new_sp = (gpr[ESP] - 6) & 0xFFFF
            gpr[ESP] = (gpr[ESP] & ~0xFFFF) | new_sp
            flags = (state.eflags & ~FLAG_IOPL) | self._pushf_iopl | FLAG_FIXED   # program_flags(state)
            new_frame = (state.eip & 0xFFFF) | (state.cs & 0xFFFF) << 16 | (flags & 0xFFFF) << 32
            if new_sp != sp or new_frame != frame or state.ss != ss:
                self._put_frame(state.ss, new_sp, new_frame)
            # the stub's IRET resumes at the CS:IP in the frame: RIP stays on the IRET
            new_flags = (rflags & ~0xFFFF) | (state.eflags & 0xFDFF) | (rflags & FLAG_IF)
            if gpr != before or new_flags != rflags:
                vcpu.set_regs(Registers(
                    (rax & ~0xFFFFFFFF) | gpr[EAX], (rbx & ~0xFFFFFFFF) | gpr[EBX], (rcx & ~0xFFFFFFFF) | gpr[ECX],
                    (rdx & ~0xFFFFFFFF) | gpr[EDX], (rsi & ~0xFFFFFFFF) | gpr[ESI], (rdi & ~0xFFFFFFFF) | gpr[EDI],
                    (rsp & ~0xFFFFFFFF) | gpr[ESP], (rbp & ~0xFFFFFFFF) | gpr[EBP],
                    r8, r9, r10, r11, r12, r13, r14, r15, rip, new_flags))
            if state.segs_dirty:
                sregs = vcpu.get_sregs()
                for name in ("es", "ds", "fs", "gs", "ss"):
                    seg = getattr(sregs, name)
                    sel = getattr(state, name)
                    if seg.selector != sel:
                        setattr(sregs, name, Segment.real_mode(sel))
                vcpu.set_sregs(sregs)
            self._cr0, self._gdtr, self._idtr = state.cr0, state.gdtr, state.idtr
            if action is not None:
                state.cs, state.eip = cs, ip
                state.eflags &= ~FLAG_IF   # the stub runs as the INT left it
                self._after(vcpu, state, action)
            return True
        except MonitorStop as e:
            return self._stop(vcpu, e)

    def _v86_doorbell_exit(self, vcpu: "EngineVcpu", regs: Registers, sregs: SpecialRegisters) -> bool:
        """A real-mode stub ran in virtual-8086 mode and its OUT exited directly.

        That happens on engines whose virtual-8086 I/O does not consult the
        TSS I/O permission bitmap; the monitor then serves the doorbell as if
        the OUT had trapped.
        """
        ip = regs.rip & 0xFFFF
        cs = sregs.cs.selector
        out_ip = ip if self.memory.read((cs << 4) + ip, 1) == 0xE6 else (ip - 2) & 0xFFFF
        vector = layout.rm_stub_vector(cs, out_ip)
        if vector is None:
            return False
        segs = (sregs.es.selector, cs, sregs.ss.selector, sregs.ds.selector, sregs.fs.selector, sregs.gs.selector)
        state = self._state([regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi],
                            (out_ip + 2) & 0xFFFF, regs.rflags, segs)
        action = self._run(state, lambda st: self.rm_doorbell(st, vector))
        self._commit_vcpu(vcpu, regs, state, action)
        return True

    # -- the monitor's logic on a program state ------------------------------------------------------
    def _run(self, state: ProgramState, fn: Any) -> str:
        try:
            result = fn(state)
        except MonitorStop:
            raise
        return result or "resume"

    def on_gp(self, state: ProgramState) -> str | None:
        """A #GP of the program at CS:IP: a real-mode stub's doorbell, or an instruction to emulate."""
        vector = layout.rm_stub_vector(state.cs, state.eip)
        if vector is not None and self.memory.read((state.cs << 4) + state.eip, 1) == 0xE6:
            state.eip = (state.eip + 2) & 0xFFFF  # complete the OUT
            self.emulator.counts["out (doorbell)"] += 1
            return self.rm_doorbell(state, vector)
        start_ip = state.eip
        outcome = self.emulator.step(state)
        if outcome == Outcome.RESUME:
            if self.pending and state.eflags & FLAG_IF:
                self._deliver_pending(state)  # POPF or IRET set IF: no interrupt shadow
            return None
        if outcome == Outcome.STI:
            return self._sti(state)
        if outcome == Outcome.INTERRUPT:
            return self.software_interrupt(state, self.emulator.vector, start_ip)
        if outcome == Outcome.HALT:
            if state.eflags & FLAG_IF and self.pending:
                self._deliver_pending(state)
                return None
            return "halt"
        if outcome == Outcome.PROTECTED:
            return "protected"
        if outcome == Outcome.EXCEPTION:
            return self.exception(state, self.emulator.vector)
        # UNSUPPORTED: real-mode semantics would run the program's INT 0Dh handler
        if self._hooked(13):
            self.reflected["#GP"] += 1
            reflect(self.memory, state, 13)
            return None
        raise MonitorStop(f"v8086 monitor: #GP at {state.cs:04x}:{state.eip:04x} that it cannot emulate: "
                          f"{self.emulator.message}")

    def _sti(self, state: ProgramState) -> str | None:
        """IF went 0 → 1: deliver a held interrupt, unless the next instruction is in the STI shadow and traps."""
        if not self.pending:
            return None
        d = self.emulator.decode(self.emulator.fetch(state))
        if d is not None and d.kind >= 0:
            return None  # it traps too (HLT, CLI, IRET ...): the monitor decides there
        self._deliver_pending(state)
        return None

    def _hooked(self, vector: int) -> bool:
        return ivt_entry(self.memory, vector) != layout.rm_stub_address(vector)

    def software_interrupt(self, state: ProgramState, vector: int, int_ip: int | None, depth: int = 0) -> str | None:
        """INT n: reflect to the program's handler, or serve it if the IVT still holds the monitor's stub."""
        if self._hooked(vector):
            self.reflected[f"INT {vector:02X}h"] += 1
            reflect(self.memory, state, vector)
            return None
        return self.serve(state, vector, int_ip, depth)

    def serve(self, state: ProgramState, vector: int, int_ip: int | None, depth: int = 0) -> str | None:
        """Run the service for ``vector``; ``int_ip``: where the INT is, to re-execute it if the service waits.

        ``int_ip`` may be :data:`_INT_IP_UNKNOWN`: then it is looked up (the
        bytes before the return CS:IP) only if the service waits.
        """
        at_cs, at_ip = state.cs, state.eip
        service, key = self.services.lookup(vector, state.gpr[EAX] >> 8 & 0xFF)
        if service is not None:
            call = ServiceCall(vector, state, self.memory, self.machine, self, key)
            service(call)
        else:
            call = ServiceCall(vector, state, self.memory, self.machine, self, f"{key} (no service)")
            self._no_service(call, int_ip)
        self.service_counts[call.name] += 1
        # a wait for input, or the interrupts the service chained; at_cs:at_ip is where the program returns
        if call.halted:
            if int_ip == _INT_IP_UNKNOWN:
                int_ip = self._int_ip(at_cs, at_ip, vector)
            if int_ip is None:
                raise MonitorStop(f"v8086 monitor: {call.name} waits for input that will never come")
            state.eip = int_ip  # re-execute the INT once an interrupt was delivered
            if self.pending:
                self._deliver_pending(state, force=True)
                return None
            self._deliver_while_waiting = True
            return "halt-service"
        if depth < MAX_CHAIN:
            for v in call.chained:
                self.software_interrupt(state, v, None, depth + 1)
        return None

    def rm_doorbell(self, state: ProgramState, vector: int) -> str | None:
        """The program ran the real-mode stub of ``vector`` (via its IVT, or a handler chaining to it).

        The stack holds the INT frame; the monitor serves the vector on the
        state the INT saw and leaves the frame for the stub's IRET (written
        back only if the service changed it).
        """
        ss = state.ss
        sp = state.gpr[ESP] & 0xFFFF
        frame = self._read_frame(ss, sp)
        state.set_reg16(ESP, sp + 6)
        stub_cs, stub_ip = state.cs, state.eip
        state.cs, state.eip = frame >> 16 & 0xFFFF, frame & 0xFFFF
        state.eflags = (state.eflags & ~0xFFFF) | (frame >> 32 & ~0x8028) | FLAG_FIXED
        action = self.serve(state, vector, _INT_IP_UNKNOWN)
        self._write_frame(state, ss, sp, frame)
        state.cs, state.eip = stub_cs, stub_ip
        state.eflags &= ~FLAG_IF  # the stub runs as the INT left it
        return action

    def _read_frame(self, ss: int, sp: int) -> int:
        """The 6-byte INT frame (IP, CS, FLAGS) at SS:SP, as one little-endian number."""
        mem = self.memory
        if sp <= 0x10000 - 6:
            return mem.read((ss << 4) + sp, 6)
        return mem.read_far(ss, sp, 2) | mem.read_far(ss, sp + 2, 2) << 16 | mem.read_far(ss, sp + 4, 2) << 32

    def _write_frame(self, state: ProgramState, ss: int, sp: int, frame: int) -> None:
        """Push ``state``'s FLAGS, CS and IP (the frame the stub's IRET pops), unless the stack holds them already.

        ``frame`` was read from SS:SP before the service ran.
        """
        gpr = state.gpr
        new_sp = (gpr[ESP] - 6) & 0xFFFF
        gpr[ESP] = (gpr[ESP] & ~0xFFFF) | new_sp
        new_frame = (state.eip & 0xFFFF) | (state.cs & 0xFFFF) << 16 | (program_flags(state) & 0xFFFF) << 32
        if new_sp == sp and new_frame == frame and state.ss == ss:
            return
        self._put_frame(state.ss, new_sp, new_frame)

    def _put_frame(self, ss: int, sp: int, frame: int) -> None:
        """Write a 6-byte INT frame at SS:SP (offsets wrap at 64 KiB)."""
        if sp <= 0x10000 - 6:
            self.memory.write((ss << 4) + sp, 6, frame)
        else:
            for i in range(3):
                self.memory.write_far(ss, sp + 2 * i, 2, frame >> (16 * i))

    def _int_ip(self, cs: int, ip: int, vector: int) -> int | None:
        """IP of the ``INT vector`` instruction the program returns to CS:IP past, if it is one."""
        if self.memory.read_far(cs, ip - 2, 2) == (0xCD | vector << 8):
            return (ip - 2) & 0xFFFF
        return None

    def _is_external(self, vector: int, has_error: bool) -> bool:
        if vector >= 32:
            return True
        return 8 <= vector <= 15 and not has_error or vector == 2

    def external_interrupt(self, state: ProgramState, vector: int) -> str | None:
        self.external[f"vector {vector:02X}h"] += 1
        if state.eflags & FLAG_IF or self._deliver_while_waiting:
            self._deliver_while_waiting = False
            self.pending.append(vector)
            self._deliver_pending(state, force=True)
        else:
            self.pending.append(vector)
        return None

    def _deliver_pending(self, state: ProgramState, force: bool = False) -> None:
        """Deliver the oldest held interrupt at ``state``'s CS:IP (if the program's IF allows, or ``force``)."""
        if not self.pending or not (force or state.eflags & FLAG_IF):
            return
        vector = self.pending.popleft()
        if self._hooked(vector):
            self.reflected[f"IRQ vector {vector:02X}h"] += 1
            reflect(self.memory, state, vector)
        else:
            self.serve(state, vector, None)

    def exception(self, state: ProgramState, vector: int) -> str | None:
        """An exception of the program (#DE, #UD ...): its own IVT handler if it has one (real-mode semantics)."""
        if self._hooked(vector):
            self.reflected[f"exception {vector}"] += 1
            reflect(self.memory, state, vector)
            return None
        raise MonitorStop(self._unhandled(vector, state.cs, state.eip))

    def _no_service(self, call: ServiceCall, int_ip: int | None) -> None:
        """A vector nobody serves reached its stub: an IRET (a BIOS's default handler), unless it is a fault.

        On the ``real-mode`` route CPU exceptions arrive through the IVT like
        INT n. For the fault vectors (:data:`FAULTS`) whose return address is
        not just past an ``INT n``, returning would re-execute the faulting
        instruction forever (what a PC with a BIOS does): the monitor stops
        the machine instead, naming the exception and the instruction.
        """
        state = call.state
        vector = call.vector
        if int_ip != _INT_IP_UNKNOWN or vector not in FAULTS:
            return
        if self._int_ip(state.cs, state.eip, vector) is not None and not self._raises(vector, state.cs, state.eip):
            return  # INT n by software (the instruction it returns to would not raise the exception)
        raise MonitorStop(self._unhandled(vector, state.cs, state.eip))

    def _raises(self, vector: int, cs: int, ip: int) -> bool:
        """Could the instruction at CS:IP raise exception ``vector``? (#GP and #SS: any instruction can.)"""
        insn = next(self.emulator.md.disasm(self.emulator.fetch_at(cs, ip), ip), None)
        if insn is None:
            return vector == 6
        name = insn.mnemonic
        if vector == 0:
            return name in ("div", "idiv", "aam")
        if vector == 5:
            return name == "bound"
        if vector == 6:
            return name.startswith("ud") or name == "lock"
        if vector == 7:
            return name.startswith("f") or name == "wait"
        return True

    def _unhandled(self, vector: int, cs: int, ip: int) -> str:
        """The stop message for exception ``vector`` of the instruction at CS:IP that the program does not handle."""
        code = self.emulator.fetch_at(cs, ip)
        insn = next(self.emulator.md.disasm(code, ip), None)
        text = f"{insn.mnemonic} {insn.op_str}".strip() if insn is not None else "(undecodable)"
        return (f"v8086 monitor: {FAULTS.get(vector, 'exception')} (vector {vector}) at {cs:04x}:{ip & 0xFFFF:04x} "
                f"[{code[:insn.size if insn is not None else 4].hex(' ')}: {text}], and the program's IVT has no "
                "handler for it (a BIOS's default handler would return to the instruction forever)")

    # -- commit and follow-up --------------------------------------------------------------------------
    def _commit_vcpu(self, vcpu: "EngineVcpu", regs: Registers, state: ProgramState, action: str) -> None:
        if action == "protected":
            self._hand_over(vcpu, state)
            return
        for i, name in enumerate(_GPRS):
            setattr(regs, name, state.gpr[i])
        regs.rip = state.eip & 0xFFFF
        regs.rflags = self.real_eflags(state)
        vcpu.set_regs(regs)
        if state.segs_dirty:
            sregs = vcpu.get_sregs()
            for name in ("es", "cs", "ss", "ds", "fs", "gs"):
                setattr(sregs, name, v86_segment(getattr(state, name)))
            vcpu.set_sregs(sregs)
        self._keep(state)
        self._after(vcpu, state, action)

    def _after(self, vcpu: "EngineVcpu", state: ProgramState, action: str) -> None:
        if action in ("halt", "halt-service") and self.machine is not None:
            waiting_if = bool(state.eflags & FLAG_IF) or action == "halt-service"
            self.machine.wait_for_interrupt(vcpu, waiting_if)

    def _hand_over(self, vcpu: "EngineVcpu", state: ProgramState) -> None:
        """The program set CR0.PE: it leaves virtual-8086 mode and runs in protected mode at CPL 0."""
        self.handed_over = True
        self.active = False
        regs = vcpu.get_regs()
        for i, name in enumerate(_GPRS):
            setattr(regs, name, state.gpr[i])
        regs.rip = state.eip & 0xFFFF
        regs.rflags = (state.eflags & ~(FLAG_VM | FLAG_VIF | FLAG_VIP | FLAG_RF)) | FLAG_FIXED
        sregs = vcpu.get_sregs()
        for name in ("es", "ss", "ds", "fs", "gs"):
            sel = getattr(state, name)
            setattr(sregs, name, Segment(selector=sel, base=sel << 4, limit=0xFFFF, type=3, s=1, dpl=0, present=1))
        sregs.cs = Segment(selector=state.cs, base=state.cs << 4, limit=0xFFFF, type=0xB, s=1, dpl=0, present=1)
        sregs.cr0 = (state.cr0 | CR0_PE | CR0_ET) & 0xFFFFFFFF
        sregs.cr4 &= ~CR4_VME
        if state.gdtr is not None:
            sregs.gdt = DescriptorTable(*state.gdtr)
        if state.idtr is not None:
            sregs.idt = DescriptorTable(*state.idtr)
        else:
            sregs.idt = DescriptorTable(0, 0x3FF)
        vcpu.set_regs(regs)
        vcpu.set_sregs(sregs)
        if self.gp_bitmap_set:
            from smartvm_core.vmx import VmcsField
            vcpu.vmcs[VmcsField.EXCEPTION_BITMAP] = vcpu.vmcs[VmcsField.EXCEPTION_BITMAP] & ~(1 << 13)
        self._keep(state)

    # -- reports and state ---------------------------------------------------------------------------------
    def report_lines(self) -> list[str]:
        note = ""
        if self.handed_over:
            note = (" (the program switched to protected mode itself)" if self.route == "real-mode"
                    else " (handed over to protected mode)")
        lines = [f"route: {self.route or '-'}{note}"]
        if self.emulator.counts:
            lines.append("emulated instructions:")
            lines += [f"  {name:<24} {n:>10}" for name, n in self.emulator.counts.most_common()]
        if self.service_counts:
            lines.append("services:")
            lines += [f"  {name:<24} {n:>10}" for name, n in sorted(self.service_counts.items())]
        if self.reflected:
            lines.append("reflected to the program's handlers:")
            lines += [f"  {name:<24} {n:>10}" for name, n in sorted(self.reflected.items())]
        if self.external:
            lines.append("external interrupts:")
            lines += [f"  {name:<24} {n:>10}" for name, n in sorted(self.external.items())]
        return lines

    def save(self) -> dict[str, Any]:
        return {"route": self.route, "active": self.active, "vif": self.vif, "pending": list(self.pending),
                "handed_over": self.handed_over, "a20": self.memory.a20, "cr0": self._cr0,
                "gdtr": list(self._gdtr) if self._gdtr else None, "idtr": list(self._idtr) if self._idtr else None,
                "bios": self.bios.state(), "dos": {"return_code": self.dos.return_code}}

    def restore(self, data: dict[str, Any]) -> None:
        self.route = data.get("route")
        self.active = bool(data.get("active"))
        self.vif = bool(data.get("vif"))
        self.pending = collections.deque(int(v) & 0xFF for v in data.get("pending", []))
        self.handed_over = bool(data.get("handed_over"))
        self.memory.a20 = bool(data.get("a20", True))
        self._cr0 = int(data.get("cr0", CR0_ET))
        self._gdtr = tuple(data["gdtr"]) if data.get("gdtr") else None  # type: ignore[assignment]
        self._idtr = tuple(data["idtr"]) if data.get("idtr") else None  # type: ignore[assignment]
        self.bios.restore(data.get("bios", {}))
        self.dos.return_code = int(data.get("dos", {}).get("return_code", 0))


__all__ = ["Monitor", "MonitorStop", "ROUTES", "v86_segment", "EAX", "EBX", "ECX", "EDX", "ESI", "EDI", "EBP"]
