"""ACPI power-management timer and the PM1 register block (PIIX4 layout).

Offsets from the PM base (ACPI spec, "Fixed Hardware Registers")::

    0  PM1_STS (16)   TMR_STS bit 0, PWRBTN_STS bit 8, WAK_STS bit 15 (write 1 to clear)
    2  PM1_EN  (16)   TMR_EN bit 0, PWRBTN_EN bit 8
    4  PM1_CNT (16)   SCI_EN bit 0, SLP_TYP bits 10-12, SLP_EN bit 13 (write-only)
    8  PM_TMR  (32)   24-bit counter at 3.579545 MHz (read-only)

The counter runs from the machine's virtual clock. TMR_STS is set whenever
bit 23 of the counter changes; with TMR_EN it raises the SCI. Writing
SLP_EN with the soft-off sleep type asks the machine to end the run.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

from ..common import Counters, ones

PM_TIMER_HZ = 3_579_545
NS_PER_S = 1_000_000_000
PM1_STS = 0
PM1_EN = 2
PM1_CNT = 4
PM_TMR = 8
BLOCK_SIZE = 0x40

TMR_STS = 0x0001
BM_STS = 0x0010
GBL_STS = 0x0020
PWRBTN_STS = 0x0100
RTC_STS = 0x0400
WAK_STS = 0x8000
STS_MASK = TMR_STS | BM_STS | GBL_STS | PWRBTN_STS | RTC_STS | WAK_STS
TMR_EN = 0x0001
PWRBTN_EN = 0x0100
EN_MASK = 0x0521
SCI_EN = 0x0001
SLP_TYP_SHIFT = 10
SLP_EN = 0x2000
TMR_VAL_EXT = False  # 24-bit timer (FADT flag TMR_VAL_EXT clear)


@attrs.define(frozen=True)
class PmTimerState:
    pm1_sts: int = 0
    pm1_en: int = 0
    pm1_cnt: int = 0


@attrs.define
class PmCounters(Counters):
    sci: int = 0


class AcpiPm:
    """The PM1 block with the PM timer; ``sci`` is the SCI line (IRQ 9 on a PC)."""

    def __init__(self, clock: Any, sci: Any = None, on_soft_off: Callable[[], None] | None = None,
                 soft_off_type: int = 0, name: str = "acpi-pm") -> None:
        self.name = name
        self.clock = clock
        self.sci = sci
        self.on_soft_off = on_soft_off
        self.soft_off_type = soft_off_type
        self.counters = PmCounters()
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = 0
        self._timer: Any = None
        self._sci_level = False
        self._last_msb_period = 0

    def ticks(self, now: int | None = None) -> int:
        now = self.clock.now_ns() if now is None else now
        return now * PM_TIMER_HZ // NS_PER_S

    def timer_value(self) -> int:
        return self.ticks() & 0xFFFFFF

    def _sync_status(self, now: int) -> None:
        period = self.ticks(now) >> 23
        if period != self._last_msb_period:
            self._last_msb_period = period
            self.pm1_sts |= TMR_STS

    def _update_sci(self) -> None:
        level = bool(self.pm1_sts & self.pm1_en & (TMR_STS | PWRBTN_STS))
        if level != self._sci_level:
            self._sci_level = level
            if level:
                self.counters.sci += 1
            if self.sci is not None:
                self.sci.set_level(level)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.pm1_en & TMR_EN and self.clock is not None:
            next_period = (self._last_msb_period + 1) << 23
            deadline = -(-next_period * NS_PER_S // PM_TIMER_HZ)
            self._timer = self.clock.add_timer(deadline, self._on_timer)

    def _on_timer(self, now: int) -> None:
        self._timer = None
        self._sync_status(now)
        self._update_sci()
        self._arm()

    def press_power_button(self) -> None:
        self.pm1_sts |= PWRBTN_STS
        self._update_sci()

    def read(self, offset: int, size: int) -> int:
        self.counters.reads += 1
        now = self.clock.now_ns()
        self._sync_status(now)
        if offset == PM_TMR and size == 4:
            return self.ticks(now) & 0xFFFFFF
        if PM_TMR <= offset < PM_TMR + 4 and offset + size <= PM_TMR + 4:
            shift = 8 * (offset - PM_TMR)
            return ((self.ticks(now) & 0xFFFFFF) >> shift) & ones(size)
        regs = self.pm1_sts | self.pm1_en << 16 | (self.pm1_cnt & ~SLP_EN) << 32
        if 0 <= offset and offset + size <= 6:
            return (regs >> (8 * offset)) & ones(size)
        self.counters.unknown += 1
        return 0 if offset < BLOCK_SIZE else ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.counters.writes += 1
        value &= ones(size)
        if not (0 <= offset and offset + size <= 6):
            self.counters.unknown += 1
            return
        for i in range(size):
            self._write_byte(offset + i, (value >> (8 * i)) & 0xFF)

    def _write_byte(self, offset: int, byte: int) -> None:
        if offset < 2:  # PM1_STS: write one to clear
            self.pm1_sts &= ~((byte << (8 * offset)) & STS_MASK)
            self._update_sci()
        elif offset < 4:
            shift = 8 * (offset - 2)
            self.pm1_en = (self.pm1_en & ~(0xFF << shift)) | ((byte << shift) & EN_MASK)
            self._sync_status(self.clock.now_ns())
            self._update_sci()
            self._arm()
        else:
            shift = 8 * (offset - 4)
            cnt = (self.pm1_cnt & ~(0xFF << shift)) | (byte << shift)
            self.pm1_cnt = cnt & ~SLP_EN
            if cnt & SLP_EN and ((cnt >> SLP_TYP_SHIFT) & 7) == self.soft_off_type:
                if self.on_soft_off is not None:
                    self.on_soft_off()

    def state(self) -> PmTimerState:
        return PmTimerState(self.pm1_sts, self.pm1_en, self.pm1_cnt)

    def restore(self, state: PmTimerState) -> None:
        self.pm1_sts = state.pm1_sts & STS_MASK
        self.pm1_en = state.pm1_en & EN_MASK
        self.pm1_cnt = state.pm1_cnt & 0xFFFF & ~SLP_EN
        self._last_msb_period = self.ticks() >> 23
        self._sci_level = not bool(self.pm1_sts & self.pm1_en & (TMR_STS | PWRBTN_STS))
        self._update_sci()
        self._arm()
