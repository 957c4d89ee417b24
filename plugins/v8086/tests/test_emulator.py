"""The emulator against the SDM, on plain program states (no engine)."""

import pytest

from smartvm_core.memory import GuestMemory
from smartvm_v8086.emulator import Emulator, Outcome, ivt_entry, reflect
from smartvm_v8086.state import (FLAG_AC, FLAG_CF, FLAG_DF, FLAG_FIXED, FLAG_ID, FLAG_IF, FLAG_IOPL, FLAG_NT,
                                 FLAG_OF, FLAG_TF, FLAG_VM, FLAG_ZF, ProgramMemory, ProgramState)

CS, SS = 0x1000, 0x2000


@pytest.fixture
def mem():
    m = GuestMemory()
    m.add_ram(0, 0x110000)
    yield ProgramMemory(m)
    m.close()


class Ports:
    def __init__(self):
        self.outs = []
        self.ins = []
        self.value = 0x12345678

    def io_in(self, port, size):
        self.ins.append((port, size))
        return self.value & ((1 << (8 * size)) - 1)

    def io_out(self, port, size, value):
        self.outs.append((port, size, value))


@pytest.fixture
def ports():
    return Ports()


@pytest.fixture
def emu(mem, ports):
    return Emulator(mem, ports.io_in, ports.io_out)


def run(emu, mem, code, state=None, **kw):
    state = state or ProgramState(cs=CS, ss=SS, ds=0x3000, es=0x4000, eip=0x100, **kw)
    if state.sp == 0:
        state.sp = 0x1000
    mem.write_bytes((state.cs << 4) + state.eip, code)
    return emu.step(state), state


def stack_word(mem, state, index=0):
    return mem.read((state.ss << 4) + state.sp + 2 * index, 2)


def test_cli_sti_change_only_the_virtual_if(emu, mem):
    out, s = run(emu, mem, b"\xFA", eflags=FLAG_IF | FLAG_CF)
    assert out == Outcome.RESUME and not s.eflags & FLAG_IF and s.eflags & FLAG_CF and s.eip == 0x101
    out, s = run(emu, mem, b"\xFB", eflags=0)
    assert out == Outcome.STI and s.eflags & FLAG_IF and s.eip == 0x101
    out, s = run(emu, mem, b"\xFB", eflags=FLAG_IF)
    assert out == Outcome.RESUME  # IF already set: no interrupt shadow to honour


def test_pushf_pushes_virtual_if_and_real_iopl(emu, mem):
    s = ProgramState(cs=CS, ss=SS, eip=0x100, eflags=FLAG_IF | FLAG_ZF, iopl=0)
    s.sp = 0x1000
    out, s = run(emu, mem, b"\x9C", s)
    assert out == Outcome.RESUME and s.sp == 0x0FFE
    assert stack_word(mem, s) == FLAG_FIXED | FLAG_IF | FLAG_ZF  # IOPL 0 shown


def test_pushfd_clears_vm_and_rf_in_the_image(emu, mem):
    s = ProgramState(cs=CS, ss=SS, eip=0x100, eflags=FLAG_AC | FLAG_IF, iopl=0)
    s.sp = 0x1000
    out, s = run(emu, mem, b"\x66\x9C", s)
    assert s.sp == 0x0FFC
    value = mem.read((SS << 4) + s.sp, 4)
    assert value & FLAG_AC and value & FLAG_IF and not value & (FLAG_VM | (1 << 16))


def test_pushf_with_vme_shows_iopl_3(emu, mem):
    s = ProgramState(cs=CS, ss=SS, eip=0x100, eflags=FLAG_IF, vme=True)
    s.sp = 0x1000
    run(emu, mem, b"\x9C", s)
    assert stack_word(mem, s) & FLAG_IOPL == FLAG_IOPL and stack_word(mem, s) & FLAG_IF


def test_popf_loads_flags_but_keeps_iopl(emu, mem):
    s = ProgramState(cs=CS, ss=SS, eip=0x100, eflags=0)
    s.sp = 0x0FFE
    mem.write((SS << 4) + 0x0FFE, 2, 0xFFFF)
    out, s = run(emu, mem, b"\x9D", s)
    assert s.sp == 0x1000
    assert s.eflags & FLAG_IF and s.eflags & FLAG_TF and s.eflags & FLAG_NT and s.eflags & FLAG_OF
    assert not s.eflags & FLAG_IOPL  # virtual-8086 POPF never changes IOPL
    assert not s.eflags & (1 << 15) and not s.eflags & (1 << 3) and not s.eflags & (1 << 5)
    assert s.eflags & FLAG_FIXED


