"""The ``kvm`` engine: KVM bindings written in Python after rust-vmm's kvm-ioctls.

:mod:`.structs` (ctypes structures with the kernel's names), :mod:`.ioctls`
(request numbers), :mod:`.system` (:class:`Kvm`), :mod:`.vm` (:class:`VmFd`),
:mod:`.vcpu` (:class:`VcpuFd`), :mod:`.exits` (KVM exit → SDM exit reason) and
:mod:`.engine` (:class:`KvmEngine`, :class:`KvmVcpu`).
"""

from .errors import KvmError, KvmUnavailable
from .system import Kvm
from .vcpu import VcpuFd
from .vm import VmFd

__all__ = ["Kvm", "KvmError", "KvmUnavailable", "VcpuFd", "VmFd"]
