"""Entry states of smartvm_core.arch.modes, checked against the SDM and run on unicorn's CPU."""

from __future__ import annotations

import struct

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn.x86_const import (UC_X86_REG_CR0, UC_X86_REG_CR3, UC_X86_REG_CR4, UC_X86_REG_CS, UC_X86_REG_DS,
                               UC_X86_REG_EAX, UC_X86_REG_GDTR, UC_X86_REG_RAX, UC_X86_REG_SS)

from smartvm_core.arch import modes
from smartvm_core.cpu import (CR0_PE, CR0_PG, CR4_PAE, CR4_PSE, EFER_LMA, EFER_LME, RFLAGS_FIXED, Segment,
                              SpecialRegisters, cpu_mode)
from smartvm_core.memory import GuestMemory

RAM = 16 << 20
SENTINEL = 0xCC


@pytest.fixture
def memory():
    mem = GuestMemory()
    mem.add_ram(0, RAM)
    mem.fill(0, RAM, SENTINEL)
    yield mem
    mem.close()


def untouched_outside(mem: GuestMemory, claimed: list[tuple[int, int]]) -> bool:
    data = mem.read(0, 0x20000)
    for i, b in enumerate(data):
        if b != SENTINEL and not any(a <= i < a + n for a, n in claimed):
            return False
    return True


def check_sdm_guest_state(s: SpecialRegisters) -> list[str]:
    """The VM-entry guest-state checks on segments and control registers (SDM Vol. 3, 27.3.1)."""
    errors = []
    ia32e = bool(s.efer & EFER_LMA)

    def limit_g_ok(seg: Segment) -> bool:
        if seg.limit & 0xFFF != 0xFFF and seg.g:
            return False
        if seg.limit >> 20 and not seg.g:
            return False
        return True

    if s.cr0 & CR0_PG and not s.cr0 & CR0_PE:
        errors.append("CR0.PG without PE")
    if ia32e and not (s.cr4 & CR4_PAE and s.efer & EFER_LME and s.cr0 & CR0_PG):
        errors.append("IA-32e mode without PAE/LME/PG")
    cs = s.cs
    if cs.type not in (9, 11, 13, 15) or not cs.s or not cs.present or not limit_g_ok(cs):
        errors.append(f"CS {cs}")
    if ia32e and cs.l and cs.db:
        errors.append("CS.L and CS.D both set")
    if s.ss.type not in (3, 7) or s.ss.dpl != cs.dpl or not s.ss.present or not limit_g_ok(s.ss):
        errors.append(f"SS {s.ss}")
    for name in ("ds", "es", "fs", "gs"):
        seg = getattr(s, name)
        if seg.unusable:
            continue
        if not seg.type & 1 or not seg.s or not seg.present or not limit_g_ok(seg) or (seg.type & 8 and not seg.type & 2):
            errors.append(f"{name} {seg}")
    tr = s.tr
    if tr.unusable or tr.s or not tr.present or not limit_g_ok(tr) or tr.selector & 4:
        errors.append(f"TR {tr}")
    if tr.type not in ((11,) if ia32e else (3, 11)):
        errors.append(f"TR type {tr.type}")
    if not s.ldt.unusable and (s.ldt.type != 2 or s.ldt.s):
        errors.append("LDTR")
    if s.gdt.limit > 0xFFFF or s.idt.limit > 0xFFFF:
        errors.append("descriptor table limit")
    return errors


def gdt_entry(mem: GuestMemory, sregs: SpecialRegisters, selector: int) -> Segment:
    assert selector + 7 <= sregs.gdt.limit
    return modes.decode_descriptor(mem.read_u64(sregs.gdt.base + selector), selector)


def walk_4level(mem: GuestMemory, cr3: int, va: int) -> int | None:
    entry = mem.read_u64(cr3 + 8 * (va >> 39 & 511))
    for shift in (30, 21):
        if not entry & 1:
            return None
        table = entry & 0x000FFFFFFFFFF000
        entry = mem.read_u64(table + 8 * (va >> shift & 511))
        if entry & modes.PTE_PS:
            if shift == 30:
                return (entry & 0x000FFFFFC0000000) | (va & ((1 << 30) - 1))
            return (entry & 0x000FFFFFFFE00000) | (va & ((1 << 21) - 1))
    raise AssertionError("expected a large page at the PD level")


