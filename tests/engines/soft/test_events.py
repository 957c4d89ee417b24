"""Interrupt-window exiting, the preemption timer, triple faults, delivery with a stack switch,
64-bit IST and from virtual-8086 mode."""

import time

from smartvm_core.cpu import Registers
from smartvm_core.vmx import ExitReason, ProcBasedControls, VmcsField

from .helpers import make, set_proc


def _window_exit_after(vcpu, mem, port):
    e = vcpu.run()
    assert (e.reason, e.port) == (ExitReason.IO_INSTRUCTION, port), e.describe()
    assert not vcpu.interrupt_window_open()          # IF = 0
    vcpu.set_interrupt_window_exiting(True)
    e = vcpu.run()
    assert e.reason == ExitReason.INTERRUPT_WINDOW, e.describe()
    assert vcpu.interrupt_window_open()
    vcpu.set_interrupt_window_exiting(False)
    return vcpu.get_regs()


def test_interrupt_window_opens_after_sti_shadow_popf_and_iret():
    mem, engine, vcpu = make("window16")
    regs = _window_exit_after(vcpu, mem, 0x80)
    # STI; INC AX (shadow); window exit before INC BX
    assert (regs.rax & 0xFFFF, regs.rbx & 0xFFFF) == (2, 2)
    assert mem.read_u8(regs.rip) == 0x43                                               # inc bx not run yet
    regs = _window_exit_after(vcpu, mem, 0x81)
    assert regs.rax & 0xFFFF == 2 and mem.read_u8(regs.rip - 1) == 0x9D               # right after POPF
    assert mem.read_u8(regs.rip) == 0x40                                               # inc ax not run yet
    regs = _window_exit_after(vcpu, mem, 0x82)
    assert regs.rax & 0xFFFF == 3 and mem.read_u8(regs.rip) == 0x40                   # right after IRET
    e = vcpu.run()
    assert e.reason == ExitReason.HLT and vcpu.get_regs().rax & 0xFFFF == 4
    engine.close()


def test_preemption_timer_stops_a_spinning_guest():
    mem, engine, vcpu = make("exits16")
    mem.write(0x1000, b"\xeb\xfe")              # jmp $
    vcpu.set_timer_deadline(time.monotonic_ns() + 20_000_000)
    e = vcpu.run()
    assert e.reason == ExitReason.VMX_PREEMPTION_TIMER_EXPIRED
    assert vcpu.get_regs().rip == 0x1000
    engine.close()


def test_triple_fault_from_an_empty_idt():
    mem, engine, vcpu = make("triple32", mode="protected32")
    e = vcpu.run()
    assert e.reason == ExitReason.IO_INSTRUCTION
    e = vcpu.run()
    assert e.reason == ExitReason.TRIPLE_FAULT
    engine.close()


def test_double_fault_goes_to_the_exception_bitmap_when_asked():
    mem, engine, vcpu = make("triple32", mode="protected32")
    vcpu.vmcs[VmcsField.EXCEPTION_BITMAP] = 1 << 6
    vcpu.run()
    e = vcpu.run()
    assert e.reason == ExitReason.EXCEPTION_NMI and e.interruption_info & 0xFF == 6
    engine.close()


def test_long_mode_ist_stack():
    mem, engine, vcpu = make("ist64", mode="long")
    e = vcpu.run()
    assert (e.reason, e.port) == (ExitReason.IO_INSTRUCTION, 0x80), e.describe()
    assert mem.read_u64(0x620) == 0x9000 - 5 * 8     # IST1 top minus the 5-qword frame
    assert vcpu.get_regs().rsp == 0x8000
    engine.close()


def _v86_machine():
    mem, engine, vcpu = make("v86", mode="protected32")
    return mem, engine, vcpu


