"""MC146818: time from the virtual clock, SET, BCD/binary, UIP, periodic/alarm/update flags, NVRAM fields."""

from __future__ import annotations

import calendar

from hypothesis import given, settings, strategies as st

from smartvm_devices.rtc import mc146818 as r
from smartvm_devices.rtc.mc146818 import Mc146818

from devhelpers import Lines, ManualClock

BASE = calendar.timegm((2024, 2, 29, 23, 59, 58, 0, 0, 0))
S = 1_000_000_000


class Line:
    def __init__(self, lines):
        self.lines = lines

    def set_level(self, v):
        self.lines.set_irq(8, v)


def make(**kw):
    clock = ManualClock()
    lines = Lines()
    rtc = Mc146818(clock, Line(lines), base_seconds=BASE, **kw)
    return rtc, clock, lines


def reg(rtc, i):
    rtc.write(0, 1, i)
    return rtc.read(1, 1)


def wreg(rtc, i, v):
    rtc.write(0, 1, i)
    rtc.write(1, 1, v)


def test_bcd_time_and_rollover():
    rtc, clock, _ = make()
    assert [reg(rtc, i) for i in (0, 2, 4, 7, 8, 9)] == [0x58, 0x59, 0x23, 0x29, 0x02, 0x24]
    clock.advance(2 * S)
    assert [reg(rtc, i) for i in (0, 2, 4, 7, 8, 9)] == [0x00, 0x00, 0x00, 0x01, 0x03, 0x24]
    assert reg(rtc, 6) == 6  # 1 March 2024 is a Friday (1 = Sunday)


def test_binary_and_12_hour_mode():
    rtc, _, _ = make()
    wreg(rtc, r.REG_B, r.REG_B_DM)  # binary, 12-hour
    assert reg(rtc, r.SECONDS) == 58
    assert reg(rtc, r.HOURS) == 0x80 | 11  # 11 PM


def test_set_freezes_and_sets_time():
    rtc, clock, _ = make()
    wreg(rtc, r.REG_B, r.REG_B_SET | r.REG_B_24H)
    wreg(rtc, r.YEAR, 0x30); wreg(rtc, r.MONTH, 0x07); wreg(rtc, r.DAY_OF_MONTH, 0x04)
    wreg(rtc, r.HOURS, 0x12); wreg(rtc, r.MINUTES, 0x00); wreg(rtc, r.SECONDS, 0x00)
    clock.advance(5 * S)
    assert reg(rtc, r.SECONDS) == 0  # frozen while SET
    wreg(rtc, r.REG_B, r.REG_B_24H)
    clock.advance(3 * S)
    assert rtc.seconds() == calendar.timegm((2030, 7, 4, 12, 0, 3, 0, 0, 0))


def test_uip_window():
    rtc, clock, _ = make()
    clock.advance(S - r.UIP_NS + 1000)
    assert reg(rtc, r.REG_A) & r.REG_A_UIP
    clock.advance(r.UIP_NS)
    assert not reg(rtc, r.REG_A) & r.REG_A_UIP


def test_periodic_interrupt_and_reg_c_clears():
    rtc, clock, lines = make()
    wreg(rtc, r.REG_A, r.DV_NORMAL | 0x0F)  # 2 Hz
    wreg(rtc, r.REG_B, r.REG_B_24H | r.REG_B_PIE)
    clock.advance(S // 2 + 1)
    assert lines.levels.get(8) is True
    c = reg(rtc, r.REG_C)
    assert c & (r.REG_C_IRQF | r.REG_C_PF) == r.REG_C_IRQF | r.REG_C_PF
    assert lines.levels[8] is False and reg(rtc, r.REG_C) == 0
    clock.advance(S // 2)
    assert lines.rising(8) == 2


def test_alarm_and_update_interrupts():
    rtc, clock, lines = make()
    wreg(rtc, r.SECONDS_ALARM, 0x05); wreg(rtc, r.MINUTES_ALARM, 0xC0); wreg(rtc, r.HOURS_ALARM, 0xFF)
    wreg(rtc, r.REG_B, r.REG_B_24H | r.REG_B_AIE)
    clock.advance(3 * S)
    assert not lines.levels.get(8)
    clock.advance(5 * S)
    assert lines.levels[8] and reg(rtc, r.REG_C) & r.REG_C_AF
    wreg(rtc, r.REG_B, r.REG_B_24H | r.REG_B_UIE)
    clock.advance(S)
    assert reg(rtc, r.REG_C) & (r.REG_C_UF | r.REG_C_IRQF) == r.REG_C_UF | r.REG_C_IRQF


def test_memory_fields_and_checksum():
    rtc, _, _ = make(ram_size=128 << 20, ram_above_4g=1 << 30, cpus=4)
    assert reg(rtc, 0x15) | reg(rtc, 0x16) << 8 == 640
    assert reg(rtc, 0x17) | reg(rtc, 0x18) << 8 == 0xFFFF  # KiB above 1 MiB, saturated
    assert reg(rtc, 0x30) | reg(rtc, 0x31) << 8 == 0xFFFF
    assert reg(rtc, 0x34) | reg(rtc, 0x35) << 8 == (112 << 20) >> 16
    assert reg(rtc, 0x5B) | reg(rtc, 0x5C) << 8 | reg(rtc, 0x5D) << 16 == (1 << 30) >> 16
    assert reg(rtc, 0x5F) == 3
    assert reg(rtc, 0x2E) << 8 | reg(rtc, 0x2F) == sum(reg(rtc, i) for i in range(0x10, 0x2E))
    assert reg(rtc, r.REG_D) == r.REG_D_VRT


def test_small_memory_fields():
    rtc, _, _ = make(ram_size=8 << 20)
    assert reg(rtc, 0x30) | reg(rtc, 0x31) << 8 == 7 << 10
    assert reg(rtc, 0x34) | reg(rtc, 0x35) << 8 == 0


def test_nvram_write_and_round_trip():
    rtc, clock, lines = make()
    wreg(rtc, 0x40, 0xAB)
    wreg(rtc, r.REG_B, r.REG_B_24H | r.REG_B_DM)
    s = rtc.state()
    rtc2 = Mc146818(clock, Line(lines), base_seconds=0)
    rtc2.restore(s)
    assert rtc2.state() == s
    assert reg(rtc2, 0x40) == 0xAB and reg(rtc2, r.SECONDS) == 58


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(-1, 3), st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFFFFFF),
                          st.integers(0, 3 * S))))
def test_hostile_sequences(ops):
    rtc, clock, _ = make()
    for is_write, off, size, value, dt in ops:
        if is_write:
            rtc.write(off, size, value)
        else:
            assert 0 <= rtc.read(off, size) < 1 << (8 * size)
        clock.advance(dt)
    rtc.restore(rtc.state())
