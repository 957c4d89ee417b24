"""Decoding trapped 8086/80386 instructions with capstone, for :class:`.emulator.Emulator`.

Kept apart so that capstone is imported only when a program under the monitor
first traps, not whenever a machine with the v8086 plugin is built.
"""

from __future__ import annotations

import capstone
from capstone import x86_const as X

from .emulator import (K_CLI, K_HLT, K_IN, K_INS, K_INT, K_INT3, K_INTO, K_IRET, K_LGDT, K_LIDT, K_LMSW,
                       K_MOV_DR, K_MOV_FROM_CR, K_MOV_TO_CR, K_NOP_PRIV, K_OUT, K_OUTS, K_POPF, K_PUSHF, K_STI,
                       _PREFIXES, _SEG_PREFIX, Decoded)

_KINDS = {
    X.X86_INS_CLI: K_CLI, X.X86_INS_STI: K_STI,
    X.X86_INS_PUSHF: K_PUSHF, X.X86_INS_PUSHFD: K_PUSHF, X.X86_INS_POPF: K_POPF, X.X86_INS_POPFD: K_POPF,
    X.X86_INS_INT: K_INT, X.X86_INS_INT3: K_INT3, X.X86_INS_INTO: K_INTO,
    X.X86_INS_IRET: K_IRET, X.X86_INS_IRETD: K_IRET, X.X86_INS_HLT: K_HLT,
    X.X86_INS_IN: K_IN, X.X86_INS_OUT: K_OUT,
    X.X86_INS_INSB: K_INS, X.X86_INS_INSW: K_INS, X.X86_INS_INSD: K_INS,
    X.X86_INS_OUTSB: K_OUTS, X.X86_INS_OUTSW: K_OUTS, X.X86_INS_OUTSD: K_OUTS,
    X.X86_INS_LMSW: K_LMSW, X.X86_INS_LGDT: K_LGDT, X.X86_INS_LIDT: K_LIDT,
    X.X86_INS_CLTS: K_NOP_PRIV, X.X86_INS_WBINVD: K_NOP_PRIV, X.X86_INS_INVD: K_NOP_PRIV,
}
_STRING_SIZE = {X.X86_INS_INSB: 1, X.X86_INS_INSW: 2, X.X86_INS_INSD: 4,
                X.X86_INS_OUTSB: 1, X.X86_INS_OUTSW: 2, X.X86_INS_OUTSD: 4}
# capstone register ids → (GPR index, size)
_REGS: dict[int, tuple[int, int]] = {}
for _i, (_r32, _r16, _r8) in enumerate([(X.X86_REG_EAX, X.X86_REG_AX, X.X86_REG_AL),
                                       (X.X86_REG_ECX, X.X86_REG_CX, X.X86_REG_CL),
                                       (X.X86_REG_EDX, X.X86_REG_DX, X.X86_REG_DL),
                                       (X.X86_REG_EBX, X.X86_REG_BX, X.X86_REG_BL),
                                       (X.X86_REG_ESP, X.X86_REG_SP, X.X86_REG_AH),
                                       (X.X86_REG_EBP, X.X86_REG_BP, X.X86_REG_CH),
                                       (X.X86_REG_ESI, X.X86_REG_SI, X.X86_REG_DH),
                                       (X.X86_REG_EDI, X.X86_REG_DI, X.X86_REG_BH)]):
    _REGS[_r32] = (_i, 4)
    _REGS[_r16] = (_i, 2)
    _REGS[_r8] = (_i, 1)  # AH/CH/DH/BH are encodings 4-7
_CR_REGS = {getattr(X, f"X86_REG_CR{i}"): i for i in range(16) if hasattr(X, f"X86_REG_CR{i}")}
_DR_REGS = {getattr(X, f"X86_REG_DR{i}"): i for i in range(16) if hasattr(X, f"X86_REG_DR{i}")}
_SEG_REGS = {X.X86_REG_ES: "es", X.X86_REG_CS: "cs", X.X86_REG_SS: "ss", X.X86_REG_DS: "ds",
             X.X86_REG_FS: "fs", X.X86_REG_GS: "gs"}


class Decoder:
    """capstone in 16-bit mode with operand details; :meth:`decode` gives one :class:`Decoded`."""

    def __init__(self) -> None:
        self.md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_16)
        self.md.detail = True

    def decode(self, code: bytes) -> Decoded | None:
        insn = next(self.md.disasm(code, 0, 1), None)
        if insn is None:
            # capstone refuses LOCK on instructions that do not take it; the CPU raises #UD for them
            i = 0
            while i < 14 and code[i] in _PREFIXES:
                i += 1
            if 0xF0 in code[:i]:
                rest = self.decode(bytes(b for j, b in enumerate(code) if not (j < i and b == 0xF0)))
                if rest is not None and rest.kind >= 0:
                    rest.lock = True
                    rest.size += code[:i].count(0xF0)
                    return rest
            return None
        d = Decoded()
        d.mnemonic = insn.mnemonic
        d.size = insn.size
        prefix = insn.prefix
        d.rep = prefix[0] in (0xF2, 0xF3)
        d.lock = prefix[0] == 0xF0
        d.segment = _SEG_PREFIX.get(prefix[1])
        d.op32 = prefix[2] == 0x66
        d.addr32 = prefix[3] == 0x67
        kind = _KINDS.get(insn.id, -1)
        ops = insn.operands
        if insn.id == X.X86_INS_MOV and len(ops) == 2 and ops[0].type == X.X86_OP_REG and ops[1].type == X.X86_OP_REG:
            dst, src = ops[0].reg, ops[1].reg
            if dst in _CR_REGS and src in _REGS:
                kind, d.imm, (d.reg, _) = K_MOV_TO_CR, _CR_REGS[dst], _REGS[src]
            elif src in _CR_REGS and dst in _REGS:
                kind, d.imm, (d.reg, _) = K_MOV_FROM_CR, _CR_REGS[src], _REGS[dst]
            elif dst in _DR_REGS and src in _REGS:
                kind, d.imm, (d.reg, _), d.to_port = K_MOV_DR, _DR_REGS[dst], _REGS[src], True
            elif src in _DR_REGS and dst in _REGS:
                kind, d.imm, (d.reg, _) = K_MOV_DR, _DR_REGS[src], _REGS[dst]
        d.kind = kind
        if kind < 0:
            return d
        if kind == K_INT:
            d.imm = ops[0].imm & 0xFF
        elif kind in (K_IN, K_OUT):
            data, port = (ops[0], ops[1]) if kind == K_IN else (ops[1], ops[0])
            d.reg, d.width = _REGS[data.reg]
            d.port = port.imm & 0xFF if port.type == X.X86_OP_IMM else None
        elif kind in (K_INS, K_OUTS):
            d.width = _STRING_SIZE[insn.id]
        elif kind == K_LMSW:
            if ops[0].type == X.X86_OP_REG:
                d.reg, d.reg_size = _REGS[ops[0].reg][0], 2
            else:
                d.mem = self._mem_operand(ops[0])
        elif kind in (K_LGDT, K_LIDT):
            d.mem = self._mem_operand(ops[0])
        return d

    @staticmethod
    def _mem_operand(op) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
        m = op.mem
        base = _REGS[m.base][0] if m.base in _REGS else -1
        index = _REGS[m.index][0] if m.index in _REGS else -1
        # BP- (and ESP/EBP-) based addresses default to SS
        default_ss = 1 if base in (4, 5) else 0
        return base, index, m.disp, default_ss