@pytest.mark.parametrize("state", ["protected", "protected-paging", "long"])
def test_gdt_matches_loaded_segments(memory, state):
    if state == "long":
        _, s = modes.long_mode_state(memory, gdt_addr=0x800)
    else:
        _, s = modes.protected_mode_state(memory, gdt_addr=0x800, paging=state.endswith("paging"))
    assert s.gdt.base == 0x800 and s.gdt.limit == modes.GDT_SIZE - 1
    # Every segment register holds what loading its selector from this GDT gives.
    assert gdt_entry(memory, s, s.cs.selector) == s.cs
    for name in ("ds", "es", "fs", "gs", "ss"):
        assert gdt_entry(memory, s, getattr(s, name).selector) == getattr(s, name)
    tr = gdt_entry(memory, s, s.tr.selector)
    tr.base |= memory.read_u64(s.gdt.base + s.tr.selector + 8) << 32
    assert tr == s.tr
    assert s.tr.base == 0x800 + modes.TSS_OFFSET and s.tr.limit == 0x67
    # The TSS's I/O map base lies past its limit: no I/O permission bitmap.
    assert memory.read_u16(s.tr.base + 0x66) > s.tr.limit
    # The Linux boot protocol's selectors.
    assert s.cs.selector == modes.BOOT_CS == 0x10 and s.ds.selector == modes.BOOT_DS == 0x18
    assert check_sdm_guest_state(s) == []


def test_protected_mode_registers(memory):
    regs, s = modes.protected_mode_state(memory)
    assert cpu_mode(s, regs.rflags) == "protected32"
    assert s.cr0 & (CR0_PE | CR0_PG) == CR0_PE and s.efer == 0
    assert (s.cs.type, s.cs.db, s.cs.g, s.cs.limit, s.cs.base) == (0xB, 1, 1, 0xFFFFFFFF, 0)
    assert (s.ds.type, s.ds.db, s.ds.g, s.ds.limit) == (0x3, 1, 1, 0xFFFFFFFF)
    assert regs.rflags == RFLAGS_FIXED
    assert untouched_outside(memory, [(modes.DEFAULT_GDT_ADDR, modes.GDT_AREA_SIZE)])


def test_protected_mode_paging(memory):
    regs, s = modes.protected_mode_state(memory, paging=True, pd_addr=0x4000)
    assert s.cr0 & CR0_PG and s.cr4 & CR4_PSE and not s.cr4 & CR4_PAE and s.cr3 == 0x4000
    for va in (0, 0x7C00, 0x400000 + 5, 0xC0001234, 0xFFFFFFFF):
        pde = memory.read_u32(0x4000 + 4 * (va >> 22))
        assert pde & (modes.PTE_PRESENT | modes.PTE_PS | modes.PTE_WRITE) == 0x83
        assert (pde & 0xFFC00000) | (va & 0x3FFFFF) == va
    assert untouched_outside(memory, [(modes.DEFAULT_GDT_ADDR, modes.GDT_AREA_SIZE), (0x4000, 0x1000)])


@pytest.mark.parametrize("gib", [1, 4, 6])
def test_long_mode_identity_map(memory, gib):
    regs, s = modes.long_mode_state(memory, pml4_addr=0x10000, map_gib=gib)
    assert cpu_mode(s, regs.rflags) == "long"
    assert s.efer == EFER_LME | EFER_LMA and s.cr4 & CR4_PAE and s.cr0 & CR0_PG and s.cr3 == 0x10000
    assert (s.cs.l, s.cs.db) == (1, 0)
    top = gib << 30
    for va in (0, 0x1FFFFF, 0x200000, 0x12345678 % top, top - 1):
        assert walk_4level(memory, s.cr3, va) == va
    assert walk_4level(memory, s.cr3, top) is None
    assert untouched_outside(memory, [(modes.DEFAULT_GDT_ADDR, modes.GDT_AREA_SIZE),
                                      (0x10000, (2 + gib) * 4096)])


def test_bad_arguments_refused(memory):
    with pytest.raises(ValueError):
        modes.long_mode_state(memory, pml4_addr=0x1001)
    with pytest.raises(ValueError):
        modes.long_mode_state(memory, map_gib=0)
    with pytest.raises(ValueError):
        modes.protected_mode_state(memory, gdt_addr=0x501)
    with pytest.raises(ValueError):
        modes.real_mode_state(0x10000, 0)


