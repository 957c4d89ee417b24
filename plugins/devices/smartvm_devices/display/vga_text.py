"""VGA text mode: the 80x25 buffer at 0xB8000 and the CRT controller's cursor.

The buffer is guest RAM (a 32 KiB region the device adds at 0xB8000 if the
address is free), so guest writes to it cost no exit; the device reads it
when asked to render. Each cell is a character (code page 437) and an
attribute byte. The CRTC index/data ports (0x3D4/0x3D5) hold the start
address (0x0C/0x0D), the cursor start/end (0x0A/0x0B) and the cursor
location (0x0E/0x0F); 0x3DA is input status #1 (retrace bits toggle on each
read, which is what polling software needs), 0x3C2/0x3CC the miscellaneous
output register.

:meth:`VgaText.screen_text` renders the screen as 25 lines of text;
with ``echo`` the device writes changed lines to the console at a fixed
virtual-time interval.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

from smartvm_core.errors import GuestMemoryError

from ..common import Counters, ones

TEXT_BASE = 0xB8000
TEXT_SIZE = 0x8000
COLS, ROWS = 80, 25
CRTC_CURSOR_START = 0x0A
CRTC_CURSOR_END = 0x0B
CRTC_START_HI = 0x0C
CRTC_START_LO = 0x0D
CRTC_CURSOR_HI = 0x0E
CRTC_CURSOR_LO = 0x0F
CRTC_REGS = 0x19
ST1_DISPLAY_ENABLE = 0x01
ST1_VRETRACE = 0x08
MISC_IO_ADDRESS = 0x01  # color (0x3Dx) addressing

# Code page 437 for 0x80-0xFF and the graphic glyphs of 0x01-0x1F
_CP437_LOW = " ☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼"
_CP437 = bytes(range(256)).decode("cp437")
GLYPHS = "".join(_CP437_LOW[i] if i < 32 else ("⌂" if i == 127 else _CP437[i]) for i in range(256))


@attrs.define(frozen=True)
class VgaTextState:
    crtc_index: int = 0
    crtc: bytes = bytes(CRTC_REGS)
    misc: int = MISC_IO_ADDRESS
    status_toggle: bool = False


class VgaText:
    """CRTC ports: map :meth:`crtc_device` at 0x3D4 (2), :meth:`status_device` at 0x3DA,
    :meth:`misc_device` at 0x3C2 and :meth:`misc_read_device` at 0x3CC."""

    def __init__(self, memory: Any, name: str = "vga-text") -> None:
        self.name = name
        self.memory = memory
        self.counters = Counters()
        self.crtc_index = 0
        self.crtc = bytearray(CRTC_REGS)
        self.crtc[CRTC_CURSOR_START] = 0x0D
        self.crtc[CRTC_CURSOR_END] = 0x0E
        self.misc = MISC_IO_ADDRESS
        self.status_toggle = False
        self._last_lines: list[str] = []

    # -- rendering --------------------------------------------------------------------
    @property
    def start_address(self) -> int:
        return self.crtc[CRTC_START_HI] << 8 | self.crtc[CRTC_START_LO]

    @property
    def cursor(self) -> tuple[int, int]:
        """(row, column) of the cursor relative to the displayed page."""
        pos = ((self.crtc[CRTC_CURSOR_HI] << 8 | self.crtc[CRTC_CURSOR_LO]) - self.start_address) & 0x3FFF
        return divmod(pos, COLS)

    @property
    def cursor_visible(self) -> bool:
        return not self.crtc[CRTC_CURSOR_START] & 0x20

    def cells(self) -> bytes:
        """The displayed page's 2000 (character, attribute) pairs."""
        start = (self.start_address * 2) % TEXT_SIZE
        try:
            raw = self.memory.read(TEXT_BASE, TEXT_SIZE)
        except GuestMemoryError:
            return bytes(2 * COLS * ROWS)
        raw = raw + raw  # the page wraps inside the 32 KiB window
        return raw[start:start + 2 * COLS * ROWS]

    def screen_lines(self) -> list[str]:
        cells = self.cells()
        chars = cells[0::2]
        return ["".join(GLYPHS[b] if b else " " for b in chars[r * COLS:(r + 1) * COLS]).rstrip()
                for r in range(ROWS)]

    def screen_text(self) -> str:
        """The screen as text: 25 lines, trailing blanks and blank trailing lines removed."""
        lines = self.screen_lines()
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines)

    def changed_lines(self) -> list[tuple[int, str]]:
        """Rows that differ from the last call (for echoing to a terminal)."""
        lines = self.screen_lines()
        old = self._last_lines or [""] * ROWS
        self._last_lines = lines
        return [(i, line) for i, (line, prev) in enumerate(zip(lines, old)) if line != prev]

    # -- ports ------------------------------------------------------------------------------
    def crtc_read(self, offset: int) -> int:
        if offset == 0:
            return self.crtc_index
        if self.crtc_index < CRTC_REGS:
            return self.crtc[self.crtc_index]
        return 0xFF

    def crtc_write(self, offset: int, value: int) -> None:
        if offset == 0:
            self.crtc_index = value & 0x7F
        elif self.crtc_index < CRTC_REGS:
            self.crtc[self.crtc_index] = value
        else:
            self.counters.unknown += 1

    def status_read(self) -> int:
        # reading input status #1 also resets the attribute controller flip-flop
        self.status_toggle = not self.status_toggle
        return (ST1_VRETRACE | ST1_DISPLAY_ENABLE) if self.status_toggle else 0

    def crtc_device(self) -> "_VgaPort":
        return _VgaPort(self, "crtc")

    def status_device(self) -> "_VgaPort":
        return _VgaPort(self, "status")

    def misc_device(self) -> "_VgaPort":
        return _VgaPort(self, "misc")

    def misc_read_device(self) -> "_VgaPort":
        return _VgaPort(self, "misc-read")

    def state(self) -> VgaTextState:
        return VgaTextState(self.crtc_index, bytes(self.crtc), self.misc, self.status_toggle)

    def restore(self, state: VgaTextState) -> None:
        if len(state.crtc) != CRTC_REGS:
            raise ValueError(f"CRTC state must have {CRTC_REGS} registers")
        self.crtc_index = state.crtc_index & 0x7F
        self.crtc = bytearray(state.crtc)
        self.misc = state.misc & 0xFF
        self.status_toggle = bool(state.status_toggle)