def test_popfd_changes_ac_and_id_but_not_vm(emu, mem):
    s = ProgramState(cs=CS, ss=SS, eip=0x100, eflags=0)
    s.sp = 0x0FFC
    mem.write((SS << 4) + 0x0FFC, 4, FLAG_AC | FLAG_ID | FLAG_VM | FLAG_IF | FLAG_IOPL)
    run(emu, mem, b"\x66\x9D", s)
    assert s.eflags & FLAG_AC and s.eflags & FLAG_ID and s.eflags & FLAG_IF
    assert not s.eflags & FLAG_VM and not s.eflags & FLAG_IOPL and s.sp == 0x1000


def test_int_n_int3_into(emu, mem):
    out, s = run(emu, mem, b"\xCD\x21")
    assert out == Outcome.INTERRUPT and emu.vector == 0x21 and s.eip == 0x102
    out, s = run(emu, mem, b"\xCC")
    assert out == Outcome.INTERRUPT and emu.vector == 3 and s.eip == 0x101
    out, s = run(emu, mem, b"\xCE", eflags=0)
    assert out == Outcome.RESUME and s.eip == 0x101  # INTO without OF: nothing
    out, s = run(emu, mem, b"\xCE", eflags=FLAG_OF)
    assert out == Outcome.INTERRUPT and emu.vector == 4


def test_iret_pops_ip_cs_flags(emu, mem):
    s = ProgramState(cs=CS, ss=SS, eip=0x100, eflags=0)
    s.sp = 0x0FFA
    base = (SS << 4) + 0x0FFA
    mem.write(base, 2, 0x1234)
    mem.write(base + 2, 2, 0x5678)
    mem.write(base + 4, 2, FLAG_IF | FLAG_CF | FLAG_IOPL)
    out, s = run(emu, mem, b"\xCF", s)
    assert out == Outcome.RESUME and s.eip == 0x1234 and s.cs == 0x5678 and s.sp == 0x1000
    assert s.eflags & FLAG_IF and s.eflags & FLAG_CF and not s.eflags & FLAG_IOPL and s.segs_dirty


def test_iretd_beyond_64k_is_gp(emu, mem):
    s = ProgramState(cs=CS, ss=SS, eip=0x100)
    s.sp = 0x0FF4
    base = (SS << 4) + 0x0FF4
    mem.write(base, 4, 0x10000)
    mem.write(base + 4, 4, 0x5678)
    mem.write(base + 8, 4, 0)
    out, s = run(emu, mem, b"\x66\xCF", s)
    assert out == Outcome.EXCEPTION and emu.vector == 13 and s.eip == 0x100 and s.sp == 0x0FF4


def test_hlt(emu, mem):
    out, s = run(emu, mem, b"\xF4")
    assert out == Outcome.HALT and s.eip == 0x101


@pytest.mark.parametrize("code,port,size", [(b"\xE4\x60", 0x60, 1), (b"\xE5\x60", 0x60, 2),
                                            (b"\x66\xE5\x60", 0x60, 4), (b"\xEC", 0x3F8, 1), (b"\xED", 0x3F8, 2)])
def test_in(emu, mem, ports, code, port, size):
    out, s = run(emu, mem, code, gpr=[0xAAAAAAAA, 0, 0x3F8, 0, 0, 0, 0, 0])
    assert ports.ins == [(port, size)]
    mask = (1 << (8 * size)) - 1
    assert s.gpr[0] == (0xAAAAAAAA & ~mask) | (ports.value & mask)
    assert s.eip == 0x100 + len(code)


@pytest.mark.parametrize("code,port,size,value", [(b"\xE6\x80", 0x80, 1, 0x44), (b"\xEF", 0xE9, 2, 0x3344),
                                                  (b"\x66\xEF", 0xE9, 4, 0x11223344)])
def test_out(emu, mem, ports, code, port, size, value):
    run(emu, mem, code, gpr=[0x11223344, 0, 0xE9, 0, 0, 0, 0, 0])
    assert ports.outs == [(port, size, value)]


def test_rep_outsb_with_segment_override_and_df(emu, mem, ports):
    mem.write_bytes((0x5000 << 4) + 0x10, b"abc")
    s = ProgramState(cs=CS, ss=SS, ds=0x3000, eip=0x100, gpr=[0, 3, 0xE9, 0, 0x100, 0, 0x12, 0])
    s.es = 0x5000
    s.eflags |= FLAG_DF
    out, s = run(emu, mem, b"\xF3\x26\x6E", s)  # rep outsb dx, es:[si]
    assert [v for _, _, v in ports.outs] == [ord("c"), ord("b"), ord("a")]
    assert s.cx == 0 and s.si == 0x0F and s.eip == 0x103


def test_rep_insw_to_es_di(emu, mem, ports):
    ports.value = 0xBEEF
    s = ProgramState(cs=CS, ss=SS, eip=0x100, gpr=[0, 2, 0x1F0, 0, 0x100, 0, 0, 0x20])
    s.es = 0x4000
    out, s = run(emu, mem, b"\xF3\x6D", s)
    assert mem.read((0x4000 << 4) + 0x20, 4) == 0xBEEFBEEF and s.di == 0x24 and s.cx == 0


