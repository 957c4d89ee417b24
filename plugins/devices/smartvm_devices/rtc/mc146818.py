"""Motorola MC146818A real-time clock and the PC's CMOS NVRAM.

Port 0x70 selects a register (bit 7 is the PC's NMI mask, kept but not
otherwise used), port 0x71 reads or writes it. Registers 0x00-0x0D are the
clock (datasheet names); 0x0E-0x7F are battery-backed RAM.

Time comes from the machine's virtual clock plus a base (the host's UTC at
machine creation, or a fixed date for reproducible runs). REGISTER A's UIP
bit is set during the 244 us before each update; REGISTER C's PF, AF and UF
flags are set by the periodic rate, the alarm and the once-a-second update,
and raise IRQ 8 (IRQF) when enabled in REGISTER B. REGISTER B's SET bit
freezes the clock so the guest can set it; DM selects binary or BCD and
24/12 the hour format.

The NVRAM carries what PC firmware reads: base memory (0x15/0x16),
extended memory (0x17/0x18, 0x30/0x31), memory above 16 MiB in 64 KiB units
(0x34/0x35), memory above 4 GiB in 64 KiB units (0x5B-0x5D), the CPU count
minus one (0x5F), the equipment byte (0x14), the century (0x32), and the
standard checksum over 0x10-0x2D (0x2E/0x2F).
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from ..common import Counters, ones

NS_PER_S = 1_000_000_000
# Clock registers
SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = 0, 1, 2, 3, 4, 5
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
# REGISTER A
REG_A_UIP = 0x80
REG_A_DV = 0x70
REG_A_RS = 0x0F
DV_NORMAL = 0x20   # 32.768 kHz time base, oscillator on, counting
# REGISTER B
REG_B_SET = 0x80
REG_B_PIE = 0x40
REG_B_AIE = 0x20
REG_B_UIE = 0x10
REG_B_SQWE = 0x08
REG_B_DM = 0x04    # 1: binary, 0: BCD
REG_B_24H = 0x02
REG_B_DSE = 0x01
# REGISTER C
REG_C_IRQF = 0x80
REG_C_PF = 0x40
REG_C_AF = 0x20
REG_C_UF = 0x10
# REGISTER D
REG_D_VRT = 0x80
# CMOS layout used by PC firmware
CMOS_FLOPPY = 0x10
CMOS_EQUIPMENT = 0x14
CMOS_BASE_MEM_LO, CMOS_BASE_MEM_HI = 0x15, 0x16
CMOS_EXT_MEM_LO, CMOS_EXT_MEM_HI = 0x17, 0x18
CMOS_CHECKSUM_HI, CMOS_CHECKSUM_LO = 0x2E, 0x2F
CMOS_EXT_MEM2_LO, CMOS_EXT_MEM2_HI = 0x30, 0x31
CMOS_CENTURY = 0x32
CMOS_MEM_16M_LO, CMOS_MEM_16M_HI = 0x34, 0x35
CMOS_BOOT_ORDER_1, CMOS_BOOT_ORDER_2 = 0x3D, 0x38
CMOS_MEM_4G_LO, CMOS_MEM_4G_MID, CMOS_MEM_4G_HI = 0x5B, 0x5C, 0x5D
CMOS_SMP_COUNT = 0x5F
NVRAM_SIZE = 128
#: UIP is set this long before each update
UIP_NS = 244_000
#: periodic interrupts faster than this are coalesced (2 kHz)
MIN_PERIODIC_NS = 500_000


def _bcd(v: int) -> int:
    return (v // 10) << 4 | (v % 10)


def _unbcd(v: int) -> int:
    return ((v >> 4) & 0xF) * 10 + (v & 0xF)


def periodic_ns(rs: int) -> int | None:
    """The periodic-interrupt period REGISTER A's rate select gives (32.768 kHz base)."""
    if rs == 0:
        return None
    if rs <= 2:
        rs += 7  # 1 and 2 give 256 Hz and 128 Hz
    return NS_PER_S * (1 << (rs - 1)) // 32768


@attrs.define(frozen=True)
class RtcState:
    index: int = 0
    nmi_disabled: bool = False
    cmos: bytes = bytes(NVRAM_SIZE)
    base_seconds: int = 0      # wall-clock seconds at virtual time ``base_ns``
    base_ns: int = 0
    frozen_seconds: int | None = None   # REGISTER B.SET: the clock stopped here
    last_c_read_ns: int = 0


