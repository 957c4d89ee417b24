"""BIOS and DOS services on plain program states, and the service registry."""

import pytest

from smartvm_core.errors import PluginError
from smartvm_core.memory import GuestMemory
from smartvm_v8086 import layout
from smartvm_v8086.monitor import Monitor, MonitorStop
from smartvm_v8086.services import ServiceTable
from smartvm_v8086.services.bios import Disk, key_for
from smartvm_v8086.state import FLAG_CF, FLAG_IF, FLAG_ZF, ProgramMemory, ProgramState


@pytest.fixture
def monitor():
    mem = GuestMemory()
    mem.add_ram(0, 0xA0000)
    mem.add_ram(0xB8000, 0x8000, "vga")
    mem.add_ram(0xF0000, 0x10000, "bios")
    out = bytearray()
    m = Monitor(None, ProgramMemory(mem))
    m.bios.console = out.extend
    m.console_bytes = out
    m.bios.register(m.services.make_register("bios"))
    m.dos.register(m.services.make_register("dos"))
    m.dos.on_exit = lambda code: setattr(m, "exit_code", code)
    from smartvm_core.arch.modes import real_mode_state
    regs, sregs = real_mode_state(0x1000, 0x100, ds=0x1000, sp=0xFFFE)
    m.setup("real-mode", regs, sregs)
    yield m
    mem.close()


def call(monitor, vector, **regs):
    s = ProgramState(cs=0x1000, ds=0x1000, es=0x1000, ss=0x1000, eip=0x102, eflags=FLAG_IF)
    s.sp = 0xFFF0
    for name, value in regs.items():
        setattr(s, name, value)
    monitor.software_interrupt(s, vector, 0x100)
    return s


def test_teletype_goes_to_vga_and_console_and_scrolls(monitor):
    mem = monitor.memory
    for ch in b"AB\r\nC":
        call(monitor, 0x10, ah=0x0E, al=ch)
    assert bytes(monitor.console_bytes) == b"AB\r\nC"
    assert mem.read(0xB8000, 4) == 0x0742_0741 and mem.read(0xB8000 + 160, 1) == ord("C")
    s = call(monitor, 0x10, ah=0x03, bh=0)
    assert (s.dh, s.dl) == (1, 1)
    call(monitor, 0x10, ah=0x02, bh=0, dh=24, dl=79)
    call(monitor, 0x10, ah=0x0E, al=ord("Z"))  # the last cell, then the screen scrolls
    assert mem.read(0xB8000, 1) == ord("C")  # row 1 moved to row 0
    s = call(monitor, 0x10, ah=0x03, bh=0)
    assert (s.dh, s.dl) == (24, 0)


def test_scroll_window_and_write_string(monitor):
    mem = monitor.memory
    mem.write_bytes(0x10000 + 0x200, b"hi")
    call(monitor, 0x10, ah=0x13, al=1, bh=0, bl=0x1F, cx=2, dh=3, dl=5, bp=0x200)
    assert mem.read(0xB8000 + (3 * 80 + 5) * 2, 4) == 0x1F69_1F68
    call(monitor, 0x10, ah=0x06, al=0, bh=0x20, ch=0, cl=0, dh=24, dl=79)  # clear
    assert mem.read(0xB8000 + (3 * 80 + 5) * 2, 2) == 0x2020


def test_equipment_memory_and_unknown_functions(monitor):
    assert call(monitor, 0x12).ax == 640
    assert call(monitor, 0x11).ax & 0x30 == 0x20
    s = call(monitor, 0x15, ah=0xC0)
    assert s.eflags & FLAG_CF and s.ah == 0x86
    s = call(monitor, 0x60, ax=0x1234)
    assert s.ax == 0x1234 and monitor.service_counts["INT 60h (no service)"] == 1


