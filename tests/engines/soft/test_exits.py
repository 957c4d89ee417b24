from smartvm_core.vmx import ExitReason, ProcBasedControls, VmcsField

from .helpers import make, set_proc


def test_real_mode_exits_with_controls_set():
    mem, engine, vcpu = make("exits16")
    set_proc(vcpu, ProcBasedControls.RDTSC_EXITING)
    vcpu.vmcs[VmcsField.EXCEPTION_BITMAP] = 1  # #DE
    e = vcpu.run()
    assert (e.reason, e.port, e.is_in, e.value) == (ExitReason.IO_INSTRUCTION, 0x80, False, 0x42)
    assert e.decoded().port == 0x80
    e = vcpu.run()
    assert (e.reason, e.port, e.is_in, e.size) == (ExitReason.IO_INSTRUCTION, 0x81, True, 1)
    e.value = 0x37
    e = vcpu.run()
    assert e.reason == ExitReason.CPUID
    regs = vcpu.get_regs()
    assert regs.rbx & 0xFF == 0x37          # the IN answer reached the guest
    regs.rbx = 0x756E6547
    vcpu.set_regs(regs)
    vcpu.skip_instruction()
    e = vcpu.run()
    assert e.reason == ExitReason.RDTSC
    regs = vcpu.get_regs()
    regs.rax = 0xABCD
    vcpu.set_regs(regs)
    vcpu.skip_instruction()
    e = vcpu.run()
    assert e.reason == ExitReason.EXCEPTION_NMI
    assert e.interruption_info & 0xFF == 0 and e.interruption_info >> 31
    assert (e.interruption_info >> 8) & 7 == 3  # hardware exception
    assert mem.read_u32(0x500) == 0x756E6547 and mem.read_u32(0x504) == 0xABCD
    # reflect the #DE into the guest: its own IVT handler runs and skips the div
    from smartvm_core.vmx import EntryInterruptionInfo, EventInjection
    vcpu.inject_event(EventInjection(EntryInterruptionInfo.hardware_exception(0)))
    e = vcpu.run()
    assert e.reason == ExitReason.HLT
    assert mem.read_u8(0x508) == 1
    hlt_rip = vcpu.get_regs().rip
    assert mem.read_u8(hlt_rip) == 0xF4     # RIP points at the HLT, as on VT-x
    vcpu.skip_instruction()
    e = vcpu.run()
    assert (e.reason, e.port, e.value) == (ExitReason.IO_INSTRUCTION, 0x82, 0x99)
    engine.close()


def test_real_mode_no_exits_with_controls_clear():
    mem, engine, vcpu = make("exits16")
    set_proc(vcpu, ProcBasedControls.USE_IO_BITMAPS, ProcBasedControls.UNCONDITIONAL_IO_EXITING)
    vcpu.bitmaps.trap_port(0x82)
    e = vcpu.run()   # OUT 0x80 / IN 0x81 do not exit; CPUID always does
    assert e.reason == ExitReason.CPUID
    assert vcpu.get_regs().rbx & 0xFF == 0xFF   # IN from a port nobody answers floats high
    vcpu.skip_instruction()
    e = vcpu.run()   # no RDTSC exit, #DE not in the bitmap: the guest's handler runs; then HLT
    assert e.reason == ExitReason.HLT
    assert mem.read_u8(0x508) == 1
    vcpu.skip_instruction()
    e = vcpu.run()
    assert (e.reason, e.port) == (ExitReason.IO_INSTRUCTION, 0x82)   # bitmap bit set
    vcpu.skip_instruction()
    set_proc(vcpu, 0, ProcBasedControls.HLT_EXITING)
    vcpu.kick()
    e = vcpu.run()
    assert e.reason == ExitReason.EXTERNAL_INTERRUPT
    engine.close()


def test_protected_mode_guest_handles_own_gp_and_pf():
    mem, engine, vcpu = make("pmode32", mode="protected32")
    e = vcpu.run()
    assert (e.reason, e.port, e.value) == (ExitReason.IO_INSTRUCTION, 0x80, 1)   # one #GP handled
    e = vcpu.run()
    assert (e.reason, e.port, e.value) == (ExitReason.IO_INSTRUCTION, 0x81, 1)   # one #PF handled
    assert mem.read_u32(0x6004) == 0x00800000                                   # CR2 seen by the guest
    e = vcpu.run()
    assert e.reason == ExitReason.HLT
    engine.close()


