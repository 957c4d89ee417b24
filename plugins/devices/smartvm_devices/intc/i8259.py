"""Intel 8259A programmable interrupt controller, as the PC's master/slave pair.

Ports: master at 0x20-0x21, slave at 0xA0-0xA1, and the PIIX edge/level
control registers ELCR1/ELCR2 at 0x4D0-0x4D1. Programming follows the
datasheet: ICW1-ICW4 (ICW1.LTIM, SNGL, IC4; ICW4.AEOI, SFNM), OCW1 (IMR),
OCW2 (non-specific / specific EOI, rotate on EOI, rotate in AEOI mode, set
priority), OCW3 (read IRR/ISR, poll, special mask mode).

An IRQ line is edge-triggered (a rising edge latches IRR) unless ICW1.LTIM
or its ELCR bit selects level mode, where IRR follows the line. The slave's
INT output drives master IR2 (the cascade line of ICW3).

The pair is the machine's :class:`~smartvm_core.irq.InterruptController`:
``set_irq(line 0-15, level)``, ``pending()`` and ``acknowledge()`` (the INTA
cycle returning the vector; IR7 of the chip, not put in service, if the
request went away: a spurious interrupt).
"""

from __future__ import annotations

from typing import Any

import attrs

from ..common import Counters, ones

# ICW1 bits (port 0 with bit 4 set)
ICW1_IC4 = 0x01
ICW1_SNGL = 0x02
ICW1_ADI = 0x04
ICW1_LTIM = 0x08
ICW1_INIT = 0x10
# ICW4 bits
ICW4_UPM = 0x01
ICW4_AEOI = 0x02
ICW4_MS = 0x04
ICW4_BUF = 0x08
ICW4_SFNM = 0x10
# OCW2 (bits 4-3 = 00): R SL EOI in bits 7-5, level in bits 2-0
OCW2_EOI = 0x20
OCW2_SL = 0x40
OCW2_R = 0x80
# OCW3 (bits 4-3 = 01)
OCW3_RIS = 0x01
OCW3_RR = 0x02
OCW3_P = 0x04
OCW3_SMM = 0x20
OCW3_ESMM = 0x40

CASCADE_IR = 2
#: ELCR bits that must stay 0 on the PIIX (IRQ 0, 1, 2, 8, 13 are always edge)
ELCR_MASK = (0xF8, 0xDE)


@attrs.define(frozen=True)
class I8259ChipState:
    irr: int = 0
    isr: int = 0
    imr: int = 0
    last_levels: int = 0
    lowest_priority: int = 7
    vector_base: int = 0
    icw1: int = 0
    icw3: int = 0
    icw4: int = 0
    init_step: int = 0
    read_isr: bool = False
    poll: bool = False
    special_mask: bool = False
    rotate_in_aeoi: bool = False
    elcr: int = 0


@attrs.define(frozen=True)
class I8259PairState:
    master: I8259ChipState
    slave: I8259ChipState
    lines: int = 0


