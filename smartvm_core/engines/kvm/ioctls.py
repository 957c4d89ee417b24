"""KVM ioctl request numbers, computed as ``linux/kvm.h`` computes them.

``_IO``/``_IOR``/``_IOW``/``_IOWR`` follow ``asm-generic/ioctl.h``: direction
in bits 31:30, argument size in 29:16, type (``KVMIO`` = 0xAE) in 15:8 and
number in 7:0.
"""

from __future__ import annotations

import ctypes

from . import structs as s

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    if size >= 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit {_IOC_SIZEBITS} bits")
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _size(t: type | int) -> int:
    return t if isinstance(t, int) else ctypes.sizeof(t)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, t: type | int) -> int:
    return _IOC(_IOC_READ, type_, nr, _size(t))


def _IOW(type_: int, nr: int, t: type | int) -> int:
    return _IOC(_IOC_WRITE, type_, nr, _size(t))


def _IOWR(type_: int, nr: int, t: type | int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _size(t))


KVMIO = 0xAE

# system ioctls (/dev/kvm)
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, s.kvm_msr_list)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, s.kvm_cpuid2)
KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0A, s.kvm_msr_list)

# VM ioctls
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, s.kvm_dirty_log)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, s.kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, ctypes.c_uint64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, s.kvm_irq_level)
KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, s.kvm_irqchip)
KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, s.kvm_irqchip)
KVM_IRQ_LINE_STATUS = _IOWR(KVMIO, 0x67, s.kvm_irq_level)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, s.kvm_pit_config)
KVM_SET_CLOCK = _IOW(KVMIO, 0x7B, s.kvm_clock_data)
KVM_GET_CLOCK = _IOR(KVMIO, 0x7C, s.kvm_clock_data)
KVM_GET_PIT2 = _IOR(KVMIO, 0x9F, s.kvm_pit_state2)
KVM_SET_PIT2 = _IOW(KVMIO, 0xA0, s.kvm_pit_state2)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, s.kvm_enable_cap)
KVM_X86_SET_MSR_FILTER = _IOW(KVMIO, 0xC6, s.kvm_msr_filter)

# vCPU ioctls
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, s.kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, s.kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, s.kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, s.kvm_sregs)
KVM_TRANSLATE = _IOWR(KVMIO, 0x85, s.kvm_translation)
KVM_INTERRUPT = _IOW(KVMIO, 0x86, s.kvm_interrupt)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, s.kvm_msrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, s.kvm_msrs)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, s.kvm_fpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, s.kvm_fpu)
KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, s.kvm_lapic_state)
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, s.kvm_lapic_state)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, s.kvm_cpuid2)
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, s.kvm_cpuid2)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, s.kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, s.kvm_mp_state)
KVM_NMI = _IO(KVMIO, 0x9A)
KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9B, s.kvm_guest_debug)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, s.kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, s.kvm_vcpu_events)
KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xA1, s.kvm_debugregs)
KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xA2, s.kvm_debugregs)
KVM_GET_XSAVE = _IOR(KVMIO, 0xA4, s.kvm_xsave)
KVM_SET_XSAVE = _IOW(KVMIO, 0xA5, s.kvm_xsave)
KVM_GET_XCRS = _IOR(KVMIO, 0xA6, s.kvm_xcrs)
KVM_SET_XCRS = _IOW(KVMIO, 0xA7, s.kvm_xcrs)
KVM_GET_TSC_KHZ = _IO(KVMIO, 0xA3)

NAMES = {v: k for k, v in list(globals().items()) if k.startswith("KVM_") and k != "KVMIO"}
"""ioctl number → name (for error messages)."""