def test_virtual_8086_mode_exits_and_delivery():
    mem, engine, vcpu = _v86_machine()
    vcpu.vmcs[VmcsField.EXCEPTION_BITMAP] = 0
    e = vcpu.run()
    assert (e.reason, e.port, e.value) == (ExitReason.IO_INSTRUCTION, 0x80, 0x11), e.describe()
    assert vcpu.get_regs().rflags & (1 << 17)           # EFLAGS.VM
    from smartvm_core.cpu import cpu_mode
    assert cpu_mode(vcpu.get_sregs(), vcpu.get_regs().rflags) == "v8086"
    e = vcpu.run()                                      # RDMSR: #GP to the monitor, INT 0x21 via the IDT
    assert e.reason == ExitReason.CPUID, e.describe()
    assert mem.read_u32(0x640) == 1                     # one #GP (RDMSR at CPL 3)
    assert mem.read_u32(0x648) & 0xFFFF == 0x10         # ring-0 SS from the TSS
    assert mem.read_u32(0x64C) == 0x8000 - 9 * 4        # ESP0 minus the 9-dword v8086 frame
    assert vcpu.get_regs().rflags & (1 << 17)
    vcpu.skip_instruction()
    e = vcpu.run()                                      # VMCALL in v8086 mode: #UD, handled by the monitor
    assert (e.reason, e.port, e.value) == (ExitReason.IO_INSTRUCTION, 0x81, 0x22), e.describe()
    assert mem.read_u32(0x650) == 1
    engine.close()


def test_v8086_exceptions_reach_the_exception_bitmap():
    mem, engine, vcpu = _v86_machine()
    vcpu.vmcs[VmcsField.EXCEPTION_BITMAP] = 1 << 13
    vcpu.run()
    e = vcpu.run()
    assert e.reason == ExitReason.EXCEPTION_NMI and e.interruption_info & 0xFF == 13
    assert mem.read_u16(vcpu.get_sregs().cs.base + vcpu.get_regs().rip) == 0x320F   # at the RDMSR
    engine.close()


def test_guest_page_faults_between_exits_stay_page_faults():
    """Regressions (Linux decompressor): unicorn looked emu_start's end address up through the guest's page
    tables when translating; each failed walk left a #PF as QEMU's "previous exception", so the guest's next
    #PF became a #DF and the one after that a silent triple fault (emulation returned before the faulting
    instruction). And events delivered inside unicorn's interrupt hook left later I/O exits with a stale RIP."""
    mem, engine, vcpu = make("pf64", mode="long")
    seen = []
    while True:
        e = vcpu.run()
        if e.reason == ExitReason.CPUID:
            vcpu.skip_instruction()
        elif e.reason != ExitReason.IO_INSTRUCTION:
            break
        seen.append((e.reason, e.port if e.reason == ExitReason.IO_INSTRUCTION else 0, vcpu.get_regs().rip))
        vcpu.invalidate_code()   # translate again (the end address was looked up while translating)
    assert e.reason == ExitReason.HLT, e.describe()
    rounds = seen[:-1]
    assert len(rounds) == 3 * 6 and seen[-1][:2] == (ExitReason.IO_INSTRUCTION, 0x81)
    assert len({rip for reason, _, rip in rounds if reason == ExitReason.IO_INSTRUCTION}) == 1   # one OUT, one RIP
    assert vcpu.get_regs().r12 == 6 and vcpu.get_regs().rax & 0xFF == 6                         # six #PFs, all handled
    engine.close()


def test_interrupt_window_awaited_across_a_long_cli_stretch():
    """The window is awaited while 100,000 loop rounds run with IF clear (POPFD keeps loading IF=0); the exit
    comes exactly after the STI shadow."""
    mem, engine, vcpu = make("window_long16")
    e = vcpu.run()
    assert (e.reason, e.port) == (ExitReason.IO_INSTRUCTION, 0x80), e.describe()
    vcpu.set_interrupt_window_exiting(True)
    e = vcpu.run()
    assert e.reason == ExitReason.INTERRUPT_WINDOW, e.describe()
    regs = vcpu.get_regs()
    assert regs.rcx & 0xFFFFFFFF == 0 and (regs.rax & 0xFFFF, regs.rbx & 0xFFFF) == (1, 0)
    assert mem.read_u8(regs.rip) == 0x43                 # INC BX not run yet
    vcpu.set_interrupt_window_exiting(False)
    e = vcpu.run()
    assert e.reason == ExitReason.HLT and vcpu.get_regs().rbx & 0xFFFF == 1
    engine.close()


