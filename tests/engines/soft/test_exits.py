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
