"""Registers through kvm_run (KVM_CAP_SYNC_REGS) and the struct-based state conversions."""

from __future__ import annotations

import ctypes

import pytest

from smartvm_core.cpu import DescriptorTable, Registers, Segment, SpecialRegisters
from smartvm_core.engines.kvm import engine as eng
from smartvm_core.engines.kvm import structs as s
from smartvm_core.vmx import ExitReason


def _ctypes_regs(regs: Registers) -> s.kvm_regs:
    kr = s.kvm_regs()
    for name, _ in s.kvm_regs._fields_:
        setattr(kr, name, getattr(regs, name) & 0xFFFFFFFFFFFFFFFF)
    return kr


def _odd_sregs() -> SpecialRegisters:
    segs = {name: Segment(selector=0x1000 + i, base=0x10000 * (i + 1), limit=0xFFFFF - i, type=i + 1, present=1,
                          dpl=i & 3, db=i & 1, s=1, l=0, g=1, avl=1, unusable=i == 7)
            for i, name in enumerate(SpecialRegisters.SEGMENTS)}
    return SpecialRegisters(**segs, gdt=DescriptorTable(0x1234000, 0x7F), idt=DescriptorTable(0x5678000, 0x7FF),
                            cr0=0x80000011, cr2=0xDEAD000, cr3=0x3000, cr4=0x20, cr8=1, efer=0x500,
                            apic_base=0xFEE00900)


def test_regs_conversion_matches_the_ctypes_fields():
    regs = Registers(*(0x1111111111111111 * (i % 15) for i in range(18)))
    regs.rax = -1  # truncated to 64 bits, as ctypes does
    kr = eng.regs_to_kvm(regs)
    assert bytes(kr) == bytes(_ctypes_regs(regs))
    back = eng.regs_from_kvm(kr)
    assert back.rax == 0xFFFFFFFFFFFFFFFF and back.rbx == regs.rbx and back.rflags == regs.rflags


def test_sregs_conversion_matches_the_ctypes_fields():
    sr = _odd_sregs()
    ks = s.kvm_sregs()
    ks.interrupt_bitmap[1] = 1 << 5  # kept by sregs_to_kvm
    eng.sregs_to_kvm(sr, ks)
    for name in SpecialRegisters.SEGMENTS:
        k, seg = getattr(ks, name), getattr(sr, name)
        assert (k.selector, k.base, k.limit, k.type, k.dpl, k.db, k.g, k.avl, k.unusable) == \
               (seg.selector, seg.base, seg.limit, seg.type, seg.dpl, seg.db, seg.g, seg.avl, seg.unusable)
    assert (ks.gdt.base, ks.gdt.limit, ks.idt.base, ks.idt.limit) == (0x1234000, 0x7F, 0x5678000, 0x7FF)
    assert (ks.cr0, ks.cr2, ks.cr3, ks.cr4, ks.cr8, ks.efer) == (0x80000011, 0xDEAD000, 0x3000, 0x20, 1, 0x500)
    assert ks.interrupt_bitmap[1] == 1 << 5
    assert eng.sregs_from_kvm(ks) == sr


def test_sregs_conversion_truncates_like_ctypes():
    sr = _odd_sregs()
    sr.ds.type = 0x1F3       # does not fit u8
    sr.es.selector = 0x12345  # does not fit u16
    ks = eng.sregs_to_kvm(sr)
    assert ks.ds.type == 0xF3 and ks.es.selector == 0x2345 and ks.cs.selector == sr.cs.selector


def test_layout_of_the_sync_area():
    assert eng.SYNC_REGS_OFFSET == s.kvm_run.s.offset
    assert eng.SYNC_SREGS_OFFSET == s.kvm_run.s.offset + ctypes.sizeof(s.kvm_regs)
    assert ctypes.sizeof(s.kvm_sync_regs) <= 2048


def _sync_rig(rig):
    if not (rig.vcpu._sync_caps & (eng.SYNC_REGS | eng.SYNC_SREGS)) == (eng.SYNC_REGS | eng.SYNC_SREGS):
        pytest.skip(f"this host's KVM syncs no registers through kvm_run "
                    f"(KVM_CAP_SYNC_REGS = {rig.engine.caps.get('SYNC_REGS')})")
    return rig.load_real("kvm/counter16", rbx=0x90)


def _no_state_ioctls(monkeypatch, vcpu) -> None:
    def refuse(*a):
        raise AssertionError("a state ioctl where kvm_run holds the registers")
    for name in ("get_regs", "set_regs", "get_sregs", "set_sregs"):
        monkeypatch.setattr(vcpu.fd, name, refuse)


