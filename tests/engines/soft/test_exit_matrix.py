"""Each exit kind the soft engine models, in each CPU mode where it applies: with its control set
the instruction exits (before it runs, with the SDM's reason); with the control clear it runs (or,
for an exception, reaches the guest's own handler) and the guest halts at ``done``.

Controls that have no "clear" (CPUID, VMCALL, INVD, unbacked memory) are checked set only.
"""

from __future__ import annotations

import pytest

from smartvm_core.vmx import ExitReason, ProcBasedControls, ProcBasedControls2, VmcsField

from .helpers import make, set_proc

P = ProcBasedControls
MODES = {"real": 16, "protected32": 32, "long": 64}
CD, OSFXSR = 1 << 30, 1 << 9


def _none(vcpu):
    pass


def _exc(vcpu):
    vcpu.vmcs[VmcsField.EXCEPTION_BITMAP] = 1 << 6


def _msr_bitmap(vcpu):
    set_proc(vcpu, P.USE_MSR_BITMAPS)   # an empty MSR bitmap: no MSR access exits


def _io_bitmap_trap(vcpu):
    set_proc(vcpu, P.USE_IO_BITMAPS, P.UNCONDITIONAL_IO_EXITING)
    vcpu.bitmaps.trap_port(0x80)


def _io_bitmap_pass(vcpu):
    set_proc(vcpu, P.USE_IO_BITMAPS, P.UNCONDITIONAL_IO_EXITING)
    vcpu.bitmaps.trap_port(0x81)        # another port: 0x80 runs


def _cr0_mask(vcpu):
    vcpu.vmcs[VmcsField.CR0_GUEST_HOST_MASK] = CD
    vcpu.vmcs[VmcsField.CR0_READ_SHADOW] = vcpu.get_sregs().cr0 & CD


def _cr4_mask(vcpu):
    vcpu.vmcs[VmcsField.CR4_GUEST_HOST_MASK] = OSFXSR
    vcpu.vmcs[VmcsField.CR4_READ_SHADOW] = vcpu.get_sregs().cr4 & OSFXSR


def _proc(flag):
    return lambda vcpu: set_proc(vcpu, flag)


def _wbinvd(vcpu):
    set_proc(vcpu, P.ACTIVATE_SECONDARY_CONTROLS)
    vcpu.vmcs[VmcsField.SECONDARY_VM_EXEC_CONTROL] = int(ProcBasedControls2.WBINVD_EXITING)


def _no_io(vcpu):
    set_proc(vcpu, 0, P.UNCONDITIONAL_IO_EXITING)


#: name: (KIND in guests/soft/matrix.asm, set the control, clear it (None: no such control), expected reason)
KINDS = {
    "exception-bitmap": (1, _exc, _none, ExitReason.EXCEPTION_NMI),
    "hlt-exiting": (2, _none, None, ExitReason.HLT),
    "io-unconditional": (3, _none, _no_io, ExitReason.IO_INSTRUCTION),
    "io-bitmap": (3, _io_bitmap_trap, _io_bitmap_pass, ExitReason.IO_INSTRUCTION),
    "rdmsr": (4, _none, _msr_bitmap, ExitReason.RDMSR),
    "wrmsr": (5, _none, _msr_bitmap, ExitReason.WRMSR),
    "rdtsc-exiting": (6, _proc(P.RDTSC_EXITING), _none, ExitReason.RDTSC),
    "cr0-mask": (7, _cr0_mask, _none, ExitReason.CR_ACCESS),
    "cr4-mask": (8, _cr4_mask, _none, ExitReason.CR_ACCESS),
    "cr3-store-exiting": (9, _proc(P.CR3_STORE_EXITING), _none, ExitReason.CR_ACCESS),
    "cr3-load-exiting": (10, _proc(P.CR3_LOAD_EXITING), _none, ExitReason.CR_ACCESS),
    "invlpg-exiting": (11, _proc(P.INVLPG_EXITING), _none, ExitReason.INVLPG),
    "mov-dr-exiting": (12, _proc(P.MOV_DR_EXITING), _none, ExitReason.MOV_DR),
    "wbinvd-exiting": (13, _wbinvd, _none, ExitReason.WBINVD),
    "interrupt-window-exiting": (14, _proc(P.INTERRUPT_WINDOW_EXITING), _none, ExitReason.INTERRUPT_WINDOW),
    "cpuid": (15, _none, None, ExitReason.CPUID),
    "vmcall": (16, _none, None, ExitReason.VMCALL),
    "invd": (17, _none, None, ExitReason.INVD),
    "ept-violation": (18, _none, None, ExitReason.EPT_VIOLATION),
}
#: kinds that do not apply in a mode
SKIP = {("ept-violation", "real")}   # real mode cannot address beyond 1 MiB + 64 KiB