def test_a20_and_e820_without_machine(monitor):
    call(monitor, 0x15, ax=0x2400)
    assert not monitor.memory.a20 and call(monitor, 0x15, ax=0x2402).al == 0
    call(monitor, 0x15, ax=0x2401)
    assert monitor.memory.a20
    s = call(monitor, 0x15, gpr=[0xE820, 24, 0x534D4150, 0, 0xFFF0, 0, 0, 0x500])
    assert not s.eflags & FLAG_CF and s.gpr[0] == 0x534D4150 and s.gpr[3] == 0
    assert monitor.memory.read(0x10500 + 8, 4) == 640 * 1024 and monitor.memory.read(0x10500 + 16, 4) == 1


def test_int13_chs_lba_and_errors(monitor, tmp_path):
    img = tmp_path / "disk.img"
    img.write_bytes(b"".join(bytes([i]) * 512 for i in range(4)))
    monitor.bios.disks[0x80] = Disk(img, 0x80)
    s = call(monitor, 0x13, ax=0x0202, cx=0x0002, dx=0x0080, bx=0x1000)  # 2 sectors from sector 2
    assert not s.eflags & FLAG_CF and s.al == 2
    assert monitor.memory.read_bytes(0x11000, 1024) == b"\x01" * 512 + b"\x02" * 512
    s = call(monitor, 0x13, ax=0x0301, cx=0x0001, dx=0x0080, bx=0x1000)  # write sector 1
    assert not s.eflags & FLAG_CF and monitor.bios.disks[0x80].data[:512] == b"\x01" * 512
    assert img.read_bytes()[:512] == b"\x00" * 512  # overlay: the file is untouched
    s = call(monitor, 0x13, ax=0x0201, cx=0x003F | 0xC0, dx=0x0F80, bx=0x1000)  # beyond the disk
    assert s.eflags & FLAG_CF and s.ah == 0x04
    s = call(monitor, 0x13, ax=0x0201, cx=0x0001, dx=0x0081, bx=0x1000)  # no such drive
    assert s.eflags & FLAG_CF and s.ah == 0x01
    s = call(monitor, 0x13, ax=0x0201, cx=0x0001, dx=0x0080, bx=0xFF00)  # crosses 64 KiB
    assert s.eflags & FLAG_CF and s.ah == 0x09
    monitor.memory.write_bytes(0x10000 + 0x300, bytes([0x10, 0, 1, 0, 0x00, 0x20, 0x00, 0x10]) + (3).to_bytes(8, "little"))
    s = call(monitor, 0x13, ah=0x42, dl=0x80, si=0x300)
    assert not s.eflags & FLAG_CF and monitor.memory.read_bytes(0x12000, 512) == b"\x03" * 512
    monitor.memory.write(0x10300 + 8, 4, 1000)
    s = call(monitor, 0x13, ah=0x42, dl=0x80, si=0x300)
    assert s.eflags & FLAG_CF
    s = call(monitor, 0x13, ah=0x08, dl=0x80)
    assert s.dh == 15 and s.cl & 0x3F == 63 and s.dl == 1


def test_keyboard_queue_and_halt_when_empty(monitor):
    monitor.bios.feed_keys("a\r")
    s = call(monitor, 0x16, ah=0x01)
    assert not s.eflags & FLAG_ZF and s.ax == key_for("a")
    assert call(monitor, 0x16, ah=0x00).al == ord("a")
    assert call(monitor, 0x16, ah=0x00).al == 0x0D
    s = call(monitor, 0x16, ah=0x01)
    assert s.eflags & FLAG_ZF
    s = ProgramState(cs=0x1000, ss=0x1000, eip=0x102, eflags=FLAG_IF)
    s.sp = 0xFFF0
    s.ah = 0
    assert monitor.software_interrupt(s, 0x16, 0x100) == "halt-service" and s.eip == 0x100


