"""Decode and emulate the instructions an 8086 program traps on (Intel SDM semantics).

In virtual-8086 mode with IOPL < 3 the CPU raises #GP on the IOPL-sensitive
instructions (CLI, STI, PUSHF, POPF, INT n, IRET), on privileged ones (HLT,
MOV to or from control registers, LGDT, LIDT, LMSW, CLTS ...) and on I/O
instructions whose ports the TSS I/O permission bitmap denies. The monitor
decodes the instruction at CS:IP with capstone and completes it here, on a
:class:`~smartvm_v8086.state.ProgramState`, the way the instruction behaves
for an 8086 program whose interrupt flag is virtual:

* CLI/STI clear/set the program's IF (the virtual IF).
* PUSHF/PUSHFD push the program's flags: IF is the virtual IF, IOPL the
  real one; the 32-bit image has VM and RF clear (SDM "PUSHF").
* POPF/POPFD/IRET/IRETD load the flags except IOPL, VM, RF, VIF and VIP
  (SDM "POPF": virtual-8086 mode never changes IOPL); IF goes to the
  virtual IF. With CR4.VME the 16-bit forms follow SDM 20.3 (IF ↔ VIF).
* INT n / INT3 / INTO end emulation with :data:`Outcome.INTERRUPT`: the
  monitor serves or reflects the vector (:func:`reflect`).
* IN/OUT/INS/OUTS move data through the port callbacks; REP string forms
  run up to :data:`MAX_STRING_ITERATIONS` iterations per trap and are
  restartable, as the hardware's are (interruptible between iterations).
* HLT ends with :data:`Outcome.HALT` (the instruction completes).
* MOV CR0 / LMSW setting PE end with :data:`Outcome.PROTECTED`.
* A LOCK prefix on any of these raises #UD (vector 6), as on the CPU.

Decoding is cached per instruction bytes (an 8086 program traps on the same
few instructions over and over); the cache is bounded.
"""

from __future__ import annotations

import collections
from typing import Callable

from .state import (EAX, ECX, EDI, ESI, FLAG_AC, FLAG_FIXED, FLAG_ID, FLAG_IF, FLAG_IOPL, FLAG_OF, FLAG_RF,
                    FLAG_TF, FLAG_VM, ProgramMemory, ProgramState)

#: REP string I/O iterations completed per trap before the instruction is restarted
MAX_STRING_ITERATIONS = 0x10000
#: decoded instructions kept
DECODE_CACHE_SIZE = 4096

#: POPF (16-bit) may change CF PF AF ZF SF TF IF DF OF NT (IOPL is kept in virtual-8086 mode)
POPF16_MASK = 0x7FD5 & ~FLAG_IOPL
#: POPFD may also change AC and ID; VM, RF, VIF, VIP and IOPL are kept
POPF32_MASK = (POPF16_MASK | FLAG_AC | FLAG_ID)


class Outcome:
    """What the monitor does after :meth:`Emulator.step`."""

    RESUME = 0       #: continue the program
    HALT = 1         #: HLT completed: wait for an interrupt
    INTERRUPT = 2    #: INT n / INT3 / INTO: serve or reflect ``emulator.vector``
    EXCEPTION = 3    #: the instruction raises exception ``emulator.vector`` (IP at the instruction)
    PROTECTED = 4    #: the program set CR0.PE: hand the vCPU over to protected mode
    UNSUPPORTED = 5  #: not an instruction the monitor emulates (``emulator.message`` says why)
    STI = 6          #: STI completed: interrupts are recognised after the next instruction

    NAMES = {0: "resume", 1: "halt", 2: "interrupt", 3: "exception", 4: "protected", 5: "unsupported", 6: "sti"}


# instruction kinds
K_CLI, K_STI, K_PUSHF, K_POPF, K_INT, K_INT3, K_INTO, K_IRET, K_HLT, K_IN, K_OUT, K_INS, K_OUTS, \
    K_MOV_FROM_CR, K_MOV_TO_CR, K_LMSW, K_LGDT, K_LIDT, K_NOP_PRIV, K_MOV_DR = range(20)