def test_registers_come_from_kvm_run_once_a_handler_reads_them(rig, monkeypatch):
    v = _sync_rig(rig)
    e = v.run()
    assert e.reason == ExitReason.IO_INSTRUCTION and e.port == 0x90 and e.value == 0x10
    first = v.get_regs()           # by ioctl: asks KVM to sync REGS from now on
    first_sel = v.get_segment_selectors()
    assert v.kvm_run.kvm_valid_regs == eng.SYNC_REGS | eng.SYNC_SREGS
    assert first.rcx == 0x10 and first_sel == (0, 0, 0, 0, 0, 0)
    e = v.run()
    with monkeypatch.context() as m:
        _no_state_ioctls(m, v)
        regs = v.get_regs()
        sregs = v.get_sregs()
        assert regs.rcx == 0x20 and e.value == 0x20 and regs.rip == first.rip
        assert v.get_segment_selectors() == (sregs.es.selector, sregs.cs.selector, sregs.ss.selector,
                                            sregs.ds.selector, sregs.fs.selector, sregs.gs.selector)
        assert v.get_cr0() == sregs.cr0
        # writes go into kvm_run and KVM loads them at the next entry
        regs.rcx = 0x100
        regs.rbx = 0x92
        v.set_regs(regs)
        sregs.ds = Segment.real_mode(0x40)
        v.set_sregs(sregs)
        assert v.kvm_run.kvm_dirty_regs == eng.SYNC_REGS | eng.SYNC_SREGS
        e = v.run()
        assert v.kvm_run.kvm_dirty_regs == 0
        assert e.port == 0x92 and e.value == 0x110
    # what KVM itself holds now
    kr = v.fd.get_regs()
    ks = v.fd.get_sregs()
    assert kr.rcx == 0x110 and kr.rbx == 0x92
    assert ks.ds.selector == 0x40 and ks.ds.base == 0x400


def test_a_control_register_change_takes_the_ioctl(rig, monkeypatch):
    v = _sync_rig(rig)
    v.run()
    v.get_sregs()
    v.run()
    sr = v.get_sregs()
    sr.cr2 = 0xABC000
    calls = []
    real = v.fd.set_sregs
    monkeypatch.setattr(v.fd, "set_sregs", lambda ks: (calls.append(ks.cr2), real(ks)))
    v.set_sregs(sr)
    assert calls == [0xABC000] and not v.kvm_run.kvm_dirty_regs & eng.SYNC_SREGS
    assert v.get_sregs().cr2 == 0xABC000


def test_pending_writes_reach_kvm_before_other_state_ioctls(rig):
    v = _sync_rig(rig)
    v.run()
    v.get_regs()
    v.run()
    regs = v.get_regs()
    regs.rsi = 0x5A5A
    v.set_regs(regs)
    saved = v.save_state()  # flushes the write waiting in kvm_run first
    assert saved["regs"]["rsi"] == 0x5A5A and v.fd.get_regs().rsi == 0x5A5A
    assert v.kvm_run.kvm_dirty_regs == 0
    v.run()
    assert v.get_regs().rsi == 0x5A5A


def test_register_syncing_stops_when_nobody_reads(rig, monkeypatch):
    v = _sync_rig(rig)
    monkeypatch.setattr(eng, "SYNC_IDLE_EXITS", 5)
    v.run()
    v.get_regs()
    assert v.kvm_run.kvm_valid_regs & eng.SYNC_REGS
    for _ in range(7):
        v.run()
    assert v.kvm_run.kvm_valid_regs == 0
    assert v.get_regs().rbx == 0x90  # by ioctl again, which turns syncing back on
    assert v.kvm_run.kvm_valid_regs == eng.SYNC_REGS


def test_writes_kvm_did_not_load_are_loaded_by_ioctl(rig):
    """KVM_RUN failing before it loads kvm_run.s (here: an invalid kvm_valid_regs bit) loses no write."""
    from smartvm_core.engines.kvm.errors import KvmError
    v = _sync_rig(rig)
    v.run()
    v.get_regs()
    v.run()
    regs = v.get_regs()
    regs.rsi = 0x77
    v.set_regs(regs)
    v.kvm_run.kvm_valid_regs = 1 << 20  # KVM refuses the run with EINVAL before loading
    with pytest.raises(KvmError):
        v.run()
    assert v.fd.get_regs().rsi == 0x77 and v.kvm_run.kvm_dirty_regs == 0
