"""The soft engine's guests (guests/soft/) on the kvm engine, where this host's KVM can run them.

A guest that this host's KVM cannot run (its instruction emulator fails,
as on a software nested KVM) is skipped with KVM's own message.
"""

from __future__ import annotations

import pytest

from build import build_guest
from smartvm_core.arch.modes import long_mode_state, protected_mode_state
from smartvm_core.engines.kvm.exits import KvmInternalError
from smartvm_core.vmx import ExitReason, Vector


def _run(vcpu):
    try:
        return vcpu.run()
    except KvmInternalError as e:
        pytest.skip(f"this host's KVM cannot run the guest: {e}")


def test_soft_exits16_real_mode(make_rig):
    r = make_rig(ram=0x200000)
    v = r.load_real("soft/exits16")
    e = _run(v)
    assert (e.reason, e.port, e.value) == (ExitReason.IO_INSTRUCTION, 0x80, 0x42)
    e = _run(v)
    assert (e.reason, e.port, e.is_in) == (ExitReason.IO_INSTRUCTION, 0x81, True)
    e.value = 0x33
    e = _run(v)  # CPUID and RDTSC stay in KVM; the guest's own #DE handler runs
    assert e.reason == ExitReason.HLT
    assert r.memory.read_u8(0x508) == 1
    assert int.from_bytes(r.memory.read(0x500, 4), "little") != 0  # CPUID leaf 0 vendor (EBX)
    e = _run(v)
    assert (e.reason, e.port, e.value) == (ExitReason.IO_INSTRUCTION, 0x82, 0x99)


def test_soft_pmode32_handles_own_gp_and_pf(make_rig):
    r = make_rig(ram=0x200000)
    image = build_guest("soft/pmode32").read_bytes()
    r.memory.write(0x1000, image)
    regs, sregs = protected_mode_state(r.memory)
    regs.rip, regs.rsp = 0x1000, 0x8000
    r.vcpu.set_sregs(sregs)
    r.vcpu.set_regs(regs)
    e = _run(r.vcpu)
    assert (e.reason, e.port, e.value) == (ExitReason.IO_INSTRUCTION, 0x80, 1)
    e = _run(r.vcpu)
    assert (e.reason, e.port, e.value) == (ExitReason.IO_INSTRUCTION, 0x81, 1)
    assert r.memory.read_u32(0x6004) == 0x00800000
    assert _run(r.vcpu).reason == ExitReason.HLT


def test_soft_long64_io_mmio_rom_hlt(make_rig):
    r = make_rig(ram=0x200000)
    r.memory.add_rom(0x300000, b"\xAA" * 4096, name="bios")
    r.memory.write(0x1000, build_guest("soft/long64").read_bytes())
    regs, sregs = long_mode_state(r.memory, pml4_addr=0x100000)
    regs.rip, regs.rsp = 0x1000, 0x8000
    v = r.vcpu
    v.set_sregs(sregs)
    v.set_regs(regs)
    e = _run(v)
    assert (e.reason, e.port, e.value) == (ExitReason.IO_INSTRUCTION, 0x80, 0x64)
    e = _run(v)
    assert (e.reason, e.port, e.size, e.is_in) == (ExitReason.IO_INSTRUCTION, 0x84, 4, True)
    e.value = 0xCAFEBABE
    e = _run(v)
    assert e.reason == ExitReason.EPT_VIOLATION and e.is_write
    assert (e.guest_physical_address, e.size, e.value) == (0xFE000008, 4, 0x12345678)
    assert e.decoded().write
    e = _run(v)
    assert (e.reason, e.is_write, e.guest_physical_address, e.size) == (ExitReason.EPT_VIOLATION, False, 0xFE000010, 4)
    e.value = 0x5555AAAA
    e = _run(v)
    assert e.reason == ExitReason.EPT_VIOLATION and e.is_write and e.guest_physical_address == 0x300000
    assert e.decoded().readable and not e.decoded().writable
    assert _run(v).reason == ExitReason.HLT
    regs = v.get_regs()
    assert regs.rbx == 0xCAFEBABE and regs.rdx == 0x5555AAAA and regs.r9 == 1
    assert r.memory.read_u8(0x300000) == 0xAA


def test_soft_exits16_de_with_exception_bitmap_is_refused(make_rig):
    """The soft engine turns #DE into an exit via the exception bitmap; KVM cannot, and says so."""
    from smartvm_core.errors import UnsupportedControl
    from smartvm_core.vmx import VmcsField
    r = make_rig()
    v = r.load_real("soft/exits16")
    v.vmcs[VmcsField.EXCEPTION_BITMAP] = 1 << Vector.DE
    with pytest.raises(UnsupportedControl, match="#DE"):
        v.run()