def _guest(kind, mode):
    number = KINDS[kind][0]
    return make("matrix", mode=mode, defines={"BITS": MODES[mode], "KIND": number})


#: the opcode bytes RIP must point at when the instruction exits (it has not run)
OPCODES = {
    "hlt-exiting": b"\xf4\xf4",                      # the kind's HLT, then the one at `done`
    "io-unconditional": b"\xe6\x80", "io-bitmap": b"\xe6\x80",
    "rdmsr": b"\x0f\x32", "wrmsr": b"\x0f\x30", "rdtsc-exiting": b"\x0f\x31",
    "cr0-mask": b"\x0f\x22\xc0", "cr4-mask": b"\x0f\x22\xe0",
    "cr3-store-exiting": b"\x0f\x20\xd8", "cr3-load-exiting": b"\x0f\x22\xd8",
    "invlpg-exiting": b"\x0f\x01", "mov-dr-exiting": b"\x0f\x21\xf8", "wbinvd-exiting": b"\x0f\x09",
    "cpuid": b"\x0f\xa2", "vmcall": b"\x0f\x01\xc1", "invd": b"\x0f\x08",
}


CASES = [(k, m) for k in KINDS for m in MODES if (k, m) not in SKIP]


@pytest.mark.parametrize("kind,mode", CASES)
def test_control_set_exits(kind, mode):
    _, set_it, _, reason = KINDS[kind]
    mem, engine, vcpu = _guest(kind, mode)
    set_it(vcpu)
    e = vcpu.run()
    assert e.reason == reason, f"{kind} in {mode} mode: {e.describe()}"
    rip = vcpu.get_regs().rip
    code = mem.read(vcpu.translate(rip), 4)
    if reason == ExitReason.EXCEPTION_NMI:
        assert e.interruption_info & 0xFF == 6 and e.interruption_info >> 31
        assert code[:2] == b"\x0f\x0b"                 # RIP at the UD2, the handler has not run
        assert mem.read_u8(0x500) == 0
    elif reason == ExitReason.INTERRUPT_WINDOW:
        assert code[:1] == b"\x90"                     # after STI and its shadow: at the second NOP
        assert mem.read(vcpu.translate(rip - 1), 1) == b"\x90"
    elif reason == ExitReason.EPT_VIOLATION:
        assert e.guest_physical_address == 0x40000000 and not e.is_write
    else:
        # the instruction has not run: RIP is at its opcode
        assert code.startswith(OPCODES[kind]), f"{kind} in {mode} mode: RIP at {code.hex()}"
    if kind == "cr0-mask":
        assert not vcpu.get_sregs().cr0 & CD               # the write did not happen
    engine.close()


@pytest.mark.parametrize("kind,mode", [c for c in CASES if KINDS[c[0]][2] is not None])
def test_control_clear_runs_the_instruction(kind, mode):
    _, _, clear_it, _ = KINDS[kind]
    mem, engine, vcpu = _guest(kind, mode)
    clear_it(vcpu)
    e = vcpu.run()
    assert e.reason == ExitReason.HLT, f"{kind} in {mode} mode with the control clear: {e.describe()}"
    rip = vcpu.get_regs().rip
    if kind == "exception-bitmap":
        assert mem.read_u8(0x500) == 0x66              # the guest's own #UD handler ran
    else:
        assert mem.read_u8(0x500) == 0
        # halted at `done`: the HLT is followed by `jmp done` (EB FD)
        assert mem.read(vcpu.translate(rip), 3) == b"\xf4\xeb\xfd"
    # and it took effect
    if kind == "cr0-mask":
        assert vcpu.get_sregs().cr0 & CD
    elif kind == "cr4-mask":
        assert vcpu.get_sregs().cr4 & OSFXSR
    elif kind == "wrmsr":
        assert vcpu.get_msr(0x174) == 0x10
    elif kind == "cr3-store-exiting":
        assert vcpu.get_regs().rax & 0xFFFFFFFF == vcpu.get_sregs().cr3 & 0xFFFFFFFF
    engine.close()