def test_protected_mode_pf_exit_with_bitmap_and_error_code_rule():
    mem, engine, vcpu = make("pmode32", mode="protected32")
    vcpu.vmcs[VmcsField.EXCEPTION_BITMAP] = 1 << 14 | 1 << 13
    e = vcpu.run()
    assert e.reason == ExitReason.EXCEPTION_NMI and e.interruption_info & 0xFF == 13
    assert e.interruption_error_code == 0x7F8 and e.interruption_info >> 11 & 1
    from smartvm_core.vmx import EntryInterruptionInfo, EventInjection
    vcpu.inject_event(EventInjection(EntryInterruptionInfo.hardware_exception(13), error_code=0x7F8))
    e = vcpu.run()
    assert e.reason == ExitReason.EXCEPTION_NMI and e.interruption_info & 0xFF == 14
    assert e.qualification == 0x00800000 and e.interruption_error_code == 0   # read, not present
    engine.close()
    # mask/match: PF exits only when (ec & mask) == match with bit 14 set; mismatch -> guest handles
    mem, engine, vcpu = make("pmode32", mode="protected32")
    vcpu.vmcs[VmcsField.EXCEPTION_BITMAP] = 1 << 14
    vcpu.vmcs[VmcsField.PAGE_FAULT_ERROR_CODE_MASK] = 2
    vcpu.vmcs[VmcsField.PAGE_FAULT_ERROR_CODE_MATCH] = 2   # only write faults exit
    e = vcpu.run()
    assert (e.reason, e.port) == (ExitReason.IO_INSTRUCTION, 0x80)
    engine.close()


def test_long_mode_io_mmio_rom_hlt():
    mem, engine, vcpu = make("long64", mode="long")
    mem.add_rom(0x300000, b"\xAA" * 4096, name="bios")
    e = vcpu.run()
    assert (e.reason, e.port, e.value) == (ExitReason.IO_INSTRUCTION, 0x80, 0x64)
    e = vcpu.run()
    assert (e.reason, e.port, e.size, e.is_in) == (ExitReason.IO_INSTRUCTION, 0x84, 4, True)
    e.value = 0xCAFEBABE
    e = vcpu.run()
    assert e.reason == ExitReason.EPT_VIOLATION and e.is_write
    assert (e.guest_physical_address, e.size, e.value) == (0xFE000008, 4, 0x12345678)
    assert e.decoded().write
    e = vcpu.run()
    assert e.reason == ExitReason.EPT_VIOLATION and not e.is_write
    assert (e.guest_physical_address, e.size) == (0xFE000010, 4)
    assert e.decoded().read
    e.value = 0x5555AAAA
    e = vcpu.run()
    assert e.reason == ExitReason.EPT_VIOLATION and e.is_write and e.guest_physical_address == 0x300000
    e = vcpu.run()
    assert e.reason == ExitReason.HLT
    regs = vcpu.get_regs()
    assert regs.rbx == 0xCAFEBABE and regs.rdx == 0x5555AAAA and regs.r9 == 1
    assert mem.read_u8(0x300000) == 0xAA        # ROM unchanged
    engine.close()


def test_state_round_trip_resumes_identically():
    mem, engine, vcpu = make("exits16")
    while (e := vcpu.run()).reason != ExitReason.HLT:
        vcpu.skip_instruction()
    vcpu.skip_instruction()          # quiescent point: past the HLT
    state = vcpu.save_state()
    sregs, regs = vcpu.get_sregs(), vcpu.get_regs()
    mem2, engine2, vcpu2 = make("exits16")
    mem2.write(0, mem.read(0, 0x10000))
    vcpu2.reset()
    assert vcpu2.get_regs() != regs
    vcpu2.restore_state(state)
    assert vcpu2.get_sregs() == sregs and vcpu2.get_regs() == regs
    for v in (vcpu, vcpu2):
        e = v.run()
        assert (e.reason, e.port, e.value) == (ExitReason.IO_INSTRUCTION, 0x82, 0x99)
    engine.close()
    engine2.close()


def test_inline_dispatcher_keeps_running_until_false():
    mem, engine, vcpu = make("exits16")
    seen = []

    def dispatch(e):
        seen.append((int(e.reason), e.port))
        if e.reason == ExitReason.IO_INSTRUCTION and e.is_in:
            e.value = 1
        if e.reason in (ExitReason.CPUID, ExitReason.HLT):
            vcpu.skip_instruction()
        return e.reason != ExitReason.HLT

    vcpu.set_inline_dispatcher(dispatch)
    assert vcpu.run() is None
    assert seen[:3] == [(ExitReason.IO_INSTRUCTION, 0x80), (ExitReason.IO_INSTRUCTION, 0x81), (ExitReason.CPUID, 0)]
    assert seen[-1][0] == ExitReason.HLT
    engine.close()