def test_real_mode_state():
    regs, s = modes.real_mode_state(0x1000, 0x100, ds=0x1000, sp=0xFFFE)
    assert cpu_mode(s, regs.rflags) == "real"
    assert (regs.rip, regs.rsp) == (0x100, 0xFFFE)
    for name in ("cs", "ds", "es", "fs", "gs", "ss"):
        seg = getattr(s, name)
        assert (seg.selector, seg.base, seg.limit) == (0x1000, 0x10000, 0xFFFF)
    assert s.cs.type == 0xB and s.ds.type == 3
    assert s.idt.base == 0 and s.idt.limit == 0x3FF
    regs, s = modes.real_mode_state(0, 0x7C00)
    assert s.cs.base == 0 and s.ss.selector == 0 and regs.rip == 0x7C00


def test_descriptor_round_trip():
    for seg in (modes.code32_segment(), modes.code64_segment(), modes.data_segment(),
                modes.tss_segment(0x12345678), Segment(selector=0, base=0xABCDE000, limit=0x1234, type=3)):
        seg.selector = 0
        assert modes.decode_descriptor(modes.encode_descriptor(seg)) == seg
    # The flat code descriptor everyone knows: 0x00CF9B000000FFFF.
    assert modes.encode_descriptor(modes.code32_segment()) == 0x00CF9B000000FFFF
    assert modes.encode_descriptor(modes.code64_segment()) == 0x00AF9B000000FFFF
    assert modes.encode_descriptor(modes.data_segment()) == 0x00CF93000000FFFF


# -- run the state on a real CPU model --------------------------------------------

def start_unicorn(memory: GuestMemory, mode: int, s: SpecialRegisters) -> Uc:
    uc = Uc(UC_ARCH_X86, mode)
    uc.mem_map_ptr(0, RAM, UC_PROT_ALL, memory.regions[0].host_address)
    uc.mem_map(0xC0000000, 0x1000)
    uc.reg_write(UC_X86_REG_GDTR, (0, s.gdt.base, s.gdt.limit, 0))
    uc.reg_write(UC_X86_REG_CR3, s.cr3)
    uc.reg_write(UC_X86_REG_CR4, s.cr4)
    uc.msr_write(0xC0000080, s.efer)
    uc.reg_write(UC_X86_REG_CR0, s.cr0)
    # Writing a selector makes unicorn load (and check) the descriptor from our GDT.
    uc.reg_write(UC_X86_REG_CS, s.cs.selector)
    uc.reg_write(UC_X86_REG_SS, s.ss.selector)
    uc.reg_write(UC_X86_REG_DS, s.ds.selector)
    faults = []
    uc.hook_add(UC_HOOK_INTR, lambda u, n, _: (faults.append(n), u.emu_stop()))
    uc.faults = faults
    return uc


def test_long_mode_runs_64bit_code(memory):
    _, s = modes.long_mode_state(memory)
    uc = start_unicorn(memory, UC_MODE_64, s)
    # mov rax, 0x1122334455667788 (REX.W: only decodes so in 64-bit mode);
    # mov rbx, 0xC0000000; mov [rbx], eax  -- above 3 GiB through the identity map
    code = (b"\x48\xb8" + struct.pack("<Q", 0x1122334455667788) + b"\xbb\x00\x00\x00\xc0"
            + b"\x89\x03")
    memory.write(0x100000, code)
    uc.emu_start(0x100000, 0x100000 + len(code))
    assert uc.faults == []
    assert uc.reg_read(UC_X86_REG_RAX) == 0x1122334455667788
    assert bytes(uc.mem_read(0xC0000000, 4)) == struct.pack("<I", 0x55667788)


@pytest.mark.parametrize("paging", [False, True])
def test_protected_mode_runs_32bit_code(memory, paging):
    _, s = modes.protected_mode_state(memory, paging=paging)
    uc = start_unicorn(memory, UC_MODE_32, s)
    # mov eax, 0xC0000000; mov dword [eax], 0x12345678; mov eax, [0x7000]
    code = b"\xb8\x00\x00\x00\xc0" + b"\xc7\x00\x78\x56\x34\x12" + b"\xa1\x00\x70\x00\x00"
    memory.write(0x7000, struct.pack("<I", 0xCAFEF00D))
    memory.write(0x100000, code)
    uc.emu_start(0x100000, 0x100000 + len(code))
    assert uc.faults == []
    assert bytes(uc.mem_read(0xC0000000, 4)) == struct.pack("<I", 0x12345678)
    assert uc.reg_read(UC_X86_REG_EAX) == 0xCAFEF00D
