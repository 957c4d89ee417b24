"""The real-mode programs in guests/v8086 run identically on every route of every engine here."""

import pytest

from v8086_guests import run_guest

HELLO = "Hello from an 8086 program!\r\n"


def test_hello_com_prints_and_exits_with_its_code(engine_route):
    engine, route = engine_route
    r = run_guest("hello", engine=engine, route=route, fmt="com")
    assert r.stop.kind == "exit-code" and r.stop.exit_code == 42
    assert r.console == HELLO
    assert r.report.counters["v8086 route"] == route
    section = dict(r.report.sections)["virtual-8086 monitor"]
    assert "  INT 21h/AH=09h                    1" in section
    assert "  INT 21h/AH=4Ch                    1" in section
    if route != "real-mode":
        assert r.report.counters["v8086 emulated instructions"] == 2  # the two INT 21h


def test_teletype_boot_sector(engine_route):
    engine, route = engine_route
    r = run_guest("teletype", engine=engine, route=route, fmt="bootsector")
    assert r.stop.kind == "halted"
    assert r.console == "Booted through BIOS teletype\r\n1 row\r\n"


def test_teletype_writes_the_vga_text_buffer(engine_route):
    from smartvm_core.testing import make_machine
    from build import build_guest
    from v8086_guests import plugins
    engine, route = engine_route
    image = build_guest("v8086/teletype")
    m = make_machine({"machine": {"engine": engine, "memory": "1M"},
                      "image": [{"path": str(image), "format": "bootsector"}],
                      "v8086": {"route": route}, "stop": {"timeout": 20}}, entry_points=False, plugins=plugins())
    try:
        m.run()
        row0 = m.memory.read(0xB8000, 160)[0::2].decode().rstrip()
        row1 = m.memory.read(0xB8000 + 160, 160)[0::2].decode().rstrip()
        assert row0 == "Booted through BIOS teletype" and row1 == "1 row"
        assert m.memory.read(0xB8001, 1) == b"\x07"
        assert m.memory.read_u16(0x450) == 0x0200  # cursor: row 2, column 0
    finally:
        m.close()


def test_disk_boot_sector_reads_through_int13(engine_route):
    engine, route = engine_route
    r = run_guest("disk", engine=engine, route=route, fmt="bootsector")
    assert r.console == "CHS read: sector 2\r\nLBA read: sector 3\r\ndisk ok\r\n"
    section = dict(r.report.sections)["virtual-8086 monitor"]
    assert any("INT 13h/AH=02h" in line for line in section) and any("INT 13h/AH=42h" in line for line in section)


def test_timer_ticks_through_int08_and_1c(engine_route):
    engine, route = engine_route
    r = run_guest("timer", engine=engine, route=route, fmt="com", devices=[{"type": "pic"}, {"type": "pit"}])
    assert r.stop.kind == "exit-code", r.stop
    assert r.console == "ticks counted\r\n"
    assert 10 <= r.stop.exit_code < 40
    section = dict(r.report.sections)["virtual-8086 monitor"]
    assert any(line.startswith("  INT 08h") for line in section)
    if route != "real-mode":
        assert any("INT 1Ch" in line for line in section[section.index("reflected to the program's handlers:"):])


def test_same_io_sequence_on_every_route(engine_route):
    """The trapped-port program's output (through an emulated OUT) matches the other routes'."""
    engine, route = engine_route
    r = run_guest("sensitive", engine=engine, route=route, fmt="com", devices=[{"type": "debugcon"}],
                  v8086={"trap_ports": [0xE9]})
    assert r.stop.exit_code == 0, (r.console, r.stop)
    assert r.console == "flags ok\r\nint ok\r\nstring ok\r\n"
    text = "\n".join(dict(r.report.sections)["virtual-8086 monitor"])
    if route != "real-mode":
        # (IN/OUT emulation through the I/O permission bitmap is covered by test_emulator: the soft
        # engine's CPU does not consult the bitmap in virtual-8086 mode, so the OUTs reach the device directly)
        for mnemonic in ("cli", "sti", "pushf", "popf", "pushfd", "popfd", "iret", "int", "int3"):
            assert any(line.split()[:-1][-1:] == [mnemonic] for line in text.splitlines() if line.startswith("  ")), mnemonic


def test_hook_register_v8086_services(engine_route):
    """A plugin's service answers INT 60h; a second registration without replace is refused."""
    from smartvm_core import hookimpl
    from smartvm_core.errors import PluginError

    seen = []

    class Services:
        @hookimpl
        def register_v8086_services(self, register, machine):
            def int60(call):
                seen.append(call.state.ax)
                call.state.ax = 0x4C00 | (call.state.al + 1)  # AH=4Ch, AL+1: the program then exits
            register(0x60, int60)
            with pytest.raises(PluginError):
                register(0x21, int60, ah=0x09)

    engine, route = engine_route
    r = run_guest("int60", engine=engine, route=route, fmt="com", extra_plugins=[("services", Services())])
    assert seen == [0x0041]
    assert r.stop.exit_code == 0x42
    assert "  INT 60h                           1" in dict(r.report.sections)["virtual-8086 monitor"]