class I8259Chip:
    """One 8259A. The pair wires two of them and owns the INT/INTA logic."""

    def __init__(self, is_master: bool, elcr_mask: int) -> None:
        self.is_master = is_master
        self.elcr_mask = elcr_mask
        self.elcr = 0
        self.reset()

    def reset(self) -> None:
        self.irr = 0
        self.isr = 0
        self.imr = 0
        self.last_levels = 0  # edge detector: the line levels last seen
        self.lowest_priority = 7
        self.vector_base = 0
        self.icw1 = 0
        self.icw3 = 0
        self.icw4 = 0
        self.init_step = 0  # 0: operational; 2/3/4: expecting that ICW
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.rotate_in_aeoi = False

    # -- lines -----------------------------------------------------------------
    def _level_mode(self, bit: int) -> bool:
        return bool(self.icw1 & ICW1_LTIM) or bool(self.elcr & bit)

    def set_line(self, ir: int, level: bool) -> None:
        bit = 1 << ir
        if self._level_mode(bit):
            if level:
                self.irr |= bit
                self.last_levels |= bit
            else:
                self.irr &= ~bit
                self.last_levels &= ~bit
        else:
            if level:
                if not self.last_levels & bit:
                    self.irr |= bit  # rising edge
                self.last_levels |= bit
            else:
                self.last_levels &= ~bit

    # -- priority ----------------------------------------------------------------
    def _highest(self, mask: int) -> int | None:
        """The highest-priority IR set in ``mask`` (rotating priority), or None."""
        if not mask:
            return None
        for i in range(8):
            ir = (self.lowest_priority + 1 + i) & 7
            if mask & (1 << ir):
                return ir
        return None

    def requested(self) -> int | None:
        """The IR this chip would signal on INT now, or None."""
        pending = self.irr & ~self.imr
        ir = self._highest(pending)
        if ir is None:
            return None
        isr = self.isr
        if self.special_mask:
            isr &= ~self.imr
        if self.is_master and self.icw4 & ICW4_SFNM:
            isr &= ~(1 << CASCADE_IR)  # special fully nested: the slave may nest
        top = self._highest(isr)
        if top is not None and self._priority_rank(top) <= self._priority_rank(ir):
            return None
        return ir

    def _priority_rank(self, ir: int) -> int:
        """0 is the highest priority."""
        return (ir - self.lowest_priority - 1) & 7

    def ack(self, ir: int) -> None:
        """INTA: move ``ir`` from IRR to ISR (or straight through in AEOI mode)."""
        bit = 1 << ir
        if not self._level_mode(bit):
            self.irr &= ~bit
        elif not self.last_levels & bit:
            self.irr &= ~bit
        if self.icw4 & ICW4_AEOI:
            if self.rotate_in_aeoi:
                self.lowest_priority = ir
        else:
            self.isr |= bit

    def _eoi(self, value: int) -> None:
        cmd = value & 0xE0
        level = value & 7
        if cmd == OCW2_EOI or cmd == OCW2_R | OCW2_EOI:  # non-specific (rotate)
            ir = self._highest(self.isr if not self.special_mask else self.isr & ~self.imr)
            if ir is not None:
                self.isr &= ~(1 << ir)
                if cmd & OCW2_R:
                    self.lowest_priority = ir
        elif cmd == OCW2_SL | OCW2_EOI or cmd == OCW2_R | OCW2_SL | OCW2_EOI:  # specific (rotate)
            self.isr &= ~(1 << level)
            if cmd & OCW2_R:
                self.lowest_priority = level
        elif cmd == OCW2_R:  # rotate in automatic EOI mode (set)
            self.rotate_in_aeoi = True
        elif cmd == 0:  # rotate in automatic EOI mode (clear)
            self.rotate_in_aeoi = False
        elif cmd == OCW2_R | OCW2_SL:  # set priority: ``level`` becomes the lowest
            self.lowest_priority = level
        # 0x40 (SL alone) is a no-operation

    # -- registers ---------------------------------------------------------------------
    def write(self, port: int, value: int) -> str | None:
        """Returns ``"poll"`` never; the pair re-evaluates INT after every write."""
        value &= 0xFF
        if port == 0:
            if value & ICW1_INIT:
                self._icw1(value)
            elif value & 0x08:
                self._ocw3(value)
            else:
                self._eoi(value)
            return None
        # port 1
        step = self.init_step
        if step == 2:
            self.vector_base = value & 0xF8
            self.init_step = 3 if not self.icw1 & ICW1_SNGL else (4 if self.icw1 & ICW1_IC4 else 0)
        elif step == 3:
            self.icw3 = value
            self.init_step = 4 if self.icw1 & ICW1_IC4 else 0
        elif step == 4:
            self.icw4 = value & 0x1F
            self.init_step = 0
        else:
            self.imr = value  # OCW1
        return None

    def _icw1(self, value: int) -> None:
        # ICW1 resets the chip: edge detector cleared, IMR cleared, IR7 lowest,
        # special mask off, status read set to IRR (datasheet, "Initialization Command Words")
        self.icw1 = value
        self.icw4 = 0
        self.imr = 0
        self.isr = 0
        # a line that is high stays "seen": an edge IR needs a new low-to-high transition
        self.irr &= self.last_levels if value & ICW1_LTIM else 0
        self.lowest_priority = 7
        self.special_mask = False
        self.read_isr = False
        self.poll = False
        self.rotate_in_aeoi = False
        self.init_step = 2

    def _ocw3(self, value: int) -> None:
        if value & OCW3_P:
            self.poll = True
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)

    def read(self, port: int) -> int:
        if port == 0:
            return self.isr if self.read_isr else self.irr
        return self.imr

    def state(self) -> I8259ChipState:
        return I8259ChipState(self.irr, self.isr, self.imr, self.last_levels, self.lowest_priority,
                              self.vector_base, self.icw1, self.icw3, self.icw4, self.init_step,
                              self.read_isr, self.poll, self.special_mask, self.rotate_in_aeoi, self.elcr)

    def restore(self, s: I8259ChipState) -> None:
        self.irr, self.isr, self.imr = s.irr & 0xFF, s.isr & 0xFF, s.imr & 0xFF
        self.last_levels = s.last_levels & 0xFF
        self.lowest_priority = s.lowest_priority & 7
        self.vector_base = s.vector_base & 0xF8
        self.icw1, self.icw3, self.icw4 = s.icw1 & 0xFF, s.icw3 & 0xFF, s.icw4 & 0x1F
        self.init_step = s.init_step if s.init_step in (0, 2, 3, 4) else 0
        self.read_isr, self.poll = bool(s.read_isr), bool(s.poll)
        self.special_mask, self.rotate_in_aeoi = bool(s.special_mask), bool(s.rotate_in_aeoi)
        self.elcr = s.elcr & self.elcr_mask