def test_time_services(monitor):
    monitor.memory.write(0x46C, 4, 0x0001_0002)
    s = call(monitor, 0x1A, ah=0x00)
    assert (s.cx, s.dx) == (1, 2)
    for _ in range(3):
        call(monitor, 0x08)
    assert monitor.memory.read(0x46C, 4) == 0x0001_0005
    s = call(monitor, 0x1A, ah=0x02)
    assert not s.eflags & FLAG_CF and s.ch >> 4 <= 2


def test_int08_chains_int1c_to_the_programs_handler(monitor):
    monitor.memory.write(0x1C * 4, 4, 0x2000 << 16 | 0x10)
    s = call(monitor, 0x08)
    assert (s.cs, s.eip) == (0x2000, 0x10) and monitor.reflected["INT 1Ch"] == 1


def test_dos_output_version_vectors_and_exit(monitor):
    monitor.memory.write_bytes(0x10000 + 0x400, b"hello$")
    call(monitor, 0x21, ah=0x09, dx=0x400)
    call(monitor, 0x21, ah=0x02, dl=ord("!"))
    assert bytes(monitor.console_bytes) == b"hello!"
    assert call(monitor, 0x21, ah=0x30).al == 5
    call(monitor, 0x21, ax=0x2560, ds=0x1234, dx=0x5678)
    s = call(monitor, 0x21, ax=0x3560)
    assert (s.es, s.bx) == (0x1234, 0x5678)
    call(monitor, 0x21, ax=0x4C07)
    assert monitor.exit_code == 7


