"""The VM file descriptor: class :class:`VmFd` after kvm-ioctls' ``VmFd``."""

from __future__ import annotations

import ctypes
import fcntl
import os
from typing import TYPE_CHECKING, Iterable

from . import ioctls as k
from . import structs as s
from .system import _ioctl

if TYPE_CHECKING:
    from .system import Kvm
    from .vcpu import VcpuFd


class VmFd:
    """A KVM virtual machine (``KVM_CREATE_VM``)."""

    def __init__(self, fd: int, kvm: "Kvm") -> None:
        self.fd = fd
        self.kvm = kvm
        # bitmaps the current MSR filter points into: kept alive while installed
        self._msr_filter_bitmaps: list[ctypes.Array] = []

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on the VM fd (answers for this VM)."""
        try:
            return fcntl.ioctl(self.fd, k.KVM_CHECK_EXTENSION, cap)
        except OSError:
            return self.kvm.check_extension(cap)

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        """``KVM_SET_USER_MEMORY_REGION``: map host memory at a guest-physical address (size 0 deletes the slot)."""
        region = s.kvm_userspace_memory_region(slot, flags, guest_phys_addr, memory_size, userspace_addr)
        _ioctl(self.fd, k.KVM_SET_USER_MEMORY_REGION, region,
               f"slot {slot} gpa {guest_phys_addr:#x} size {memory_size:#x} flags {flags:#x}")

    def create_vcpu(self, vcpu_id: int) -> "VcpuFd":
        """``KVM_CREATE_VCPU``; the returned vCPU has its ``kvm_run`` mmap'd."""
        from .vcpu import VcpuFd
        fd = _ioctl(self.fd, k.KVM_CREATE_VCPU, vcpu_id, f"vCPU id {vcpu_id}")
        return VcpuFd(fd, self.kvm.get_vcpu_mmap_size(), vcpu_id)

    def set_tss_addr(self, addr: int) -> None:
        """``KVM_SET_TSS_ADDR``: three pages KVM needs for real mode on VMX without unrestricted guest."""
        _ioctl(self.fd, k.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """``KVM_SET_IDENTITY_MAP_ADDR``: one page for the EPT identity map of real mode."""
        _ioctl(self.fd, k.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr))

    def create_irqchip(self) -> None:
        """``KVM_CREATE_IRQCHIP``: in-kernel PIC pair, IOAPIC and local APICs."""
        _ioctl(self.fd, k.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = 0) -> None:
        """``KVM_CREATE_PIT2``: in-kernel i8254 (needs the irqchip first)."""
        cfg = s.kvm_pit_config(flags=flags)
        _ioctl(self.fd, k.KVM_CREATE_PIT2, cfg)

    def irq_line(self, irq: int, level: bool) -> None:
        """``KVM_IRQ_LINE``: drive a GSI of the in-kernel irqchip."""
        _ioctl(self.fd, k.KVM_IRQ_LINE, s.kvm_irq_level(irq, 1 if level else 0), f"irq {irq}")

    def get_irqchip(self, chip_id: int) -> bytes:
        """``KVM_GET_IRQCHIP``: raw state of one chip (PIC master/slave, IOAPIC)."""
        chip = s.kvm_irqchip(chip_id=chip_id)
        _ioctl(self.fd, k.KVM_GET_IRQCHIP, chip)
        return bytes(chip)[8:]

    def set_irqchip(self, chip_id: int, data: bytes) -> None:
        """``KVM_SET_IRQCHIP``."""
        chip = s.kvm_irqchip(chip_id=chip_id)
        ctypes.memmove(ctypes.addressof(chip) + 8, bytes(data)[:512], min(512, len(data)))
        _ioctl(self.fd, k.KVM_SET_IRQCHIP, chip)

    def get_pit2(self) -> s.kvm_pit_state2:
        """``KVM_GET_PIT2``."""
        st = s.kvm_pit_state2()
        _ioctl(self.fd, k.KVM_GET_PIT2, st)
        return st

    def set_pit2(self, state: s.kvm_pit_state2) -> None:
        """``KVM_SET_PIT2``."""
        _ioctl(self.fd, k.KVM_SET_PIT2, state)

    def get_clock(self) -> s.kvm_clock_data:
        """``KVM_GET_CLOCK``: the guest's kvmclock base."""
        c = s.kvm_clock_data()
        _ioctl(self.fd, k.KVM_GET_CLOCK, c)
        return c

    def set_clock(self, clock: int) -> None:
        """``KVM_SET_CLOCK``."""
        _ioctl(self.fd, k.KVM_SET_CLOCK, s.kvm_clock_data(clock=clock))

    def get_dirty_log(self, slot: int, memory_size: int) -> bytes:
        """``KVM_GET_DIRTY_LOG``: one bit per page written since the last call (and clear them)."""
        nbits = (memory_size + 4095) // 4096
        nbytes = ((nbits + 63) // 64) * 8
        bitmap = (ctypes.c_uint8 * nbytes)()
        log = s.kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(bitmap))
        _ioctl(self.fd, k.KVM_GET_DIRTY_LOG, log, f"slot {slot}")
        return bytes(bitmap)

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        """``KVM_ENABLE_CAP`` on the VM."""
        ec = s.kvm_enable_cap(cap=cap, flags=flags)
        for i, a in enumerate(args[:4]):
            ec.args[i] = a
        _ioctl(self.fd, k.KVM_ENABLE_CAP, ec, f"capability {s.KVM_CAP_NAMES.get(cap, cap)}")

    def set_msr_filter(self, ranges: Iterable[tuple[int, int, int, bytes]], *, default_deny: bool = False) -> None:
        """``KVM_X86_SET_MSR_FILTER``.

        :param ranges: ``(flags, base, nmsrs, bitmap)`` with ``flags`` of
            ``KVM_MSR_FILTER_READ``/``WRITE``; a *set* bit allows the access,
            a clear bit denies it (an exit to user space once
            ``KVM_MSR_EXIT_REASON_FILTER`` is enabled).
        """
        flt = s.kvm_msr_filter(flags=s.KVM_MSR_FILTER_DEFAULT_DENY if default_deny else 0)
        keep = []
        for i, (flags, base, nmsrs, bitmap) in enumerate(ranges):
            if i >= s.KVM_MSR_FILTER_MAX_RANGES:
                raise ValueError(f"at most {s.KVM_MSR_FILTER_MAX_RANGES} MSR filter ranges")
            need = (nmsrs + 7) // 8
            buf = (ctypes.c_uint8 * max(need, 1)).from_buffer_copy(bytes(bitmap)[:need].ljust(max(need, 1), b"\0"))
            keep.append(buf)
            flt.ranges[i] = s.kvm_msr_filter_range(flags, nmsrs, base, ctypes.addressof(buf))
        _ioctl(self.fd, k.KVM_X86_SET_MSR_FILTER, flt)
        self._msr_filter_bitmaps = keep

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
