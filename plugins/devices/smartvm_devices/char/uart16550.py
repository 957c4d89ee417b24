"""National Semiconductor PC16550D UART (the 16550A of every PC COM port).

Eight registers at offsets 0-7 of the base port (datasheet names)::

    0  RBR (read) / THR (write)      DLAB=0      DLL  when DLAB=1
    1  IER                           DLAB=0      DLM  when DLAB=1
    2  IIR (read) / FCR (write)
    3  LCR    4  MCR    5  LSR    6  MSR    7  SCR

Transmission is immediate: a byte written to THR goes to the output backend
(or, in loopback, back into the receiver) and the transmitter is empty
again, so THRE and TEMT read 1 and the THRE interrupt re-arms at once.
Reception goes through a 16-byte receive FIFO (one holding register in
16450 mode) fed from an unbounded-but-capped host input queue: host bytes
wait there until the FIFO has room, so typed input is not lost. The
character-timeout interrupt fires four character times (from the divisor
and LCR) after the last FIFO activity when data sits below the trigger level.

The interrupt output is gated by MCR.OUT2, as on the PC motherboard.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import attrs

from ..common import Counters, ones

# Register offsets
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

# IER bits
IER_ERBFI = 0x01  # enable received data available interrupt
IER_ETBEI = 0x02  # enable transmitter holding register empty interrupt
IER_ELSI = 0x04   # enable receiver line status interrupt
IER_EDSSI = 0x08  # enable modem status interrupt
IER_MASK = 0x0F

# IIR values (bit 0 = 1: no interrupt pending; bits 6-7: FIFOs enabled)
IIR_NO_INT = 0x01
IIR_RLS = 0x06    # receiver line status (highest)
IIR_RDA = 0x04    # received data available
IIR_CTI = 0x0C    # character timeout indication
IIR_THRE = 0x02   # transmitter holding register empty
IIR_MSI = 0x00    # modem status (lowest)
IIR_FIFO_ENABLED = 0xC0

# FCR bits
FCR_FIFO_ENABLE = 0x01
FCR_RCVR_RESET = 0x02
FCR_XMIT_RESET = 0x04
FCR_DMA_MODE = 0x08
FCR_TRIGGER = 0xC0
TRIGGER_LEVELS = (1, 4, 8, 14)

# LCR bits
LCR_WLS = 0x03    # word length select (5 + n bits)
LCR_STB = 0x04    # stop bits
LCR_PEN = 0x08    # parity enable
LCR_EPS = 0x10
LCR_STICK = 0x20
LCR_BREAK = 0x40
LCR_DLAB = 0x80   # divisor latch access bit

# MCR bits
MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

# LSR bits
LSR_DR = 0x01     # data ready
LSR_OE = 0x02     # overrun error
LSR_PE = 0x04     # parity error
LSR_FE = 0x08     # framing error
LSR_BI = 0x10     # break interrupt
LSR_THRE = 0x20   # transmitter holding register empty
LSR_TEMT = 0x40   # transmitter empty
LSR_RXFE = 0x80   # error in receiver FIFO
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

# MSR bits
MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_DELTAS = 0x0F

FIFO_SIZE = 16
#: input clock of a PC COM port (1.8432 MHz); baud = CLOCK / (16 * divisor)
INPUT_CLOCK_HZ = 1_843_200
#: the host-side input queue holds at most this many bytes (more is dropped and counted)
INPUT_QUEUE_LIMIT = 1 << 16


@attrs.define(frozen=True)
class Uart16550State:
    ier: int = 0
    iir_thre_pending: bool = False
    fcr: int = 0
    lcr: int = 0
    mcr: int = 0
    lsr: int = LSR_THRE | LSR_TEMT
    msr: int = MSR_DCD | MSR_DSR | MSR_CTS
    scr: int = 0
    dll: int = 0x0C
    dlm: int = 0
    rx_fifo: bytes = b""
    timeout_pending: bool = False
    pending_input: bytes = b""


@attrs.define
class UartCounters(Counters):
    tx_bytes: int = 0
    rx_bytes: int = 0
    overruns: int = 0


class Uart16550:
    """The register model; output goes to ``out(bytes)``, input comes through :meth:`enqueue`.

    :param irq: an :class:`~smartvm_core.irq.IrqLine` (or anything with ``set_level``)
    :param out: called with each transmitted byte string
    :param clock: the machine's virtual clock (character timeout, input wake-up);
        ``None`` makes the timeout immediate and input synchronous
    :param modem_lines: the initial MSR input lines (``CTS|DSR|DCD``: a connected peer)
    """

    def __init__(self, irq: Any, out: Callable[[bytes], None], clock: Any = None, name: str = "uart",
                 modem_lines: int = MSR_DCD | MSR_DSR | MSR_CTS) -> None:
        self.name = name
        self._irq = irq
        self._out = out
        self._clock = clock
        self.counters = UartCounters()
        #: the :class:`~smartvm_devices.char.backends.Backend` bytes go to and come from, if any
        self.backend: Any = None
        self._modem_lines = modem_lines & 0xF0
        self._input: collections.deque[int] = collections.deque()
        self._input_timer: Any = None
        self._timeout_timer: Any = None
        self._irq_level = False
        self._reset()

    def _reset(self) -> None:
        self.ier = 0
        self.fcr = 0
        self.lcr = 0
        self.mcr = 0
        self.lsr = LSR_THRE | LSR_TEMT
        self.msr = self._modem_lines
        self.scr = 0
        self.dll = 0x0C  # 9600 baud
        self.dlm = 0
        self.rx: collections.deque[int] = collections.deque()
        self.thre_pending = False
        self.timeout_pending = False

    # -- host side ----------------------------------------------------------------
    def close(self) -> None:
        """Release the backend (its file, socket or pty, and its reader thread).

        The machine calls this when it closes; bytes the guest sends afterwards
        are counted by the backend as dropped.
        """
        if self.backend is not None:
            self.backend.close()  # a closed backend counts what is still sent to it as dropped

    def enqueue(self, data: bytes) -> int:
        """Queue host input (terminal, socket, test); returns how many bytes were accepted.

        Safe to call from any thread when the UART has a clock: the bytes move
        into the receive FIFO on the vCPU thread, when the clock runs its timers.
        """
        room = INPUT_QUEUE_LIMIT - len(self._input)
        accepted = data[:max(room, 0)]
        self.counters.dropped += len(data) - len(accepted)
        self._input.extend(accepted)
        if accepted:
            if self._clock is None:
                self._pull_input()
            elif self._input_timer is None or self._input_timer.cancelled:
                self._input_timer = self._clock.add_timer(self._clock.now_ns(), self._on_input_timer)
        return len(accepted)

    def _on_input_timer(self, now: int) -> None:
        self._pull_input()

    @property
    def pending_input(self) -> int:
        """Host bytes waiting for room in the receive FIFO."""
        return len(self._input)

    def set_modem_lines(self, lines: int) -> None:
        """Drive the modem input lines (MSR bits 4-7: CTS, DSR, RI, DCD) from the host side."""
        self._modem_lines = lines & 0xF0
        if not self.mcr & MCR_LOOP:
            self._set_msr_lines(self._modem_lines)

    # -- receiver ------------------------------------------------------------------
    @property
    def _fifo_enabled(self) -> bool:
        return bool(self.fcr & FCR_FIFO_ENABLE)

    def _capacity(self) -> int:
        return FIFO_SIZE if self._fifo_enabled else 1

    def _receive(self, byte: int) -> None:
        """A character completed in the receiver shift register."""
        if len(self.rx) >= self._capacity():
            # FIFO mode: the FIFO keeps its data, the new character is lost.
            # 16450 mode: the holding register is overwritten.
            self.lsr |= LSR_OE
            self.counters.overruns += 1
            if not self._fifo_enabled:
                self.rx.clear()
                self.rx.append(byte)
        else:
            self.rx.append(byte)
        self.counters.rx_bytes += 1
        self.lsr |= LSR_DR
        self._arm_timeout()

    def _pull_input(self) -> None:
        if self.mcr & MCR_LOOP:
            self._update_irq()
            return  # in loopback the serial input is disconnected
        cap = self._capacity()
        moved = False
        while self._input and len(self.rx) < cap:
            self._receive(self._input.popleft())
            moved = True
        if moved:
            self._update_irq()

    def _char_time_ns(self) -> int:
        divisor = (self.dlm << 8 | self.dll) or 0x10000
        bits = 1 + (5 + (self.lcr & LCR_WLS)) + (1 if self.lcr & LCR_PEN else 0) + (2 if self.lcr & LCR_STB else 1)
        return bits * divisor * 16 * 1_000_000_000 // INPUT_CLOCK_HZ

    def _arm_timeout(self) -> None:
        self.timeout_pending = False
        if self._timeout_timer is not None:
            self._timeout_timer.cancel()
            self._timeout_timer = None
        if not self._fifo_enabled or not self.rx:
            return
        if self._clock is None:
            self.timeout_pending = len(self.rx) < self._trigger_level()
            return
        self._timeout_timer = self._clock.add_timer(self._clock.now_ns() + 4 * self._char_time_ns(), self._on_timeout)

    def _on_timeout(self, now: int) -> None:
        self._timeout_timer = None
        if self._fifo_enabled and self.rx:
            self.timeout_pending = True
            self._update_irq()

    def _trigger_level(self) -> int:
        return TRIGGER_LEVELS[(self.fcr & FCR_TRIGGER) >> 6]

    # -- interrupts ------------------------------------------------------------------
    def _interrupt_id(self) -> int:
        ier = self.ier
        if ier & IER_ELSI and self.lsr & LSR_ERRORS:
            return IIR_RLS
        if ier & IER_ERBFI and self.rx:
            if not self._fifo_enabled or len(self.rx) >= self._trigger_level():
                return IIR_RDA
            if self.timeout_pending:
                return IIR_CTI
        if ier & IER_ETBEI and self.thre_pending:
            return IIR_THRE
        if ier & IER_EDSSI and self.msr & MSR_DELTAS:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        level = self._interrupt_id() != IIR_NO_INT and bool(self.mcr & MCR_OUT2)
        if level != self._irq_level:
            self._irq_level = level
            self._irq.set_level(level)

    # -- modem status ------------------------------------------------------------------
    def _set_msr_lines(self, lines: int) -> None:
        old = self.msr
        new_lines = lines & 0xF0
        delta = 0
        changed = (old ^ new_lines) & 0xF0
        if changed & MSR_CTS:
            delta |= MSR_DCTS
        if changed & MSR_DSR:
            delta |= MSR_DDSR
        if changed & MSR_DCD:
            delta |= MSR_DDCD
        if old & MSR_RI and not new_lines & MSR_RI:
            delta |= MSR_TERI  # trailing edge of ring indicator
        self.msr = new_lines | (old & MSR_DELTAS) | delta
        if delta:
            self._update_irq()

    def _loopback_lines(self) -> int:
        m = self.mcr
        return ((MSR_CTS if m & MCR_RTS else 0) | (MSR_DSR if m & MCR_DTR else 0)
                | (MSR_RI if m & MCR_OUT1 else 0) | (MSR_DCD if m & MCR_OUT2 else 0))

    # -- bus interface ------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        self.counters.reads += 1
        if size != 1:
            # the part has an 8-bit data bus: wider ISA accesses see the register
            # in the low byte and a floating bus above
            self.counters.bad_size += 1
            high = ones(size) & ~0xFF
            if size in (2, 4) and 0 <= offset < 8:
                self.counters.reads -= 1
                return self.read(offset, 1) | high
            return ones(size)
        dlab = self.lcr & LCR_DLAB
        if offset == RBR:
            if dlab:
                return self.dll
            return self._read_rbr()
        if offset == IER:
            return self.dlm if dlab else self.ier
        if offset == IIR:
            iid = self._interrupt_id()
            if iid == IIR_THRE:
                self.thre_pending = False  # reading IIR clears a THRE interrupt
                self._update_irq()
            return iid | (IIR_FIFO_ENABLED if self._fifo_enabled else 0)
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            value = self.lsr
            if self._fifo_enabled and self._rx_error_in_fifo():
                value |= LSR_RXFE
            self.lsr &= ~(LSR_ERRORS | LSR_RXFE)
            if value & LSR_ERRORS:
                self._update_irq()
            return value
        if offset == MSR:
            value = self.msr
            self.msr &= ~MSR_DELTAS
            if value & MSR_DELTAS:
                self._update_irq()
            return value
        if offset == SCR:
            return self.scr
        self.counters.unknown += 1
        return 0xFF

    def _rx_error_in_fifo(self) -> bool:
        return bool(self.lsr & (LSR_PE | LSR_FE | LSR_BI))

    def _read_rbr(self) -> int:
        if not self.rx:
            return 0  # the holding register keeps nothing; a read of an empty RBR gives 0 here
        byte = self.rx.popleft()
        if not self.rx:
            self.lsr &= ~LSR_DR
        self._pull_input()
        self._arm_timeout()
        self._update_irq()
        return byte

    def write(self, offset: int, size: int, value: int) -> None:
        self.counters.writes += 1
        if size != 1:
            self.counters.bad_size += 1
            if size not in (2, 4) or not 0 <= offset < 8:
                return
            value &= 0xFF  # the low byte lane reaches the part
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if offset == THR:
            if dlab:
                self.dll = value
            else:
                self._transmit(value)
        elif offset == IER:
            if dlab:
                self.dlm = value
            else:
                old = self.ier
                self.ier = value & IER_MASK
                if self.ier & IER_ETBEI and not old & IER_ETBEI and self.lsr & LSR_THRE:
                    self.thre_pending = True  # enabling ETBEI with THR empty interrupts at once
                self._update_irq()
        elif offset == FCR:
            self._write_fcr(value)
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            old = self.mcr
            self.mcr = value & MCR_MASK
            if self.mcr & MCR_LOOP:
                self._set_msr_lines(self._loopback_lines())
            elif old & MCR_LOOP:
                self._set_msr_lines(self._modem_lines)
                self._pull_input()
            self._update_irq()
        elif offset == LSR:
            # LSR is read-only on the 16550 (writes are "for factory test"): ignored
            self.counters.unknown += 1
        elif offset == MSR:
            self.counters.unknown += 1
        elif offset == SCR:
            self.scr = value
        else:
            self.counters.unknown += 1

    def _write_fcr(self, value: int) -> None:
        enable = value & FCR_FIFO_ENABLE
        if enable != (self.fcr & FCR_FIFO_ENABLE):
            # changing the FIFO enable clears both FIFOs
            self.rx.clear()
            self.lsr &= ~LSR_DR
        if value & FCR_RCVR_RESET:
            self.rx.clear()
            self.lsr &= ~LSR_DR
        # XMIT reset: the transmitter is always empty here
        self.fcr = (value & (FCR_FIFO_ENABLE | FCR_DMA_MODE | FCR_TRIGGER)) if enable else 0
        self._pull_input()
        self._arm_timeout()
        self._update_irq()

    def _transmit(self, value: int) -> None:
        self.counters.tx_bytes += 1
        if self.mcr & MCR_LOOP:
            self._receive(value)
        else:
            self._out(bytes((value,)))
        # the byte left at once: THR and the shift register are empty again
        self.lsr |= LSR_THRE | LSR_TEMT
        self.thre_pending = True
        self._update_irq()

    # -- state ---------------------------------------------------------------------------
    def state(self) -> Uart16550State:
        return Uart16550State(ier=self.ier, iir_thre_pending=self.thre_pending, fcr=self.fcr, lcr=self.lcr,
                              mcr=self.mcr, lsr=self.lsr, msr=self.msr, scr=self.scr, dll=self.dll,
                              dlm=self.dlm, rx_fifo=bytes(self.rx), timeout_pending=self.timeout_pending,
                              pending_input=bytes(self._input))

    def restore(self, state: Uart16550State) -> None:
        if len(state.rx_fifo) > FIFO_SIZE:
            raise ValueError(f"receive FIFO of {len(state.rx_fifo)} bytes exceeds {FIFO_SIZE}")
        self.ier = state.ier & IER_MASK
        self.thre_pending = state.iir_thre_pending
        self.fcr = state.fcr & 0xFF
        self.lcr = state.lcr & 0xFF
        self.mcr = state.mcr & MCR_MASK
        self.lsr = state.lsr & 0xFF
        self.msr = state.msr & 0xFF
        self.scr = state.scr & 0xFF
        self.dll = state.dll & 0xFF
        self.dlm = state.dlm & 0xFF
        self.rx = collections.deque(state.rx_fifo)
        self.timeout_pending = state.timeout_pending
        self._input = collections.deque(state.pending_input[:INPUT_QUEUE_LIMIT])
        self._irq_level = self._interrupt_id() != IIR_NO_INT and bool(self.mcr & MCR_OUT2)
        self._irq.set_level(self._irq_level)  # drive the line again: the controller was restored too
