"""Sensitive instructions (MSR, CR, CLTS, LMSW, INVLPG, VMCALL, CPUID), I/O qualifications and
string I/O, exact instruction boundaries, in real, 32-bit protected and long mode."""

import pytest

from smartvm_core.vmx import (CrAccessQualification, CrAccessType, EntryInterruptionInfo, EventInjection,
                              ExitReason, IoQualification, ProcBasedControls, VmcsField)

from .helpers import make, set_proc

MODES = {"real": 16, "protected32": 32, "long": 64}
CD, TS = 1 << 30, 1 << 3


def _sens(mode):
    bits = MODES[mode]
    mem, engine, vcpu = make("sens", mode=mode, defines={"BITS": bits} if bits != 16 else None)
    set_proc(vcpu, ProcBasedControls.INVLPG_EXITING)
    vcpu.vmcs[VmcsField.CR0_GUEST_HOST_MASK] = CD | TS
    vcpu.vmcs[VmcsField.CR0_READ_SHADOW] = TS
    sregs = vcpu.get_sregs()
    sregs.cr0 |= CD     # the host keeps CD set; the guest must see the shadow (CD clear)
    vcpu.set_sregs(sregs)
    return mem, engine, vcpu


def _expect(vcpu, reason):
    e = vcpu.run()
    assert e.reason == reason, e.describe()
    return e


@pytest.mark.parametrize("mode", sorted(MODES))
def test_sensitive_instructions_exit_before_they_run(mode):
    mem, engine, vcpu = _sens(mode)
    e = _expect(vcpu, ExitReason.RDMSR)
    assert e.msr == 0x1234 and e.instruction_length == 2
    rip = vcpu.get_regs().rip
    assert mem.read(vcpu.translate(rip), 2) == b"\x0f\x32"     # RIP at the RDMSR: it has not run
    e.value = 0xAABBCCDD_11223344
    vcpu.skip_instruction()
    e = _expect(vcpu, ExitReason.WRMSR)
    assert (e.msr, e.value) == (0x1235, 0x22222222_11111111)
    assert mem.read_u32(0x600) == 0x11223344 and mem.read_u32(0x604) == 0xAABBCCDD
    vcpu.skip_instruction()
    # MOV from CR0 reads the shadow for owned bits; MOV to CR0 equal to the shadow does not exit
    e = _expect(vcpu, ExitReason.CR_ACCESS)
    assert mem.read_u32(0x608) & (CD | TS) == TS
    q = CrAccessQualification.decode(e.qualification)
    assert (q.cr, q.access_type, q.gpr) == (0, CrAccessType.MOV_TO_CR, 0)
    assert vcpu.get_regs().rax & CD
    assert vcpu.get_sregs().cr0 & CD                           # the owned bit kept the host's value
    vcpu.skip_instruction()
    e = _expect(vcpu, ExitReason.CR_ACCESS)
    assert CrAccessQualification.decode(e.qualification).access_type == CrAccessType.CLTS
    vcpu.skip_instruction()
    e = _expect(vcpu, ExitReason.CR_ACCESS)
    q = CrAccessQualification.decode(e.qualification)
    assert (q.access_type, q.lmsw_source_data, q.lmsw_operand_memory) == (CrAccessType.LMSW, 1, False)
    vcpu.skip_instruction()
    e = _expect(vcpu, ExitReason.INVLPG)
    assert e.qualification == 0x3000
    vcpu.skip_instruction()
    e = _expect(vcpu, ExitReason.VMCALL)
    assert e.instruction_length == 3
    vcpu.skip_instruction()
    e = _expect(vcpu, ExitReason.CPUID)
    vcpu.skip_instruction()
    e = _expect(vcpu, ExitReason.IO_INSTRUCTION)
    q = IoQualification.decode(e.qualification)
    assert (q.port, q.size, q.direction_in, q.string, q.operand_immediate) == (0x80, 1, False, False, False)
    e = _expect(vcpu, ExitReason.IO_INSTRUCTION)
    q = IoQualification.decode(e.qualification)
    assert (q.port, q.operand_immediate) == (0x81, True)
    e = _expect(vcpu, ExitReason.IO_INSTRUCTION)
    q = IoQualification.decode(e.qualification)
    assert (q.port, q.string, q.rep, q.size) == (0xE9, True, True, 1)
    assert (e.count, bytes(e.data)) == (5, b"hello")
    e = _expect(vcpu, ExitReason.IO_INSTRUCTION)
    q = IoQualification.decode(e.qualification)
    assert (q.port, q.string, q.rep, q.size, q.direction_in) == (0x90, True, True, 2, True)
    assert e.count == 3 and len(e.data) == 6
    e.data[:] = b"\x01\x02\x03\x04\x05\x06"
    e = _expect(vcpu, ExitReason.IO_INSTRUCTION)
    assert (e.port, e.value) == (0x82, 0x77)
    assert mem.read(0x700, 6) == b"\x01\x02\x03\x04\x05\x06" and mem.read_u32(0x610) == 0
    regs = vcpu.get_regs()
    assert regs.rsi & 0xFFFF == (regs.rsi & 0xFFFF)  # registers readable mid-exit
    e = _expect(vcpu, ExitReason.HLT)
    engine.close()