@attrs.define
class RtcCounters(Counters):
    irq: int = 0


class Mc146818:
    """Ports 0x70/0x71: index and data."""

    def __init__(self, clock: Any, irq: Any = None, *, base_seconds: int | None = None,
                 ram_size: int = 0, ram_above_4g: int = 0, cpus: int = 1, name: str = "rtc") -> None:
        self.name = name
        self.clock = clock
        self.irq = irq
        self.counters = RtcCounters()
        self.index = 0
        self.nmi_disabled = False
        self.cmos = bytearray(NVRAM_SIZE)
        now = clock.now_ns()
        self.base_ns = now
        self.base_seconds = int(time.time()) if base_seconds is None else int(base_seconds)
        self.frozen_seconds: int | None = None
        self.last_c_read_ns = now
        self._irq_level = False
        self._timer: Any = None
        self.cmos[REG_A] = DV_NORMAL | 0x06  # 1024 Hz periodic rate, as the PC BIOS sets it
        self.cmos[REG_B] = REG_B_24H
        self.cmos[REG_D] = REG_D_VRT
        self.cmos[CMOS_CENTURY] = 0x20
        self.set_memory(ram_size, ram_above_4g)
        self.cmos[CMOS_SMP_COUNT] = max(0, min(cpus - 1, 0xFF))
        self.update_checksum()

    # -- NVRAM setup -------------------------------------------------------------------
    def set_memory(self, below_4g: int, above_4g: int = 0) -> None:
        """Fill the memory-size fields from RAM below and above 4 GiB (bytes)."""
        c = self.cmos
        base_kb = min(below_4g, 640 << 10) >> 10
        c[CMOS_BASE_MEM_LO], c[CMOS_BASE_MEM_HI] = base_kb & 0xFF, base_kb >> 8
        ext_kb = min(max(below_4g - (1 << 20), 0) >> 10, 0xFFFF)
        for lo in (CMOS_EXT_MEM_LO, CMOS_EXT_MEM2_LO):
            c[lo], c[lo + 1] = ext_kb & 0xFF, ext_kb >> 8
        above_16m = min(max(below_4g - (16 << 20), 0) >> 16, 0xFFFF)
        c[CMOS_MEM_16M_LO], c[CMOS_MEM_16M_HI] = above_16m & 0xFF, above_16m >> 8
        high = min(above_4g >> 16, 0xFFFFFF)
        c[CMOS_MEM_4G_LO], c[CMOS_MEM_4G_MID], c[CMOS_MEM_4G_HI] = high & 0xFF, high >> 8 & 0xFF, high >> 16

    def update_checksum(self) -> None:
        total = sum(self.cmos[0x10:0x2E]) & 0xFFFF
        self.cmos[CMOS_CHECKSUM_HI], self.cmos[CMOS_CHECKSUM_LO] = total >> 8, total & 0xFF

    # -- time -------------------------------------------------------------------------
    def seconds(self, now: int | None = None) -> int:
        """Wall-clock seconds the RTC shows now."""
        if self.frozen_seconds is not None:
            return self.frozen_seconds
        now = self.clock.now_ns() if now is None else now
        return self.base_seconds + (now - self.base_ns) // NS_PER_S

    def _running(self) -> bool:
        return self.frozen_seconds is None and (self.cmos[REG_A] & REG_A_DV) == DV_NORMAL

    def _encode(self, v: int) -> int:
        return v if self.cmos[REG_B] & REG_B_DM else _bcd(v)

    def _decode(self, v: int) -> int:
        return v if self.cmos[REG_B] & REG_B_DM else _unbcd(v)

    def _encode_hour(self, h: int) -> int:
        if self.cmos[REG_B] & REG_B_24H:
            return self._encode(h)
        pm = h >= 12
        h12 = h % 12 or 12
        return self._encode(h12) | (0x80 if pm else 0)

    def _decode_hour(self, v: int) -> int:
        if self.cmos[REG_B] & REG_B_24H:
            return self._decode(v)
        h = self._decode(v & 0x7F) % 12
        return h + 12 if v & 0x80 else h

    def _time_register(self, reg: int, secs: int) -> int:
        tm = time.gmtime(secs)
        if reg == SECONDS:
            return self._encode(tm.tm_sec % 60)
        if reg == MINUTES:
            return self._encode(tm.tm_min)
        if reg == HOURS:
            return self._encode_hour(tm.tm_hour)
        if reg == DAY_OF_WEEK:
            return self._encode((tm.tm_wday + 1) % 7 + 1)  # 1 = Sunday
        if reg == DAY_OF_MONTH:
            return self._encode(tm.tm_mday)
        if reg == MONTH:
            return self._encode(tm.tm_mon)
        if reg == YEAR:
            return self._encode(tm.tm_year % 100)
        return 0

    def _set_time_from_registers(self) -> None:
        """Leaving SET: the clock restarts from what the guest wrote."""
        c = self.cmos
        try:
            century = _unbcd(c[CMOS_CENTURY]) if c[CMOS_CENTURY] else 20
            year = century * 100 + self._decode(c[YEAR]) % 100
            month = min(max(self._decode(c[MONTH]), 1), 12)
            day = min(max(self._decode(c[DAY_OF_MONTH]), 1), 31)
            hour = self._decode_hour(c[HOURS]) % 24
            minute = self._decode(c[MINUTES]) % 60
            second = self._decode(c[SECONDS]) % 60
            import calendar  # only when the guest sets the clock: it costs start-up time (locale)
            secs = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        except (ValueError, OverflowError):
            secs = self.seconds()
        self.base_seconds = secs
        self.base_ns = self.clock.now_ns()

    # -- flags and interrupts ---------------------------------------------------------------
    def _alarm_matches(self, secs: int) -> bool:
        c = self.cmos
        for reg, alarm in ((SECONDS, SECONDS_ALARM), (MINUTES, MINUTES_ALARM), (HOURS, HOURS_ALARM)):
            a = c[alarm]
            if a & 0xC0 == 0xC0:
                continue  # "don't care"
            if self._time_register(reg, secs) != a:
                return False
        return True

    def _collect_flags(self, now: int) -> None:
        """Set PF/UF/AF for what happened since REGISTER C was last read."""
        c = self.cmos
        since = self.last_c_read_ns
        if now <= since:
            return
        period = periodic_ns(c[REG_A] & REG_A_RS)
        if period is not None and (c[REG_A] & REG_A_DV) == DV_NORMAL and now // period != since // period:
            c[REG_C] |= REG_C_PF
        if self._running():
            first = self.base_seconds + (since - self.base_ns) // NS_PER_S
            last = self.base_seconds + (now - self.base_ns) // NS_PER_S
            if last > first:
                c[REG_C] |= REG_C_UF
                for s in range(max(first + 1, last - 86400), last + 1):
                    if self._alarm_matches(s):
                        c[REG_C] |= REG_C_AF
                        break
        self.last_c_read_ns = now

    def _update_irq(self) -> None:
        c = self.cmos
        b = c[REG_B]
        irqf = bool(c[REG_C] & ((REG_C_PF if b & REG_B_PIE else 0) | (REG_C_AF if b & REG_B_AIE else 0)
                                | (REG_C_UF if b & REG_B_UIE else 0)))
        c[REG_C] = (c[REG_C] & 0x70) | (REG_C_IRQF if irqf else 0)
        if irqf != self._irq_level:
            self._irq_level = irqf
            if irqf:
                self.counters.irq += 1
            if self.irq is not None:
                self.irq.set_level(irqf)

    def _arm(self) -> None:
        """Arm a timer for the next event an enabled interrupt waits for."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        c = self.cmos
        b = c[REG_B]
        now = self.clock.now_ns()
        deadlines = []
        period = periodic_ns(c[REG_A] & REG_A_RS)
        if b & REG_B_PIE and period is not None and (c[REG_A] & REG_A_DV) == DV_NORMAL:
            deadlines.append(max((now // period + 1) * period, now + MIN_PERIODIC_NS))
        if b & (REG_B_UIE | REG_B_AIE) and self._running():
            into = (now - self.base_ns) % NS_PER_S
            deadlines.append(now + NS_PER_S - into)
        if deadlines and not self._irq_level:
            self._timer = self.clock.add_timer(min(deadlines), self._on_timer)

    def _on_timer(self, now: int) -> None:
        self._timer = None
        saved = self.last_c_read_ns
        self._collect_flags(now)
        # the flags stay set; the next REGISTER C read still sees what happened since the last one
        self.last_c_read_ns = max(saved, self.last_c_read_ns)
        self._update_irq()
        self._arm()

    # -- bus interface ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        self.counters.reads += 1
        if size != 1:
            self.counters.bad_size += 1
            return ones(size)
        if offset == 0:
            return 0xFF  # the index register is write-only on the PC
        if offset != 1:
            self.counters.unknown += 1
            return 0xFF
        return self.read_register(self.index)

    def read_register(self, reg: int) -> int:
        c = self.cmos
        now = self.clock.now_ns()
        if reg <= YEAR and reg not in (SECONDS_ALARM, MINUTES_ALARM, HOURS_ALARM):
            if self.frozen_seconds is not None:
                return c[reg]
            return self._time_register(reg, self.seconds(now))
        if reg == REG_A:
            value = c[REG_A] & ~REG_A_UIP
            if self._running() and (now - self.base_ns) % NS_PER_S >= NS_PER_S - UIP_NS:
                value |= REG_A_UIP
            return value
        if reg == REG_C:
            self._collect_flags(now)
            self._update_irq()
            value = c[REG_C]
            c[REG_C] = 0  # reading REGISTER C clears every flag
            self._update_irq()
            self._arm()
            return value
        if reg == REG_D:
            return REG_D_VRT
        return c[reg]

    def write(self, offset: int, size: int, value: int) -> None:
        self.counters.writes += 1
        if size != 1:
            self.counters.bad_size += 1
            return
        value &= 0xFF
        if offset == 0:
            self.index = value & 0x7F
            self.nmi_disabled = bool(value & 0x80)
        elif offset == 1:
            self.write_register(self.index, value)
        else:
            self.counters.unknown += 1

    def write_register(self, reg: int, value: int) -> None:
        c = self.cmos
        if reg <= YEAR:
            if reg in (SECONDS_ALARM, MINUTES_ALARM, HOURS_ALARM):
                c[reg] = value
            elif self.frozen_seconds is not None:
                c[reg] = value & (0x7F if reg == SECONDS else 0xFF)
            else:
                # a write while the clock runs lands and the clock continues from it
                for r in (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR):
                    c[r] = self._time_register(r, self.seconds())
                c[reg] = value
                self._set_time_from_registers()
        elif reg == REG_A:
            now = self.clock.now_ns()
            self._collect_flags(now)
            old_dv = c[REG_A] & REG_A_DV
            c[REG_A] = value & 0x7F  # UIP is read-only
            if old_dv != DV_NORMAL and (value & REG_A_DV) == DV_NORMAL:
                # divider chain leaves reset: the first update comes 500 ms later
                self.base_ns = now - NS_PER_S // 2
            self._arm()
        elif reg == REG_B:
            old = c[REG_B]
            if value & REG_B_SET:
                value &= ~REG_B_UIE  # SET clears UIE (datasheet)
                if not old & REG_B_SET:
                    secs = self.seconds()
                    for r in (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR):
                        c[r] = self._time_register(r, secs)
                    self.frozen_seconds = secs
            c[REG_B] = value
            if old & REG_B_SET and not value & REG_B_SET:
                self.frozen_seconds = None
                self._set_time_from_registers()
            elif (old ^ value) & (REG_B_DM | REG_B_24H) and self.frozen_seconds is not None:
                for r in (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR):
                    c[r] = self._time_register(r, self.frozen_seconds)
            self._collect_flags(self.clock.now_ns())
            self._update_irq()
            self._arm()
        elif reg in (REG_C, REG_D):
            self.counters.unknown += 1  # read-only
        else:
            c[reg] = value

    # -- state ------------------------------------------------------------------------------
    def state(self) -> RtcState:
        return RtcState(self.index, self.nmi_disabled, bytes(self.cmos), self.base_seconds, self.base_ns,
                        self.frozen_seconds, self.last_c_read_ns)

    def restore(self, state: RtcState) -> None:
        if len(state.cmos) != NVRAM_SIZE:
            raise ValueError(f"CMOS image of {len(state.cmos)} bytes (expected {NVRAM_SIZE})")
        self.index = state.index & 0x7F
        self.nmi_disabled = bool(state.nmi_disabled)
        self.cmos = bytearray(state.cmos)
        self.base_seconds = int(state.base_seconds)
        self.base_ns = int(state.base_ns)
        self.frozen_seconds = state.frozen_seconds
        self.last_c_read_ns = int(state.last_c_read_ns)
        self._irq_level = not bool(self.cmos[REG_C] & REG_C_IRQF)
        self._update_irq()
        self._arm()