def test_rep_with_zero_count_does_nothing(emu, mem, ports):
    out, s = run(emu, mem, b"\xF3\x6E", gpr=[0, 0, 0xE9, 0, 0x100, 0, 0, 0])
    assert ports.outs == [] and s.eip == 0x102


def test_lock_prefix_is_ud(emu, mem):
    out, s = run(emu, mem, b"\xF0\xFA", eflags=FLAG_IF)
    assert out == Outcome.EXCEPTION and emu.vector == 6 and s.eip == 0x100 and s.eflags & FLAG_IF


def test_mov_cr0_setting_pe_leaves_v8086(emu, mem):
    out, s = run(emu, mem, b"\x0F\x20\xC0")  # mov eax, cr0
    assert out == Outcome.RESUME and s.gpr[0] == 0x10 and not s.gpr[0] & 1
    s.gpr[0] |= 1
    mem.write_bytes((CS << 4) + s.eip, b"\x0F\x22\xC0")  # mov cr0, eax
    assert emu.step(s) == Outcome.PROTECTED and s.cr0 & 1 and s.eip == 0x106


def test_lgdt_lidt_record_the_programs_tables(emu, mem):
    mem.write((0x3000 << 4) + 0x40, 2, 0x17)
    mem.write((0x3000 << 4) + 0x42, 4, 0x00012345)
    out, s = run(emu, mem, b"\x0F\x01\x16\x40\x00")  # lgdt [0x40]
    assert out == Outcome.RESUME and s.gdtr == (0x12345, 0x17) and s.eip == 0x105
    s.gpr[5] = 0x40  # bp: defaults to SS
    mem.write((SS << 4) + 0x42, 2, 0x3FF)
    mem.write((SS << 4) + 0x44, 4, 0)
    mem.write_bytes((CS << 4) + s.eip, b"\x0F\x01\x5E\x02")  # lidt [bp+2]
    emu.step(s)
    assert s.idtr == (0, 0x3FF)


def test_lmsw_can_set_but_not_clear_pe(emu, mem):
    out, s = run(emu, mem, b"\x0F\x01\xF0", gpr=[1, 0, 0, 0, 0, 0, 0, 0])  # lmsw ax
    assert out == Outcome.PROTECTED


def test_unsupported_and_undecodable(emu, mem):
    out, _ = run(emu, mem, b"\x90")
    assert out == Outcome.UNSUPPORTED and "nop" in emu.message
    out, _ = run(emu, mem, b"\x0F\xFF\xFF")
    assert out == Outcome.UNSUPPORTED


def test_counts_and_decode_cache(emu, mem):
    for _ in range(3):
        run(emu, mem, b"\xFA")
    run(emu, mem, b"\x9C")
    assert emu.counts["cli"] == 3 and emu.counts["pushf"] == 1
    assert len(emu._cache) == 2


def test_reflect_is_real_mode_interrupt_delivery(mem):
    mem.write(0x21 * 4, 4, 0x2000 << 16 | 0x0040)
    s = ProgramState(cs=CS, ss=SS, eip=0x102, eflags=FLAG_IF | FLAG_TF | FLAG_CF | FLAG_AC)
    s.sp = 0x1000
    reflect(mem, s, 0x21)
    assert (s.cs, s.eip) == (0x2000, 0x40) == ivt_entry(mem, 0x21)
    assert s.sp == 0x0FFA
    assert stack_word(mem, s, 0) == 0x102 and stack_word(mem, s, 1) == CS
    assert stack_word(mem, s, 2) & (FLAG_IF | FLAG_TF | FLAG_CF) == FLAG_IF | FLAG_TF | FLAG_CF
    assert not s.eflags & (FLAG_IF | FLAG_TF | FLAG_AC) and s.eflags & FLAG_CF


def test_stack_wraps_at_64k(emu, mem):
    s = ProgramState(cs=CS, ss=SS, eip=0x100, eflags=FLAG_ZF)
    s.sp = 0
    mem.write_bytes((CS << 4) + 0x100, b"\x9C")
    emu.step(s)
    assert s.sp == 0xFFFE and mem.read((SS << 4) + 0xFFFE, 2) & FLAG_ZF


def test_hostile_addresses_never_raise():
    m = GuestMemory()
    m.add_ram(0, 0x1000)
    pm = ProgramMemory(m)
    emu = Emulator(pm, lambda p, s: 0, lambda p, s, v: None)
    s = ProgramState(cs=0xF000, ss=0x9000, eip=0xFFFF)
    assert emu.step(s) == Outcome.UNSUPPORTED  # fetch from nowhere reads 0xFF bytes
    s = ProgramState(cs=0, ss=0x9000, eip=0x100)
    pm.write_bytes(0x100, b"\x9C")
    assert emu.step(s) == Outcome.RESUME  # the push goes to nowhere and is dropped
    m.close()