_PREFIXES = frozenset({0xF0, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67})
_SEG_PREFIX = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}


class Decoded:
    """One decoded instruction (cached by its bytes)."""

    __slots__ = ("kind", "mnemonic", "size", "op32", "addr32", "segment", "rep", "lock",
                 "imm", "port", "width", "reg", "reg_size", "mem", "to_port")

    def __init__(self) -> None:
        self.kind = -1
        self.mnemonic = ""
        self.size = 0
        self.op32 = False
        self.addr32 = False
        self.segment: str | None = None
        self.rep = False
        self.lock = False
        self.imm = 0
        self.port: int | None = None   # immediate port, or None for DX
        self.width = 0                 # data width of I/O
        self.reg = 0                   # GPR index of a register operand
        self.reg_size = 0
        self.mem: tuple[int, int, int, int] | None = None  # base reg, index reg, disp, default-ss
        self.to_port = False


class Emulator:
    """Decodes and completes trapped instructions; counts them per mnemonic."""

    def __init__(self, memory: ProgramMemory, io_in: Callable[[int, int], int],
                 io_out: Callable[[int, int, int], None]) -> None:
        self.memory = memory
        self.io_in = io_in
        self.io_out = io_out
        self._decoder = None   # .decoder.Decoder, made on the first decode
        self._cache: dict[bytes, Decoded | None] = {}
        #: instructions emulated, per mnemonic
        self.counts: collections.Counter[str] = collections.Counter()
        #: vector of the last INTERRUPT or EXCEPTION outcome
        self.vector = 0
        #: why the last UNSUPPORTED outcome
        self.message = ""
        #: the last decoded instruction
        self.last: Decoded | None = None

    # -- decoding -------------------------------------------------------------------
    def fetch(self, state: ProgramState) -> bytes:
        return self.fetch_at(state.cs, state.eip)

    def fetch_at(self, cs: int, ip: int) -> bytes:
        """The 15 bytes at CS:IP (IP wraps at 64 KiB)."""
        base = cs << 4
        ip &= 0xFFFF
        if ip <= 0x10000 - 15:
            return self.memory.read_bytes(base + ip, 15)
        return bytes(self.memory.read(base + ((ip + i) & 0xFFFF), 1) for i in range(15))

    def decode(self, code: bytes) -> Decoded | None:
        """Decode the instruction at the start of ``code`` (None if capstone cannot)."""
        cached = self._cache.get(code, self)
        if cached is not self:
            return cached  # type: ignore[return-value]
        d = self._decode(code)
        if len(self._cache) >= DECODE_CACHE_SIZE:
            self._cache.clear()
        self._cache[code] = d
        return d

    def _decode(self, code: bytes) -> Decoded | None:
        return self._get_decoder().decode(code)

    def _get_decoder(self):  # type: ignore[no-untyped-def]
        if self._decoder is None:
            # capstone (tens of milliseconds to import) is loaded when the first instruction traps,
            # not when the machine is built
            from .decoder import Decoder
            self._decoder = Decoder()
        return self._decoder

    @property
    def md(self):  # type: ignore[no-untyped-def]
        """capstone's 16-bit disassembler with operand details (imported on first use)."""
        return self._get_decoder().md

    # -- emulation ------------------------------------------------------------------
    def step(self, state: ProgramState) -> int:
        """Complete the instruction at ``state``'s CS:IP; returns an :class:`Outcome`."""
        d = self.decode(self.fetch(state))
        self.last = d
        if d is None:
            self.message = "undecodable instruction"
            return Outcome.UNSUPPORTED
        if d.kind < 0:
            self.message = f"{d.mnemonic} is not a sensitive instruction the monitor emulates"
            return Outcome.UNSUPPORTED
        if d.lock:
            self.counts["#UD (LOCK)"] += 1
            self.vector = 6
            return Outcome.EXCEPTION
        self.counts[d.mnemonic] += 1
        next_ip = (state.eip + d.size) & 0xFFFF
        kind = d.kind
        if kind == K_CLI:
            state.eflags &= ~FLAG_IF
        elif kind == K_STI:
            state.eip = next_ip
            was = state.eflags & FLAG_IF
            state.eflags |= FLAG_IF
            return Outcome.RESUME if was else Outcome.STI
        elif kind == K_PUSHF:
            if d.op32:
                push(self.memory, state, 4, program_flags(state) & ~(FLAG_VM | FLAG_RF))
            else:
                push(self.memory, state, 2, program_flags(state) & 0xFFFF)
        elif kind == K_POPF:
            value = pop(self.memory, state, 4 if d.op32 else 2)
            load_flags(state, value, d.op32)
        elif kind in (K_INT, K_INT3, K_INTO):
            state.eip = next_ip
            if kind == K_INTO and not state.eflags & FLAG_OF:
                return Outcome.RESUME
            self.vector = d.imm if kind == K_INT else 3 if kind == K_INT3 else 4
            return Outcome.INTERRUPT
        elif kind == K_IRET:
            return self._iret(state, d.op32)
        elif kind == K_HLT:
            state.eip = next_ip
            return Outcome.HALT
        elif kind in (K_IN, K_OUT):
            port = d.port if d.port is not None else state.dx
            if kind == K_IN:
                state.set_reg(EAX, d.width, self.io_in(port, d.width))
            else:
                self.io_out(port, d.width, state.get_reg(EAX, d.width))
        elif kind in (K_INS, K_OUTS):
            if not self._string_io(state, d):
                return Outcome.RESUME  # more iterations remain: IP stays on the instruction
        elif kind == K_MOV_FROM_CR:
            state.gpr[d.reg] = state.cr0 if d.imm == 0 else 0
        elif kind == K_MOV_TO_CR:
            if d.imm == 0:
                value = state.gpr[d.reg]
                state.eip = next_ip
                state.cr0 = value & 0xFFFFFFFF
                if value & 1:
                    return Outcome.PROTECTED
                return Outcome.RESUME
        elif kind == K_LMSW:
            value = state.reg16(d.reg) if d.mem is None else self._read_mem(state, d, 2)
            # LMSW loads MP, EM, TS and can set (never clear) PE
            state.cr0 = (state.cr0 & ~0xE) | (value & 0xE) | (state.cr0 & 1) | (value & 1)
            state.eip = next_ip
            return Outcome.PROTECTED if state.cr0 & 1 else Outcome.RESUME
        elif kind in (K_LGDT, K_LIDT):
            limit = self._read_mem(state, d, 2)
            base = self._read_mem(state, d, 4, 2) & (0xFFFFFFFF if d.op32 else 0xFFFFFF)
            if kind == K_LGDT:
                state.gdtr = (base, limit)
            else:
                state.idtr = (base, limit)
        elif kind == K_MOV_DR:
            if not d.to_port:
                state.gpr[d.reg] = 0
        # K_NOP_PRIV: CLTS, WBINVD, INVD complete without effect
        state.eip = next_ip
        return Outcome.RESUME

    def _ea(self, state: ProgramState, d: Decoded, extra: int = 0) -> tuple[str, int]:
        base, index, disp, default_ss = d.mem  # type: ignore[misc]
        off = disp + extra
        if base >= 0:
            off += state.gpr[base]
        if index >= 0:
            off += state.gpr[index]
        seg = d.segment or ("ss" if default_ss else "ds")
        return seg, off & (0xFFFFFFFF if d.addr32 else 0xFFFF)

    def _read_mem(self, state: ProgramState, d: Decoded, size: int, extra: int = 0) -> int:
        seg, off = self._ea(state, d, extra)
        return self.memory.read_far(state.seg(seg), off, size)

    def _iret(self, state: ProgramState, op32: bool) -> int:
        mem = self.memory
        size = 4 if op32 else 2
        sp = state.sp
        ip = mem.read_far(state.ss, sp, size)
        cs = mem.read_far(state.ss, sp + size, size) & 0xFFFF
        flags = mem.read_far(state.ss, sp + 2 * size, size)
        if op32 and ip > 0xFFFF:
            self.vector = 13  # SDM IRET: a v8086 return with EIP beyond the CS limit is #GP(0)
            return Outcome.EXCEPTION
        state.sp = sp + 3 * size
        state.eip = ip
        state.set_seg("cs", cs)
        load_flags(state, flags, op32)
        return Outcome.RESUME

    def _string_io(self, state: ProgramState, d: Decoded) -> bool:
        """One REP INS/OUTS trap; returns True when the instruction completed."""
        width = d.width
        mask = 0xFFFFFFFF if d.addr32 else 0xFFFF
        step = -width if state.eflags & (1 << 10) else width
        count = (state.gpr[ECX] & mask) if d.rep else 1
        n = min(count, MAX_STRING_ITERATIONS)
        port = state.dx
        mem = self.memory
        if d.kind == K_INS:
            di = state.gpr[EDI] & mask
            for _ in range(n):
                mem.write_far(state.es, di, width, self.io_in(port, width)) if not d.addr32 else \
                    mem.write((state.es << 4) + di, width, self.io_in(port, width))
                di = (di + step) & mask
            state.gpr[EDI] = (state.gpr[EDI] & ~mask) | di
        else:
            seg = state.seg(d.segment or "ds")
            si = state.gpr[ESI] & mask
            for _ in range(n):
                value = mem.read_far(seg, si, width) if not d.addr32 else mem.read((seg << 4) + si, width)
                self.io_out(port, width, value)
                si = (si + step) & mask
            state.gpr[ESI] = (state.gpr[ESI] & ~mask) | si
        if d.rep:
            left = count - n
            state.gpr[ECX] = (state.gpr[ECX] & ~mask) | left
            if left:
                return False
        return True