class _VgaPort:
    def __init__(self, vga: VgaText, which: str) -> None:
        self.vga = vga
        self.which = which
        self.name = f"{vga.name}-{which}"

    def read(self, offset: int, size: int) -> int:
        v = self.vga
        v.counters.reads += 1
        if self.which == "crtc" and size == 2 and offset == 0:
            return v.crtc_read(0) | v.crtc_read(1) << 8
        if size != 1:
            v.counters.bad_size += 1
            return ones(size)
        if self.which == "crtc":
            return v.crtc_read(offset)
        if self.which == "status":
            return v.status_read()
        # 0x3CC reads the misc output register; 0x3C2 reads input status #0
        return v.misc if self.which == "misc-read" else 0x00

    def write(self, offset: int, size: int, value: int) -> None:
        v = self.vga
        v.counters.writes += 1
        if self.which == "crtc" and size == 2 and offset == 0:
            # a word OUT to 0x3D4 writes the index then the data, as on the real bus
            v.crtc_write(0, value & 0xFF)
            v.crtc_write(1, value >> 8 & 0xFF)
            return
        if size != 1:
            v.counters.bad_size += 1
            return
        if self.which == "crtc":
            v.crtc_write(offset, value & 0xFF)
        elif self.which == "misc" and offset == 0:
            v.misc = value & 0xFF
        else:
            v.counters.unknown += 1


def start_echo(vga: VgaText, clock: Any, write: Callable[[bytes], Any], interval_ns: int = 200_000_000) -> None:
    """Every ``interval_ns`` of virtual time, write the rows that changed to ``write``."""
    def tick(now: int) -> None:
        for row, line in vga.changed_lines():
            write(f"[vga {row:2d}] {line}\n".encode())
        clock.add_timer(now + interval_ns, tick)
    clock.add_timer(clock.now_ns() + interval_ns, tick)
