"""Finding and decoding the instructions unicorn gives no event for.

unicorn runs MOV CR, RDMSR/WRMSR, INVLPG, CLTS, LMSW, MOV DR, INVD, WBINVD
and XSETBV silently and turns VMCALL into #UD. The ``soft`` engine finds them
before they run: guest memory is mapped without execute permission, so every
code fetch of the translator reports the bytes it fetches; the first fetch
from a page scans that page for the opcode bytes of these instructions
(:func:`scan`) and the engine puts a one-address ``UC_HOOK_CODE`` hook on each
candidate start, which costs nothing for any other instruction. When a hook
fires, :func:`decode` reads the instruction in the CPU's current mode. A
candidate that is not an instruction start never fires; one that decodes to
something else returns ``None``.
"""

from __future__ import annotations

import attrs

#: prefix bytes (legacy); REX (40-4F) counts only in 64-bit mode
LEGACY_PREFIXES = frozenset({0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0xF0})
_SCAN_PREFIXES = LEGACY_PREFIXES | frozenset(range(0x40, 0x50))
#: second opcode bytes after 0F that always matter
_TWO_BYTE = {0x20: "mov_from_cr", 0x22: "mov_to_cr", 0x21: "mov_from_dr", 0x23: "mov_to_dr",
             0x30: "wrmsr", 0x32: "rdmsr", 0x06: "clts", 0x08: "invd", 0x09: "wbinvd",
             0xA2: "cpuid", 0x31: "rdtsc"}


@attrs.frozen
class Site:
    """One decoded sensitive instruction."""

    kind: str
    length: int
    #: MOV CR/DR: the control/debug register number
    reg: int = 0
    #: MOV CR/DR: the general register (SDM encoding); LMSW register form: its number
    gpr: int = 0
    #: INVLPG/LMSW with a memory operand: the ModRM/SIB/displacement bytes start here
    modrm_at: int = -1
    memory: bool = False


def _is_0f01_candidate(modrm: int) -> bool:
    if modrm in (0xC1, 0xD1, 0xF9):          # VMCALL, XSETBV, RDTSCP
        return True
    reg = (modrm >> 3) & 7
    if reg == 6:                              # LMSW
        return True
    return reg == 7 and modrm >> 6 != 3      # INVLPG m


def scan(data: bytes, base: int, start: int = 0, end: int | None = None) -> list[int]:
    """Candidate instruction starts (``base + offset``) in ``data[start:end]``.

    ``data`` may carry up to 15 bytes beyond ``end`` (the next page) so an
    instruction whose opcode bytes cross into it is found; offsets before
    ``start`` are used only to walk back over prefixes.
    """
    end = len(data) if end is None else end
    out: set[int] = set()
    i = data.find(b"\x0f", start)
    while 0 <= i < end + 14:
        if i + 1 < len(data):
            op = data[i + 1]
            hit = op in _TWO_BYTE or (op == 0x01 and i + 2 < len(data) and _is_0f01_candidate(data[i + 2]))
            if hit:
                j = i
                while True:
                    if start <= j < end:
                        out.add(base + j)
                    if i - j >= 14 or j == 0 or data[j - 1] not in _SCAN_PREFIXES:
                        break
                    j -= 1
        i = data.find(b"\x0f", i + 1)
    return sorted(out)


def decode(code: bytes, bits: int) -> Site | None:
    """Decode a sensitive instruction at the start of ``code`` (16, 32 or 64-bit mode)."""
    i = 0
    rex = 0
    while i < len(code) and i < 14:
        b = code[i]
        if b in LEGACY_PREFIXES:
            rex = 0  # a legacy prefix after REX cancels it
            i += 1
        elif bits == 64 and 0x40 <= b <= 0x4F:
            rex = b
            i += 1
        else:
            break
    if i + 1 >= len(code) or code[i] != 0x0F:
        return None
    op = code[i + 1]
    if op == 0x01:
        if i + 2 >= len(code):
            return None
        modrm = code[i + 2]
        if modrm == 0xC1:
            return Site("vmcall", i + 3)
        if modrm == 0xD1:
            return Site("xsetbv", i + 3)
        if modrm == 0xF9:
            return Site("rdtscp", i + 3)
        reg = (modrm >> 3) & 7
        if reg not in (6, 7):
            return None
        kind = "lmsw" if reg == 6 else "invlpg"
        if modrm >> 6 == 3:
            if kind == "invlpg":
                return None   # 0F 01 /7 register forms are SWAPGS/RDTSCP/...
            return Site("lmsw", i + 3, gpr=(modrm & 7) | (8 if rex & 1 else 0))
        length = i + 2 + _modrm_length(code[i + 2:], bits, code[:i])
        return Site(kind, length, modrm_at=i + 2, memory=True)
    kind = _TWO_BYTE.get(op)
    if kind is None:
        return None
    if kind.startswith("mov_"):
        if i + 2 >= len(code):
            return None
        modrm = code[i + 2]
        reg = ((modrm >> 3) & 7) | (8 if rex & 4 else 0)
        if kind.endswith("cr") and code[:i].count(0xF0) and bits != 64:
            reg |= 8  # LOCK MOV CR0 is MOV CR8 (AMD alternative encoding)
        gpr = (modrm & 7) | (8 if rex & 1 else 0)
        return Site(kind, i + 3, reg=reg, gpr=gpr)
    return Site(kind, i + 2)


def _modrm_length(b: bytes, bits: int, prefixes: bytes) -> int:
    """Bytes of ModRM + SIB + displacement."""
    modrm = b[0]
    mod, rm = modrm >> 6, modrm & 7
    addr16 = (bits == 16) != (0x67 in prefixes)
    if bits == 64:
        addr16 = False
    if addr16:
        if mod == 0:
            return 3 if rm == 6 else 1
        return 1 + (1 if mod == 1 else 2 if mod == 2 else 0)
    n = 1
    if mod != 3 and rm == 4:
        n += 1
        if mod == 0 and len(b) > 1 and b[1] & 7 == 5:
            return n + 4
    if mod == 0 and rm == 5:
        return n + 4
    return n + (1 if mod == 1 else 4 if mod == 2 else 0)


def io_length(code: bytes, bits: int) -> tuple[int, dict[str, object]] | None:
    """Length and operand facts of an IN/OUT/INS/OUTS instruction at ``code``."""
    i = 0
    rep = False
    opsize = False
    addrsize = False
    seg = None
    while i < len(code) and i < 14:
        b = code[i]
        if b in LEGACY_PREFIXES:
            if b in (0xF2, 0xF3):
                rep = True
            elif b == 0x66:
                opsize = True
            elif b == 0x67:
                addrsize = True
            elif b in (0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65):
                seg = b
            i += 1
        elif bits == 64 and 0x40 <= b <= 0x4F:
            i += 1
        else:
            break
    if i >= len(code):
        return None
    op = code[i]
    facts: dict[str, object] = {"rep": rep, "opsize": opsize, "addrsize": addrsize, "seg": seg}
    if op in (0xE4, 0xE5, 0xE6, 0xE7):
        facts.update(string=False, immediate=True, port=code[i + 1] if i + 1 < len(code) else 0)
        return i + 2, facts
    if op in (0xEC, 0xED, 0xEE, 0xEF, 0x6C, 0x6D, 0x6E, 0x6F):
        facts.update(string=op < 0x70, immediate=False)
        return i + 1, facts
    return None
