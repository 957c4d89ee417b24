"""The monitor's own memory: GDT, IDT, TSS, protected-mode stubs, and the real-mode stubs.

The monitor area lies at :data:`MONITOR_BASE` (1 MiB + 64 KiB), the first
byte an 8086 program cannot address (FFFF:FFFF is 0x10FFEF), so the program
can neither see nor change it. Its layout (offsets from the base):

========= ===================================================================
0x0000    GDT: null, 0x08 32-bit ring-0 code, 0x10 ring-0 data (both flat),
          0x18 the 32-bit TSS
0x0100    IDT: 256 32-bit interrupt gates to the stubs (DPL 0; vectors 3 and
          4 have DPL 3 so INT3 and INTO reach their stubs from the program)
0x1000    TSS (104 bytes, SS0:ESP0 = 0x10:top of the ring-0 stack), the
          interrupt redirection bitmap (32 bytes, all set: every INT n traps)
          and the I/O permission bitmap (8 KiB + the 0xFF terminator)
0x3800    the common stub: ``OUT pm_port, AL; IRETD``
0x4000    one 16-byte stub per vector: ``PUSH vector; JMP common``
0x5000    the ring-0 stack (grows down from 0x8000)
========= ===================================================================

A stub's frame, as the monitor reads it at the doorbell (ESP points at it):
the vector, the error code if the CPU pushed one, then the virtual-8086
frame EIP, CS, EFLAGS, ESP, SS, ES, DS, FS, GS (SDM Vol. 3, Figure 20-2).
Whether an error code is there follows from ESP (the frame ends at ESP0),
so IRQ 5 (vector 13 under the BIOS's PIC set-up) and #GP are told apart.
The monitor sets ESP to the EIP slot before the stub's IRETD.

The real-mode stubs live in the BIOS segment F000 at :data:`RM_STUB_OFFSET`:
4 bytes per vector, ``OUT rm_port, AL; IRET; NOP``. The program's IVT
points at them initially; the monitor recognises a doorbell from there by
CS:IP and serves the vector that IP names.
"""

from __future__ import annotations

import struct

MONITOR_BASE = 0x110000
MONITOR_SIZE = 0x8000
GDT_OFFSET = 0x0000
IDT_OFFSET = 0x0100
TSS_OFFSET = 0x1000
COMMON_STUB_OFFSET = 0x3800
STUBS_OFFSET = 0x4000
STUB_SIZE = 16
STACK_TOP_OFFSET = 0x8000

CODE_SELECTOR = 0x08
DATA_SELECTOR = 0x10
TSS_SELECTOR = 0x18
GDT_LIMIT = 0x1F

TSS_SIZE = 0x68
REDIRECTION_OFFSET = TSS_SIZE          # 32 bytes before the I/O bitmap
IOPB_OFFSET = TSS_SIZE + 32
IOPB_SIZE = 0x2000
TSS_LIMIT = IOPB_OFFSET + IOPB_SIZE    # includes the terminating 0xFF byte

BIOS_SEGMENT = 0xF000
BIOS_BASE = 0xF0000
BIOS_SIZE = 0x10000
RM_STUB_OFFSET = 0xE000
RM_STUB_SIZE = 4
#: where the BIOS's reset vector would be; a far jump to the stubs' end (for completeness)
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})


def descriptor(base: int, limit: int, access: int, flags: int) -> bytes:
    return struct.pack("<HHBBBB", limit & 0xFFFF, base & 0xFFFF, (base >> 16) & 0xFF, access,
                       ((limit >> 16) & 0xF) | (flags << 4), (base >> 24) & 0xFF)


def gate(offset: int, selector: int, dpl: int) -> bytes:
    """A 32-bit interrupt gate (type 0xE, present)."""
    return struct.pack("<HHBBH", offset & 0xFFFF, selector, 0, 0x8E | dpl << 5, offset >> 16)


def build_monitor_area(base: int, pm_port: int, trapped_ports: set[int]) -> bytes:
    """The whole monitor area (see the module docstring) for ``base``."""
    area = bytearray(MONITOR_SIZE)
    tss_base = base + TSS_OFFSET
    gdt = (bytes(8) + descriptor(0, 0xFFFFF, 0x9B, 0xC) + descriptor(0, 0xFFFFF, 0x93, 0xC)
           + descriptor(tss_base, TSS_LIMIT, 0x89, 0x0))
    area[GDT_OFFSET:GDT_OFFSET + len(gdt)] = gdt
    for vector in range(256):
        stub = base + STUBS_OFFSET + vector * STUB_SIZE
        dpl = 3 if vector in (3, 4) else 0
        area[IDT_OFFSET + vector * 8:IDT_OFFSET + vector * 8 + 8] = gate(stub, CODE_SELECTOR, dpl)
        code = b"\x68" + struct.pack("<I", vector)                      # push vector
        jmp_from = stub + 10
        code += b"\xE9" + struct.pack("<i", (base + COMMON_STUB_OFFSET) - jmp_from)  # jmp common
        off = STUBS_OFFSET + vector * STUB_SIZE
        area[off:off + len(code)] = code
    area[COMMON_STUB_OFFSET:COMMON_STUB_OFFSET + 3] = bytes((0xE6, pm_port & 0xFF, 0xCF))  # out imm8, al; iretd
    tss = bytearray(TSS_SIZE)
    struct.pack_into("<I", tss, 4, base + STACK_TOP_OFFSET)  # ESP0
    struct.pack_into("<I", tss, 8, DATA_SELECTOR)             # SS0
    struct.pack_into("<H", tss, 0x66, IOPB_OFFSET)
    area[TSS_OFFSET:TSS_OFFSET + TSS_SIZE] = tss
    area[TSS_OFFSET + REDIRECTION_OFFSET:TSS_OFFSET + IOPB_OFFSET] = b"\xFF" * 32
    iopb = bytearray(IOPB_SIZE + 1)
    for port in trapped_ports:
        iopb[port >> 3] |= 1 << (port & 7)
    iopb[IOPB_SIZE] = 0xFF
    area[TSS_OFFSET + IOPB_OFFSET:TSS_OFFSET + IOPB_OFFSET + len(iopb)] = iopb
    return bytes(area)


def rm_stubs(rm_port: int) -> bytes:
    """256 real-mode stubs: ``OUT rm_port, AL; IRET; NOP``."""
    return bytes((0xE6, rm_port & 0xFF, 0xCF, 0x90)) * 256


def rm_stub_vector(cs: int, ip: int) -> int | None:
    """The vector whose real-mode stub holds CS:IP (at the OUT or just past it), or None."""
    linear = (cs << 4) + ip
    start = BIOS_BASE + RM_STUB_OFFSET
    if not start <= linear < start + 256 * RM_STUB_SIZE:
        return None
    return (linear - start) // RM_STUB_SIZE


def rm_stub_address(vector: int) -> tuple[int, int]:
    return BIOS_SEGMENT, RM_STUB_OFFSET + vector * RM_STUB_SIZE


#: the ways the monitor can run a program (docs/v8086.md)
ROUTES = ("exception-bitmap", "stub", "real-mode")
