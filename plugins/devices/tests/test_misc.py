"""Debug ports, fw_cfg, ACPI PM timer, VGA text: registers, round trips, hostile input."""

from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from smartvm_devices import fw_cfg as f
from smartvm_devices.display.vga_text import VgaText
from smartvm_devices.fw_cfg import FwCfg
from smartvm_devices.misc.debug_ports import DebugCon, IsaDebugExit, PostPort
from smartvm_devices.timer import pm_timer as pm
from smartvm_devices.timer.pm_timer import AcpiPm

from devhelpers import Lines, ManualClock, Rig

OPS = st.lists(st.tuples(st.booleans(), st.integers(-1, 12), st.sampled_from([1, 2, 4, 8]),
                         st.integers(0, 2**64 - 1)), max_size=60)


def test_isa_debug_exit_qemu_semantics():
    codes = []
    d = IsaDebugExit(codes.append)
    d.write(0, 1, 0x10)
    assert codes == [0x21]
    d2 = IsaDebugExit(codes.append, iosize=4)
    d2.write(0, 4, 0x12345678)
    assert codes[-1] == (0x12345678 << 1) | 1
    assert d2.state().requested == codes[-1]


def test_post_and_debugcon():
    out = []
    post = PostPort(out.append)
    post.write(0, 1, 0x3C)
    assert post.last == 0x3C and out == [b"[POST 3C]\n"] and post.read(0, 1) == 0xFF
    p2 = PostPort()
    p2.restore(post.state())
    assert p2.state() == post.state()
    con = DebugCon(out.append)
    con.write(0, 1, ord("Z"))
    assert out[-1] == b"Z" and con.read(0, 1) == 0xE9


def fw_select(fw, key):
    fw.port_device().write(0, 2, key)


def fw_bytes(fw, n):
    return bytes(fw.port_device().read(1, 1) for _ in range(n))


def test_fw_cfg_items_and_file_dir():
    rig = Rig()
    try:
        fw = FwCfg(rig.memory, cpus=2, ram_size=rig.memory.ram_size)
        fw.set_e820([(0, 0xA0000, 1), (0x100000, 0xF00000, 1)])
        fw.add_file("etc/hello", b"world")
        fw_select(fw, f.FW_CFG_SIGNATURE)
        assert fw_bytes(fw, 4) == b"QEMU"
        fw_select(fw, f.FW_CFG_ID)
        assert fw_bytes(fw, 4) == struct.pack("<I", 3)
        fw_select(fw, f.FW_CFG_NB_CPUS)
        assert fw_bytes(fw, 2) == b"\x02\x00"
        fw_select(fw, f.FW_CFG_RAM_SIZE)
        assert struct.unpack("<Q", fw_bytes(fw, 8))[0] == rig.memory.ram_size
        fw_select(fw, f.FW_CFG_FILE_DIR)
        count = struct.unpack(">I", fw_bytes(fw, 4))[0]
        entries = {}
        for _ in range(count):
            size, sel, _r = struct.unpack(">IHH", fw_bytes(fw, 8))
            name = fw_bytes(fw, 56).rstrip(b"\0").decode()
            entries[name] = (size, sel)
        assert entries["etc/hello"][0] == 5 and entries["etc/e820"][0] == 40
        fw_select(fw, entries["etc/hello"][1])
        assert fw_bytes(fw, 7) == b"world\0\0"  # past the end: zeros
    finally:
        rig.close()


def test_fw_cfg_dma_read_skip_and_error():
    rig = Rig()
    try:
        fw = FwCfg(rig.memory)
        key = fw.add_file("etc/data", bytes(range(32)))
        dma = fw.dma_device()
        assert dma.read(0, 4) == 0x51454D55  # "QEMU" half of the big-endian signature
        desc, buf = 0x1000, 0x2000
        rig.memory.write(desc, struct.pack(">IIQ", key << 16 | f.DMA_CTL_SELECT | f.DMA_CTL_SKIP, 4, 0))
        dma.write(0, 4, 0)
        dma.write(4, 4, int.from_bytes(desc.to_bytes(4, "big"), "little"))
        assert rig.memory.read(desc, 4) == b"\0\0\0\0"
        rig.memory.write(desc, struct.pack(">IIQ", f.DMA_CTL_READ, 8, buf))
        dma.write(4, 4, int.from_bytes(desc.to_bytes(4, "big"), "little"))
        assert rig.memory.read(buf, 8) == bytes(range(4, 12))
        # a destination outside guest memory: ERROR, not a crash
        rig.memory.write(desc, struct.pack(">IIQ", f.DMA_CTL_READ, 8, 1 << 40))
        dma.write(4, 4, int.from_bytes(desc.to_bytes(4, "big"), "little"))
        assert struct.unpack(">I", rig.memory.read(desc, 4))[0] == f.DMA_CTL_ERROR
        s = fw.state()
        fw2 = FwCfg(rig.memory)
        fw2.restore(s)
        assert fw2.state() == s
    finally:
        rig.close()


