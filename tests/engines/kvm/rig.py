"""A small kvm test rig: guest memory, an engine, vCPUs and guest loading."""

from __future__ import annotations

import os

import pytest

from build import build_guest
from smartvm_core.arch.modes import long_mode_state, protected_mode_state, real_mode_state
from smartvm_core.engines.base import EngineOptions
from smartvm_core.engines.kvm.engine import KvmEngine, KvmVcpu
from smartvm_core.memory import GuestMemory

AVAILABILITY = KvmEngine.probe()


def require_kvm() -> None:
    if not AVAILABILITY.usable:
        pytest.skip(f"kvm engine unusable here: {AVAILABILITY.reason}")


class Rig:
    """Guest memory, a kvm engine and its vCPUs, closed at the end of the test."""

    def __init__(self, ram: int = 0x10000, irqchip: str = "user", vcpus: int = 1) -> None:
        self.memory = GuestMemory()
        self.ram = self.memory.add_ram(0, ram)
        self.engine = KvmEngine(self.memory, EngineOptions(vcpus=vcpus, irqchip=irqchip))
        self.vcpus = [self.engine.create_vcpu(i) for i in range(vcpus)]
        self.vcpu: KvmVcpu = self.vcpus[0]

    def load_real(self, guest: str, at: int = 0x1000, vcpu: KvmVcpu | None = None,
                  defines: dict | None = None, **regs: int) -> KvmVcpu:
        image = build_guest(guest, defines=defines).read_bytes()
        self.memory.write(at, image)
        v = vcpu or self.vcpu
        r, sr = real_mode_state(0, at, sp=0xF000)
        for k, val in regs.items():
            setattr(r, k, val)
        v.set_sregs(sr)
        v.set_regs(r)
        return v

    def load_protected(self, guest: str, at: int = 0x2000, vcpu: KvmVcpu | None = None, *,
                       long_mode: bool = False) -> KvmVcpu:
        """32-bit protected (or 64-bit long) mode through the core's arch helper."""
        image = build_guest(guest).read_bytes()
        self.memory.write(at, image)
        v = vcpu or self.vcpu
        r, sr = long_mode_state(self.memory, map_gib=1) if long_mode else protected_mode_state(self.memory)
        r.rip = at
        r.rsp = 0xF000
        v.set_sregs(sr)
        v.set_regs(r)
        return v

    def close(self) -> None:
        self.engine.close()
        self.memory.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