def program_flags(state: ProgramState) -> int:
    """The flags image the program sees: its own IF, the real IOPL (SDM PUSHF in v8086 mode)."""
    flags = state.eflags
    if state.vme:
        # SDM 20.3.3: with VME, PUSHF pushes IF from VIF and shows IOPL as 3
        flags = (flags & ~FLAG_IOPL) | FLAG_IOPL
    else:
        flags = (flags & ~FLAG_IOPL) | (state.pvi_iopl << 12)
    return flags | FLAG_FIXED


def load_flags(state: ProgramState, value: int, op32: bool) -> bool:
    """POPF/IRET flag load for a program in virtual-8086 mode; returns True if IF went 0 → 1."""
    mask = POPF32_MASK if op32 else POPF16_MASK
    was = state.eflags & FLAG_IF
    state.eflags = ((state.eflags & ~mask) | (value & mask)) | FLAG_FIXED
    state.eflags &= ~(0x8028)  # bits 3, 5 and 15 always read 0
    return not was and bool(state.eflags & FLAG_IF)


def push(memory: ProgramMemory, state: ProgramState, size: int, value: int) -> None:
    sp = (state.sp - size) & 0xFFFF
    memory.write_far(state.ss, sp, size, value)
    state.sp = sp


def pop(memory: ProgramMemory, state: ProgramState, size: int) -> int:
    sp = state.sp
    value = memory.read_far(state.ss, sp, size)
    state.sp = sp + size
    return value


def ivt_entry(memory: ProgramMemory, vector: int) -> tuple[int, int]:
    """(segment, offset) of the program's interrupt vector ``vector`` (IVT at 0000:0000)."""
    raw = memory.read((vector & 0xFF) * 4, 4)
    return raw >> 16, raw & 0xFFFF


def reflect(memory: ProgramMemory, state: ProgramState, vector: int) -> None:
    """Deliver ``vector`` to the program as real-mode hardware does (SDM "INT n", real-address mode).

    Pushes FLAGS (with the virtual IF), CS and IP (the return point is
    ``state``'s CS:IP), clears IF, TF and AC, and continues at the IVT
    entry's handler.
    """
    push(memory, state, 2, program_flags(state) & 0xFFFF)
    push(memory, state, 2, state.cs)
    push(memory, state, 2, state.eip & 0xFFFF)
    state.eflags &= ~(FLAG_IF | FLAG_TF | FLAG_AC)
    seg, off = ivt_entry(memory, vector)
    state.set_seg("cs", seg)
    state.eip = off


__all__ = ["Emulator", "Outcome", "Decoded", "reflect", "ivt_entry", "push", "pop", "program_flags", "load_flags"]
