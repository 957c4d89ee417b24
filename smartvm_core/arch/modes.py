"""Put a boot vCPU straight into real, protected or long mode.

Loaders start guests in the state their boot protocol names (multiboot:
32-bit protected mode; Linux and PVH: 32- or 64-bit; ELF64: long mode)
without running any firmware. These helpers write the descriptor table and
page tables such a state needs into guest memory and return the
:class:`~smartvm_core.cpu.Registers` / :class:`~smartvm_core.cpu.SpecialRegisters`
the core applies to the boot vCPU. They never touch a vCPU.

Memory claimed (all addresses are parameters; defaults in brackets):

* ``gdt_addr`` [``0x500``]: :data:`GDT_AREA_SIZE` (256) bytes: the GDT
  (:data:`GDT_SIZE` bytes) and, at ``gdt_addr + TSS_OFFSET``, a 104-byte TSS
  with no I/O bitmap. 0x500 is the first byte above the BIOS data area.
* long mode, ``pml4_addr`` [``0x1000``]: ``(2 + map_gib) * 4096`` bytes: the
  PML4, one PDPT, then one page directory per GiB identity-mapped with 2 MiB
  pages (4 GiB: ``0x1000``-``0x6FFF``).
* protected mode with ``paging=True``, ``pd_addr`` [``0x1000``]: 4096
  bytes, one 32-bit page directory identity-mapping 4 GiB with 4 MiB pages
  (CR4.PSE).

The GDT (selectors follow the Linux boot protocol's ``__BOOT_CS``/``__BOOT_DS``):

====== ==================================================================
0x00   null
0x08   32-bit flat code (execute/read, accessed, D=1, G=1)
0x10   ``BOOT_CS``: the entry mode's code: 32-bit flat code, or 64-bit code (L=1)
0x18   ``BOOT_DS``: flat data (read/write, accessed, B=1, G=1)
0x20   64-bit code (L=1)
0x28   ``TSS_SELECTOR``: busy 32/64-bit TSS (16 bytes, the long-mode form)
====== ==================================================================

The segment registers hold exactly what loading these descriptors would
leave (type with the accessed bit set, present, DPL 0, limit 0xFFFFFFFF with
G=1), which is what the SDM's VM-entry guest-state checks and KVM expect;
TR is usable (busy TSS, type 11), LDTR is unusable; the IDT is empty (base
0, limit 0): the protocols enter with interrupts disabled.
"""

from __future__ import annotations

import struct

from ..cpu import (CR0_ET, CR0_PE, CR0_PG, CR4_PAE, CR4_PSE, EFER_LMA, EFER_LME, RFLAGS_FIXED,
                   DescriptorTable, Registers, Segment, SpecialRegisters)
from ..memory import GuestMemory

DEFAULT_GDT_ADDR = 0x500
DEFAULT_PML4_ADDR = 0x1000
DEFAULT_PD_ADDR = 0x1000

CODE32_SELECTOR = 0x08
BOOT_CS = 0x10
BOOT_DS = 0x18
CODE64_SELECTOR = 0x20
TSS_SELECTOR = 0x28
GDT_SIZE = 0x38
TSS_OFFSET = 0x40
TSS_SIZE = 0x68
GDT_AREA_SIZE = 0x100

PTE_PRESENT = 1 << 0
PTE_WRITE = 1 << 1
PTE_PS = 1 << 7
PAGE_SIZE = 4096
MAX_MAP_GIB = 512  # one PDPT

FLAT_LIMIT = 0xFFFFFFFF


def code32_segment(selector: int = BOOT_CS) -> Segment:
    return Segment(selector=selector, base=0, limit=FLAT_LIMIT, type=0xB, present=1, dpl=0,
                   db=1, s=1, l=0, g=1)


def code64_segment(selector: int = BOOT_CS) -> Segment:
    return Segment(selector=selector, base=0, limit=FLAT_LIMIT, type=0xB, present=1, dpl=0,
                   db=0, s=1, l=1, g=1)


def data_segment(selector: int = BOOT_DS) -> Segment:
    return Segment(selector=selector, base=0, limit=FLAT_LIMIT, type=0x3, present=1, dpl=0,
                   db=1, s=1, l=0, g=1)


def tss_segment(base: int) -> Segment:
    return Segment(selector=TSS_SELECTOR, base=base, limit=TSS_SIZE - 1, type=0xB, present=1,
                   dpl=0, db=0, s=0, l=0, g=0)


def unusable_ldt() -> Segment:
    return Segment(selector=0, base=0, limit=0, type=0x2, present=0, s=0, unusable=1)