def test_msr_fault_raises_gp_and_bitmaps_let_accesses_through():
    mem, engine, vcpu = _sens("real")
    mem.write_u16(13 * 4, 0x5000)                              # IVT #GP -> out 0x85, al ; hlt
    mem.write_u16(13 * 4 + 2, 0)
    mem.write(0x5000, b"\xe6\x85\xf4")
    e = _expect(vcpu, ExitReason.RDMSR)
    e.fault = True
    rip = vcpu.get_regs().rip
    sp = vcpu.get_regs().rsp
    e = _expect(vcpu, ExitReason.IO_INSTRUCTION)
    assert e.port == 0x85
    assert mem.read_u16(sp - 6) == rip                         # #GP at the RDMSR, not after it
    engine.close()
    # with MSR bitmaps and the bits clear, RDMSR/WRMSR do not exit
    mem, engine, vcpu = _sens("protected32")
    set_proc(vcpu, ProcBasedControls.USE_MSR_BITMAPS)
    vcpu.bitmaps.trap_msr(0x1235, read=False, write=True)
    e = _expect(vcpu, ExitReason.WRMSR)
    assert e.msr == 0x1235
    engine.close()


def test_wrmsr_handler_writes_through_to_unicorn():
    mem, engine, vcpu = make("sens", mode="long", defines={"BITS": 64})
    e = _expect(vcpu, ExitReason.RDMSR)
    vcpu.skip_instruction()
    e = _expect(vcpu, ExitReason.WRMSR)
    vcpu.set_msr(0xC0000100, 0x1234_5000)                      # FS base, as an MSR handler does
    assert vcpu.get_sregs().fs.base == 0x1234_5000
    assert vcpu.get_msr(0xC0000100) == 0x1234_5000
    engine.close()


def test_cr3_exiting_and_unmasked_cr_access_run_natively():
    mem, engine, vcpu = make("pmode32", mode="protected32")
    set_proc(vcpu, ProcBasedControls.CR3_LOAD_EXITING)
    e = _expect(vcpu, ExitReason.CR_ACCESS)
    q = CrAccessQualification.decode(e.qualification)
    assert (q.cr, q.access_type, q.gpr) == (3, CrAccessType.MOV_TO_CR, 0)
    sregs = vcpu.get_sregs()
    sregs.cr3 = vcpu.get_regs().rax
    vcpu.set_sregs(sregs)
    vcpu.skip_instruction()
    set_proc(vcpu, 0, ProcBasedControls.CR3_LOAD_EXITING)
    e = _expect(vcpu, ExitReason.IO_INSTRUCTION)                # the rest runs: CR4, CR0 writes native
    assert (e.port, e.value) == (0x80, 1)
    engine.close()


def test_self_modifying_code_is_rescanned():
    mem, engine, vcpu = make("exits16")
    e = _expect(vcpu, ExitReason.IO_INSTRUCTION)
    # patch the next instructions (IN al,0x81 ; mov bl,al) into RDMSR ; nop ; nop behind the scanner
    rip = vcpu.get_regs().rip
    at = rip + 2
    assert mem.read(at, 2) == b"\xe4\x81"
    mem.write(at, b"\x0f\x32\x90\x90")
    vcpu.invalidate_code()
    e = _expect(vcpu, ExitReason.RDMSR)
    engine.close()


def test_inline_stop_at_out_keeps_following_hlt():
    """A handler returning False at an OUT stops before the next instruction (the HLT runs later)."""
    mem, engine, vcpu = make("sens")
    seen = []

    def dispatch(e):
        seen.append(int(e.reason))
        if e.reason == ExitReason.IO_INSTRUCTION and e.port == 0x82:
            return False
        if e.reason == ExitReason.IO_INSTRUCTION and e.is_in and e.data is not None:
            e.data[:] = bytes(len(e.data))
        if e.reason != ExitReason.IO_INSTRUCTION:
            vcpu.skip_instruction()
        return True

    vcpu.set_inline_dispatcher(dispatch)
    assert vcpu.run() is None
    rip = vcpu.get_regs().rip
    assert mem.read_u8(rip) == 0xF4                             # stopped right before the HLT
    assert ExitReason.HLT not in seen
    seen.clear()
    vcpu.set_inline_dispatcher(lambda e: (seen.append(int(e.reason)), False)[1])
    vcpu.run()
    assert seen == [ExitReason.HLT]
    engine.close()