def test_real_mode_code_segment_with_a_base():
    """RIP is an offset into CS: exits decode the code at CS base + RIP and complete in CS (SeaBIOS runs as F000:xxxx)."""
    from smartvm_core.cpu import Segment
    mem, engine, vcpu = make("cs16", at=0x11000)
    sregs = vcpu.get_sregs()
    sregs.cs = Segment.real_mode(0x1000, code=True)
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip = 0x1000
    vcpu.set_regs(regs)
    vcpu.vmcs[VmcsField.CR0_GUEST_HOST_MASK] = 1 << 30        # CD is the host's ...
    vcpu.vmcs[VmcsField.CR0_READ_SHADOW] = 1 << 30            # ... and reads as set

    def at_rip(n):   # the bytes at CS:RIP
        return mem.read(0x10000 + vcpu.get_regs().rip, n)

    e = vcpu.run()
    assert (e.reason, e.port, e.value & 0xFF, e.qualification >> 6 & 1) == (ExitReason.IO_INSTRUCTION, 0x80, 0x11, 1)
    assert e.instruction_length == 2 and at_rip(2) == b"\xe6\x80"
    e = vcpu.run()
    assert (e.reason, e.port, e.is_in, e.instruction_length) == (ExitReason.IO_INSTRUCTION, 0x84, True, 2)
    assert at_rip(2) == b"\xe4\x84"
    e.value = 0x5A
    e = vcpu.run()
    assert e.reason == ExitReason.CPUID and at_rip(2) == b"\x0f\xa2"
    vcpu.skip_instruction()
    e = vcpu.run()
    assert (e.reason, e.port, e.instruction_length) == (ExitReason.IO_INSTRUCTION, 0x86, 1), e.describe()
    assert at_rip(1) == b"\xee"
    assert mem.read_u8(0x600) == 0x5A
    assert mem.read_u32(0x604) & (1 << 30) and mem.read_u32(0x604) & 0x10   # shadowed CD, real ET
    e = vcpu.run()
    assert e.reason == ExitReason.HLT and at_rip(1) == b"\xf4"
    engine.close()


def test_each_store_of_a_rep_stos_to_a_protected_page_exits():
    """Every store of a multi-store instruction makes its own EPT violation (as on KVM); a store the handler
    leaves protected is dropped and the instruction goes on; a store whose page the handler made writable is
    retried and goes through, like the rest."""
    mem, engine, vcpu = make("repstos16")
    engine.set_page_protection(0x3000, 0x1000, 0b101)          # read + execute, no write
    gpas = []
    while True:
        e = vcpu.run()
        if e.reason != ExitReason.EPT_VIOLATION:
            break
        assert e.is_write and e.qualification & 2 and not e.qualification & 0x10
        gpas.append(e.guest_physical_address)
        if len(gpas) == 2:
            engine.set_page_protection(0x3000, 0x1000, 0b111)  # the handler allows writes from now on
    assert (e.reason, e.port) == (ExitReason.IO_INSTRUCTION, 0x80), e.describe()
    assert gpas == [0x3000, 0x3001]
    assert mem.read(0x3000, 4) == b"\x00\xab\xab\xab"           # the first dropped, the second retried
    assert vcpu.get_regs().rcx & 0xFFFF == 0 and vcpu.get_regs().rdi & 0xFFFF == 0x3004
    engine.close()


def test_register_accessors_agree_with_get_regs_and_get_sregs():
    """get_reg/set_reg, get_segment_selectors and get_cr0 read the same CPU as get_regs/get_sregs;
    RFLAGS carries the arithmetic flags unicorn keeps apart (CF, ZF) and DF."""
    from smartvm_core.cpu import Registers, Segment
    mem, engine, vcpu = make("exits16")
    regs = Registers(**{name: 0x1111 * (i + 1) for i, name in enumerate(
        ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
         "r15"))}, rip=0x1000, rflags=0x2 | 1 | 1 << 6 | 1 << 10)
    vcpu.set_regs(regs)
    assert vcpu.get_regs() == regs
    assert [vcpu.get_reg(n) for n in ("rax", "r15", "rip", "rflags")] == [regs.rax, regs.r15, 0x1000, regs.rflags]
    vcpu.set_reg("rbx", 0xDEAD_BEEF_0000_0001)
    vcpu.set_reg("rflags", 0x2 | 1 << 11)
    got = vcpu.get_regs()
    assert (got.rbx, got.rflags, got.rcx) == (0xDEAD_BEEF_0000_0001, 0x2 | 1 << 11, regs.rcx)
    sregs = vcpu.get_sregs()
    sregs.ds = Segment.real_mode(0x1234)
    sregs.fs = Segment(selector=0x38, base=0x12345000, limit=0xFFFFF, type=3, db=1, g=1)
    vcpu.set_sregs(sregs)
    again = vcpu.get_sregs()
    assert again.ds == sregs.ds and again.fs == sregs.fs and again.cs == sregs.cs
    assert vcpu.get_segment_selectors() == (again.es.selector, again.cs.selector, again.ss.selector, 0x1234,
                                            0x38, again.gs.selector)
    assert vcpu.get_cr0() == again.cr0
    import pytest
    with pytest.raises(KeyError):
        vcpu.get_reg("cr0")
    engine.close()
