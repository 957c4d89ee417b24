"""KVM failures as user-facing errors (no tracebacks for host problems)."""

from __future__ import annotations

import errno as _errno
import os

from ...errors import EngineError, EngineUnavailable
from . import ioctls

_HINTS = {
    _errno.EACCES: "no permission: add the user to the 'kvm' group or make /dev/kvm readable and writable",
    _errno.EPERM: "operation not permitted",
    _errno.ENOENT: "/dev/kvm does not exist: load the kvm module (kvm_intel or kvm_amd)",
    _errno.ENXIO: "the KVM module is loaded but cannot run here (no VMX/SVM, or disabled in firmware)",
    _errno.EEXIST: "already exists (a second irqchip, PIT or a duplicate vCPU id)",
    _errno.EINVAL: "the kernel refused the arguments",
    _errno.ENOMEM: "out of memory",
    _errno.E2BIG: "too many entries",
    _errno.EFAULT: "bad user-space address",
}


class KvmError(EngineError):
    """An ioctl on a KVM file descriptor failed."""

    def __init__(self, what: str, err: int, detail: str = "") -> None:
        self.what = what
        self.errno = err
        text = f"KVM {what} failed: {os.strerror(err)} (errno {err})"
        hint = _HINTS.get(err)
        if hint:
            text += f"; {hint}"
        if detail:
            text += f"; {detail}"
        super().__init__(text)


class KvmUnavailable(EngineUnavailable):
    """``/dev/kvm`` cannot be used on this host."""


class KvmMissingCapability(KvmError):
    """The host's KVM lacks a capability the experiment needs."""

    def __init__(self, cap: str, needed_for: str) -> None:
        self.what = f"KVM_CAP_{cap}"
        self.errno = 0
        EngineError.__init__(self, f"this host's KVM lacks KVM_CAP_{cap}, needed for {needed_for}")


def ioctl_error(request: int, exc: OSError, detail: str = "") -> KvmError:
    name = ioctls.NAMES.get(request, f"ioctl {request:#x}")
    return KvmError(name, exc.errno or 0, detail)
