"""The vCPU file descriptor: class :class:`VcpuFd` after kvm-ioctls' ``VcpuFd``.

``kvm_run`` is the vCPU's shared page, mmap'd once; :attr:`VcpuFd.run_struct`
is a ctypes :class:`~.structs.kvm_run` laid over that mapping (no copies),
and :attr:`VcpuFd.run_mmap` gives byte access for the I/O data area at
``io.data_offset``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from typing import Iterable

from . import ioctls as k
from . import structs as s
from .errors import ioctl_error
from .system import _ioctl


class VcpuFd:
    """One KVM vCPU (``KVM_CREATE_VCPU``)."""

    def __init__(self, fd: int, mmap_size: int, vcpu_id: int) -> None:
        self.fd = fd
        self.id = vcpu_id
        try:
            self.run_mmap = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            raise
        self.run_struct = s.kvm_run.from_buffer(self.run_mmap)

    # -- running ---------------------------------------------------------------
    def run(self) -> int:
        """``KVM_RUN``: enter the guest; returns ``kvm_run.exit_reason``.

        Raises :class:`InterruptedError` when a signal or ``immediate_exit``
        ended the run (``EINTR``). The GIL is released while in the guest.
        """
        try:
            fcntl.ioctl(self.fd, k.KVM_RUN)
        except InterruptedError:
            raise
        except OSError as e:
            if e.errno == errno.EAGAIN:
                raise InterruptedError(errno.EINTR, "KVM_RUN: EAGAIN") from None
            raise ioctl_error(k.KVM_RUN, e) from None
        return self.run_struct.exit_reason

    def interrupt(self, vector: int) -> None:
        """``KVM_INTERRUPT``: queue external interrupt ``vector`` (user-space PIC only)."""
        _ioctl(self.fd, k.KVM_INTERRUPT, s.kvm_interrupt(vector & 0xFF), f"vector {vector:#x}")

    def nmi(self) -> None:
        """``KVM_NMI``: queue an NMI."""
        _ioctl(self.fd, k.KVM_NMI)

    def translate(self, linear: int) -> s.kvm_translation:
        """``KVM_TRANSLATE``: guest-linear to guest-physical through the guest's paging."""
        tr = s.kvm_translation(linear_address=linear & 0xFFFFFFFFFFFFFFFF)
        _ioctl(self.fd, k.KVM_TRANSLATE, tr)
        return tr

    # -- register state ----------------------------------------------------------
    def _get(self, request: int, cls: type) -> ctypes.Structure:
        obj = cls()
        _ioctl(self.fd, request, obj)
        return obj

    def get_regs(self) -> s.kvm_regs:
        """``KVM_GET_REGS``."""
        return self._get(k.KVM_GET_REGS, s.kvm_regs)

    def set_regs(self, regs: s.kvm_regs) -> None:
        """``KVM_SET_REGS``."""
        _ioctl(self.fd, k.KVM_SET_REGS, regs)

    def get_sregs(self) -> s.kvm_sregs:
        """``KVM_GET_SREGS``."""
        return self._get(k.KVM_GET_SREGS, s.kvm_sregs)

    def set_sregs(self, sregs: s.kvm_sregs) -> None:
        """``KVM_SET_SREGS``."""
        _ioctl(self.fd, k.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> s.kvm_fpu:
        """``KVM_GET_FPU``."""
        return self._get(k.KVM_GET_FPU, s.kvm_fpu)

    def set_fpu(self, fpu: s.kvm_fpu) -> None:
        """``KVM_SET_FPU``."""
        _ioctl(self.fd, k.KVM_SET_FPU, fpu)

    def get_xsave(self) -> s.kvm_xsave:
        """``KVM_GET_XSAVE`` (the legacy 4 KiB area)."""
        return self._get(k.KVM_GET_XSAVE, s.kvm_xsave)

    def set_xsave(self, xsave: s.kvm_xsave) -> None:
        """``KVM_SET_XSAVE``."""
        _ioctl(self.fd, k.KVM_SET_XSAVE, xsave)

    def get_xcrs(self) -> s.kvm_xcrs:
        """``KVM_GET_XCRS``."""
        return self._get(k.KVM_GET_XCRS, s.kvm_xcrs)

    def set_xcrs(self, xcrs: s.kvm_xcrs) -> None:
        """``KVM_SET_XCRS``."""
        _ioctl(self.fd, k.KVM_SET_XCRS, xcrs)

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """``KVM_GET_MSRS``: the MSRs KVM could read, in order, up to the first it could not."""
        idx = list(indices)
        buf = s.make_kvm_msrs(max(len(idx), 1))()
        buf.nmsrs = len(idx)
        for i, index in enumerate(idx):
            buf.entries[i].index = index
        n = _ioctl(self.fd, k.KVM_GET_MSRS, buf)
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def set_msrs(self, values: dict[int, int] | Iterable[tuple[int, int]]) -> int:
        """``KVM_SET_MSRS``: returns how many were written (it stops at the first refused)."""
        items = list(values.items() if isinstance(values, dict) else values)
        buf = s.make_kvm_msrs(max(len(items), 1))()
        buf.nmsrs = len(items)
        for i, (index, data) in enumerate(items):
            buf.entries[i].index = index
            buf.entries[i].data = data & 0xFFFFFFFFFFFFFFFF
        return _ioctl(self.fd, k.KVM_SET_MSRS, buf)

    def get_lapic(self) -> s.kvm_lapic_state:
        """``KVM_GET_LAPIC`` (in-kernel irqchip only)."""
        return self._get(k.KVM_GET_LAPIC, s.kvm_lapic_state)

    def set_lapic(self, lapic: s.kvm_lapic_state) -> None:
        """``KVM_SET_LAPIC``."""
        _ioctl(self.fd, k.KVM_SET_LAPIC, lapic)

    def get_vcpu_events(self) -> s.kvm_vcpu_events:
        """``KVM_GET_VCPU_EVENTS``: pending/injected exception, interrupt, NMI, SMI."""
        return self._get(k.KVM_GET_VCPU_EVENTS, s.kvm_vcpu_events)

    def set_vcpu_events(self, events: s.kvm_vcpu_events) -> None:
        """``KVM_SET_VCPU_EVENTS``."""
        _ioctl(self.fd, k.KVM_SET_VCPU_EVENTS, events)

    def get_mp_state(self) -> int:
        """``KVM_GET_MP_STATE``: ``KVM_MP_STATE_*``."""
        return self._get(k.KVM_GET_MP_STATE, s.kvm_mp_state).mp_state

    def set_mp_state(self, mp_state: int) -> None:
        """``KVM_SET_MP_STATE``."""
        _ioctl(self.fd, k.KVM_SET_MP_STATE, s.kvm_mp_state(mp_state))

    def get_debugregs(self) -> s.kvm_debugregs:
        """``KVM_GET_DEBUGREGS``: DR0-3, DR6, DR7."""
        return self._get(k.KVM_GET_DEBUGREGS, s.kvm_debugregs)

    def set_debugregs(self, dregs: s.kvm_debugregs) -> None:
        """``KVM_SET_DEBUGREGS``."""
        _ioctl(self.fd, k.KVM_SET_DEBUGREGS, dregs)

    def set_guest_debug(self, control: int, debugreg: Iterable[int] = ()) -> None:
        """``KVM_SET_GUEST_DEBUG``: ``KVM_GUESTDBG_*`` flags; ``debugreg`` = DR0-3 (and DR7 at index 7)."""
        dbg = s.kvm_guest_debug(control=control)
        for i, v in enumerate(list(debugreg)[:8]):
            dbg.arch.debugreg[i] = v
        _ioctl(self.fd, k.KVM_SET_GUEST_DEBUG, dbg)

    def set_cpuid2(self, entries: Iterable[s.kvm_cpuid_entry2]) -> None:
        """``KVM_SET_CPUID2``: the CPUID table the guest sees."""
        ents = list(entries)
        buf = s.make_kvm_cpuid2(max(len(ents), 1))()
        buf.nent = len(ents)
        for i, e in enumerate(ents):
            buf.entries[i] = e
        _ioctl(self.fd, k.KVM_SET_CPUID2, buf, f"{len(ents)} CPUID entries")

    def get_cpuid2(self, max_entries: int = s.KVM_MAX_CPUID_ENTRIES) -> list[s.kvm_cpuid_entry2]:
        """``KVM_GET_CPUID2``."""
        buf = s.make_kvm_cpuid2(max_entries)()
        buf.nent = max_entries
        _ioctl(self.fd, k.KVM_GET_CPUID2, buf)
        return [s.kvm_cpuid_entry2.from_buffer_copy(buf.entries[i]) for i in range(buf.nent)]

    def get_tsc_khz(self) -> int:
        """``KVM_GET_TSC_KHZ``."""
        return _ioctl(self.fd, k.KVM_GET_TSC_KHZ)

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        """``KVM_ENABLE_CAP`` on the vCPU."""
        ec = s.kvm_enable_cap(cap=cap, flags=flags)
        for i, a in enumerate(args[:4]):
            ec.args[i] = a
        _ioctl(self.fd, k.KVM_ENABLE_CAP, ec)

    def close(self) -> None:
        """Unmap ``kvm_run`` and close the fd."""
        if self.fd < 0:
            return
        self.run_struct = None  # drop the buffer export before unmapping
        try:
            self.run_mmap.close()
        except BufferError:
            pass
        os.close(self.fd)
        self.fd = -1
