"""PC BIOS services for 8086 programs (the IBM PC/AT BIOS interface, as SeaBIOS implements it).

* INT 08h (IRQ 0): the timer tick: BIOS data area tick count at 0040:006C,
  midnight flag at 0040:0070, then INT 1Ch, and EOI to the 8259A.
* INT 09h (IRQ 1): a scan code from the i8042 (port 0x60) into the key queue.
* INT 10h video: 00h set mode (clears the screen), 01h cursor shape,
  02h/03h set/get cursor, 05h page, 06h/07h scroll up/down, 08h read cell,
  09h/0Ah write character, 0Eh teletype, 0Fh get mode, 13h write string.
  Teletype output goes to the VGA text buffer at 0xB8000 and to the console.
* INT 11h equipment word, INT 12h conventional memory size.
* INT 13h disk: 00h reset, 01h status, 02h/03h CHS read/write, 08h
  parameters, 15h type, 41h-43h and 48h the LBA extensions, on a disk-image
  file (writes go to an in-memory overlay unless the experiment allows
  writing the file).
* INT 15h: E820h memory map, 2400h-2403h A20, 88h extended memory,
  86h wait, C0h (unsupported: CF=1, AH=86h).
* INT 16h keyboard: 00h/10h read, 01h/11h peek, 02h shift flags, 05h store,
  from the monitor's input queue.
* INT 1Ah time: 00h/01h tick count, 02h/04h RTC time and date (host clock).
* INT 18h/19h: no ROM BASIC, no other boot device: the run ends.

Unknown functions answer as the BIOS does: CF=1, AH=86h (or 01h for disks).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from smartvm_core.arch.e820 import E820_RAM, E820_RESERVED, e820_map

from ..state import EAX, EBX, ECX, EDX, ProgramMemory
from . import ServiceCall

if TYPE_CHECKING:
    from smartvm_core.machine import Machine

BDA = 0x400
BDA_EQUIPMENT = 0x410
BDA_MEMORY_KB = 0x413
BDA_VIDEO_MODE = 0x449
BDA_COLUMNS = 0x44A
BDA_PAGE_SIZE = 0x44C
BDA_CURSOR = 0x450       # 8 pages x (column, row)
BDA_CURSOR_SHAPE = 0x460
BDA_PAGE = 0x462
BDA_CRTC_BASE = 0x463
BDA_TICKS = 0x46C
BDA_MIDNIGHT = 0x470
BDA_HD_COUNT = 0x475
BDA_ROWS = 0x484
TICKS_PER_DAY = 0x1800B0
VGA_TEXT = 0xB8000
COLS, ROWS = 80, 25
SECTOR = 512

# scan codes (set 1) of the printable ASCII characters and a few controls
_SCAN = {}
for _row, _keys in ((0x02, "1234567890-="), (0x10, "qwertyuiop[]"), (0x1E, "asdfghjkl;'`"),
                    (0x2B, "\\zxcvbnm,./")):
    for _i, _k in enumerate(_keys):
        _SCAN[_k] = _row + _i
for _row, _keys in ((0x02, "!@#$%^&*()_+"), (0x10, "QWERTYUIOP{}"), (0x1E, 'ASDFGHJKL:"~'),
                    (0x2B, "|ZXCVBNM<>?")):
    for _i, _k in enumerate(_keys):
        _SCAN[_k] = _row + _i
_SCAN.update({" ": 0x39, "\r": 0x1C, "\n": 0x1C, "\t": 0x0F, "\b": 0x0E, "\x1b": 0x01})
# scan code → ASCII (unshifted), for INT 09h
_ASCII = {v: k for k, v in _SCAN.items() if not k.isupper() and k not in '!@#$%^&*()_+{}:"~|<>?\n'}


def key_for(ch: str) -> int:
    """The INT 16h word (scan code << 8 | ASCII) for a character."""
    code = ord(ch) & 0xFF
    if ch == "\n":
        code = 0x0D
    return _SCAN.get(ch, 0) << 8 | code


class Disk:
    """A disk image behind INT 13h: CHS geometry from its size, writes to an overlay or the file."""

    FLOPPY_GEOMETRIES = {2880: (80, 2, 18), 1440: (80, 2, 9), 2400: (80, 2, 15), 720: (40, 2, 9),
                         5760: (80, 2, 36), 640: (40, 2, 8), 320: (40, 1, 8), 360: (40, 1, 9)}

    def __init__(self, path: Path, drive: int, *, write_file: bool = False) -> None:
        self.path = path
        self.drive = drive
        self.write_file = write_file
        self.data = bytearray(path.read_bytes())
        if len(self.data) % SECTOR:
            self.data += bytes(SECTOR - len(self.data) % SECTOR)
        self.sectors = len(self.data) // SECTOR
        self.dirty: set[int] = set()
        if drive < 0x80 and self.sectors in self.FLOPPY_GEOMETRIES:
            self.cylinders, self.heads, self.spt = self.FLOPPY_GEOMETRIES[self.sectors]
        else:
            self.heads, self.spt = 16, 63
            self.cylinders = max(1, min(1024, -(-self.sectors // (16 * 63))))
        self.last_status = 0

    def chs_to_lba(self, c: int, h: int, s: int) -> int | None:
        if s < 1 or s > self.spt or h >= self.heads or c >= self.cylinders:
            return None
        return (c * self.heads + h) * self.spt + (s - 1)

    def read(self, lba: int, count: int) -> bytes | None:
        if lba < 0 or count < 0 or lba + count > self.sectors:
            return None
        return bytes(self.data[lba * SECTOR:(lba + count) * SECTOR])

    def write(self, lba: int, data: bytes) -> bool:
        count = len(data) // SECTOR
        if lba < 0 or lba + count > self.sectors:
            return False
        self.data[lba * SECTOR:lba * SECTOR + len(data)] = data
        if self.write_file:
            with open(self.path, "r+b") as f:
                f.seek(lba * SECTOR)
                f.write(data)
        else:
            self.dirty.update(range(lba, lba + count))
        return True


class Bios:
    """BIOS state (video cursor is in the BDA, as the BIOS keeps it) and the service functions."""

    def __init__(self, memory: ProgramMemory, machine: "Machine | None", *,
                 console: Callable[[bytes], None] | None = None, ram_kb: int = 640) -> None:
        self.memory = memory
        self.machine = machine
        self.console = console
        self.disks: dict[int, Disk] = {}
        self.keys: list[int] = []
        self.ram_kb = ram_kb
        #: hidden from E820 (the monitor's own memory)
        self.reserved: list[tuple[int, int]] = []
        self.extended_kb = 0

    # -- set-up ---------------------------------------------------------------------
    def init_data_area(self, *, floppies: int = 0) -> None:
        m = self.memory
        equipment = 0x0020  # initial video mode: 80x25 colour
        if floppies:
            equipment |= 1 | ((floppies - 1) << 6)
        m.write(BDA_EQUIPMENT, 2, equipment)
        m.write(BDA_MEMORY_KB, 2, self.ram_kb)
        m.write(BDA_VIDEO_MODE, 1, 3)
        m.write(BDA_COLUMNS, 2, COLS)
        m.write(BDA_PAGE_SIZE, 2, COLS * ROWS * 2)
        m.write(BDA_CURSOR_SHAPE, 2, 0x0607)
        m.write(BDA_CRTC_BASE, 2, 0x3D4)
        m.write(BDA_ROWS, 1, ROWS - 1)
        m.write(BDA_HD_COUNT, 1, sum(1 for d in self.disks if d >= 0x80))
        lt = time.localtime()
        secs = lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec
        m.write(BDA_TICKS, 4, secs * TICKS_PER_DAY // 86400)
        self.scroll(0, 0x07, 0, 0, ROWS - 1, COLS - 1, up=True)  # POST leaves mode 3 with a blank screen

    def feed_keys(self, text: str) -> None:
        self.keys.extend(key_for(ch) for ch in text)

    def register(self, register: Callable[..., None]) -> None:
        register(0x08, self.int08_timer)
        register(0x09, self.int09_keyboard)
        for ah, fn in ((0x00, self.video_set_mode), (0x01, self.video_cursor_shape), (0x02, self.video_set_cursor),
                       (0x03, self.video_get_cursor), (0x05, self.video_page), (0x06, self.video_scroll_up),
                       (0x07, self.video_scroll_down), (0x08, self.video_read_cell), (0x09, self.video_write_attr),
                       (0x0A, self.video_write_char), (0x0E, self.video_teletype), (0x0F, self.video_get_mode),
                       (0x13, self.video_write_string)):
            register(0x10, fn, ah=ah)
        register(0x10, self.unsupported_quiet)
        register(0x11, self.int11_equipment)
        register(0x12, self.int12_memory)
        register(0x13, self.int13_disk)
        register(0x15, self.int15_system)
        register(0x16, self.int16_keyboard)
        register(0x18, self.int18_no_basic)
        register(0x19, self.int19_bootstrap)
        register(0x1A, self.int1a_time)
        register(0x1C, self.nothing)
        for irq in range(2, 8):
            register(0x08 + irq, self.irq_master)
        for irq in range(8, 16):
            register(0x70 + irq - 8, self.irq_slave)

    # -- helpers ---------------------------------------------------------------------
    def _eoi(self, slave: bool = False) -> None:
        if self.machine is None:
            return
        if slave:
            self.machine.pio.write(0xA0, 1, 0x20)
        self.machine.pio.write(0x20, 1, 0x20)

    @staticmethod
    def nothing(call: ServiceCall) -> None:
        """INT 1Ch and friends: an IRET."""

    def unsupported_quiet(self, call: ServiceCall) -> None:
        """Video functions without an effect here (palette, pixel ...): return unchanged."""

    def irq_master(self, call: ServiceCall) -> None:
        self._eoi()

    def irq_slave(self, call: ServiceCall) -> None:
        self._eoi(slave=True)

    # -- INT 08h / 09h -----------------------------------------------------------------
    def int08_timer(self, call: ServiceCall) -> None:
        m = self.memory
        ticks = m.read(BDA_TICKS, 4) + 1
        if ticks >= TICKS_PER_DAY:
            ticks = 0
            m.write(BDA_MIDNIGHT, 1, 1)
        m.write(BDA_TICKS, 4, ticks)
        self._eoi()
        call.chain(0x1C)

    def int09_keyboard(self, call: ServiceCall) -> None:
        if self.machine is not None:
            code = self.machine.pio.read(0x60, 1) & 0xFF
            if not code & 0x80:  # make codes only
                ch = _ASCII.get(code, "\0")
                self.keys.append(code << 8 | (ord(ch) if ch != "\n" else 0x0D))
        self._eoi()

    # -- INT 10h ------------------------------------------------------------------------
    def cursor(self, page: int = 0) -> tuple[int, int]:
        raw = self.memory.read(BDA_CURSOR + 2 * (page & 7), 2)
        return raw >> 8, raw & 0xFF  # row, column

    def set_cursor(self, row: int, col: int, page: int = 0) -> None:
        self.memory.write(BDA_CURSOR + 2 * (page & 7), 2, (row & 0xFF) << 8 | (col & 0xFF))

    def _cell(self, row: int, col: int) -> int:
        return VGA_TEXT + (row * COLS + col) * 2

    def put_cell(self, row: int, col: int, ch: int, attr: int | None) -> None:
        if not (0 <= row < ROWS and 0 <= col < COLS):
            return
        addr = self._cell(row, col)
        if attr is None:
            self.memory.write(addr, 1, ch)
        else:
            self.memory.write(addr, 2, (attr & 0xFF) << 8 | (ch & 0xFF))

    def scroll(self, lines: int, attr: int, top: int, left: int, bottom: int, right: int, up: bool) -> None:
        bottom, right = min(bottom, ROWS - 1), min(right, COLS - 1)
        if top > bottom or left > right:
            return
        height = bottom - top + 1
        width = right - left + 1
        if lines == 0 or lines >= height:
            lines = height
        m = self.memory
        rows = range(top, bottom + 1) if up else range(bottom, top - 1, -1)
        blank = bytes([0x20, attr & 0xFF]) * width
        for row in rows:
            src = row + lines if up else row - lines
            if top <= src <= bottom:
                m.write_bytes(self._cell(row, left), m.read_bytes(self._cell(src, left), width * 2))
            else:
                m.write_bytes(self._cell(row, left), blank)

    def teletype(self, ch: int, attr: int | None = None) -> None:
        """Write one character as INT 10h AH=0Eh does (CR, LF, BS and BEL are controls)."""
        if self.console is not None:
            self.console(bytes((ch,)))
        row, col = self.cursor()
        if ch == 0x0D:
            col = 0
        elif ch == 0x0A:
            row += 1
        elif ch == 0x08:
            col = max(0, col - 1)
        elif ch == 0x07:
            pass
        else:
            self.put_cell(row, col, ch, attr)
            col += 1
            if col >= COLS:
                col = 0
                row += 1
        if row >= ROWS:
            self.scroll(1, 0x07, 0, 0, ROWS - 1, COLS - 1, up=True)
            row = ROWS - 1
        self.set_cursor(row, col)

    def video_set_mode(self, call: ServiceCall) -> None:
        mode = call.state.al & 0x7F
        self.memory.write(BDA_VIDEO_MODE, 1, mode if mode in (2, 3, 7) else 3)
        if not call.state.al & 0x80:
            self.scroll(0, 0x07, 0, 0, ROWS - 1, COLS - 1, up=True)
        for page in range(8):
            self.set_cursor(0, 0, page)
        call.state.al = 0x30

    def video_cursor_shape(self, call: ServiceCall) -> None:
        self.memory.write(BDA_CURSOR_SHAPE, 2, call.state.cx)

    def video_set_cursor(self, call: ServiceCall) -> None:
        s = call.state
        self.set_cursor(s.dh, s.dl, s.bh)

    def video_get_cursor(self, call: ServiceCall) -> None:
        s = call.state
        row, col = self.cursor(s.bh)
        s.dh, s.dl = row, col
        s.cx = self.memory.read(BDA_CURSOR_SHAPE, 2)
        s.ax = 0

    def video_page(self, call: ServiceCall) -> None:
        self.memory.write(BDA_PAGE, 1, call.state.al & 7)

    def video_scroll_up(self, call: ServiceCall) -> None:
        s = call.state
        self.scroll(s.al, s.bh, s.ch, s.cl, s.dh, s.dl, up=True)

    def video_scroll_down(self, call: ServiceCall) -> None:
        s = call.state
        self.scroll(s.al, s.bh, s.ch, s.cl, s.dh, s.dl, up=False)

    def video_read_cell(self, call: ServiceCall) -> None:
        row, col = self.cursor(call.state.bh)
        if 0 <= row < ROWS and 0 <= col < COLS:
            call.state.ax = self.memory.read(self._cell(row, col), 2)

    def _write_repeat(self, call: ServiceCall, attr: int | None) -> None:
        s = call.state
        row, col = self.cursor(s.bh)
        for i in range(min(s.cx, COLS * ROWS)):
            r, c = divmod(row * COLS + col + i, COLS)
            self.put_cell(r, c, s.al, attr)

    def video_write_attr(self, call: ServiceCall) -> None:
        self._write_repeat(call, call.state.bl)

    def video_write_char(self, call: ServiceCall) -> None:
        self._write_repeat(call, None)

    def video_teletype(self, call: ServiceCall) -> None:
        self.teletype(call.state.al)

    def video_get_mode(self, call: ServiceCall) -> None:
        s = call.state
        s.al = self.memory.read(BDA_VIDEO_MODE, 1)
        s.ah = COLS
        s.bh = self.memory.read(BDA_PAGE, 1)

    def video_write_string(self, call: ServiceCall) -> None:
        s = call.state
        mode = s.al
        saved = self.cursor(s.bh)
        self.set_cursor(s.dh, s.dl)
        off = s.bp
        attr = s.bl
        for _ in range(s.cx):
            ch = self.memory.read_far(s.es, off, 1)
            off += 1
            if mode & 2:
                attr = self.memory.read_far(s.es, off, 1)
                off += 1
            self.teletype(ch, attr if ch not in (7, 8, 10, 13) else None)
        if not mode & 1:
            self.set_cursor(*saved)

    # -- INT 11h / 12h --------------------------------------------------------------------
    def int11_equipment(self, call: ServiceCall) -> None:
        gpr = call.state.gpr   # AX = the equipment word (set_reg16, inline: a hot service)
        gpr[EAX] = (gpr[EAX] & ~0xFFFF) | self.memory.read(BDA_EQUIPMENT, 2)

    def int12_memory(self, call: ServiceCall) -> None:
        call.state.set_reg16(EAX, self.memory.read(BDA_MEMORY_KB, 2))

    # -- INT 13h ----------------------------------------------------------------------------
    def int13_disk(self, call: ServiceCall) -> None:
        s = call.state
        ah = s.ah
        call.name = f"INT 13h/AH={ah:02X}h"
        disk = self.disks.get(s.dl)
        if ah == 0x00:
            if disk is None and s.dl not in (0, 0x80):
                return call.fail(0x01)
            return call.ok()
        if ah == 0x01:
            status = disk.last_status if disk else 0
            s.al = status
            return call.ok(0) if status == 0 else call.fail(status)
        if disk is None:
            if ah == 0x15:
                s.ah = 0
                return call.set_carry(False)
            return call.fail(0x01)
        status = self._disk_op(call, disk, ah)
        disk.last_status = status
        if status:
            call.fail(status)
        else:
            call.set_carry(False)
            s.ah = 0

    def _disk_op(self, call: ServiceCall, disk: Disk, ah: int) -> int:
        s = call.state
        m = self.memory
        if ah in (0x02, 0x03, 0x04):
            count = s.al
            c = s.ch | (s.cl & 0xC0) << 2
            h, sec = s.dh, s.cl & 0x3F
            lba = disk.chs_to_lba(c, h, sec)
            if lba is None or count == 0:
                s.al = 0
                return 0x04 if lba is None else 0x01
            count = min(count, disk.sectors - lba)
            if ah == 0x04:  # verify
                s.al = count
                return 0
            buf_linear = (s.es << 4) + s.bx
            if (s.bx & 0xFFFF) + count * SECTOR > 0x10000:
                s.al = 0
                return 0x09  # DMA across a 64 KiB boundary
            if ah == 0x02:
                data = disk.read(lba, count)
                assert data is not None
                m.write_bytes(buf_linear, data)
            else:
                disk.write(lba, m.read_bytes(buf_linear, count * SECTOR))
            s.al = count
            return 0
        if ah == 0x08:
            cyl = disk.cylinders - 1
            s.ch = cyl & 0xFF
            s.cl = (disk.spt & 0x3F) | (cyl >> 2 & 0xC0)
            s.dh = disk.heads - 1
            s.dl = sum(1 for d in self.disks if (d & 0x80) == (disk.drive & 0x80))
            s.bl = 4 if disk.drive < 0x80 else 0
            return 0
        if ah == 0x15:
            s.ah = 3 if disk.drive >= 0x80 else 1
            s.cx, s.dx = disk.sectors >> 16, disk.sectors & 0xFFFF
            return 0
        if ah == 0x41:
            if s.bx != 0x55AA:
                return 0x01
            s.bx = 0xAA55
            s.cx = 0x0001  # fixed disk access subset (42h-44h, 47h, 48h)
            s.ah = 0x30
            return 0
        if ah in (0x42, 0x43):
            dap = (s.ds << 4) + s.si
            size = m.read(dap, 1)
            if size < 0x10:
                return 0x01
            count = m.read(dap + 2, 2)
            off, seg = m.read(dap + 4, 2), m.read(dap + 6, 2)
            lba = m.read(dap + 8, 4) | m.read(dap + 12, 4) << 32
            if lba + count > disk.sectors:
                m.write(dap + 2, 2, 0)
                return 0x04
            if off + count * SECTOR > 0x10000:
                m.write(dap + 2, 2, 0)
                return 0x09
            buf = (seg << 4) + off
            if ah == 0x42:
                m.write_bytes(buf, disk.read(lba, count) or b"")
            else:
                disk.write(lba, m.read_bytes(buf, count * SECTOR))
            return 0
        if ah == 0x48:
            buf = (s.ds << 4) + s.si
            if m.read(buf, 2) < 0x1A:
                return 0x01
            m.write(buf, 2, 0x1A)
            m.write(buf + 2, 2, 0x0002)  # CHS info valid
            m.write(buf + 4, 4, disk.cylinders)
            m.write(buf + 8, 4, disk.heads)
            m.write(buf + 12, 4, disk.spt)
            m.write(buf + 16, 4, disk.sectors)
            m.write(buf + 20, 4, 0)
            m.write(buf + 24, 2, SECTOR)
            return 0
        if ah in (0x0C, 0x0D, 0x10, 0x11, 0x14):  # seek, reset, ready, recalibrate, diagnostics
            return 0
        return 0x01

    # -- INT 15h ----------------------------------------------------------------------------------
    def e820_entries(self) -> list[tuple[int, int, int]]:
        if self.machine is None:
            return [(0, self.ram_kb * 1024, E820_RAM)]
        out: list[tuple[int, int, int]] = []
        for e in e820_map(self.machine.memory):
            pieces = [(e.addr, e.end, e.type)]
            for rs, re in self.reserved:
                nxt = []
                for a, b, t in pieces:
                    if b <= rs or a >= re or t != E820_RAM:
                        nxt.append((a, b, t))
                        continue
                    if a < rs:
                        nxt.append((a, rs, t))
                    nxt.append((max(a, rs), min(b, re), E820_RESERVED))
                    if b > re:
                        nxt.append((re, b, t))
                pieces = nxt
            out += [(a, b - a, t) for a, b, t in pieces if b > a]
        return out

    def int15_system(self, call: ServiceCall) -> None:
        s = call.state
        ax = s.ax
        call.name = f"INT 15h/AH={s.ah:02X}h"
        if s.gpr[EAX] & 0xFFFFFFFF == 0xE820 and s.gpr[EDX] & 0xFFFFFFFF == 0x534D4150:
            call.name = "INT 15h/E820h"
            entries = self.e820_entries()
            index = s.gpr[EBX] & 0xFFFFFFFF
            if index >= len(entries) or s.gpr[ECX] & 0xFFFFFFFF < 20:
                return call.fail(0x86)
            addr, size, kind = entries[index]
            buf = (s.es << 4) + s.di
            self.memory.write(buf, 4, addr)
            self.memory.write(buf + 4, 4, addr >> 32)
            self.memory.write(buf + 8, 4, size)
            self.memory.write(buf + 12, 4, size >> 32)
            self.memory.write(buf + 16, 4, kind)
            s.gpr[EAX] = 0x534D4150
            s.gpr[ECX] = 20
            s.gpr[EBX] = 0 if index + 1 >= len(entries) else index + 1
            return call.set_carry(False)
        if ax in (0x2400, 0x2401):
            call.name = f"INT 15h/AX={ax:04X}h"
            self.memory.a20 = ax == 0x2401
            return call.ok()
        if ax == 0x2402:
            call.name = "INT 15h/AX=2402h"
            s.al = int(self.memory.a20)
            return call.ok()
        if ax == 0x2403:
            call.name = "INT 15h/AX=2403h"
            s.bx = 0x0003  # keyboard controller and port 92h
            return call.ok()
        if s.ah == 0x88:
            s.ax = min(self.extended_kb, 0xFFFF)
            return call.set_carry(False)
        if s.ah == 0x86:
            return call.ok()
        return call.fail(0x86)

    # -- INT 16h ------------------------------------------------------------------------------------
    def int16_keyboard(self, call: ServiceCall) -> None:
        s = call.state
        ah = s.ah
        call.name = f"INT 16h/AH={ah:02X}h"
        if ah in (0x00, 0x10):
            if not self.keys:
                return call.halt()
            s.ax = self.keys.pop(0)
        elif ah in (0x01, 0x11):
            if self.keys:
                s.ax = self.keys[0]
                call.set_zero(False)
            else:
                call.set_zero(True)
        elif ah == 0x02:
            s.al = 0
        elif ah == 0x05:
            if len(self.keys) >= 15:
                s.al = 1
            else:
                self.keys.append(s.cx)
                s.al = 0

    # -- INT 18h / 19h --------------------------------------------------------------------------
    def int18_no_basic(self, call: ServiceCall) -> None:
        if self.machine is not None:
            self.machine.stop("halted", "INT 18h: no ROM BASIC and no boot device left")

    def int19_bootstrap(self, call: ServiceCall) -> None:
        if self.machine is not None:
            self.machine.stop("halted", "INT 19h: bootstrap requested (reboot is not modelled by the v8086 BIOS)")

    # -- INT 1Ah ------------------------------------------------------------------------------------
    def int1a_time(self, call: ServiceCall) -> None:
        s = call.state
        ah = s.ah
        call.name = f"INT 1Ah/AH={ah:02X}h"
        m = self.memory
        if ah == 0x00:
            ticks = m.read(BDA_TICKS, 4)
            s.cx, s.dx = ticks >> 16, ticks & 0xFFFF
            s.al = m.read(BDA_MIDNIGHT, 1)
            m.write(BDA_MIDNIGHT, 1, 0)
            return call.set_carry(False)
        if ah == 0x01:
            m.write(BDA_TICKS, 4, (s.cx << 16 | s.dx) % TICKS_PER_DAY)
            return call.set_carry(False)
        lt = time.localtime()
        bcd = lambda v: (v // 10) << 4 | v % 10  # noqa: E731
        if ah == 0x02:
            s.ch, s.cl, s.dh, s.dl = bcd(lt.tm_hour), bcd(lt.tm_min), bcd(lt.tm_sec), 0
            return call.set_carry(False)
        if ah == 0x04:
            s.ch, s.cl = bcd(lt.tm_year // 100), bcd(lt.tm_year % 100)
            s.dh, s.dl = bcd(lt.tm_mon), bcd(lt.tm_mday)
            return call.set_carry(False)
        call.fail(0x86)

    def state(self) -> dict[str, Any]:
        return {"keys": list(self.keys),
                "disks": {d: {"dirty": sorted(disk.dirty),
                              "sectors": {lba: bytes(disk.data[lba * SECTOR:(lba + 1) * SECTOR])
                                          for lba in sorted(disk.dirty)}}
                          for d, disk in self.disks.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self.keys = [int(k) & 0xFFFF for k in state.get("keys", [])]
        for d, dstate in state.get("disks", {}).items():
            disk = self.disks.get(int(d))
            if disk is None:
                continue
            for lba, data in dstate.get("sectors", {}).items():
                disk.data[int(lba) * SECTOR:(int(lba) + 1) * SECTOR] = data
                disk.dirty.add(int(lba))


__all__ = ["Bios", "Disk", "key_for"]
