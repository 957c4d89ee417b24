"""8254: modes 0-5, latch, read-back, BCD, channel 2 through port 0x61, IRQ 0 edges from the virtual clock."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from smartvm_devices.timer.i8254 import I8254, SpeakerPort, ticks_to_ns

from devhelpers import Lines, ManualClock


class Line:
    def __init__(self, lines):
        self.lines = lines

    def set_level(self, v):
        self.lines.set_irq(0, v)


def make():
    clock = ManualClock()
    lines = Lines()
    pit = I8254(clock, Line(lines))
    return pit, clock, lines, SpeakerPort(pit)


def read16(pit, ch):
    return pit.read(ch, 1) | pit.read(ch, 1) << 8


def test_mode0_counts_down_and_out_rises():
    pit, clock, lines, _ = make()
    pit.write(3, 1, 0x30)  # ch0, LSB/MSB, mode 0
    pit.write(0, 1, 100); pit.write(0, 1, 0)
    clock.advance(ticks_to_ns(10) + 1)
    pit.write(3, 1, 0x00)  # latch ch0
    clock.advance(ticks_to_ns(20))
    assert read16(pit, 0) == 90  # latched value, not the current one
    assert not pit.channels[0].out(clock.now_ns())
    clock.advance(ticks_to_ns(80))
    assert lines.rising(0) == 1


def test_mode2_periodic_irq():
    pit, clock, lines, _ = make()
    pit.write(3, 1, 0x34)
    pit.write(0, 1, 0x00); pit.write(0, 1, 0x10)  # 4096 ticks ~ 3.43 ms
    for _ in range(10):
        clock.advance(ticks_to_ns(4096))
    assert 9 <= lines.rising(0) <= 11


def test_mode3_square_wave_out():
    pit, clock, _, _ = make()
    pit.write(3, 1, 0x36)
    pit.write(0, 1, 100); pit.write(0, 1, 0)
    now = clock.now_ns()
    assert pit.channels[0].out(now + ticks_to_ns(10))
    assert not pit.channels[0].out(now + ticks_to_ns(60))
    v = pit.channels[0].count(now + ticks_to_ns(10))
    assert v % 2 == 0 and v == 80


def test_readback_status_and_count():
    pit, clock, _, _ = make()
    pit.write(3, 1, 0xB2)  # ch2 LSB/MSB mode 1
    pit.write(2, 1, 0x34); pit.write(2, 1, 0x12)
    pit.write(3, 1, 0xC8)  # read-back: latch count and status of ch2
    status = pit.read(2, 1)
    assert status & 0x3F == 0x32 and status & 0x80  # mode 1 before trigger: OUT high
    assert read16(pit, 2) == 0x1234


def test_bcd_counting():
    pit, clock, _, _ = make()
    pit.write(3, 1, 0x31)  # ch0 mode 0 BCD
    pit.write(0, 1, 0x00); pit.write(0, 1, 0x10)  # 1000 (BCD)
    clock.advance(ticks_to_ns(1) + 1)
    pit.write(3, 1, 0x00)
    assert read16(pit, 0) == 0x0999


def test_channel2_gate_and_out_through_port61():
    pit, clock, _, p61 = make()
    p61.write(0, 1, 0x01)  # gate on
    pit.write(3, 1, 0xB0)  # ch2 mode 0
    pit.write(2, 1, 0x00); pit.write(2, 1, 0x08)  # 2048 ticks
    assert not p61.read(0, 1) & 0x20
    clock.advance(ticks_to_ns(2049))
    assert p61.read(0, 1) & 0x21 == 0x21


def test_gate_low_pauses_mode0():
    pit, clock, _, p61 = make()
    pit.write(3, 1, 0xB0)
    pit.write(2, 1, 100); pit.write(2, 1, 0)
    clock.advance(ticks_to_ns(50))  # gate low (port 0x61 bit 0 clear): not counting
    assert pit.channels[2].count(clock.now_ns()) == 100
    p61.write(0, 1, 0x01)
    clock.advance(ticks_to_ns(40) + 1)
    assert pit.channels[2].count(clock.now_ns()) == 60


def test_mode1_and_mode5_triggered_by_gate():
    pit, clock, _, p61 = make()
    for mode, expect_low in ((1, True), (5, False)):
        p61.write(0, 1, 0)
        pit.write(3, 1, 0xB0 | mode << 1)
        pit.write(2, 1, 10); pit.write(2, 1, 0)
        assert pit.out2()
        p61.write(0, 1, 1)  # rising gate edge triggers
        clock.advance(ticks_to_ns(3))
        assert pit.out2() is (not expect_low)
        clock.advance(ticks_to_ns(20))
        assert pit.out2()


def test_mode4_strobe():
    pit, clock, _, _ = make()
    pit.write(3, 1, 0x38)
    pit.write(0, 1, 5); pit.write(0, 1, 0)
    t0 = clock.now_ns()
    ch = pit.channels[0]
    assert ch.out(t0 + ticks_to_ns(4)) and not ch.out(t0 + ticks_to_ns(5) + 1) and ch.out(t0 + ticks_to_ns(7))


def test_state_round_trip():
    pit, clock, lines, _ = make()
    pit.write(3, 1, 0x34)
    pit.write(0, 1, 0x00); pit.write(0, 1, 0x20)
    pit.write(3, 1, 0x00)
    s = pit.state()
    pit2 = I8254(clock, Line(lines))
    pit2.restore(s)
    assert pit2.state() == s
    assert read16(pit2, 0) == read16(pit, 0)
    before = lines.rising(0)
    clock.advance(ticks_to_ns(0x2000) * 2)
    assert lines.rising(0) > before


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(-1, 5), st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFFFFFF),
                          st.integers(0, 10_000_000))))
def test_hostile_sequences(ops):
    pit, clock, _, p61 = make()
    for is_write, off, size, value, dt in ops:
        dev, off = (p61, 0) if off == 5 else (pit, off)
        if is_write:
            dev.write(off, size, value)
        else:
            assert 0 <= dev.read(off, size) < 1 << (8 * size)
        clock.advance(dt)
    pit.restore(pit.state())
