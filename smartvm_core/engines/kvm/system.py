"""The system file descriptor (``/dev/kvm``): class :class:`Kvm` after kvm-ioctls' ``Kvm``."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from typing import TYPE_CHECKING

from . import ioctls as k
from . import structs as s
from .errors import KvmError, KvmUnavailable, ioctl_error

if TYPE_CHECKING:
    from .vm import VmFd

KVM_API_VERSION = 12
DEV_KVM = "/dev/kvm"


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
_libc.ioctl.restype = ctypes.c_int


def _ioctl(fd: int, request: int, arg: object = None, detail: str = "") -> int:
    """One ioctl; a failure becomes a :class:`KvmError` naming the ioctl."""
    try:
        if arg is None:
            return fcntl.ioctl(fd, request)
        if isinstance(arg, int):
            if 0 <= arg <= 0x7FFFFFFF:
                return fcntl.ioctl(fd, request, arg)
            # fcntl.ioctl takes a C int; an address-sized argument goes through libc
            ret = _libc.ioctl(fd, request, arg & 0xFFFFFFFFFFFFFFFF)
            if ret < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return ret
        return fcntl.ioctl(fd, request, arg, True)
    except OSError as e:
        raise ioctl_error(request, e, detail) from None


class Kvm:
    """An open ``/dev/kvm``."""

    def __init__(self, path: str = DEV_KVM) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmUnavailable(f"cannot open {path}: {KvmError('open', e.errno or 0)}".replace(
                "KVM open failed: ", "")) from None
        try:
            version = self.get_api_version()
        except KvmError:
            os.close(self.fd)
            raise
        if version != KVM_API_VERSION:
            os.close(self.fd)
            raise KvmUnavailable(f"{path}: KVM API version {version}, expected {KVM_API_VERSION}")
        self._mmap_size: int | None = None

    def get_api_version(self) -> int:
        """``KVM_GET_API_VERSION``."""
        return _ioctl(self.fd, k.KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on the system fd: 0 if absent, else a positive (often a count)."""
        try:
            return fcntl.ioctl(self.fd, k.KVM_CHECK_EXTENSION, cap)
        except OSError:
            return 0

    def get_vcpu_mmap_size(self) -> int:
        """``KVM_GET_VCPU_MMAP_SIZE``: bytes to mmap from a vCPU fd (``kvm_run`` and more)."""
        if self._mmap_size is None:
            self._mmap_size = _ioctl(self.fd, k.KVM_GET_VCPU_MMAP_SIZE)
        return self._mmap_size

    def get_supported_cpuid(self, max_entries: int = s.KVM_MAX_CPUID_ENTRIES) -> list[s.kvm_cpuid_entry2]:
        """``KVM_GET_SUPPORTED_CPUID``: the CPUID leaves KVM can offer a guest."""
        buf = s.make_kvm_cpuid2(max_entries)()
        buf.nent = max_entries
        _ioctl(self.fd, k.KVM_GET_SUPPORTED_CPUID, buf)
        return [s.kvm_cpuid_entry2.from_buffer_copy(buf.entries[i]) for i in range(buf.nent)]

    def get_msr_index_list(self) -> list[int]:
        """``KVM_GET_MSR_INDEX_LIST``: MSRs that KVM_GET_MSRS/KVM_SET_MSRS support."""
        return self._msr_list(k.KVM_GET_MSR_INDEX_LIST)

    def get_msr_feature_index_list(self) -> list[int]:
        """``KVM_GET_MSR_FEATURE_INDEX_LIST``: feature MSRs readable from the system fd."""
        return self._msr_list(k.KVM_GET_MSR_FEATURE_INDEX_LIST)

    def _msr_list(self, request: int) -> list[int]:
        probe = s.kvm_msr_list(0)
        try:
            fcntl.ioctl(self.fd, request, probe, True)
        except OSError as e:
            if e.errno != errno.E2BIG:
                raise ioctl_error(request, e) from None
        n = probe.nmsrs
        buf = s.make_kvm_msr_list(max(n, 1))()
        buf.nmsrs = n
        _ioctl(self.fd, request, buf)
        return list(buf.indices[:buf.nmsrs])

    def create_vm(self, vm_type: int = 0) -> "VmFd":
        """``KVM_CREATE_VM``."""
        from .vm import VmFd
        fd = _ioctl(self.fd, k.KVM_CREATE_VM, vm_type)
        return VmFd(fd, self)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Kvm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