@settings(max_examples=150, deadline=None)
@given(OPS, st.binary(min_size=16, max_size=16))
def test_fw_cfg_hostile(ops, desc):
    rig = Rig(ram=1 << 20)
    try:
        fw = FwCfg(rig.memory)
        rig.memory.write(0x100, desc)
        devs = [fw.port_device(), fw.dma_device()]
        for is_write, off, size, value in ops:
            dev = devs[off & 1]
            if is_write:
                dev.write(off % 8, size, value if value % 3 else 0x100)
            else:
                assert 0 <= dev.read(off % 8, size) < 1 << (8 * size)
    finally:
        rig.close()


def test_pm_timer_counts_and_sci():
    clock = ManualClock()
    lines = Lines()

    class Sci:
        def set_level(self, v):
            lines.set_irq(9, v)
    off = []
    p = AcpiPm(clock, Sci(), on_soft_off=lambda: off.append(1))
    t0 = p.read(pm.PM_TMR, 4)
    clock.advance(1_000_000)  # 1 ms = 3579.545 ticks
    assert p.read(pm.PM_TMR, 4) - t0 in (3579, 3580)
    p.write(pm.PM1_EN, 2, pm.TMR_EN)
    clock.advance((1 << 23) * 1_000_000_000 // pm.PM_TIMER_HZ + 1000)
    assert lines.levels[9] and p.read(pm.PM1_STS, 2) & pm.TMR_STS
    p.write(pm.PM1_STS, 2, pm.TMR_STS)
    assert not lines.levels[9]
    p.write(pm.PM1_CNT, 2, pm.SLP_EN | 0 << pm.SLP_TYP_SHIFT)
    assert off == [1]
    s = p.state()
    p2 = AcpiPm(clock, Sci())
    p2.restore(s)
    assert p2.state() == s


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_pm_timer_hostile(ops):
    clock = ManualClock()
    p = AcpiPm(clock)
    for is_write, off, size, value in ops:
        if is_write:
            p.write(off, size, value)
        else:
            assert 0 <= p.read(off, size) < 1 << (8 * size)
        clock.advance(10_000_000)


def test_vga_text_render_and_cursor():
    rig = Rig()
    try:
        rig.add("vga-text")
        vga = rig.devices["vga-text"]
        text = "Hello, VGA"
        for i, ch in enumerate(text):
            rig.memory.write(0xB8000 + 2 * (80 + i), bytes((ord(ch), 0x07)))
        rig.memory.write(0xB8000 + 2 * 80 * 24, b"\x01\x07")
        assert vga.screen_text().splitlines()[1] == text
        assert vga.screen_lines()[24] == "☺"
        rig.outb(0x3D4, 0x0E); rig.outb(0x3D5, 0x00)
        rig.outb(0x3D4, 0x0F); rig.outb(0x3D5, 90)
        assert vga.cursor == (1, 10)
        rig.pio.write(0x3D4, 2, 0x100E)  # word OUT: index then data
        assert rig.inb(0x3D5) == 0x10
        a, b = rig.inb(0x3DA), rig.inb(0x3DA)
        assert a != b
        s = vga.state()
        vga2 = VgaText(rig.memory)
        vga2.restore(s)
        assert vga2.state() == s and vga2.cursor == vga.cursor
    finally:
        rig.close()


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_vga_hostile(ops):
    rig = Rig(ram=1 << 20)
    try:
        vga = VgaText(rig.memory)
        devs = [vga.crtc_device(), vga.status_device(), vga.misc_device(), vga.misc_read_device()]
        for is_write, off, size, value in ops:
            dev = devs[off & 3]
            if is_write:
                dev.write(off & 1, size, value)
            else:
                assert 0 <= dev.read(off & 1, size) < 1 << (8 * size)
        vga.screen_text()
    finally:
        rig.close()


@settings(max_examples=100, deadline=None)
@given(OPS)
def test_debug_ports_hostile(ops):
    codes, out = [], []
    devs = [PostPort(out.append), IsaDebugExit(codes.append, 2), DebugCon(out.append)]
    for is_write, off, size, value in ops:
        dev = devs[off % 3]
        if is_write:
            dev.write(off & 1, size, value)
        else:
            assert 0 <= dev.read(off & 1, size) < 1 << (8 * size)


def test_debugcon_line_timestamps(rig):
    import re
    out: list[bytes] = []
    n = iter(range(10))
    con = DebugCon(out.append, stamp=lambda: f"<{next(n)}>".encode())
    for b in b"ab\ncd\n\ne":
        con.write(0, 1, b)
    assert b"".join(out) == b"<0>ab\n<1>cd\n<2>\n<3>e"
    dev = rig.add("debugcon", port=0x402, backend="buffer", timestamps=True)
    rig.clock.advance(1_500_000_000)
    for b in b"hi\n":
        rig.outb(0x402, b)
    assert re.fullmatch(rb"\[ *\d+\.\d{6} host +1\.500000 vm\] hi\n", bytes(dev.backend.data))