def test_software_interrupts_return_past_the_instruction_and_int3_exits_at_it():
    """INT 6 by software is not #UD (unicorn reports both as vector 6): it returns to the next instruction.
    An INT3 in the exception bitmap exits with RIP at the INT3 and instruction length 1 (SDM 27.2.4)."""
    mem, engine, vcpu = make("softint16")
    image = mem.read(0x1000, 0x60)
    int5 = image.index(b"\xcd\x05") + 0x1000
    assert image[int5 - 0x1000 + 2:int5 - 0x1000 + 4] == b"\xcd\x06"
    int3 = int5 + 4
    returns = []
    for _ in range(3):
        e = vcpu.run()
        assert (e.reason, e.port) == (ExitReason.IO_INSTRUCTION, 0x80), e.describe()
        returns.append(e.value)
    assert returns == [int5 + 2, int5 + 4, int3 + 1]          # INT 5, INT 6, INT3 (delivered to the guest)
    vcpu.set_regs(Registers(rip=int3, rsp=0x8000))
    vcpu.vmcs[VmcsField.EXCEPTION_BITMAP] = 1 << 3
    e = vcpu.run()
    assert e.reason == ExitReason.EXCEPTION_NMI and e.interruption_info & 0x7FF == 3 | 6 << 8
    assert e.instruction_length == 1 and vcpu.get_regs().rip == int3   # at the INT3, not past it
    engine.close()


def test_controls_a_handler_changes_during_an_inline_exit_apply_to_the_next_instruction():
    mem, engine, vcpu = make("softint16")
    image = mem.read(0x1000, 0x60)
    out81 = image.index(b"\xe6\x81") + 0x1000
    vcpu.set_regs(Registers(rip=out81, rsp=0x8000))
    seen = []

    def dispatch(e):
        seen.append(e.reason)
        if e.reason == ExitReason.IO_INSTRUCTION and e.port == 0x81:
            set_proc(vcpu, ProcBasedControls.RDTSC_EXITING)   # the RDTSC right behind must exit
            return True
        return False

    vcpu.set_inline_dispatcher(dispatch)
    vcpu.run()
    assert seen == [ExitReason.IO_INSTRUCTION, ExitReason.RDTSC]
    assert vcpu.get_regs().rip == out81 + 2
    engine.close()


def test_timer_deadline_stops_a_guest_whose_exits_are_all_handled_inline():
    """The deadline watchdog stops emulation that never returns on its own (every OUT is handled inside
    unicorn's hook), and one watchdog thread serves all the entries of a vCPU."""
    import threading
    mem, engine, vcpu = make("exits16")
    mem.write(0x1000, b"\xe6\x80\xeb\xfc")          # l: out 0x80, al ; jmp l
    vcpu.invalidate_code()
    outs = []
    timer_exits = []

    def dispatch(e):
        if e.reason == ExitReason.IO_INSTRUCTION:
            outs.append(e.port)
            return True
        timer_exits.append(e.reason)
        return False   # the deadline: back to run()'s caller

    vcpu.set_inline_dispatcher(dispatch)
    for _ in range(3):
        vcpu.set_timer_deadline(time.monotonic_ns() + 20_000_000)
        vcpu.run()
        assert vcpu.get_regs().rip in (0x1000, 0x1002)
    assert timer_exits == [ExitReason.VMX_PREEMPTION_TIMER_EXPIRED] * 3
    assert outs and set(outs) == {0x80}
    assert sum(t.name == "soft-timer" for t in threading.enumerate()) == 1
    engine.close()
    assert not any(t.name == "soft-timer" and t.is_alive() for t in threading.enumerate())
