"""DOS .COM program: a PSP and the program at offset 0x100 of one segment.

The PSP goes at segment :data:`DEFAULT_SEGMENT` (0x1000, linear 0x10000),
or at ``address`` (a linear, 16-byte aligned address below 1 MiB). The
program gets the whole 64 KiB segment, as under DOS:

* PSP 0x00: ``INT 20h``; 0x02: first segment past the program's memory
  (the top of conventional RAM, at most 0xA000); 0x0A: terminate address;
  0x2C: environment segment (0: none); 0x50: ``INT 21h; RETF``; 0x5C and
  0x6C: two empty FCBs; 0x80: command-tail length, 0x81: the tail (the
  ``cmdline``, with DOS's leading space), ended by CR (at most 126 bytes).
* Entry: CS=DS=ES=SS=segment, IP=0x100, SP=0xFFFE with a zero word at
  0xFFFE (a near RET reaches the INT 20h at PSP:0), AX=0 (both FCB drives
  valid), the other GPRs zero.

The DOS services themselves (INT 20h/21h) come from the v8086 plugin, which
finds the PSP in ``info``.
"""

from __future__ import annotations

import struct

from smartvm_core.arch import modes
from smartvm_core.images import ImageSpec, LoadResult
from smartvm_core.memory import GuestMemory

from ..layout import Placement, fail

DEFAULT_SEGMENT = 0x1000
PSP_SIZE = 0x100
SEGMENT_SIZE = 0x10000
MAX_PROGRAM = SEGMENT_SIZE - PSP_SIZE - 2  # leaves the zero word at 0xFFFE
MAX_TAIL = 126
CONVENTIONAL_TOP = 0xA0000


def probe(image: ImageSpec) -> bool:
    return image.path.suffix.lower() == ".com" and 0 < len(image.data) <= MAX_PROGRAM \
        and image.data[:2] not in (b"MZ", b"ZM")


def build_psp(segment: int, memory_top_segment: int, tail: bytes) -> bytes:
    psp = bytearray(PSP_SIZE)
    psp[0:2] = b"\xCD\x20"                      # INT 20h
    struct.pack_into("<H", psp, 0x02, memory_top_segment)
    struct.pack_into("<HH", psp, 0x0A, 0x0000, segment)  # INT 22h terminate address: PSP:0
    struct.pack_into("<H", psp, 0x16, segment)  # parent PSP: itself (the first program)
    psp[0x18:0x2C] = b"\x01\x01\x01\x00\x02" + b"\xFF" * 15  # job file table: stdin/out/err, aux, prn
    struct.pack_into("<H", psp, 0x32, 20)       # JFT size
    struct.pack_into("<HH", psp, 0x34, 0x18, segment)  # JFT pointer
    psp[0x50:0x53] = b"\xCD\x21\xCB"            # INT 21h; RETF
    for fcb in (0x5C, 0x6C):
        psp[fcb + 1:fcb + 12] = b" " * 11       # drive 0 (default), blank name
    psp[0x80] = len(tail)
    psp[0x81:0x81 + len(tail)] = tail
    psp[0x81 + len(tail)] = 0x0D
    return bytes(psp)


def load(memory: GuestMemory, image: ImageSpec) -> LoadResult:
    data = image.data
    if not data:
        raise fail(image, "size", "the program is empty")
    if data[:2] in (b"MZ", b"ZM"):
        raise fail(image, "signature", "this is an MZ .EXE program, not a .COM image (only .COM is supported)")
    if len(data) > MAX_PROGRAM:
        raise fail(image, "size", f"a .COM program is at most {MAX_PROGRAM} bytes, this one has {len(data)}")
    base = DEFAULT_SEGMENT << 4 if image.address is None else image.address
    if base % 16 or not 0 < base <= 0x100000 - SEGMENT_SIZE:
        raise fail(image, "address", f"the PSP address {base:#x} must be 16-byte aligned, above 0 and leave "
                   "a 64 KiB segment below 1 MiB")
    segment = base >> 4
    tail = image.cmdline
    if tail and tail[0] not in " \t":
        tail = " " + tail
    try:
        raw_tail = tail.encode("ascii")
    except UnicodeEncodeError as e:
        raise fail(image, "cmdline", "the command tail must be ASCII") from e
    if len(raw_tail) > MAX_TAIL or b"\r" in raw_tail:
        raise fail(image, "cmdline", f"the command tail holds at most {MAX_TAIL} characters and no CR")
    place = Placement(memory, image)
    place.claim(base, SEGMENT_SIZE, "the program segment", "address")
    # Conventional memory above the program segment belongs to the program too.
    top = base + SEGMENT_SIZE
    while top < CONVENTIONAL_TOP and place.in_ram(top, 1):
        top = min(memory.region_at(top).end, CONVENTIONAL_TOP)
    memory.fill(base, SEGMENT_SIZE)
    memory.write(base, build_psp(segment, top >> 4, raw_tail))
    memory.write(base + PSP_SIZE, data)
    regs, sregs = modes.real_mode_state(segment, PSP_SIZE, ds=segment, sp=0xFFFE)
    return LoadResult(loader="com", start=base, end=base + SEGMENT_SIZE, regs=regs, sregs=sregs,
                      info={"psp_segment": segment, "program_size": len(data), "memory_top_segment": top >> 4,
                            "command_tail": tail, "env_segment": 0})