@attrs.define
class PicCounters(Counters):
    acknowledged: int = 0
    spurious: int = 0


class I8259Pair:
    """The PC's cascaded master/slave pair: an interrupt controller for the machine."""

    def __init__(self, name: str = "pic") -> None:
        self.name = name
        self.master = I8259Chip(True, ELCR_MASK[0])
        self.slave = I8259Chip(False, ELCR_MASK[1])
        self.counters = PicCounters()
        self._lines = 0  # current level of the 16 input lines
        #: called when INT may have changed (wakes a halted vCPU)
        self.on_change: Any = None

    # -- InterruptController -------------------------------------------------------------
    def set_irq(self, line: int, level: bool) -> None:
        if not 0 <= line < 16:
            return
        bit = 1 << line
        self._lines = (self._lines | bit) if level else (self._lines & ~bit)
        if line < 8:
            self.master.set_line(line, level)
        else:
            self.slave.set_line(line - 8, level)
            self._cascade()

    def _cascade(self) -> None:
        # the slave's INT output stays asserted while it has a request, so the
        # master's cascade input follows it like a level (no stale IR2 latch)
        bit = 1 << CASCADE_IR
        if self.slave.requested() is not None:
            self.master.irr |= bit
            self.master.last_levels |= bit
        else:
            self.master.irr &= ~bit
            self.master.last_levels &= ~bit

    def pending(self) -> bool:
        return self.master.requested() is not None

    def acknowledge(self) -> int:
        """The INTA sequence: the vector of the highest request (spurious IR7 if none)."""
        self._cascade()
        ir = self.master.requested()
        if ir is None:
            self.counters.spurious += 1
            return self.master.vector_base | 7
        self.counters.acknowledged += 1
        if ir == CASCADE_IR and self._slave_on_cascade():
            self.master.ack(ir)
            sir = self.slave.requested()
            if sir is None:
                self.counters.spurious += 1
                vector = self.slave.vector_base | 7
            else:
                self.slave.ack(sir)
                vector = self.slave.vector_base | sir
            self._cascade()
            return vector
        self.master.ack(ir)
        self._cascade()
        return self.master.vector_base | ir

    def _slave_on_cascade(self) -> bool:
        # a single-mode master (ICW1.SNGL) has no slave
        return not self.master.icw1 & ICW1_SNGL

    # -- bus interface: one object per port range -------------------------------------------
    def port(self, which: str) -> "_PicPort":
        return _PicPort(self, which)

    def _poll(self, chip: I8259Chip) -> int:
        chip.poll = False
        if chip is self.master:
            self._cascade()
        ir = chip.requested()
        if ir is None:
            return 0
        if chip is self.master and ir == CASCADE_IR and self._slave_on_cascade():
            self.master.ack(ir)
            sir = self.slave.requested()
            if sir is not None:
                self.slave.ack(sir)
            self._cascade()
            return 0x80 | ir
        chip.ack(ir)
        if chip is self.slave:
            self._cascade()
        return 0x80 | ir

    def chip_read(self, chip: I8259Chip, port: int) -> int:
        if chip.poll:
            return self._poll(chip)
        return chip.read(port)

    def chip_write(self, chip: I8259Chip, port: int, value: int) -> None:
        chip.write(port, value)
        if chip is self.master:
            # re-latch lines after ICW1 (level lines) and re-evaluate the cascade
            for ir in range(8):
                if ir != CASCADE_IR and chip._level_mode(1 << ir) and self._lines & (1 << ir):
                    chip.set_line(ir, True)
        else:
            for ir in range(8):
                if chip._level_mode(1 << ir) and self._lines & (1 << (ir + 8)):
                    chip.set_line(ir, True)
        self._cascade()
        if self.on_change is not None and self.pending():
            self.on_change()

    def elcr_read(self, index: int) -> int:
        return (self.master if index == 0 else self.slave).elcr

    def elcr_write(self, index: int, value: int) -> None:
        chip = self.master if index == 0 else self.slave
        chip.elcr = value & chip.elcr_mask
        base = 0 if index == 0 else 8
        for ir in range(8):
            if chip.elcr & (1 << ir):
                chip.set_line(ir, bool(self._lines & (1 << (base + ir))))
        self._cascade()

    # -- state -------------------------------------------------------------------------------
    def state(self) -> I8259PairState:
        return I8259PairState(self.master.state(), self.slave.state(), self._lines)

    def restore(self, state: I8259PairState) -> None:
        self.master.restore(state.master)
        self.slave.restore(state.slave)
        self._lines = state.lines & 0xFFFF
        self._cascade()

    # Convenience for tests and reports
    @property
    def vector_bases(self) -> tuple[int, int]:
        return self.master.vector_base, self.slave.vector_base


class _PicPort:
    """A bus device for one of the pair's port ranges (``master``, ``slave``, ``elcr``)."""

    def __init__(self, pair: I8259Pair, which: str) -> None:
        self.pair = pair
        self.which = which
        self.name = f"{pair.name}-{which}"
        self.chip = pair.master if which == "master" else pair.slave

    def read(self, offset: int, size: int) -> int:
        pair = self.pair
        pair.counters.reads += 1
        if size != 1:
            pair.counters.bad_size += 1
            return ones(size)
        if self.which == "elcr":
            return pair.elcr_read(offset)
        return pair.chip_read(self.chip, offset & 1)

    def write(self, offset: int, size: int, value: int) -> None:
        pair = self.pair
        pair.counters.writes += 1
        if size != 1:
            pair.counters.bad_size += 1
            return
        if self.which == "elcr":
            pair.elcr_write(offset, value & 0xFF)
        else:
            pair.chip_write(self.chip, offset & 1, value & 0xFF)
