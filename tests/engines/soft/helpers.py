"""Build a GuestMemory + SoftEngine + vCPU and put it in a CPU mode, without the machine."""

from __future__ import annotations

import shutil
import struct

import pytest

from smartvm_core.cpu import Registers, Segment, SpecialRegisters
from smartvm_core.engines.base import EngineOptions
from smartvm_core.engines.soft import SoftEngine
from smartvm_core.memory import GuestMemory
from smartvm_core.vmx import ProcBasedControls, VmcsField

if shutil.which("nasm") is None:
    pytest.skip("nasm is not installed", allow_module_level=True)

from build import build_guest  # noqa: E402  (guests/build.py)


def make(name: str, *, at: int = 0x1000, mode: str = "real", defines=None):
    mem = GuestMemory()
    mem.add_ram(0, 0x200000)
    image = build_guest(f"soft/{name}", defines=defines).read_bytes()
    mem.write(at, image)
    engine = SoftEngine(mem, EngineOptions())
    vcpu = engine.create_vcpu(0)
    sregs = SpecialRegisters()
    if mode == "real":
        sregs.cs = Segment.real_mode(0, code=True)
        for s in ("ds", "es", "ss", "fs", "gs"):
            setattr(sregs, s, Segment.real_mode(0))
        sregs.cr0 = 0x10
    elif mode == "protected32":
        sregs.cs = Segment(selector=0x08, base=0, limit=0xFFFFFFFF, type=0xB, db=1, g=1)
        for s in ("ds", "es", "ss", "fs", "gs"):
            setattr(sregs, s, Segment(selector=0x10, base=0, limit=0xFFFFFFFF, type=3, db=1, g=1))
        sregs.cr0 = 0x11
        gdt = struct.pack("<QQQ", 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF)
        mem.write(0x800, gdt)
        sregs.gdt.base, sregs.gdt.limit = 0x800, len(gdt) - 1
    elif mode == "long":
        # identity map 0..1 GiB with one 1 GiB page... use 2 MiB pages for 0..4 GiB
        pml4, pdpt, pd = 0x100000, 0x101000, 0x102000
        mem.write_u64(pml4, pdpt | 3)
        for i in range(4):
            mem.write_u64(pdpt + 8 * i, (pd + 0x1000 * i) | 3)
            for j in range(512):
                mem.write_u64(pd + 0x1000 * i + 8 * j, ((i << 30) | (j << 21)) | 0x83)
        sregs.cs = Segment(selector=0x08, base=0, limit=0xFFFFFFFF, type=0xB, l=1, g=1)
        for s in ("ds", "es", "ss", "fs", "gs"):
            setattr(sregs, s, Segment(selector=0x10, base=0, limit=0xFFFFFFFF, type=3, db=1, g=1))
        sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = 0x80000011, pml4, 0x20, 0x500
        gdt = struct.pack("<QQQ", 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF)
        mem.write(0x800, gdt)
        sregs.gdt.base, sregs.gdt.limit = 0x800, len(gdt) - 1
    vcpu.set_sregs(sregs)
    vcpu.set_regs(Registers(rip=at, rsp=0x8000))
    return mem, engine, vcpu


def set_proc(vcpu, add=0, clear=0):
    f = VmcsField.CPU_BASED_VM_EXEC_CONTROL
    vcpu.vmcs[f] = (vcpu.vmcs[f] | int(add)) & ~int(clear)


__all__ = ["make", "set_proc", "ProcBasedControls", "VmcsField"]