def test_inline_handler_redirects_rip_and_injects_at_io():
    mem, engine, vcpu = make("exits16")
    target = 0x1000 + mem.read(0x1000, 0x80).index(b"\xb0\x99")  # mov al, 0x99 ; out 0x82, al
    seen = []

    def dispatch(e):
        seen.append((int(e.reason), e.port))
        if e.reason == ExitReason.IO_INSTRUCTION and e.port == 0x80:
            regs = vcpu.get_regs()
            regs.rip = target
            vcpu.set_regs(regs)
            return True
        return False

    vcpu.set_inline_dispatcher(dispatch)
    vcpu.run()
    assert seen == [(ExitReason.IO_INSTRUCTION, 0x80), (ExitReason.IO_INSTRUCTION, 0x82)]
    engine.close()


def test_save_state_during_io_exit_completes_the_instruction():
    mem, engine, vcpu = make("exits16")
    _expect(vcpu, ExitReason.IO_INSTRUCTION)
    e = _expect(vcpu, ExitReason.IO_INSTRUCTION)
    assert e.is_in
    e.value = 0x5C
    state = vcpu.save_state()
    regs = vcpu.get_regs()
    assert regs.rax & 0xFF == 0x5C                               # IN completed: AL has the answer
    assert mem.read_u8(regs.rip) != 0xE4                         # RIP past the IN
    assert state["regs"]["rip"] == regs.rip
    e = _expect(vcpu, ExitReason.CPUID)
    assert vcpu.get_regs().rbx & 0xFF == 0x5C
    engine.close()


def test_software_interrupt_injection_real_mode():
    mem, engine, vcpu = make("exits16")
    _expect(vcpu, ExitReason.IO_INSTRUCTION)
    # IVT entry 0x21 -> an IRET at 0x5000
    mem.write_u16(0x21 * 4, 0x5000)
    mem.write_u16(0x21 * 4 + 2, 0)
    mem.write_u8(0x5000, 0xCF)
    rip = vcpu.get_regs().rip
    sp = vcpu.get_regs().rsp
    vcpu.inject_event(EventInjection(EntryInterruptionInfo.software_interrupt(0x21), instruction_length=2))
    # the OUT completes, then the injected INT 0x21 stands for the 2-byte instruction at RIP (the IN):
    # its handler returns past the IN, so the next exit is CPUID
    _expect(vcpu, ExitReason.CPUID)
    assert mem.read_u16(sp - 6) == rip + 2 + 2
    engine.close()


def _alias_run(vcpu, stop_at=ExitReason.HLT):
    seen = []
    while True:
        e = vcpu.run()
        seen.append((e.reason, vcpu.get_regs().rip))
        if e.reason == stop_at:
            return seen
        if e.reason == ExitReason.RDMSR:
            vcpu.skip_instruction()


def test_a_physical_code_page_exits_through_every_linear_alias():
    # linear 4 GiB + x maps onto physical x: the RDMSR at 0x2000 runs through both addresses
    mem, engine, vcpu = make("alias64", mode="long")
    mem.write_u64(0x101000 + 8 * 4, 0x102000 | 3)     # PDPT[4] -> the page directory of GiB 0
    seen = _alias_run(vcpu, stop_at=ExitReason.IO_INSTRUCTION)
    assert seen == [(ExitReason.RDMSR, 0x2000), (ExitReason.RDMSR, 0x1_0000_2000),
                    (ExitReason.IO_INSTRUCTION, seen[-1][1])]
    engine.close()


def test_one_linear_page_in_two_address_spaces_exits_at_each_mapping_sites():
    mem, engine, vcpu = make("aspace64", mode="long")
    x = 0x40000000

    def map_x(pdpt, pd, pt, phys):
        mem.write_u64(pdpt + 8 * (x >> 30), pd | 3)
        mem.write_u64(pd, pt | 3)
        mem.write_u64(pt, phys | 3)

    map_x(0x101000, 0x110000, 0x111000, 0x3000)       # space A: the helper's tables, X -> 0x3000
    pml4_b, pdpt_b = 0x120000, 0x121000                 # space B: a copy, X -> 0x4000
    mem.write_u64(pml4_b, pdpt_b | 3)
    mem.write(pdpt_b, mem.read(0x101000, 8 * 4))
    map_x(pdpt_b, 0x122000, 0x123000, 0x4000)
    seen = _alias_run(vcpu, stop_at=ExitReason.IO_INSTRUCTION)
    assert [r for r, _ in seen[:3]] == [ExitReason.RDMSR] * 3
    assert [rip for _, rip in seen[:3]] == [x, x + 0x10, x]
    assert seen[3][0] == ExitReason.IO_INSTRUCTION
    engine.close()