def test_dos_files_are_confined_to_the_root(monitor, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("no")
    (root / "DATA.TXT").write_bytes(b"0123456789")
    monitor.dos.root = root.resolve()
    mem = monitor.memory

    def name(text):
        mem.write_bytes(0x10000 + 0x500, text.encode() + b"\0")
        return 0x500

    s = call(monitor, 0x21, ax=0x3D00, dx=name("C:\\data.txt"))
    assert not s.eflags & FLAG_CF
    h = s.ax
    s = call(monitor, 0x21, ax=0x4201, bx=h, cx=0, dx=3)  # seek +3
    assert (s.dx, s.ax) == (0, 3)
    s = call(monitor, 0x21, ah=0x3F, bx=h, cx=4, dx=0x600)
    assert s.ax == 4 and mem.read_bytes(0x10600, 4) == b"3456"
    assert not call(monitor, 0x21, ah=0x3E, bx=h).eflags & FLAG_CF
    assert call(monitor, 0x21, ah=0x3E, bx=h).ax == 6  # invalid handle
    for bad in ("..\\secret.txt", "\\..\\secret.txt", "D:\\x", "/etc/passwd/../../secret.txt"):
        s = call(monitor, 0x21, ax=0x3D00, dx=name(bad))
        assert s.eflags & FLAG_CF and s.ax in (2, 3), bad
    s = call(monitor, 0x21, ah=0x3C, cx=0, dx=name("OUT.TXT"))
    h = s.ax
    mem.write_bytes(0x10700, b"written")
    assert call(monitor, 0x21, ah=0x40, bx=h, cx=7, dx=0x700).ax == 7
    call(monitor, 0x21, ah=0x3E, bx=h)
    assert (root / "OUT.TXT").read_bytes() == b"written"
    assert not call(monitor, 0x21, ah=0x41, dx=name("out.txt")).eflags & FLAG_CF
    assert not (root / "OUT.TXT").exists()
    monitor.dos.root = None
    assert call(monitor, 0x21, ax=0x3D00, dx=name("DATA.TXT")).ax == 5


def test_service_table_refuses_duplicates_and_bad_vectors():
    t = ServiceTable()
    reg = t.make_register("a")
    reg(0x60, lambda c: None)
    with pytest.raises(PluginError, match="already served by plugin a"):
        t.make_register("b")(0x60, lambda c: None)
    t.make_register("b")(0x60, lambda c: None, replace=True)
    with pytest.raises(PluginError):
        reg(0x100, lambda c: None)
    with pytest.raises(PluginError):
        reg(0x61, "not callable")
    reg(0x21, lambda c: None, ah=0x09)
    assert t.lookup(0x21, 0x09)[1] == "INT 21h/AH=09h" and t.lookup(0x21, 0x0A)[0] is None


def test_program_hooking_a_vector_gets_it_instead_of_the_service(monitor):
    monitor.memory.write(0x21 * 4, 4, 0x3000 << 16 | 0x44)
    s = call(monitor, 0x21, ah=0x30)
    assert (s.cs, s.eip) == (0x3000, 0x44) and monitor.service_counts["INT 21h/AH=30h"] == 0


def test_unhooked_exception_stops_with_a_reason(monitor):
    s = ProgramState(cs=0x1000, ss=0x1000, eip=0x100)
    monitor.memory.write_bytes(0x10100, bytes.fromhex("f7 f1"))     # div cx
    with pytest.raises(MonitorStop, match=r"#DE \(divide error\) \(vector 0\) at 1000:0100 \[f7 f1: div cx\]"):
        monitor.exception(s, 0)


def test_rm_stub_vectors():
    seg, off = layout.rm_stub_address(0x21)
    assert layout.rm_stub_vector(seg, off) == 0x21 and layout.rm_stub_vector(seg, off + 2) == 0x21
    assert layout.rm_stub_vector(0x1000, 0x100) is None


def test_monitor_area_hides_in_the_tss_what_the_program_may_not_touch():
    area = layout.build_monitor_area(layout.MONITOR_BASE, 0xEF, {0xEE, 0xEF, 0x80})
    iopb = layout.TSS_OFFSET + layout.IOPB_OFFSET
    assert area[iopb + 0xEE // 8] & (1 << (0xEE % 8)) and area[iopb + 0x80 // 8] & 1
    assert not area[iopb + 0x60 // 8] & 1
    assert area[iopb + layout.IOPB_SIZE] == 0xFF
    assert int.from_bytes(area[layout.TSS_OFFSET + 0x66:layout.TSS_OFFSET + 0x68], "little") == layout.IOPB_OFFSET
    assert area[layout.TSS_OFFSET + layout.REDIRECTION_OFFSET:layout.TSS_OFFSET + layout.IOPB_OFFSET] == b"\xFF" * 32
    assert layout.MONITOR_BASE > 0xFFFF * 16 + 0xFFFF  # beyond what an 8086 program can address


def test_lookup_follows_later_registrations():
    table = ServiceTable()
    register = table.make_register("a")

    def first(call):
        pass

    def second(call):
        pass
    register(0x60, first)
    assert table.lookup(0x60, 0x01) == (first, "INT 60h")
    register(0x60, second, ah=0x01)
    assert table.lookup(0x60, 0x01) == (second, "INT 60h/AH=01h")
    assert table.lookup(0x60, 0x02) == (first, "INT 60h")
    register(0x60, second, replace=True)
    assert table.lookup(0x60, 0x02) == (second, "INT 60h")
    assert table.lookup(0x61, 0x00) == (None, "INT 61h")


def test_program_memory_follows_layout_changes():
    mem = GuestMemory()
    low = mem.add_ram(0, 0x10000)
    pm = ProgramMemory(mem)
    pm.write(0x100, 2, 0x1234)
    assert pm.read(0x100, 2) == 0x1234
    mem.remove_region(low)
    assert pm.read(0x100, 2) == 0xFFFF      # nothing there any more: reads float
    pm.write(0x100, 2, 0x5678)               # and writes are dropped
    mem.add_ram(0, 0x10000, "new")
    assert pm.read(0x100, 2) == 0
    pm.a20 = False
    pm.write(0x100000 + 0x200, 1, 0xAB)      # wraps to 0x200 with A20 off
    assert pm.read(0x200, 1) == 0xAB and not pm.a20
    mem.close()
