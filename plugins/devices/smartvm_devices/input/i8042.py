"""Intel 8042 keyboard controller with a PS/2 keyboard and mouse, and port 0x92.

Port 0x60 is the data port, 0x64 the status (read) and command (write)
port. Controller commands (``0x20`` read command byte, ``0x60`` write it,
``0xAA`` self test, ``0xAB`` interface test, ``0xAD``/``0xAE`` keyboard
disable/enable, ``0xA7``/``0xA8``/``0xA9`` mouse, ``0xD0``/``0xD1`` output
port, ``0xD2``/``0xD3``/``0xD4`` write to the keyboard buffer / mouse
buffer / mouse, ``0xF0``-``0xFF`` pulse output lines: ``0xFE`` resets the
machine) and the keyboard's and mouse's own commands (``0xFF`` reset with
BAT ``0xAA``, ``0xF2`` identify, ``0xED`` LEDs, ``0xF0`` scan-code set ...)
follow the IBM PC/AT technical reference and the PS/2 documentation.

The output port's bit 1 is the A20 gate; port 0x92 (System Control Port A)
is the fast A20 and fast reset. Both drive the :class:`A20Gate` published
as ``services["a20"]``, which a memory policy may listen to.

Host input (a test, the terminal) enters through :meth:`I8042.enqueue_keys`
as the bytes the guest reads from port 0x60 (scan-code set 1 while the
controller translates, as it does by default) and :meth:`type_text`.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import attrs

from ..common import Counters, ones

# Status register
STS_OBF = 0x01     # output buffer full
STS_IBF = 0x02     # input buffer full
STS_SYS = 0x04     # system flag
STS_CMD = 0x08     # last write was to the command port
STS_INH = 0x10     # 1: keyboard not inhibited
STS_AUXB = 0x20    # output buffer holds mouse data
STS_TIMEOUT = 0x40
STS_PARITY = 0x80
# Controller command byte
CCB_KBD_INT = 0x01
CCB_AUX_INT = 0x02
CCB_SYS = 0x04
CCB_KBD_DISABLE = 0x10
CCB_AUX_DISABLE = 0x20
CCB_TRANSLATE = 0x40
# Output port
OUT_RESET = 0x01   # 0 resets the CPU
OUT_A20 = 0x02
OUT_AUX_CLK = 0x04
OUT_AUX_DATA = 0x08
OUT_OBF_KBD = 0x10
OUT_OBF_AUX = 0x20
# Port 0x92
P92_FAST_RESET = 0x01
P92_A20 = 0x02

KBD_ACK = 0xFA
KBD_RESEND = 0xFE
KBD_BAT_OK = 0xAA
KBD_ECHO = 0xEE
QUEUE_SIZE = 16
HOST_QUEUE_LIMIT = 4096

# Controller commands that take a data byte on port 0x60
_CMD_WITH_DATA = {0x60, 0xD1, 0xD2, 0xD3, 0xD4} | set(range(0x61, 0x80))

# Scan-code set 1 make codes for typing text (unshifted, shifted)
_SET1 = {}
for _row, _base in (("1234567890-=", 0x02), ("qwertyuiop[]", 0x10), ("asdfghjkl;'`", 0x1E),
                    ("\\zxcvbnm,./", 0x2B)):
    for _i, _ch in enumerate(_row):
        _SET1[_ch] = (_base + _i, False)
for _row, _base in (("!@#$%^&*()_+", 0x02), ("QWERTYUIOP{}", 0x10), ('ASDFGHJKL:"~', 0x1E),
                    ("|ZXCVBNM<>?", 0x2B)):
    for _i, _ch in enumerate(_row):
        _SET1[_ch] = (_base + _i, True)
_SET1.update({" ": (0x39, False), "\n": (0x1C, False), "\r": (0x1C, False), "\t": (0x0F, False),
              "\b": (0x0E, False), "\x1b": (0x01, False)})
LSHIFT = 0x2A


class A20Gate:
    """The A20 line: enabled by the i8042 output port OR port 0x92 bit 1."""

    def __init__(self) -> None:
        self.kbc = True   # enabled at power-on on a modern PC (SeaBIOS and QEMU assume so)
        self.port92 = False
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def enabled(self) -> bool:
        return self.kbc or self.port92

    def add_listener(self, callback: Callable[[bool], None]) -> None:
        """``callback(enabled)`` whenever the gate changes."""
        self._listeners.append(callback)

    def set(self, source: str, value: bool) -> None:
        before = self.enabled
        setattr(self, source, bool(value))
        if self.enabled != before:
            for cb in list(self._listeners):
                cb(self.enabled)


@attrs.define(frozen=True)
class I8042State:
    status: int = STS_INH
    ccb: int = CCB_KBD_INT | CCB_SYS | CCB_TRANSLATE
    output_port: int = OUT_RESET | OUT_A20
    pending_cmd: int | None = None
    obuf: int | None = None
    obuf_aux: bool = False
    kbd_queue: bytes = b""
    aux_queue: bytes = b""
    host_queue: bytes = b""
    kbd_enabled: bool = True
    kbd_pending: int | None = None
    scancode_set: int = 2
    leds: int = 0
    aux_enabled: bool = False
    aux_pending: int | None = None
    aux_rate: int = 100
    aux_resolution: int = 2
    aux_scaling: int = 1
    aux_wrap: bool = False
    port92: int = 0
    a20_kbc: bool = True


@attrs.define
class I8042Counters(Counters):
    resets: int = 0
    keys: int = 0


class I8042:
    """The controller (ports 0x60 and 0x64: map with :meth:`data_port` and :meth:`command_port`)."""

    def __init__(self, kbd_irq: Any = None, aux_irq: Any = None, *, a20: A20Gate | None = None,
                 request_reset: Callable[[], None] | None = None, name: str = "i8042") -> None:
        self.name = name
        self.kbd_irq = kbd_irq
        self.aux_irq = aux_irq
        self.a20 = a20 or A20Gate()
        self.request_reset = request_reset
        self.counters = I8042Counters()
        self._kbd_level = False
        self._aux_level = False
        self.host_queue: collections.deque[int] = collections.deque()
        self.restore(I8042State())

    # -- host input ---------------------------------------------------------------------
    def enqueue_keys(self, data: bytes) -> int:
        """Queue keyboard bytes (as the guest will read them); returns how many were taken."""
        room = HOST_QUEUE_LIMIT - len(self.host_queue)
        taken = data[:max(room, 0)]
        self.counters.dropped += len(data) - len(taken)
        self.host_queue.extend(taken)
        self.counters.keys += len(taken)
        self._refill_kbd()
        self._service()
        return len(taken)

    def type_text(self, text: str) -> int:
        """Queue make and break codes (set 1) for ASCII ``text``; unknown characters are skipped."""
        out = bytearray()
        for ch in text:
            code = _SET1.get(ch)
            if code is None:
                continue
            make, shift = code
            if shift:
                out.append(LSHIFT)
            out += bytes((make, make | 0x80))
            if shift:
                out.append(LSHIFT | 0x80)
        return self.enqueue_keys(bytes(out))

    def _refill_kbd(self) -> None:
        while self.host_queue and len(self.kbd_queue) < QUEUE_SIZE and self.kbd_enabled:
            self.kbd_queue.append(self.host_queue.popleft())

    # -- output buffer ---------------------------------------------------------------------
    def _service(self) -> None:
        """Load the output buffer from the device queues and drive IRQ 1 / IRQ 12."""
        if self.obuf is None:
            if self.kbd_queue and not self.ccb & CCB_KBD_DISABLE:
                self._load_obuf(self.kbd_queue.popleft(), aux=False)
                self._refill_kbd()
            elif self.aux_queue and not self.ccb & CCB_AUX_DISABLE:
                self._load_obuf(self.aux_queue.popleft(), aux=True)
        self._update_irqs()

    def _load_obuf(self, value: int, aux: bool) -> None:
        self.obuf = value & 0xFF
        self.obuf_aux = aux
        self.status |= STS_OBF
        if aux:
            self.status |= STS_AUXB
        else:
            self.status &= ~STS_AUXB

    def _controller_reply(self, value: int) -> None:
        """A byte the controller itself returns: it goes first, replacing nothing queued."""
        self.kbd_queue.appendleft(value & 0xFF) if self.obuf is not None else self._load_obuf(value, aux=False)

    def _update_irqs(self) -> None:
        full = self.obuf is not None
        kbd = full and not self.obuf_aux and bool(self.ccb & CCB_KBD_INT)
        aux = full and self.obuf_aux and bool(self.ccb & CCB_AUX_INT)
        if kbd != self._kbd_level:
            self._kbd_level = kbd
            if self.kbd_irq is not None:
                self.kbd_irq.set_level(kbd)
        if aux != self._aux_level:
            self._aux_level = aux
            if self.aux_irq is not None:
                self.aux_irq.set_level(aux)

    # -- ports --------------------------------------------------------------------------------
    def read_data(self) -> int:
        if self.obuf is None:
            return self.last_read  # the 8042 keeps presenting the last byte
        value = self.obuf
        self.last_read = value
        self.obuf = None
        self.status &= ~(STS_OBF | STS_AUXB)
        self._service()
        return value

    def read_status(self) -> int:
        return self.status | (STS_SYS if self.ccb & CCB_SYS else 0)

    def write_data(self, value: int) -> None:
        self.status &= ~STS_CMD
        cmd = self.pending_cmd
        self.pending_cmd = None
        if cmd is None:
            self._keyboard_command(value)
        elif cmd == 0x60:
            self.ccb = value
            if value & CCB_SYS:
                self.status |= STS_SYS
        elif 0x61 <= cmd < 0x80:
            self.ram[cmd & 0x1F] = value
        elif cmd == 0xD1:
            self._write_output_port(value)
        elif cmd == 0xD2:
            self.kbd_queue.append(value)
        elif cmd == 0xD3:
            self.aux_queue.append(value)
        elif cmd == 0xD4:
            self._aux_command(value)
        self._service()

    def write_command(self, value: int) -> None:
        self.status |= STS_CMD
        if value in _CMD_WITH_DATA:
            self.pending_cmd = value
            return
        self.pending_cmd = None
        if value == 0x20:
            self._controller_reply(self.ccb)
        elif 0x21 <= value < 0x40:
            self._controller_reply(self.ram[value & 0x1F])
        elif value == 0xA7:
            self.ccb |= CCB_AUX_DISABLE
        elif value == 0xA8:
            self.ccb &= ~CCB_AUX_DISABLE
        elif value == 0xA9:
            self._controller_reply(0x00)  # mouse interface test passed
        elif value == 0xAA:
            self.ccb |= CCB_SYS
            self.status |= STS_SYS
            self._controller_reply(0x55)  # self test passed
        elif value == 0xAB:
            self._controller_reply(0x00)  # keyboard interface test passed
        elif value == 0xAD:
            self.ccb |= CCB_KBD_DISABLE
        elif value == 0xAE:
            self.ccb &= ~CCB_KBD_DISABLE
        elif value == 0xC0:
            self._controller_reply(0x80)  # input port: keyboard not locked
        elif value == 0xD0:
            out = self.output_port & ~(OUT_OBF_KBD | OUT_OBF_AUX)
            if self.obuf is not None:
                out |= OUT_OBF_AUX if self.obuf_aux else OUT_OBF_KBD
            self._controller_reply(out)
        elif value == 0xDD:
            self.a20.set("kbc", False)
            self.output_port &= ~OUT_A20
        elif value == 0xDF:
            self.a20.set("kbc", True)
            self.output_port |= OUT_A20
        elif value == 0xE0:
            self._controller_reply(0x00)
        elif value >= 0xF0:
            if not value & 0x01:  # bit 0 low pulses the reset line
                self.counters.resets += 1
                if self.request_reset is not None:
                    self.request_reset()
        else:
            self.counters.unknown += 1
        self._service()

    def _write_output_port(self, value: int) -> None:
        self.output_port = value
        self.a20.set("kbc", bool(value & OUT_A20))
        if not value & OUT_RESET:
            self.counters.resets += 1
            if self.request_reset is not None:
                self.request_reset()

    # -- the keyboard ------------------------------------------------------------------------------
    def _kbd_reply(self, *values: int) -> None:
        for v in values:
            if len(self.kbd_queue) < QUEUE_SIZE:
                self.kbd_queue.append(v)
            else:
                self.counters.dropped += 1

    def _keyboard_command(self, value: int) -> None:
        # writing to the keyboard re-enables its interface
        self.ccb &= ~CCB_KBD_DISABLE
        pending = self.kbd_pending
        if pending is not None:
            self.kbd_pending = None
            if pending == 0xED:
                self.leds = value & 7
                self._kbd_reply(KBD_ACK)
                return
            if pending == 0xF0:
                if value == 0:
                    self._kbd_reply(KBD_ACK, {1: 0x43, 2: 0x41, 3: 0x3F}[self.scancode_set])
                elif value in (1, 2, 3):
                    self.scancode_set = value
                    self._kbd_reply(KBD_ACK)
                else:
                    self._kbd_reply(KBD_RESEND)
                return
            if pending == 0xF3:
                self._kbd_reply(KBD_ACK)
                return
        if value == 0xFF:
            self.kbd_queue.clear()
            self.host_queue.clear()
            self.scancode_set = 2
            self.leds = 0
            self.kbd_enabled = True
            self._kbd_reply(KBD_ACK, KBD_BAT_OK)
        elif value in (0xED, 0xF0, 0xF3):
            self.kbd_pending = value
            self._kbd_reply(KBD_ACK)
        elif value == 0xEE:
            self._kbd_reply(KBD_ECHO)
        elif value == 0xF2:
            self._kbd_reply(KBD_ACK, 0xAB, 0x83)  # MF2 keyboard, translated ID 0x41 is the host's job
        elif value == 0xF4:
            self.kbd_enabled = True
            self._kbd_reply(KBD_ACK)
            self._refill_kbd()
        elif value == 0xF5:
            self.kbd_enabled = False
            self.scancode_set = 2
            self._kbd_reply(KBD_ACK)
        elif value == 0xF6:
            self.scancode_set = 2
            self.leds = 0
            self._kbd_reply(KBD_ACK)
        elif value in (0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD):
            self._kbd_reply(KBD_ACK)
        elif value == 0xFE:
            self._kbd_reply(self.last_read)
        else:
            self.counters.unknown += 1
            self._kbd_reply(KBD_RESEND)

    # -- the mouse ----------------------------------------------------------------------------------
    def _aux_reply(self, *values: int) -> None:
        for v in values:
            if len(self.aux_queue) < QUEUE_SIZE:
                self.aux_queue.append(v)
            else:
                self.counters.dropped += 1

    def _aux_command(self, value: int) -> None:
        self.ccb &= ~CCB_AUX_DISABLE
        pending = self.aux_pending
        if pending is not None:
            self.aux_pending = None
            if pending == 0xF3:
                self.aux_rate = value
            elif pending == 0xE8:
                self.aux_resolution = value & 3
            self._aux_reply(KBD_ACK)
            return
        if self.aux_wrap and value not in (0xEC, 0xFF):
            self._aux_reply(value)
            return
        if value == 0xFF:
            self.aux_enabled = False
            self.aux_rate, self.aux_resolution, self.aux_scaling, self.aux_wrap = 100, 2, 1, False
            self._aux_reply(KBD_ACK, KBD_BAT_OK, 0x00)
        elif value in (0xF3, 0xE8):
            self.aux_pending = value
            self._aux_reply(KBD_ACK)
        elif value == 0xF2:
            self._aux_reply(KBD_ACK, 0x00)
        elif value == 0xF4:
            self.aux_enabled = True
            self._aux_reply(KBD_ACK)
        elif value == 0xF5:
            self.aux_enabled = False
            self._aux_reply(KBD_ACK)
        elif value == 0xF6:
            self.aux_rate, self.aux_resolution, self.aux_scaling = 100, 2, 1
            self._aux_reply(KBD_ACK)
        elif value in (0xE6, 0xE7):
            self.aux_scaling = 1 if value == 0xE6 else 2
            self._aux_reply(KBD_ACK)
        elif value == 0xE9:
            status = (0x20 if self.aux_enabled else 0) | (0x10 if self.aux_scaling == 2 else 0)
            self._aux_reply(KBD_ACK, status, self.aux_resolution, self.aux_rate & 0xFF)
        elif value == 0xEB:
            self._aux_reply(KBD_ACK, 0x08, 0x00, 0x00)
        elif value == 0xEC:
            self.aux_wrap = False
            self._aux_reply(KBD_ACK)
        elif value == 0xEE:
            self.aux_wrap = True
            self._aux_reply(KBD_ACK)
        elif value in (0xEA, 0xF0):
            self._aux_reply(KBD_ACK)
        else:
            self.counters.unknown += 1
            self._aux_reply(KBD_RESEND)

    # -- bus devices -----------------------------------------------------------------------------------
    def data_port(self) -> "_Port":
        return _Port(self, "data")

    def command_port(self) -> "_Port":
        return _Port(self, "command")

    # -- state -------------------------------------------------------------------------------------------
    def state(self) -> I8042State:
        return I8042State(self.status, self.ccb, self.output_port, self.pending_cmd, self.obuf, self.obuf_aux,
                          bytes(self.kbd_queue), bytes(self.aux_queue), bytes(self.host_queue), self.kbd_enabled,
                          self.kbd_pending, self.scancode_set, self.leds, self.aux_enabled, self.aux_pending,
                          self.aux_rate, self.aux_resolution, self.aux_scaling, self.aux_wrap,
                          self.port92, self.a20.kbc)

    def restore(self, s: I8042State) -> None:
        self.status = s.status & 0xFF
        self.ccb = s.ccb & 0xFF
        self.output_port = s.output_port & 0xFF
        self.pending_cmd = s.pending_cmd if s.pending_cmd in _CMD_WITH_DATA else None
        self.obuf = None if s.obuf is None else s.obuf & 0xFF
        self.obuf_aux = bool(s.obuf_aux)
        self.kbd_queue = collections.deque(s.kbd_queue[:QUEUE_SIZE])
        self.aux_queue = collections.deque(s.aux_queue[:QUEUE_SIZE])
        self.host_queue = collections.deque(s.host_queue[:HOST_QUEUE_LIMIT])
        self.kbd_enabled = bool(s.kbd_enabled)
        self.kbd_pending = s.kbd_pending if s.kbd_pending in (0xED, 0xF0, 0xF3) else None
        self.scancode_set = s.scancode_set if s.scancode_set in (1, 2, 3) else 2
        self.leds = s.leds & 7
        self.aux_enabled = bool(s.aux_enabled)
        self.aux_pending = s.aux_pending if s.aux_pending in (0xF3, 0xE8) else None
        self.aux_rate, self.aux_resolution, self.aux_scaling = s.aux_rate & 0xFF, s.aux_resolution & 3, s.aux_scaling
        self.aux_wrap = bool(s.aux_wrap)
        self.port92 = s.port92 & 0xFF
        self.ram = bytearray(32)
        self.last_read = 0
        self.a20.set("kbc", bool(s.a20_kbc))
        self.a20.set("port92", bool(self.port92 & P92_A20))
        self._kbd_level = not (self.obuf is not None and not self.obuf_aux and bool(self.ccb & CCB_KBD_INT))
        self._aux_level = not (self.obuf is not None and self.obuf_aux and bool(self.ccb & CCB_AUX_INT))
        self._update_irqs()

    # -- port 0x92 ---------------------------------------------------------------------------------------
    def port92_read(self) -> int:
        return self.port92 & ~P92_FAST_RESET

    def port92_write(self, value: int) -> None:
        self.port92 = value & ~P92_FAST_RESET
        self.a20.set("port92", bool(value & P92_A20))
        if value & P92_FAST_RESET:
            self.counters.resets += 1
            if self.request_reset is not None:
                self.request_reset()

    def port92_device(self) -> "_Port":
        return _Port(self, "port92")


class _Port:
    def __init__(self, kbc: I8042, which: str) -> None:
        self.kbc = kbc
        self.which = which
        self.name = f"{kbc.name}-{which}"

    def read(self, offset: int, size: int) -> int:
        k = self.kbc
        k.counters.reads += 1
        if size != 1 or offset != 0:
            k.counters.bad_size += 1
            return ones(size)
        if self.which == "data":
            return k.read_data()
        if self.which == "command":
            return k.read_status()
        return k.port92_read()

    def write(self, offset: int, size: int, value: int) -> None:
        k = self.kbc
        k.counters.writes += 1
        if size != 1 or offset != 0:
            k.counters.bad_size += 1
            return
        value &= 0xFF
        if self.which == "data":
            k.write_data(value)
        elif self.which == "command":
            k.write_command(value)
        else:
            k.port92_write(value)
