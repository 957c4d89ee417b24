"""Intel 8254 programmable interval timer and the PC's port 0x61.

Ports 0x40-0x42 are counters 0-2, 0x43 the control word register. The
counters run at 1.193182 MHz of the machine's virtual clock: a counter's
value and OUT level are computed from the virtual time since it was loaded,
so nothing ticks in between. Modes 0-5, binary and BCD counting, the
LSB/MSB/LSB-then-MSB access modes, the counter-latch command and the
read-back command (count and status latches) follow the datasheet.

Counter 0's OUT drives IRQ 0; its rising edges are delivered from timers
armed on the virtual clock (at most one edge per ``MIN_PERIOD_NS``: late or
very fast edges are coalesced, as a busy host would). Counter 2's GATE is
bit 0 of port 0x61 and its OUT is read back in bit 5 (the PC speaker
circuit); counter 1 (DRAM refresh) has its gate tied high.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..common import Counters, ones

PIT_HZ = 1_193_182
NS_PER_S = 1_000_000_000
#: IRQ 0 edges closer than this are coalesced (50 kHz)
MIN_PERIOD_NS = 20_000

# Control word fields
CW_BCD = 0x01
CW_MODE = 0x0E
CW_RW = 0x30      # 00 latch, 01 LSB, 10 MSB, 11 LSB then MSB
CW_SC = 0xC0      # 11: read-back
RW_LATCH, RW_LSB, RW_MSB, RW_WORD = 0, 1, 2, 3
# Read-back command bits
RB_COUNT = 0x20   # 0: latch count
RB_STATUS = 0x10  # 0: latch status
# Status byte
ST_OUTPUT = 0x80
ST_NULL_COUNT = 0x40

# Port 0x61 (NMI status and control)
P61_TIM2_GATE = 0x01
P61_SPKR_DATA = 0x02
P61_PARITY_DIS = 0x04
P61_IOCHK_DIS = 0x08
P61_REFRESH = 0x10
P61_OUT2 = 0x20
P61_IOCHK = 0x40
P61_SERR = 0x80
#: refresh-request toggle period of the PC (15.085 us)
REFRESH_NS = 15_085


def ticks_to_ns(ticks: int) -> int:
    """The first virtual nanosecond at which ``ticks`` clock ticks have elapsed."""
    return -(-ticks * NS_PER_S // PIT_HZ)


def ns_to_ticks(ns: int) -> int:
    return ns * PIT_HZ // NS_PER_S


def _from_bcd(v: int) -> int:
    return ((v >> 12) & 0xF) * 1000 + ((v >> 8) & 0xF) * 100 + ((v >> 4) & 0xF) * 10 + (v & 0xF)


def _to_bcd(v: int) -> int:
    v %= 10000
    return (v // 1000) << 12 | (v // 100 % 10) << 8 | (v // 10 % 10) << 4 | (v % 10)


@attrs.define(frozen=True)
class PitChannelState:
    mode: int = 0
    rw: int = RW_WORD
    bcd: bool = False
    initial: int = 0          # the count register as written (0 means the maximum)
    loaded: bool = False      # a count was loaded (a new count starts counting)
    load_ns: int = 0          # virtual time counting started
    gate: bool = True
    triggered: bool = False   # modes 1 and 5: a gate edge started counting
    frozen_ticks: int | None = None  # modes 0/4 with GATE low: ticks counted so far
    write_lsb_next: bool = True
    write_lsb: int = 0
    read_lsb_next: bool = True
    latched: int | None = None
    latched_msb_pending: bool = False
    status: int | None = None
    null_count: bool = True


@attrs.define(frozen=True)
class PitState:
    channels: tuple[PitChannelState, PitChannelState, PitChannelState]
    out0: bool = False
    speaker: int = 0


class PitChannel:
    def __init__(self, pit: "I8254", index: int) -> None:
        self.pit = pit
        self.index = index
        self.restore(PitChannelState(gate=index != 2))

    # -- time ----------------------------------------------------------------
    @property
    def period(self) -> int:
        """The count as a number of clock ticks (0 means 65536, or 10000 in BCD)."""
        if self.bcd:
            n = _from_bcd(self.initial)
            return n or 10000
        return self.initial or 0x10000

    def elapsed(self, now: int) -> int:
        """Clock ticks counted since the count was loaded (or triggered)."""
        if self.frozen_ticks is not None:
            return self.frozen_ticks
        return max(0, ns_to_ticks(now - self.load_ns))

    def counting(self) -> bool:
        if not self.loaded:
            return False
        if self.mode in (1, 5):
            return self.triggered
        return True

    def count(self, now: int) -> int:
        """The counting element's value as the latch would capture it."""
        if not self.counting():
            return self.initial
        d = self.elapsed(now)
        n = self.period
        mode = self.mode
        if mode in (0, 1, 4, 5):
            v = (n - d) % (10000 if self.bcd else 0x10000)
        elif mode == 2:
            v = n - (d % n)
        else:  # mode 3 counts down by two, twice per period
            v = n - ((2 * d) % n)
            v &= ~1
            if v == 0:
                v = n
        if self.bcd:
            return _to_bcd(v)
        return v & 0xFFFF

    def out(self, now: int) -> bool:
        mode = self.mode
        if not self.loaded:
            return mode != 0  # mode 0 OUT goes low when the control word is written
        if mode in (1, 5) and not self.triggered:
            return True
        if mode in (2, 3) and not self.gate:
            return True  # GATE low forces OUT high
        d = self.elapsed(now)
        n = self.period
        if mode == 0:
            return d >= n
        if mode == 1:
            return d >= n
        if mode == 2:
            return n == 1 or (d % n) != n - 1
        if mode == 3:
            return (d % n) < (n + 1) // 2
        # modes 4 and 5: one clock low when the count reaches zero
        return d != n

    def next_rising_edge(self, now: int) -> int | None:
        """Virtual time of OUT's next low-to-high transition, or None."""
        if not self.loaded or self.frozen_ticks is not None:
            return None
        mode = self.mode
        if mode in (1, 5) and not self.triggered:
            return None
        if mode in (2, 3) and not self.gate:
            return None
        d = self.elapsed(now)
        n = self.period
        if mode in (0, 1):
            target = n if d < n else None
        elif mode in (4, 5):
            target = n + 1 if d <= n else None
        else:  # periodic: rising at every multiple of the period
            target = (d // n + 1) * n
        if target is None:
            return None
        return self.load_ns + ticks_to_ns(target) + 1

    # -- programming -----------------------------------------------------------------
    def control(self, value: int, now: int) -> None:
        rw = (value & CW_RW) >> 4
        if rw == RW_LATCH:
            self.latch(now)
            return
        self.rw = rw
        mode = (value & CW_MODE) >> 1
        self.mode = mode - 4 if mode >= 6 else mode  # 6 and 7 are 2 and 3
        self.bcd = bool(value & CW_BCD)
        self.loaded = False
        self.triggered = False
        self.frozen_ticks = None
        self.write_lsb_next = True
        self.read_lsb_next = True
        self.latched = None
        self.status = None
        self.null_count = True

    def latch(self, now: int) -> None:
        if self.latched is None:  # a second latch before the read is ignored
            self.latched = self.count(now)
            self.latched_msb_pending = False

    def latch_status(self, now: int) -> None:
        if self.status is None:
            self.status = ((ST_OUTPUT if self.out(now) else 0) | (ST_NULL_COUNT if self.null_count else 0)
                           | self.rw << 4 | self.mode << 1 | (CW_BCD if self.bcd else 0))

    def write_count(self, value: int, now: int) -> None:
        value &= 0xFF
        rw = self.rw
        if rw == RW_LSB:
            self._load(value, now)
        elif rw == RW_MSB:
            self._load(value << 8, now)
        elif rw == RW_WORD:
            if self.write_lsb_next:
                self.write_lsb = value
                self.write_lsb_next = False
                if self.mode == 0:
                    # writing the first byte of a mode 0 count stops counting (datasheet)
                    self.frozen_ticks = self.elapsed(now) if self.loaded else None
                    self.loaded = False
            else:
                self.write_lsb_next = True
                self._load(self.write_lsb | value << 8, now)

    def _load(self, count: int, now: int) -> None:
        self.initial = count
        self.null_count = False
        mode = self.mode
        if mode in (2, 3) and self.loaded and self.counting():
            # a new count takes effect at the end of the current period
            d = self.elapsed(now)
            old = self.period
            self.load_ns = self.load_ns + ticks_to_ns((d // old + 1) * old)
        else:
            self.load_ns = now
        self.loaded = True
        self.frozen_ticks = None
        if mode in (0, 4) and not self.gate:
            self.frozen_ticks = 0
        self.pit._channel_changed(self, now)

    def read(self, now: int) -> int:
        if self.status is not None:
            v = self.status
            self.status = None
            return v
        if self.latched is not None:
            value = self.latched
            if self.rw == RW_LSB:
                self.latched = None
                return value & 0xFF
            if self.rw == RW_MSB:
                self.latched = None
                return value >> 8 & 0xFF
            if not self.latched_msb_pending:
                self.latched_msb_pending = True
                return value & 0xFF
            self.latched = None
            self.latched_msb_pending = False
            return value >> 8 & 0xFF
        value = self.count(now)
        if self.rw == RW_LSB:
            return value & 0xFF
        if self.rw == RW_MSB:
            return value >> 8 & 0xFF
        if self.read_lsb_next:
            self.read_lsb_next = False
            return value & 0xFF
        self.read_lsb_next = True
        return value >> 8 & 0xFF

    def set_gate(self, gate: bool, now: int) -> None:
        if gate == self.gate:
            return
        mode = self.mode
        if gate:
            if mode in (1, 5) or (mode in (2, 3) and self.loaded):
                # rising edge: (re)trigger, reload the count
                if self.loaded:
                    self.load_ns = now
                    self.triggered = True
                    self.frozen_ticks = None
            elif mode in (0, 4) and self.frozen_ticks is not None and self.loaded:
                # counting resumes where it stopped
                self.load_ns = now - ticks_to_ns(self.frozen_ticks)
                self.frozen_ticks = None
        else:
            if mode in (0, 4) and self.loaded and self.frozen_ticks is None:
                self.frozen_ticks = self.elapsed(now)
        self.gate = gate
        self.pit._channel_changed(self, now)

    def state(self) -> PitChannelState:
        return PitChannelState(self.mode, self.rw, self.bcd, self.initial, self.loaded, self.load_ns,
                               self.gate, self.triggered, self.frozen_ticks, self.write_lsb_next,
                               self.write_lsb, self.read_lsb_next, self.latched, self.latched_msb_pending,
                               self.status, self.null_count)

    def restore(self, s: PitChannelState) -> None:
        self.mode = s.mode % 6
        self.rw = s.rw & 3 or RW_WORD
        self.bcd = bool(s.bcd)
        self.initial = s.initial & 0xFFFF
        self.loaded = bool(s.loaded)
        self.load_ns = int(s.load_ns)
        self.gate = bool(s.gate)
        self.triggered = bool(s.triggered)
        self.frozen_ticks = s.frozen_ticks
        self.write_lsb_next = bool(s.write_lsb_next)
        self.write_lsb = s.write_lsb & 0xFF
        self.read_lsb_next = bool(s.read_lsb_next)
        self.latched = None if s.latched is None else s.latched & 0xFFFF
        self.latched_msb_pending = bool(s.latched_msb_pending)
        self.status = None if s.status is None else s.status & 0xFF
        self.null_count = bool(s.null_count)


@attrs.define
class PitCounters(Counters):
    irq0_edges: int = 0


class I8254:
    """The three counters and the control word register (ports base+0..3)."""

    def __init__(self, clock: Any, irq0: Any = None, name: str = "pit") -> None:
        self.name = name
        self.clock = clock
        self.irq0 = irq0
        self.counters = PitCounters()
        #: parts with their own counters, for the run report (the port 0x61 device)
        self.parts: dict[str, Any] = {}
        self.channels = [PitChannel(self, i) for i in range(3)]
        self._timer: Any = None
        self._out0 = False
        #: port 0x61 bits 1-3 (speaker data, parity/IOCHK disables) kept by the speaker port
        self.speaker = 0

    # -- IRQ 0 ---------------------------------------------------------------------
    def _channel_changed(self, ch: PitChannel, now: int) -> None:
        if ch.index == 0:
            self._schedule(now)

    def _schedule(self, now: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ch = self.channels[0]
        out = ch.out(now)
        if self.irq0 is not None and out != self._out0:
            self._out0 = out
            self.irq0.set_level(out)
        edge = ch.next_rising_edge(now)
        if edge is not None and self.irq0 is not None:
            self._timer = self.clock.add_timer(max(edge, now + MIN_PERIOD_NS), self._on_edge)

    def _on_edge(self, now: int) -> None:
        self._timer = None
        ch = self.channels[0]
        if self.irq0 is not None:
            # deliver the rising edge; in the periodic modes OUT was low for one
            # clock (mode 2) or half a period (mode 3) since the last one
            if self._out0:
                self.irq0.set_level(False)
            self.irq0.set_level(True)
            self._out0 = True
            self.counters.irq0_edges += 1
        edge = ch.next_rising_edge(now)
        if edge is not None:
            self._timer = self.clock.add_timer(max(edge, now + MIN_PERIOD_NS), self._on_edge)
        elif self.irq0 is not None:
            out = ch.out(now)
            if out != self._out0:
                self._out0 = out
                self.irq0.set_level(out)

    # -- bus interface ------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        self.counters.reads += 1
        if size != 1:
            self.counters.bad_size += 1
            return ones(size)
        if offset == 3:
            self.counters.unknown += 1
            return 0xFF  # the control word register cannot be read (floating)
        if 0 <= offset < 3:
            return self.channels[offset].read(self.clock.now_ns())
        self.counters.unknown += 1
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        self.counters.writes += 1
        if size != 1:
            self.counters.bad_size += 1
            return
        value &= 0xFF
        now = self.clock.now_ns()
        if 0 <= offset < 3:
            self.channels[offset].write_count(value, now)
        elif offset == 3:
            sc = value >> 6
            if sc == 3:  # read-back command
                for i in range(3):
                    if value & (2 << i):
                        if not value & RB_COUNT:
                            self.channels[i].latch(now)
                        if not value & RB_STATUS:
                            self.channels[i].latch_status(now)
            else:
                self.channels[sc].control(value, now)
                if sc == 0:
                    self._schedule(now)
        else:
            self.counters.unknown += 1

    # -- channel 2 through port 0x61 ------------------------------------------------------
    def set_gate2(self, gate: bool) -> None:
        self.channels[2].set_gate(gate, self.clock.now_ns())

    def out2(self) -> bool:
        return self.channels[2].out(self.clock.now_ns())

    # -- state ---------------------------------------------------------------------------
    def state(self) -> PitState:
        return PitState(tuple(c.state() for c in self.channels), self._out0, self.speaker)  # type: ignore[arg-type]

    def restore(self, state: PitState) -> None:
        if len(state.channels) != 3:
            raise ValueError("the 8254 has three counters")
        for ch, s in zip(self.channels, state.channels):
            ch.restore(s)
        self.speaker = state.speaker & 0x0E
        self._out0 = bool(state.out0)
        if self.irq0 is not None:
            self.irq0.set_level(self._out0)
        self._schedule(self.clock.now_ns())


class SpeakerPort:
    """Port 0x61, "NMI status and control": counter 2 gate/OUT, speaker, refresh toggle."""

    def __init__(self, pit: I8254, name: str = "port61") -> None:
        self.name = name
        self.pit = pit
        self.counters = Counters()

    def read(self, offset: int, size: int) -> int:
        self.counters.reads += 1
        if size != 1 or offset != 0:
            self.counters.bad_size += 1
            return ones(size)
        pit = self.pit
        now = pit.clock.now_ns()
        value = pit.speaker & (P61_SPKR_DATA | P61_PARITY_DIS | P61_IOCHK_DIS)
        if pit.channels[2].gate:
            value |= P61_TIM2_GATE
        if (now // REFRESH_NS) & 1:
            value |= P61_REFRESH
        if pit.channels[2].out(now):
            value |= P61_OUT2
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self.counters.writes += 1
        if size != 1 or offset != 0:
            self.counters.bad_size += 1
            return
        self.pit.speaker = value & (P61_SPKR_DATA | P61_PARITY_DIS | P61_IOCHK_DIS)
        self.pit.set_gate2(bool(value & P61_TIM2_GATE))

    def state(self) -> None:
        return None  # kept in the PIT's state (``speaker`` and counter 2's gate)
