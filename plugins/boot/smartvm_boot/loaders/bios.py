"""BIOS ROM: firmware mapped read-only at the top of 4 GiB, entered at the reset vector.

As on a PC (and QEMU's ``-bios``): the ROM of ``size`` bytes is mapped at
``4 GiB - size``; its last ``min(size, 128 KiB)`` are aliased read-only just
below 1 MiB (0xE0000-0xFFFFF for 128 KiB and more), where real-mode code
runs. The vCPU starts in the reset state: CS selector 0xF000 with base
0xFFFF0000, IP 0xFFF0, so its first instruction is the ROM's last 16 bytes.

The ROM must be a multiple of 4 KiB (64 KiB to 16 MiB) and its reset
vector must hold a jump (``JMP FAR``, ``JMP NEAR`` or ``JMP SHORT``).
"""

from __future__ import annotations

from smartvm_core.cpu import Registers, Segment, SpecialRegisters
from smartvm_core.images import ImageSpec, LoadResult
from smartvm_core.memory import GuestMemory

from ..layout import FOUR_GIB, fail

MIN_SIZE = 64 << 10
MAX_SIZE = 16 << 20
ISA_ALIAS = 128 << 10
ONE_MIB = 0x100000
JUMP_OPCODES = (0xEA, 0xE9, 0xEB)


def probe(image: ImageSpec) -> bool:
    data = image.data
    size = len(data)
    return (MIN_SIZE <= size <= MAX_SIZE and size % 0x1000 == 0 and data[size - 16] in JUMP_OPCODES
            and image.path.suffix.lower() in (".rom", ".bin", ".fd"))


def load(memory: GuestMemory, image: ImageSpec) -> LoadResult:
    data = image.data
    size = len(data)
    if not MIN_SIZE <= size <= MAX_SIZE or size % 0x1000:
        raise fail(image, "size", f"a BIOS ROM is a multiple of 4 KiB between 64 KiB and 16 MiB, "
                   f"this one has {size} bytes")
    if data[size - 16] not in JUMP_OPCODES:
        raise fail(image, "reset vector", f"the byte at offset {size - 16:#x} is {data[size - 16]:#04x}, "
                   "not a jump: this is not a BIOS image")
    base = FOUR_GIB - size
    isa = min(size, ISA_ALIAS)
    for gpa, length, what in ((base, size, "the ROM"), (ONE_MIB - isa, isa, "its alias below 1 MiB")):
        for r in memory.regions:
            if r.gpa < gpa + length and gpa < r.end:
                raise fail(image, "address", f"{what} [{gpa:#x}, {gpa + length:#x}) overlaps memory region "
                           f"{r.name!r} [{r.gpa:#x}, {r.end:#x})")
    rom = memory.add_rom(base, data, name="bios")
    memory.add_alias(ONE_MIB - isa, rom, size - isa, isa, name="bios-isa")
    sregs = SpecialRegisters()
    sregs.cs = Segment(selector=0xF000, base=0xFFFF0000, limit=0xFFFF, type=0xB)
    regs = Registers(rip=0xFFF0)
    return LoadResult(loader="bios", start=base, end=FOUR_GIB, regs=regs, sregs=sregs,
                      info={"rom_size": size, "isa_alias": ONE_MIB - isa})