def test_int_frames_wrap_keep_flags_and_segments(engine_route):
    """INT frames across the end of the stack segment, flags and segments set by services, on every route."""
    engine, route = engine_route
    r = run_guest("int_frame", engine=engine, route=route, fmt="com")
    assert r.stop.kind == "exit-code", r.stop.detail
    assert r.stop.exit_code == 0, f"check {r.stop.exit_code} failed"


@pytest.mark.parametrize("how", ["mov-cr0", "lmsw"])
def test_program_setting_pe_continues_in_protected_mode(engine_route, how):
    """A DOS-extender-style switch: LGDT/LIDT, CR0.PE, far jump, then 32-bit code at CPL 0 with its own IDT."""
    from v8086_guests import kvm_protected_mode_iret_reason
    engine, route = engine_route
    defines = {"USE_LMSW": int(how == "lmsw")}
    # the #GP through the program's IDT returns with IRETD, which this host's KVM may not emulate
    take_gp = engine != "kvm" or kvm_protected_mode_iret_reason() is None
    if not take_gp:
        defines["GP_CHECK"] = 0
    r = run_guest("pmode", engine=engine, route=route, fmt="com", defines=defines,
                  devices=[{"type": "debugcon"}, {"type": "isa-debug-exit"}])
    assert r.stop.kind == "exit-code" and r.stop.exit_code == 33, (r.console, r.stop.detail)
    assert r.console == ("8086 program\r\nprotected mode\n" + ("#GP handled by the program's IDT\n" if take_gp else "")
                         + "32-bit code at CPL 0\n")
    section = dict(r.report.sections)["virtual-8086 monitor"]
    if route == "real-mode":
        assert section[0] == "route: real-mode (the program switched to protected mode itself)"
    else:
        assert section[0] == f"route: {route} (handed over to protected mode)"
        text = "\n".join(section)
        assert "lgdt" in text and "lidt" in text and ("lmsw" in text if how == "lmsw" else "  mov " in text)


@pytest.mark.parametrize("handler", [0, 1])
def test_ud_reaches_the_programs_handler_or_stops_naming_it(engine_route, handler):
    """INT 6 by software with nobody serving it returns; UD2 goes to the program's handler, or stops the VM."""
    engine, route = engine_route
    r = run_guest("ud", engine=engine, route=route, fmt="com", defines={"HANDLER": handler})
    if engine == "kvm" and r.stop.kind == "error" and "KVM internal error" in r.stop.detail \
            and r.console == "after INT 6\r\n":
        pytest.skip(f"this host's KVM cannot raise #UD for UD2 in real mode: {r.stop.detail}")
    assert r.console == "after INT 6\r\n"
    section = dict(r.report.sections)["virtual-8086 monitor"]
    assert "  INT 06h (no service)              1" in section
    if handler:
        assert r.stop.kind == "exit-code" and r.stop.exit_code == 7, r.stop.detail
    else:
        assert r.stop.kind == "error"
        assert "#UD (invalid opcode) (vector 6) at 1000:010a [0f 0b: ud2], and the program's IVT has no handler" \
            in r.stop.detail


def test_the_doorbell_reads_registers_selectors_and_cr0_as_the_separate_accessors_give_them(engine_route):
    """get_regs_selectors_cr0(), which the real-mode doorbell reads, against get_regs/get_segment_selectors/get_cr0."""
    import attrs
    from smartvm_core import hookimpl
    from smartvm_core.engines.base import EngineVcpu
    from smartvm_core.testing import make_machine
    from smartvm_core.vmx import ExitReason
    from build import build_guest
    from v8086_guests import plugins
    engine, route = engine_route
    if route != "real-mode":
        pytest.skip("the real-mode doorbell only")
    seen = []

    class Probe:
        @hookimpl
        def register_exit_handlers(self, register, machine):
            def probe(vcpu, exit):
                together = vcpu.get_regs_selectors_cr0()
                es, cs, ss, ds, fs, gs = vcpu.get_segment_selectors()
                apart = (*attrs.astuple(vcpu.get_regs()), cs, ds, es, fs, gs, ss, vcpu.get_cr0())
                seen.append((together, apart, EngineVcpu.get_regs_selectors_cr0(vcpu)))
                return False
            register(ExitReason.IO_INSTRUCTION, probe, name="probe", ports=[0xEE], priority=100)

    image = build_guest("v8086/int_loop", defines={"COUNT": 20})
    m = make_machine({"machine": {"engine": engine, "memory": "1M"}, "image": [{"path": str(image), "format": "com"}],
                      "v8086": {"route": route}}, entry_points=False, plugins=[*plugins(), ("probe", Probe())])
    try:
        stop = m.run()
    finally:
        m.close()
    assert stop.kind == "exit-code" and stop.exit_code == 0
    assert len(seen) >= 20
    for together, apart, default in seen:
        assert together == apart == default and len(together) == 25
