"""The ``kvm`` engine: KVM bindings written in Python after rust-vmm's kvm-ioctls.

:mod:`.structs` (ctypes structures with the kernel's names), :mod:`.ioctls`
(request numbers), :mod:`.system` (:class:`Kvm`), :mod:`.vm` (:class:`VmFd`),
:mod:`.vcpu` (:class:`VcpuFd`), :mod:`.exits` (KVM exit → SDM exit reason) and
:mod:`.engine` (:class:`KvmEngine`, :class:`KvmVcpu`).

The names below load on first access, so registering the engine (its plugin
module lives in this package) imports none of the bindings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import KvmError, KvmUnavailable
    from .system import Kvm
    from .vcpu import VcpuFd
    from .vm import VmFd

_WHERE = {"Kvm": ".system", "KvmError": ".errors", "KvmUnavailable": ".errors", "VcpuFd": ".vcpu", "VmFd": ".vm"}

__all__ = ["Kvm", "KvmError", "KvmUnavailable", "VcpuFd", "VmFd"]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(where, __name__), name)
