"""The 8086 program's state as the monitor sees it, independent of engine and route.

Every route (exception bitmap, guest-side stub, real mode) turns what the
hardware left into one :class:`ProgramState`, lets the emulator and the
services work on it, and commits it back. The state is what the *program*
sees: ``eflags`` holds the program's own interrupt flag (the virtual IF),
not the real one, and the segment registers are plain 8086 selectors
(base = selector * 16).

:class:`ProgramMemory` is the program's view of memory: linear addresses
below 1 MiB + 64 KiB, reads from nowhere float (0xFF), writes to nowhere
or to ROM are dropped, and MMIO (a VGA device) is reached through the bus,
so hostile addresses never raise.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smartvm_core.bus import Bus
    from smartvm_core.memory import GuestMemory

EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")
#: the highest linear address an 8086 program can form (FFFF:FFFF)
V86_LIMIT = 0x10FFF0

FLAG_CF = 1 << 0
FLAG_FIXED = 1 << 1
FLAG_PF = 1 << 2
FLAG_AF = 1 << 4
FLAG_ZF = 1 << 6
FLAG_SF = 1 << 7
FLAG_TF = 1 << 8
FLAG_IF = 1 << 9
FLAG_DF = 1 << 10
FLAG_OF = 1 << 11
FLAG_IOPL = 3 << 12
FLAG_NT = 1 << 14
FLAG_RF = 1 << 16
FLAG_VM = 1 << 17
FLAG_AC = 1 << 18
FLAG_VIF = 1 << 19
FLAG_VIP = 1 << 20
FLAG_ID = 1 << 21


_new = object.__new__


class ProgramState:
    """Registers of the 8086 program (32-bit GPRs, as a 386 in virtual-8086 mode has)."""

    __slots__ = ("gpr", "eip", "eflags", "es", "cs", "ss", "ds", "fs", "gs", "segs_dirty",
                 "vme", "pvi_iopl", "cr0", "gdtr", "idtr")

    def __init__(self, *, eip: int = 0, eflags: int = FLAG_FIXED, cs: int = 0, ds: int = 0, es: int = 0,
                 ss: int = 0, fs: int = 0, gs: int = 0, gpr: list[int] | None = None, vme: bool = False,
                 iopl: int = 0) -> None:
        self.gpr = list(gpr) if gpr is not None else [0] * 8
        self.eip = eip
        #: the program's EFLAGS; IF is the program's (virtual) interrupt flag
        self.eflags = eflags | FLAG_FIXED
        self.es, self.cs, self.ss, self.ds, self.fs, self.gs = es, cs, ss, ds, fs, gs
        #: set when a segment register changed (routes then write segments back)
        self.segs_dirty = False
        #: CR4.VME is on: PUSHF/POPF follow the VME rules (SDM 20.3)
        self.vme = vme
        #: the real IOPL under which the program runs (shown by PUSHF, kept by POPF)
        self.pvi_iopl = iopl
        #: what MOV from CR0 shows the program (PE clear while it is an 8086 program)
        self.cr0 = 0x10
        #: GDTR/IDTR the program loaded with LGDT/LIDT (base, limit), used when it enters protected mode
        self.gdtr: tuple[int, int] | None = None
        self.idtr: tuple[int, int] | None = None

    @classmethod
    def of(cls, gpr: list[int], eip: int, eflags: int, es: int, cs: int, ss: int, ds: int, fs: int, gs: int,
           vme: bool, iopl: int, cr0: int = 0x10, gdtr: tuple[int, int] | None = None,
           idtr: tuple[int, int] | None = None) -> "ProgramState":
        """The same as the keyword constructor, without its defaults (the monitor's hot path).

        ``gpr`` is taken, not copied; values must already be in range. ``cr0``,
        ``gdtr`` and ``idtr`` are what the program last loaded (the constructor
        leaves the defaults, for the caller to set).
        """
        state = _new(cls)
        state.gpr = gpr
        state.eip = eip
        state.eflags = eflags | FLAG_FIXED
        state.es = es
        state.cs = cs
        state.ss = ss
        state.ds = ds
        state.fs = fs
        state.gs = gs
        state.segs_dirty = False
        state.vme = vme
        state.pvi_iopl = iopl
        state.cr0 = cr0
        state.gdtr = gdtr
        state.idtr = idtr
        return state

    # -- registers by name --------------------------------------------------------
    def reg16(self, index: int) -> int:
        return self.gpr[index] & 0xFFFF

    def set_reg16(self, index: int, value: int) -> None:
        self.gpr[index] = (self.gpr[index] & ~0xFFFF) | (value & 0xFFFF)

    def reg8(self, index: int) -> int:
        """AL, CL, DL, BL, AH, CH, DH, BH by their encoding 0-7."""
        return (self.gpr[index & 3] >> (8 if index & 4 else 0)) & 0xFF

    def set_reg8(self, index: int, value: int) -> None:
        shift = 8 if index & 4 else 0
        r = index & 3
        self.gpr[r] = (self.gpr[r] & ~(0xFF << shift)) | ((value & 0xFF) << shift)

    def set_reg(self, index: int, size: int, value: int) -> None:
        if size == 1:
            self.set_reg8(index, value)
        elif size == 2:
            self.set_reg16(index, value)
        else:
            self.gpr[index] = value & 0xFFFFFFFF

    def get_reg(self, index: int, size: int) -> int:
        if size == 1:
            return self.reg8(index)
        return self.gpr[index] & (0xFFFF if size == 2 else 0xFFFFFFFF)

    ax = property(lambda s: s.gpr[EAX] & 0xFFFF, lambda s, v: s.set_reg16(EAX, v))
    bx = property(lambda s: s.gpr[EBX] & 0xFFFF, lambda s, v: s.set_reg16(EBX, v))
    cx = property(lambda s: s.gpr[ECX] & 0xFFFF, lambda s, v: s.set_reg16(ECX, v))
    dx = property(lambda s: s.gpr[EDX] & 0xFFFF, lambda s, v: s.set_reg16(EDX, v))
    si = property(lambda s: s.gpr[ESI] & 0xFFFF, lambda s, v: s.set_reg16(ESI, v))
    di = property(lambda s: s.gpr[EDI] & 0xFFFF, lambda s, v: s.set_reg16(EDI, v))
    bp = property(lambda s: s.gpr[EBP] & 0xFFFF, lambda s, v: s.set_reg16(EBP, v))
    sp = property(lambda s: s.gpr[ESP] & 0xFFFF, lambda s, v: s.set_reg16(ESP, v))
    al = property(lambda s: s.reg8(0), lambda s, v: s.set_reg8(0, v))
    cl = property(lambda s: s.reg8(1), lambda s, v: s.set_reg8(1, v))
    dl = property(lambda s: s.reg8(2), lambda s, v: s.set_reg8(2, v))
    bl = property(lambda s: s.reg8(3), lambda s, v: s.set_reg8(3, v))
    ah = property(lambda s: s.reg8(4), lambda s, v: s.set_reg8(4, v))
    ch = property(lambda s: s.reg8(5), lambda s, v: s.set_reg8(5, v))
    dh = property(lambda s: s.reg8(6), lambda s, v: s.set_reg8(6, v))
    bh = property(lambda s: s.reg8(7), lambda s, v: s.set_reg8(7, v))

    @property
    def ip(self) -> int:
        return self.eip & 0xFFFF

    def seg(self, name: str) -> int:
        return getattr(self, name)

    def set_seg(self, name: str, selector: int) -> None:
        selector &= 0xFFFF
        if getattr(self, name) != selector:
            setattr(self, name, selector)
            self.segs_dirty = True

    @property
    def interrupts_enabled(self) -> bool:
        """The program's (virtual) interrupt flag."""
        return bool(self.eflags & FLAG_IF)

    def set_flag(self, flag: int, on: bool) -> None:
        self.eflags = (self.eflags | flag) if on else (self.eflags & ~flag)

    def linear(self, seg: str, offset: int) -> int:
        return ((getattr(self, seg) << 4) + (offset & 0xFFFF))

    def copy(self) -> "ProgramState":
        other = ProgramState.__new__(ProgramState)
        for name in self.__slots__:
            value = getattr(self, name)
            setattr(other, name, list(value) if name == "gpr" else value)
        return other

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProgramState) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__ if n != "segs_dirty")

    def __repr__(self) -> str:
        names = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
        regs = " ".join(f"{n}={v:#x}" for n, v in zip(names, self.gpr))
        segs = " ".join(f"{n}={getattr(self, n):#06x}" for n in SEGMENTS)
        return f"<ProgramState {self.cs:04x}:{self.eip:04x} eflags={self.eflags:#x} {regs} {segs}>"


