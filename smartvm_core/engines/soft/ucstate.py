"""Hidden CPU state of unicorn's x86 CPU, reached through its context blob.

unicorn's register API cannot set a segment's hidden part (base, limit,
access rights) in protected mode, nor read the exception error code, the
STI/MOV SS interrupt shadow or the "previous exception" that QEMU uses to
form double faults (unicorn issue 1883). All of them live in the CPU state
that ``context_save`` copies. :func:`layout` finds their offsets once per
process by probing a scratch CPU with marker values, so nothing depends on a
hard-coded structure layout; if a probe fails the soft engine reports itself
unusable with the reason.
"""

from __future__ import annotations

import ctypes
import functools
import struct

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_64, Uc
from unicorn import x86_const as X

EFER_MSR = 0xC0000080

# QEMU's hflags bits (target/i386/cpu.h)
HF_CPL_MASK = 3
HF_INHIBIT_IRQ = 1 << 3
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
HF_PE = 1 << 7
HF_MP = 1 << 9
HF_EM = 1 << 10
HF_TS = 1 << 11
HF_LMA = 1 << 14
HF_CS64 = 1 << 15
HF_OSFXSR = 1 << 22

# QEMU segment-cache flag bits (the descriptor's high dword)
DESC_B = 1 << 22
DESC_L = 1 << 21

SEG_INDEX = {"es": 0, "cs": 1, "ss": 2, "ds": 3, "fs": 4, "gs": 5, "ldt": 6, "tr": 7}
SEG_SIZE = 24


class Layout:
    """Offsets (bytes from the start of a saved context) of the fields used."""

    def __init__(self, regs: int, efer: int, error_code: int, old_exception: int) -> None:
        self.rip = regs + 128
        self.eflags = regs + 136
        self.hflags = regs + 176
        self.segs = regs + 184
        self.gdt = self.segs + 8 * SEG_SIZE
        self.idt = self.segs + 9 * SEG_SIZE
        self.cr = self.segs + 10 * SEG_SIZE
        self.efer = efer
        self.error_code = error_code
        self.is_int = error_code + 4
        self.old_exception = old_exception


class Blob:
    """A saved unicorn context opened for reading and patching."""

    __slots__ = ("ctx", "buf", "lay")

    def __init__(self, uc: Uc, lay: Layout) -> None:
        self.ctx = uc.context_save()
        self.buf = (ctypes.c_char * self.ctx.size).from_address(self.ctx.context.value)
        self.lay = lay

    def u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.buf, off)[0]

    def i32(self, off: int) -> int:
        return struct.unpack_from("<i", self.buf, off)[0]

    def u64(self, off: int) -> int:
        return struct.unpack_from("<Q", self.buf, off)[0]

    def put32(self, off: int, v: int) -> None:
        struct.pack_into("<I", self.buf, off, v & 0xFFFFFFFF)

    def put64(self, off: int, v: int) -> None:
        struct.pack_into("<Q", self.buf, off, v & 0xFFFFFFFFFFFFFFFF)

    def seg(self, name: str) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of a segment cache."""
        off = self.lay.segs + SEG_INDEX[name] * SEG_SIZE
        return self.u32(off) & 0xFFFF, self.u64(off + 8), self.u32(off + 16), self.u32(off + 20)

    def put_seg(self, name: str, selector: int, base: int, limit: int, flags: int) -> None:
        off = self.lay.segs + SEG_INDEX[name] * SEG_SIZE
        self.put32(off, selector)
        self.put64(off + 8, base)
        self.put32(off + 16, limit)
        self.put32(off + 20, flags)

    def restore(self, uc: Uc) -> None:
        uc.context_restore(self.ctx)


def _find(buf: bytes, value: int, fmt: str = "<Q") -> list[int]:
    pat = struct.pack(fmt, value)
    out, i = [], buf.find(pat)
    while i >= 0:
        out.append(i)
        i = buf.find(pat, i + 1)
    return out


def _raw(uc: Uc) -> bytes:
    ctx = uc.context_save()
    return ctypes.string_at(ctx.context.value, ctx.size)


@functools.lru_cache(maxsize=1)
def layout() -> Layout:
    """Probe a scratch CPU for the offsets; raises RuntimeError if unicorn's layout is not understood."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.reg_write(X.UC_X86_REG_RAX, 0x5A5A_1111_2222_3333)
    uc.reg_write(X.UC_X86_REG_FS_BASE, 0x5A5A_4444_5555_6666)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x5A5A_7777_8888_9999, 0x1234, 0))
    raw = _raw(uc)
    hits = _find(raw, 0x5A5A_1111_2222_3333)
    if len(hits) != 1:
        raise RuntimeError("cannot locate the general registers in unicorn's context")
    regs = hits[0]
    lay_probe = Layout(regs, 0, 0, 0)
    if _find(raw, 0x5A5A_4444_5555_6666) != [lay_probe.segs + 4 * SEG_SIZE + 8]:
        raise RuntimeError("unicorn's segment cache is not where expected")
    if _find(raw, 0x5A5A_7777_8888_9999) != [lay_probe.gdt + 8]:
        raise RuntimeError("unicorn's GDTR is not where expected")
    # EFER: diff two values of the MSR
    uc.reg_write(X.UC_X86_REG_MSR, (EFER_MSR, 0x501))
    a = _raw(uc)
    uc.reg_write(X.UC_X86_REG_MSR, (EFER_MSR, 0xD00))
    b = _raw(uc)
    efer = [i for i in range(0, len(a) - 8, 8)
            if struct.unpack_from("<Q", a, i)[0] & 0xFFF == 0x501 and struct.unpack_from("<Q", b, i)[0] & 0xFFF == 0xD00]
    if len(efer) != 1:
        raise RuntimeError("cannot locate EFER in unicorn's context")
    # error code and previous exception: a #GP(0x1238) from loading a bad selector
    uc2 = Uc(UC_ARCH_X86, UC_MODE_64)
    uc2.mem_map(0, 0x2000)
    uc2.mem_write(0x1000, b"\x66\xb8\x38\x12\x8e\xd8\xf4")  # mov ax,0x1238; mov ds,ax; hlt
    before = _raw(uc2)
    seen: list[bytes] = []

    def on_intr(u: Uc, intno: int, _: object) -> None:
        seen.append(_raw(u))
        u.emu_stop()

    uc2.hook_add(UC_HOOK_INTR, on_intr)
    uc2.emu_start(0x1000, 0x1007)
    if not seen:
        raise RuntimeError("unicorn raised no #GP for a bad selector")
    after = seen[0]
    err = [i for i in range(lay_probe.cr, len(after) - 4, 4)
           if struct.unpack_from("<i", after, i)[0] == 0x1238 and struct.unpack_from("<i", before, i)[0] != 0x1238]
    old = [i for i in range(0, len(after) - 4, 4)
           if struct.unpack_from("<i", before, i)[0] == -1 and struct.unpack_from("<i", after, i)[0] == 13]
    if len(err) != 1 or len(old) != 1:
        raise RuntimeError("cannot locate the exception error code in unicorn's context")
    return Layout(regs, efer[0], err[0], old[0])