def encode_descriptor(seg: Segment) -> int:
    """The 8-byte segment descriptor (SDM Vol. 3, 3.4.5) that loads as ``seg``.

    For a system descriptor in long mode (TSS, LDT) this is the low half; the
    high half holds base bits 63:32 (see :func:`encode_system_descriptor`).
    """
    limit = seg.limit >> 12 if seg.g else seg.limit
    if limit > 0xFFFFF:
        raise ValueError(f"segment limit {seg.limit:#x} does not fit a descriptor with G={seg.g}")
    access = seg.type | seg.s << 4 | seg.dpl << 5 | seg.present << 7
    flags = seg.avl | seg.l << 1 | seg.db << 2 | seg.g << 3
    base = seg.base & 0xFFFFFFFF
    return ((limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | access << 40
            | (limit >> 16) << 48 | flags << 52 | (base >> 24) << 56)


def encode_system_descriptor(seg: Segment) -> bytes:
    """A 16-byte long-mode system descriptor (TSS/LDT)."""
    return struct.pack("<QQ", encode_descriptor(seg), seg.base >> 32)


def decode_descriptor(raw: int, selector: int = 0) -> Segment:
    """The segment register contents after loading descriptor ``raw`` (inverse of :func:`encode_descriptor`)."""
    limit = (raw & 0xFFFF) | ((raw >> 48) & 0xF) << 16
    base = ((raw >> 16) & 0xFFFFFF) | ((raw >> 56) & 0xFF) << 24
    access = (raw >> 40) & 0xFF
    flags = (raw >> 52) & 0xF
    g = flags >> 3 & 1
    return Segment(selector=selector, base=base, limit=(limit << 12 | 0xFFF) if g else limit,
                   type=access & 0xF, s=access >> 4 & 1, dpl=access >> 5 & 3, present=access >> 7,
                   avl=flags & 1, l=flags >> 1 & 1, db=flags >> 2 & 1, g=g)


def write_gdt(memory: GuestMemory, gdt_addr: int, *, long_mode: bool) -> tuple[DescriptorTable, Segment]:
    """Write the GDT and TSS at ``gdt_addr``; returns GDTR and the TR contents."""
    if gdt_addr % 8:
        raise ValueError(f"GDT address {gdt_addr:#x} is not 8-byte aligned")
    boot_cs = code64_segment() if long_mode else code32_segment()
    tss = tss_segment(gdt_addr + TSS_OFFSET)
    table = struct.pack("<QQQQQ", 0, encode_descriptor(code32_segment(CODE32_SELECTOR)),
                        encode_descriptor(boot_cs), encode_descriptor(data_segment()),
                        encode_descriptor(code64_segment(CODE64_SELECTOR)))
    table += encode_system_descriptor(tss)
    assert len(table) == GDT_SIZE
    area = bytearray(GDT_AREA_SIZE)
    area[:GDT_SIZE] = table
    # TSS: all zero except the I/O map base, placed past the limit (no I/O bitmap).
    struct.pack_into("<H", area, TSS_OFFSET + 0x66, TSS_SIZE)
    memory.write(gdt_addr, area)
    return DescriptorTable(base=gdt_addr, limit=GDT_SIZE - 1), tss


def write_identity_page_tables(memory: GuestMemory, pml4_addr: int, map_gib: int = 4) -> int:
    """Write 4-level page tables identity-mapping ``[0, map_gib GiB)`` with 2 MiB pages.

    Returns the number of bytes written at ``pml4_addr``: PML4, PDPT, then
    ``map_gib`` page directories.
    """
    if pml4_addr % PAGE_SIZE:
        raise ValueError(f"PML4 address {pml4_addr:#x} is not page aligned")
    if not 1 <= map_gib <= MAX_MAP_GIB:
        raise ValueError(f"map_gib {map_gib} is outside 1..{MAX_MAP_GIB}")
    pdpt = pml4_addr + PAGE_SIZE
    pd0 = pdpt + PAGE_SIZE
    tables = bytearray((2 + map_gib) * PAGE_SIZE)
    struct.pack_into("<Q", tables, 0, pdpt | PTE_PRESENT | PTE_WRITE)
    for gib in range(map_gib):
        struct.pack_into("<Q", tables, PAGE_SIZE + 8 * gib, (pd0 + gib * PAGE_SIZE) | PTE_PRESENT | PTE_WRITE)
        base = (gib << 30) | PTE_PRESENT | PTE_WRITE | PTE_PS
        struct.pack_into("<512Q", tables, (2 + gib) * PAGE_SIZE, *(base + (i << 21) for i in range(512)))
    memory.write(pml4_addr, tables)
    return len(tables)


def write_pse_page_directory(memory: GuestMemory, pd_addr: int) -> int:
    """Write a 32-bit page directory identity-mapping 4 GiB with 4 MiB pages; returns its size."""
    if pd_addr % PAGE_SIZE:
        raise ValueError(f"page directory address {pd_addr:#x} is not page aligned")
    flags = PTE_PRESENT | PTE_WRITE | PTE_PS
    memory.write(pd_addr, struct.pack("<1024I", *((i << 22) | flags for i in range(1024))))
    return PAGE_SIZE


def _flat_sregs(code: Segment, gdtr: DescriptorTable, tr: Segment) -> SpecialRegisters:
    data = data_segment()
    return SpecialRegisters(
        cs=code, ds=data_segment(), es=data_segment(), fs=data_segment(), gs=data_segment(), ss=data,
        tr=tr, ldt=unusable_ldt(), gdt=gdtr, idt=DescriptorTable(base=0, limit=0))


def protected_mode_state(memory: GuestMemory, *, gdt_addr: int = DEFAULT_GDT_ADDR, paging: bool = False,
                         pd_addr: int = DEFAULT_PD_ADDR) -> tuple[Registers, SpecialRegisters]:
    """32-bit protected mode, flat segments, CS=``BOOT_CS`` (0x10), data 0x18.

    With ``paging`` a PSE page directory at ``pd_addr`` identity-maps 4 GiB
    and CR0.PG is set; otherwise paging is off (multiboot, Linux 32-bit entry).
    RIP, RSP and the other GPRs are zero and RFLAGS is 0x2 (IF clear): the
    loader fills in its protocol's values.
    """
    gdtr, tr = write_gdt(memory, gdt_addr, long_mode=False)
    sregs = _flat_sregs(code32_segment(), gdtr, tr)
    sregs.cr0 = CR0_PE | CR0_ET
    sregs.cr4 = 0
    sregs.efer = 0
    if paging:
        write_pse_page_directory(memory, pd_addr)
        sregs.cr0 |= CR0_PG
        sregs.cr3 = pd_addr
        sregs.cr4 = CR4_PSE
    return Registers(rflags=RFLAGS_FIXED), sregs


def long_mode_state(memory: GuestMemory, *, gdt_addr: int = DEFAULT_GDT_ADDR, pml4_addr: int = DEFAULT_PML4_ADDR,
                    map_gib: int = 4) -> tuple[Registers, SpecialRegisters]:
    """64-bit long mode: identity paging of the first ``map_gib`` GiB, CS=``BOOT_CS`` (0x10, L=1).

    CR0 = PE|PG|ET, CR4 = PAE, EFER = LME|LMA, CR3 = ``pml4_addr``. RFLAGS
    is 0x2 and the GPRs zero.
    """
    gdtr, tr = write_gdt(memory, gdt_addr, long_mode=True)
    write_identity_page_tables(memory, pml4_addr, map_gib)
    sregs = _flat_sregs(code64_segment(), gdtr, tr)
    sregs.cr0 = CR0_PE | CR0_PG | CR0_ET
    sregs.cr3 = pml4_addr
    sregs.cr4 = CR4_PAE
    sregs.efer = EFER_LME | EFER_LMA
    return Registers(rflags=RFLAGS_FIXED), sregs


def real_mode_state(cs: int, ip: int, *, ds: int | None = 0, es: int | None = None, ss: int | None = None,
                    sp: int = 0) -> tuple[Registers, SpecialRegisters]:
    """Real mode at ``cs:ip`` with the other segments at ``ds`` (``es``/``ss``/``fs``/``gs`` default to ``ds``).

    CR0 is ET only (caches on, as firmware leaves it); the descriptor tables
    are the real-mode IVT (base 0, limit 0x3FF) and an empty GDT.
    """
    if not (0 <= cs <= 0xFFFF and 0 <= ip <= 0xFFFF and 0 <= sp <= 0xFFFF):
        raise ValueError(f"real-mode entry {cs:#x}:{ip:#x} (sp {sp:#x}) is out of 16-bit range")
    ds = 0 if ds is None else ds
    es = ds if es is None else es
    ss = ds if ss is None else ss
    sregs = SpecialRegisters(
        cs=Segment.real_mode(cs, code=True), ds=Segment.real_mode(ds), es=Segment.real_mode(es),
        fs=Segment.real_mode(ds), gs=Segment.real_mode(ds), ss=Segment.real_mode(ss),
        gdt=DescriptorTable(base=0, limit=0xFFFF), idt=DescriptorTable(base=0, limit=0x3FF))
    sregs.cr0 = CR0_ET
    return Registers(rip=ip, rsp=sp, rflags=RFLAGS_FIXED), sregs