_U16 = struct.Struct("<H")


class ProgramMemory:
    """The program's linear memory (no paging in virtual-8086 mode here: linear = physical).

    ``a20`` models the A20 gate: when off, addresses wrap at 1 MiB as on an 8086.
    """

    def __init__(self, memory: "GuestMemory", mmio: "Bus | None" = None) -> None:
        self.memory = memory
        self.mmio = mmio
        self._mask = 0x1FFFFF
        #: (start, end, view) of the RAM region of the last read or write (the fast path)
        self._hot: tuple[int, int, memoryview | None] = (0, 0, None)
        memory.add_listener(self._layout_changed)

    @property
    def a20(self) -> bool:
        return self._mask == 0x1FFFFF

    @a20.setter
    def a20(self, on: bool) -> None:
        self._mask = 0x1FFFFF if on else 0xFFFFF

    def _layout_changed(self, action: str, region: Any) -> None:
        self._hot = (0, 0, None)

    def _addr(self, linear: int) -> int:
        return linear & self._mask

    def read(self, linear: int, size: int) -> int:
        addr = linear & self._mask
        start, end, view = self._hot
        if start <= addr and addr + size <= end:
            return int.from_bytes(view[addr - start:addr - start + size], "little")  # type: ignore[index]
        region = self.memory.region_at(addr)
        if region is not None and addr + size <= region.end:
            off = addr - region.gpa
            if not region.readonly:
                self._hot = (region.gpa, region.end, region.view)
            return int.from_bytes(region.view[off:off + size], "little")
        value = 0
        for i in range(size):
            value |= self.read_byte(addr + i) << (8 * i)
        return value

    def read_byte(self, linear: int) -> int:
        addr = self._addr(linear)
        region = self.memory.region_at(addr)
        if region is not None:
            return region.view[addr - region.gpa]
        if self.mmio is not None and self.mmio.find(addr) is not None:
            return self.mmio.read(addr, 1) & 0xFF
        return 0xFF

    def write(self, linear: int, size: int, value: int) -> None:
        addr = linear & self._mask
        start, end, view = self._hot
        if start <= addr and addr + size <= end:
            view[addr - start:addr - start + size] = (  # type: ignore[index]
                (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
            return
        region = self.memory.region_at(addr)
        if region is not None and addr + size <= region.end and not region.readonly:
            off = addr - region.gpa
            self._hot = (region.gpa, region.end, region.view)
            region.view[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            return
        for i in range(size):
            self.write_byte(addr + i, (value >> (8 * i)) & 0xFF)

    def write_byte(self, linear: int, value: int) -> None:
        addr = self._addr(linear)
        region = self.memory.region_at(addr)
        if region is not None:
            self.memory.guest_write(addr, bytes((value & 0xFF,)))
        elif self.mmio is not None and self.mmio.find(addr) is not None:
            self.mmio.write(addr, 1, value & 0xFF)

    def read_bytes(self, linear: int, size: int) -> bytes:
        addr = self._addr(linear)
        region = self.memory.region_at(addr)
        if region is not None and addr + size <= region.end:
            off = addr - region.gpa
            return bytes(region.view[off:off + size])
        return bytes(self.read_byte(addr + i) for i in range(size))

    def write_bytes(self, linear: int, data: bytes) -> None:
        addr = self._addr(linear)
        region = self.memory.region_at(addr)
        if region is not None and addr + len(data) <= region.end and not region.readonly:
            off = addr - region.gpa
            region.view[off:off + len(data)] = data
            return
        for i, b in enumerate(data):
            self.write_byte(addr + i, b)

    # -- segment:offset helpers (offsets wrap at 64 KiB, as in real mode) -----------
    def read_far(self, seg: int, off: int, size: int) -> int:
        if (off & 0xFFFF) + size <= 0x10000:
            return self.read((seg << 4) + (off & 0xFFFF), size)
        return sum(self.read((seg << 4) + ((off + i) & 0xFFFF), 1) << (8 * i) for i in range(size))

    def write_far(self, seg: int, off: int, size: int, value: int) -> None:
        if (off & 0xFFFF) + size <= 0x10000:
            self.write((seg << 4) + (off & 0xFFFF), size, value)
            return
        for i in range(size):
            self.write((seg << 4) + ((off + i) & 0xFFFF), 1, value >> (8 * i))

    def read_string(self, seg: int, off: int, terminator: int, limit: int = 0x10000) -> bytes:
        """Bytes at seg:off up to (not including) ``terminator``; at most ``limit`` bytes."""
        out = bytearray()
        for i in range(limit):
            b = self.read((seg << 4) + ((off + i) & 0xFFFF), 1)
            if b == terminator:
                break
            out.append(b)
        return bytes(out)

    def state(self) -> dict[str, Any]:
        return {"a20": self.a20}
