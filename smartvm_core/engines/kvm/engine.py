"""The ``kvm`` engine: Linux KVM as the VMX hardware.

One :class:`KvmEngine` per machine owns the system and VM file descriptors
and keeps one KVM memory slot per guest-memory region (the region's own host
pages, so guest, devices and loaders share one copy). Each :class:`KvmVcpu`
runs ``KVM_RUN`` on its own thread (the GIL is released inside the guest)
and reports exits through the one translation table in :mod:`.exits`.

VMX semantics on top of KVM:

* KVM completes I/O, MMIO, HLT and MSR instructions itself: RIP is already
  past the instruction at the exit, so :meth:`KvmVcpu.skip_instruction` is a
  no-op. The answer to an IN, an MMIO read or a RDMSR (``exit.value``, or
  ``exit.data`` for string IN) is written into ``kvm_run`` before the next
  ``KVM_RUN``; ``exit.fault = True`` on an MSR exit makes KVM raise #GP(0).
* External interrupts are injected with ``KVM_INTERRUPT`` (user-space PIC),
  NMIs with ``KVM_NMI``, hardware exceptions with ``KVM_SET_VCPU_EVENTS``.
  "Interrupt-window exiting" is ``kvm_run.request_interrupt_window``.
* :meth:`KvmVcpu.kick` sets ``immediate_exit`` and signals the vCPU thread, so
  ``KVM_RUN`` returns ``EINTR``, reported as ``EXTERNAL_INTERRUPT``. The
  VMX-preemption timer is a per-vCPU timer thread (started on first use) that
  kicks the vCPU; its exit is ``VMX_PREEMPTION_TIMER_EXPIRED``.
* Register state goes through ``kvm_run`` where KVM offers
  ``KVM_CAP_SYNC_REGS``: once a handler reads the registers (or special
  registers), KVM is asked to copy them into ``kvm_run.s`` at every exit
  (``kvm_valid_regs``), and :meth:`KvmVcpu.set_regs`/``set_sregs`` write them
  there for KVM to load at the next entry (``kvm_dirty_regs``), so a handler
  that reads and writes registers makes no state ioctl (each costs a vCPU
  load; ~6-7 us on a nested KVM). Syncing stops after
  :data:`SYNC_IDLE_EXITS` exits nobody read it; writes still waiting are
  loaded by ioctl before any other state ioctl (:meth:`KvmVcpu.flush_state`),
  so the order of state changes is the order of the calls.
* What KVM never reports to user space is listed by
  :meth:`KvmEngine.capability_table` and refused by
  :meth:`KvmEngine.unsupported_controls`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import operator
import signal
import struct
import threading
import time
from typing import Any, Callable, Iterable

import attrs

from ...cpu import DescriptorTable, Registers, Segment, SpecialRegisters, RFLAGS_VM
from ...errors import EngineError, UnsupportedControl
from ...exit import VmExit
from ...memory import GuestMemory, MemoryRegion, PAGE_SIZE
from ...vmx import (EventInjection, ExitReason, InterruptionType, PinBasedControls,
                    ProcBasedControls, ProcBasedControls2, Vector, Vmcs, VmcsField)
from ..base import Availability, Engine, EngineOptions, EngineVcpu, VmxBitmaps
from . import ioctls as k
from . import structs as s
from .errors import KvmError, KvmMissingCapability, KvmUnavailable
from .exits import (MMIO_DATA_OFFSET, MSR_DATA_OFFSET, MSR_ERROR_OFFSET, TRANSLATE, U64, VALUE,
                    WB_IO_IN, WB_IO_IN_STRING, WB_MMIO_READ, WB_NONE, WB_RDMSR, WB_SETUP, WB_WRMSR, _io)
from .system import Kvm

_ioctl = fcntl.ioctl
_KVM_RUN = k.KVM_RUN
_KVM_EXIT_IO = s.KVM_EXIT_IO
_get_ident = threading.get_ident

#: the signal that kicks a vCPU thread out of KVM_RUN
KICK_SIGNAL = signal.SIGRTMIN + 5 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR2

#: guest-physical pages KVM needs for real mode on VMX without unrestricted guest
TSS_ADDR = 0xFFFBD000
IDENTITY_MAP_ADDR = 0xFFFBC000


def _kick_handler(signum: int, frame: Any) -> None:
    """Does nothing: the signal only has to interrupt ``KVM_RUN``."""


def install_kick_handler() -> bool:
    """Install the no-op handler for :data:`KICK_SIGNAL` (main thread only); True if in place."""
    try:
        current = signal.getsignal(KICK_SIGNAL)
        if current is _kick_handler:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        signal.signal(KICK_SIGNAL, _kick_handler)
        return True
    except (ValueError, OSError):
        return False


install_kick_handler()


@attrs.frozen
class CpuidEntry:
    """One CPUID leaf for :meth:`KvmVcpu.set_cpuid` (``kvm_cpuid_entry2``)."""

    function: int
    index: int = 0
    flags: int = 0
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0


def _host_has_hw_virt() -> tuple[bool, str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    if "vmx" in flags:
                        return True, "vmx"
                    if "svm" in flags:
                        return True, "svm"
                    return False, "none"
    except OSError:
        pass
    return False, "unknown"


# -- state conversion ------------------------------------------------------------
# Registers and SpecialRegisters list their fields in kvm_regs / kvm_sregs order, so
# one struct unpack gives a constructor's positional arguments.
_REG_NAMES = tuple(n for n, _ in s.kvm_regs._fields_)
_SEG_FIELDS = ("selector", "base", "limit", "type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable")
_CR_NAMES = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")
#: kvm_regs as 18 u64
REGS_STRUCT = struct.Struct("<18Q")
#: kvm_sregs up to (not including) the interrupt bitmap: 8 x kvm_segment (base, limit, selector,
#: type ... unusable, padding), gdt and idt (base, limit, padding), CR0 ... APIC base
SREGS_STRUCT = struct.Struct("<" + "QIH9Bx" * 8 + "QH6x" * 2 + "7Q")
#: the six data/code selectors in kvm_sregs (cs, ds, es, fs, gs, ss at 24-byte strides, selector at +12)
SELECTORS_STRUCT = struct.Struct("<" + "12xH10x" * 6)
_get_regs_tuple = operator.attrgetter(*_REG_NAMES)
_get_seg_tuple = operator.attrgetter("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l",
                                     "g", "avl", "unusable")
_U64 = 0xFFFFFFFFFFFFFFFF
#: where KVM_CAP_SYNC_REGS puts kvm_regs and kvm_sregs in kvm_run (kvm_run.s.regs)
SYNC_REGS_OFFSET = s.kvm_run.s.offset + s.kvm_sync_regs.regs.offset
SYNC_SREGS_OFFSET = s.kvm_run.s.offset + s.kvm_sync_regs.sregs.offset
_SYNC_CR0_OFFSET = SYNC_SREGS_OFFSET + s.kvm_sregs.cr0.offset
_CRS_STRUCT = struct.Struct("<7Q")   # cr0, cr2, cr3, cr4, cr8, efer, apic_base
#: kvm_run.s from kvm_regs to CR0: the 18 registers, the six selectors (cs .. ss), CR0 (get_regs_selectors_cr0)
_REGS_SELECTORS_CR0_STRUCT = struct.Struct(
    "<18Q" + f"{SYNC_SREGS_OFFSET - SYNC_REGS_OFFSET - REGS_STRUCT.size}x" + "12xH10x" * 6
    + f"{s.kvm_sregs.cr0.offset - 6 * ctypes.sizeof(s.kvm_segment)}x" + "Q")
_U64_STRUCT = struct.Struct("<Q")
SYNC_REGS = s.KVM_SYNC_X86_REGS
SYNC_SREGS = s.KVM_SYNC_X86_SREGS
_SYNC_BOTH = SYNC_REGS | SYNC_SREGS
#: exits with register syncing on and no register access before it is turned off again
SYNC_IDLE_EXITS = 1000
assert REGS_STRUCT.size == ctypes.sizeof(s.kvm_regs)
assert SREGS_STRUCT.size == s.kvm_sregs.interrupt_bitmap.offset
assert tuple(f.name for f in attrs.fields(Registers)) == _REG_NAMES


def regs_from_values(v: tuple[int, ...]) -> Registers:
    """A :class:`Registers` from the 18 ``kvm_regs`` words."""
    return Registers(*v)


def regs_from_kvm(kr: Any) -> Registers:
    """``kvm_regs`` (or any buffer holding one) as :class:`Registers`."""
    return Registers(*REGS_STRUCT.unpack_from(kr))


def regs_values(regs: Registers) -> tuple[int, ...]:
    """The 18 ``kvm_regs`` words of ``regs`` (each truncated to 64 bits)."""
    v = _get_regs_tuple(regs)
    for x in v:
        if not 0 <= x <= _U64:
            return tuple(x & _U64 for x in v)
    return v


def regs_to_kvm(regs: Registers) -> s.kvm_regs:
    return s.kvm_regs.from_buffer_copy(REGS_STRUCT.pack(*regs_values(regs)))


def sregs_from_values(v: tuple[int, ...]) -> SpecialRegisters:
    """A :class:`SpecialRegisters` from :data:`SREGS_STRUCT` values."""
    segs = [Segment(v[i + 2], v[i], v[i + 1], v[i + 3], v[i + 4], v[i + 5], v[i + 6], v[i + 7], v[i + 8],
                    v[i + 9], v[i + 10], v[i + 11]) for i in range(0, 96, 12)]
    return SpecialRegisters(*segs, DescriptorTable(v[96], v[97]), DescriptorTable(v[98], v[99]), *v[100:107])


def sregs_from_kvm(ks: Any) -> SpecialRegisters:
    """``kvm_sregs`` (or any buffer holding one) as :class:`SpecialRegisters`."""
    return sregs_from_values(SREGS_STRUCT.unpack_from(ks))


def sregs_values(sr: SpecialRegisters) -> tuple[int, ...] | None:
    """:data:`SREGS_STRUCT` values of ``sr``, or None if a field does not fit its ``kvm_sregs`` slot."""
    out: list[int] = []
    for name in SpecialRegisters.SEGMENTS:
        out += _get_seg_tuple(getattr(sr, name))
    out += (sr.gdt.base, sr.gdt.limit & 0xFFFF, sr.idt.base, sr.idt.limit & 0xFFFF,
            sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.cr8, sr.efer, sr.apic_base)
    try:
        SREGS_STRUCT.pack(*out)
    except struct.error:
        return None
    return tuple(out)


def sregs_to_kvm(sr: SpecialRegisters, base: s.kvm_sregs | None = None) -> s.kvm_sregs:
    """``sr`` as ``kvm_sregs`` (over ``base``, whose interrupt bitmap is kept); fields are truncated to fit."""
    ks = base if base is not None else s.kvm_sregs()
    values = sregs_values(sr)
    if values is not None:
        SREGS_STRUCT.pack_into(ks, 0, *values)
        return ks
    for name in SpecialRegisters.SEGMENTS:
        seg = getattr(sr, name)
        kseg = getattr(ks, name)
        for f in _SEG_FIELDS:
            setattr(kseg, f, getattr(seg, f))
    ks.gdt.base, ks.gdt.limit = sr.gdt.base, sr.gdt.limit & 0xFFFF
    ks.idt.base, ks.idt.limit = sr.idt.base, sr.idt.limit & 0xFFFF
    for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"):
        setattr(ks, n, getattr(sr, n))
    return ks


def _blob(obj: Any) -> str:
    return bytes(obj).hex()


def _from_blob(cls: type, text: str) -> Any:
    data = bytes.fromhex(text)
    if len(data) != ctypes.sizeof(cls):
        raise EngineError(f"kvm state: {cls.__name__} blob has {len(data)} bytes, expected "
                          f"{ctypes.sizeof(cls)}")
    return cls.from_buffer_copy(data)


class KvmVcpu(EngineVcpu):
    """A KVM vCPU: ``KVM_RUN`` plus the state ioctls, in the VMX model's terms."""

    #: KVM completes I/O and MMIO instructions before the exit reaches user space
    #: (:meth:`skip_instruction` is a no-op for them); the core's bus handlers skip the call
    io_completed_at_exit = True

    def __init__(self, engine: "KvmEngine", index: int) -> None:
        self.engine = engine
        self.index = index
        default = ProcBasedControls.UNCONDITIONAL_IO_EXITING
        if not engine.irqchip_kernel:
            default |= ProcBasedControls.HLT_EXITING
        self.vmcs = Vmcs({VmcsField.CPU_BASED_VM_EXEC_CONTROL: int(default)})
        self.bitmaps = VmxBitmaps()
        self.exit = VmExit()
        self.fd = engine.vm.create_vcpu(index)
        self.mm = self.fd.run_mmap
        self.kvm_run = self.fd.run_struct
        self._fdno = self.fd.fd
        self.writeback = WB_SETUP
        self.wb_offset = 0
        self.readonly_slots = False
        self.mtf = False
        #: the thread id while it is inside run() (None otherwise): whom kick() signals
        self._run_tid: int | None = None
        #: the loop body run() calls per exit (set_inline_dispatcher), or None: run() returns each exit
        self._dispatch: Callable[[VmExit], bool] | None = None
        #: exit_reason (offset 8) as a 32-bit word of kvm_run, read without ctypes on the hot path
        self._words = memoryview(self.mm).cast("I")
        self._kick_lock = threading.Lock()
        # VMX-preemption timer emulation
        self.timer_deadline_ns = None
        self._timer_armed = False
        self._timer_fired = False
        self._pre_entry = False  # timer armed or interrupt window requested: check before entering
        self._timer_thread: threading.Thread | None = None
        self._timer_cond = threading.Condition()
        self._closing = False
        self._user_debug = 0   # from set_guest_debug()
        self._vmcs_debug = 0   # from the VMCS (exception bitmap, MTF)
        self._debugreg: tuple[int, ...] = ()
        # KVM_CAP_SYNC_REGS: register sets KVM copies into kvm_run.s at every exit (kvm_valid_regs) and
        # loads from it at the next entry (kvm_dirty_regs), sparing a KVM_GET/SET_(S)REGS ioctl each.
        # A set is requested once a handler reads it, and dropped after SYNC_IDLE_EXITS exits unread.
        #: the sets this host's KVM can sync (KVM_SYNC_X86_REGS / _SREGS)
        self._sync_caps = int(engine.caps.get("SYNC_REGS") or 0) & (SYNC_REGS | SYNC_SREGS)
        #: the sets requested (mirror of kvm_run.kvm_valid_regs)
        self._valid = 0
        #: the sets kvm_run.s holds current values of (since the last exit; 0 while in KVM_RUN)
        self._fresh = 0
        #: the sets written into kvm_run.s for the next entry (mirror of kvm_run.kvm_dirty_regs)
        self._dirty = 0
        self._dirty_regs: tuple[int, ...] = ()
        self._dirty_sregs: tuple[int, ...] = ()
        #: exits since a handler last used the synced registers
        self._idle = 0
        if engine.supported_cpuid_entries:
            self.fd.set_cpuid2(engine.supported_cpuid_entries)

    # -- the hot path -------------------------------------------------------------
    def set_inline_dispatcher(self, dispatch: Callable[[VmExit], bool] | None) -> None:
        """Take the loop body (:func:`smartvm_core.loop.make_inline_dispatcher`).

        With a dispatcher, :meth:`run` hands each exit to ``dispatch`` itself
        and enters the guest again while it returns ``True``; it returns
        ``None`` when the loop must act (stop, pause, inject, re-arm the
        timer). The exits, handlers and accounting are those of the loop; only
        the trip back to the loop between two exits is saved.
        """
        self._dispatch = dispatch

    def run(self) -> VmExit | None:
        """Enter the guest (``KVM_RUN``) and return the next exit in VMX terms.

        With an inline dispatcher (:meth:`set_inline_dispatcher`) it runs the
        handlers of each exit itself and returns ``None`` once the dispatcher
        says the loop must act. ``fcntl.ioctl`` is called with no argument
        (the cheapest call) and releases the GIL while the guest runs. The
        usual exit, a one-port I/O instruction, goes straight to
        :func:`.exits._io` without the translation table.
        """
        dispatch = self._dispatch
        mm = self.mm
        e = self.exit
        words = self._words
        fd = self._fdno
        self._run_tid = _get_ident()
        try:
            while True:
                wb = self.writeback
                if wb:
                    if wb == WB_IO_IN and e.size == 1:   # the common answer: one byte of IN
                        self.writeback = WB_NONE
                        mm[self.wb_offset] = e.value & 0xFF
                    else:
                        self._write_back()
                if self._pre_entry and self._pre_entry_exit() is not None:
                    if dispatch is None:
                        return e
                    if dispatch(e):
                        continue
                    return None
                valid = self._valid    # registers synced through kvm_run (0: none, nothing fresh or dirty)
                if valid:
                    self._fresh = 0
                    sent = self._dirty     # register writes KVM loads from kvm_run in this KVM_RUN
                    self._dirty = 0
                try:
                    _ioctl(fd, _KVM_RUN)
                except OSError as err:
                    if valid and sent:
                        self._check_loaded(sent)
                    self._run_failed(err)
                else:
                    if valid:
                        self._fresh = valid
                        if sent:
                            self._check_loaded(sent)
                        self._idle += 1
                        if self._idle > SYNC_IDLE_EXITS:
                            self._set_valid(0)
                    code = words[2]
                    if code == _KVM_EXIT_IO:
                        _io(self)
                    else:
                        TRANSLATE[code](self)   # every translator fills (and returns) self.exit
                if dispatch is None:
                    return e
                if not dispatch(e):
                    return None
        finally:
            self._run_tid = None

    # -- registers through kvm_run (KVM_CAP_SYNC_REGS) ------------------------------
    def _set_valid(self, valid: int) -> None:
        self._valid = valid
        self._idle = 0
        self._fresh &= valid
        self.kvm_run.kvm_valid_regs = valid

    def _mark_dirty(self, bit: int) -> None:
        self._dirty |= bit
        self._idle = 0
        self.kvm_run.kvm_dirty_regs = self._dirty

    def _check_loaded(self, sent: int) -> None:
        """After KVM_RUN: KVM clears the dirty bits it loaded; any left were not loaded (it failed early)."""
        left = self.kvm_run.kvm_dirty_regs & sent
        if left:
            self.kvm_run.kvm_dirty_regs = 0
            self._fresh = 0  # kvm_run.s may hold the old state again: load ours by ioctl
            self._write_state(left)

    def _write_state(self, sets: int) -> None:
        if sets & SYNC_REGS:
            self.fd.set_regs(s.kvm_regs.from_buffer_copy(REGS_STRUCT.pack(*self._dirty_regs)))
        if sets & SYNC_SREGS:
            ks = self.fd.get_sregs()
            SREGS_STRUCT.pack_into(ks, 0, *self._dirty_sregs)
            self.fd.set_sregs(ks)

    def flush_state(self) -> None:
        """Load register writes still waiting in ``kvm_run`` for the next entry now, by ioctl.

        Called before every other ioctl that reads or changes vCPU state, so
        the order of state changes stays the order of the calls.
        """
        d = self._dirty
        if d:
            self._dirty = 0
            self.kvm_run.kvm_dirty_regs = 0
            self._fresh = 0
            self._write_state(d)

    def _pre_entry_exit(self) -> VmExit | None:
        """Exits VMX takes before the first guest instruction: an expired timer, an open interrupt window."""
        if self._timer_armed and time.monotonic_ns() >= self.timer_deadline_ns:
            return self._timer_exit()
        run = self.kvm_run
        if run.request_interrupt_window and run.ready_for_interrupt_injection and run.if_flag:
            return self.exit.reset(ExitReason.INTERRUPT_WINDOW)
        return None

    def _update_pre_entry(self) -> None:
        run = self.kvm_run
        self._pre_entry = bool(self._timer_armed or (run is not None and run.request_interrupt_window))

    def _write_back(self) -> None:
        wb = self.writeback
        self.writeback = WB_NONE
        e = self.exit
        if wb == WB_IO_IN:
            size = e.size
            if size == 1:
                self.mm[self.wb_offset] = e.value & 0xFF
            else:
                VALUE[size].pack_into(self.mm, self.wb_offset, e.value & ((1 << (8 * size)) - 1))
        elif wb == WB_MMIO_READ:
            U64.pack_into(self.mm, MMIO_DATA_OFFSET, e.value & ((1 << (8 * min(e.size, 8))) - 1))
        elif wb == WB_IO_IN_STRING:
            n = e.size * e.count
            data = bytes(e.data or b"")[:n].ljust(n, b"\xff")
            self.mm[self.wb_offset:self.wb_offset + n] = data
        elif wb == WB_RDMSR:
            self.mm[MSR_ERROR_OFFSET] = 1 if e.fault else 0
            if not e.fault:
                U64.pack_into(self.mm, MSR_DATA_OFFSET, e.value & 0xFFFFFFFFFFFFFFFF)
        elif wb == WB_WRMSR:
            self.mm[MSR_ERROR_OFFSET] = 1 if e.fault else 0
        elif wb == WB_SETUP:
            self.apply_controls()

    def _run_failed(self, e: OSError) -> VmExit:
        if e.errno in (errno.EINTR, errno.EAGAIN):
            return self.interrupted()
        self._raise_run_error(e)
        raise AssertionError  # unreachable

    def _raise_run_error(self, e: OSError) -> None:
        detail = self.where()
        if e.errno == errno.EFAULT:
            detail = "the guest touched memory KVM could not map (a slot's host memory is gone); " + detail
        elif e.errno == errno.ENOEXEC:
            detail = "KVM cannot run this vCPU state (invalid guest state for this host); " + detail
        elif e.errno == errno.EBADF:
            detail = "the vCPU was closed"
        raise KvmError(f"KVM_RUN on vCPU {self.index}", e.errno or 0, detail)

    def interrupted(self) -> VmExit:
        """``KVM_RUN`` returned ``EINTR``/``KVM_EXIT_INTR``: a kick or the timer."""
        self.kvm_run.immediate_exit = 0
        if self._timer_fired:
            return self._timer_exit()
        return self.exit.reset(ExitReason.EXTERNAL_INTERRUPT)

    def _timer_exit(self) -> VmExit:
        self._timer_armed = False
        self._timer_fired = False
        self.timer_deadline_ns = None
        self.kvm_run.immediate_exit = 0
        self._update_pre_entry()
        return self.exit.reset(ExitReason.VMX_PREEMPTION_TIMER_EXPIRED)

    def where(self) -> str:
        """RIP, mode and the bytes at CS:RIP, for error messages (never raises)."""
        try:
            r = self.fd.get_regs()
            sr = self.fd.get_sregs()
            from ...cpu import cpu_mode
            mode = cpu_mode(sregs_from_kvm(sr), r.rflags)
            lin = sr.cs.base + r.rip if mode != "long" else r.rip
            text = f"vCPU {self.index} at CS:RIP {sr.cs.selector:#06x}:{r.rip:#x} ({mode} mode)"
            try:
                phys = self.translate(lin)
                if phys is not None:
                    text += f", bytes {self.engine.memory.read(phys, 8).hex(' ')}"
            except Exception:
                pass
            return text
        except Exception as exc:  # noqa: BLE001 - diagnostics must not mask the real error
            return f"(vCPU state unavailable: {exc})"

    # -- kicks and the timer -------------------------------------------------------
    def kick(self) -> None:
        """Make :meth:`run` return soon with ``EXTERNAL_INTERRUPT`` (any thread)."""
        run = self.kvm_run
        if run is None:
            return
        run.immediate_exit = 1
        with self._kick_lock:
            tid = self._run_tid
            if tid is not None and tid != threading.get_ident():
                try:
                    signal.pthread_kill(tid, KICK_SIGNAL)
                except (ProcessLookupError, OSError):
                    pass

    def set_timer_deadline(self, deadline_ns: int | None) -> None:
        """Emulate the VMX-preemption timer: exit with ``VMX_PREEMPTION_TIMER_EXPIRED`` after ``deadline_ns``."""
        with self._timer_cond:
            self.timer_deadline_ns = deadline_ns
            self._timer_fired = False
            self._timer_armed = deadline_ns is not None
            self._update_pre_entry()
            if deadline_ns is not None and self._timer_thread is None:
                self._timer_thread = threading.Thread(target=self._timer_main, name=f"kvm-timer{self.index}",
                                                      daemon=True)
                self._timer_thread.start()
            self._timer_cond.notify()

    def _timer_main(self) -> None:
        cond = self._timer_cond
        with cond:
            while not self._closing:
                if not self._timer_armed or self._timer_fired:
                    cond.wait()
                    continue
                wait = min((self.timer_deadline_ns - time.monotonic_ns()) / 1e9, 60.0)
                if wait > 0:
                    cond.wait(wait)
                    continue
                self._timer_fired = True
                self.kick()

    # -- VMX event injection --------------------------------------------------------
    def inject_event(self, event: EventInjection) -> None:
        """Deliver ``event`` on the next entry (``KVM_INTERRUPT``, ``KVM_NMI`` or ``KVM_SET_VCPU_EVENTS``)."""
        info = event.info
        if not info.valid:
            return
        kind = info.type
        if kind is InterruptionType.EXTERNAL_INTERRUPT:
            if self.engine.irqchip_kernel:
                raise UnsupportedControl(
                    "kvm engine: external interrupts come from the in-kernel irqchip (irqchip = \"kernel\"); "
                    "use Engine.set_irq, or irqchip = \"user\" to inject with KVM_INTERRUPT")
            self.fd.interrupt(info.vector)
            self.kvm_run.request_interrupt_window = 0
            self._update_pre_entry()
        elif kind is InterruptionType.NMI:
            self.fd.nmi()
        elif kind is InterruptionType.HARDWARE_EXCEPTION:
            self.flush_state()  # KVM_SET_REGS drops a pending exception: keep the calls' order
            ev = self.fd.get_vcpu_events()
            ev.exception.injected = 1
            ev.exception.pending = 0
            ev.exception.nr = info.vector
            ev.exception.has_error_code = 1 if info.deliver_error_code else 0
            ev.exception.error_code = event.error_code
            ev.exception_has_payload = 0
            ev.flags = 0
            self.fd.set_vcpu_events(ev)
        else:
            raise UnsupportedControl(
                f"kvm engine: cannot inject {kind.name} (vector {info.vector}): KVM_SET_VCPU_EVENTS takes no "
                "VM-entry instruction length, so software interrupts and exceptions cannot be injected")

    def interrupt_window_open(self) -> bool:
        """``kvm_run.ready_for_interrupt_injection`` (IF=1, no shadow, nothing queued)."""
        return bool(self.kvm_run.ready_for_interrupt_injection)

    def set_interrupt_window_exiting(self, enabled: bool) -> None:
        """``kvm_run.request_interrupt_window``: exit with ``INTERRUPT_WINDOW`` once injection is possible."""
        self.kvm_run.request_interrupt_window = 1 if enabled else 0
        self._update_pre_entry()

    def skip_instruction(self) -> None:
        """No-op: KVM completes (or faults) every instruction whose exit reaches user space."""

    # -- controls ---------------------------------------------------------------------
    def apply_controls(self) -> None:
        """Program KVM from ``self.vmcs`` (done before the first entry; call again after changing it).

        Exception-bitmap #DB/#BP and MTF become guest debug; ``USE_MSR_BITMAPS``
        installs :attr:`bitmaps` ``.msr`` as the MSR filter. Refused controls
        raise :class:`UnsupportedControl`. I/O bitmaps need nothing: KVM
        reports every port access.
        """
        problems = self.engine.unsupported_controls(self.vmcs)
        if problems:
            raise UnsupportedControl("kvm engine cannot honour: " + "; ".join(problems))
        proc = self.vmcs[VmcsField.CPU_BASED_VM_EXEC_CONTROL]
        eb = self.vmcs[VmcsField.EXCEPTION_BITMAP]
        self.mtf = bool(proc & ProcBasedControls.MONITOR_TRAP_FLAG)
        control = 0
        if self.mtf:
            control |= s.KVM_GUESTDBG_ENABLE | s.KVM_GUESTDBG_SINGLESTEP
        if eb & (1 << Vector.DB):
            control |= s.KVM_GUESTDBG_ENABLE | s.KVM_GUESTDBG_USE_HW_BP
        if eb & (1 << Vector.BP):
            control |= s.KVM_GUESTDBG_ENABLE | s.KVM_GUESTDBG_USE_SW_BP
        self._vmcs_debug = control
        self._program_debug()
        if proc & ProcBasedControls.USE_MSR_BITMAPS:
            self.engine.set_msr_filter_from_bitmap(bytes(self.bitmaps.msr))

    def set_guest_debug(self, *, single_step: bool = False, breakpoints: Iterable[int] = (),
                        software_breakpoints: bool = False) -> None:
        """``KVM_SET_GUEST_DEBUG``: single-step and up to four hardware execution breakpoints.

        Each resulting #DB/#BP is reported as an ``EXCEPTION_NMI`` exit.
        """
        bps = list(breakpoints)
        if len(bps) > 4:
            raise ValueError("at most four hardware breakpoints (DR0-DR3)")
        control = 0
        if single_step or bps or software_breakpoints:
            control = s.KVM_GUESTDBG_ENABLE
        if single_step:
            control |= s.KVM_GUESTDBG_SINGLESTEP
        if software_breakpoints:
            control |= s.KVM_GUESTDBG_USE_SW_BP
        debugreg = [0] * 8
        if bps:
            control |= s.KVM_GUESTDBG_USE_HW_BP
            dr7 = 0
            for i, addr in enumerate(bps):
                debugreg[i] = addr
                dr7 |= 1 << (2 * i + 1)  # Gn, execution breakpoint (R/W=00, LEN=00)
            debugreg[7] = dr7 | 0x400
        self._user_debug = control
        self._debugreg = tuple(debugreg)
        self._program_debug()

    def _program_debug(self) -> None:
        self.flush_state()  # single-stepping changes RFLAGS.TF: keep the calls' order
        self.fd.set_guest_debug(self._user_debug | self._vmcs_debug, self._debugreg)

    # -- CPUID --------------------------------------------------------------------------
    def set_cpuid(self, entries: Iterable[Any]) -> None:
        """``KVM_SET_CPUID2`` from ``(function, index, flags, eax, ebx, ecx, edx)`` tuples or attrs objects."""
        out = []
        for e in entries:
            if isinstance(e, tuple):
                f = CpuidEntry(*e)
            else:
                f = e
            ke = s.kvm_cpuid_entry2()
            for n in ("function", "index", "flags", "eax", "ebx", "ecx", "edx"):
                setattr(ke, n, int(getattr(f, n)) & 0xFFFFFFFF)
            out.append(ke)
        self.fd.set_cpuid2(out)

    def supported_cpuid(self) -> list[CpuidEntry]:
        """The CPUID leaves this host's KVM can give a guest (``KVM_GET_SUPPORTED_CPUID``)."""
        return self.engine.supported_cpuid()

    def get_cpuid(self) -> list[CpuidEntry]:
        """The vCPU's current table (``KVM_GET_CPUID2``)."""
        return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                for e in self.fd.get_cpuid2()]

    # -- state ------------------------------------------------------------------------
    def get_regs(self) -> Registers:
        """The registers as ``KVM_GET_REGS`` gives them (from ``kvm_run`` when KVM synced them at the exit)."""
        if self._fresh & SYNC_REGS:
            self._idle = 0
            return Registers(*REGS_STRUCT.unpack_from(self.mm, SYNC_REGS_OFFSET))
        kr = self.fd.get_regs()
        if self._sync_caps & SYNC_REGS and not self._valid & SYNC_REGS:
            self._set_valid(self._valid | SYNC_REGS)  # a handler reads them: have KVM sync them
        return regs_from_kvm(kr)

    def set_regs(self, regs: Registers) -> None:
        """``KVM_SET_REGS`` (through ``kvm_run`` for the next entry, when KVM synced them at the exit)."""
        values = regs_values(regs)
        if self._fresh & SYNC_REGS:
            REGS_STRUCT.pack_into(self.mm, SYNC_REGS_OFFSET, *values)
            self._dirty_regs = values
            self._mark_dirty(SYNC_REGS)
            return
        self.flush_state()
        self.fd.set_regs(s.kvm_regs.from_buffer_copy(REGS_STRUCT.pack(*values)))

    def get_sregs(self) -> SpecialRegisters:
        """The special registers as ``KVM_GET_SREGS`` gives them (from ``kvm_run`` when synced)."""
        if self._fresh & SYNC_SREGS:
            self._idle = 0
            return sregs_from_values(SREGS_STRUCT.unpack_from(self.mm, SYNC_SREGS_OFFSET))
        ks = self.fd.get_sregs()
        if self._sync_caps & SYNC_SREGS and not self._valid & SYNC_SREGS:
            self._set_valid(self._valid | SYNC_SREGS)
        return sregs_from_kvm(ks)

    def set_sregs(self, sregs: SpecialRegisters) -> None:
        """``KVM_SET_SREGS`` (the pending-interrupt bitmap is kept).

        When KVM synced the special registers at the exit and only segments
        or descriptor tables change, the new values go through ``kvm_run``;
        a change of CR0, CR2, CR3, CR4, CR8, EFER or the APIC base takes the
        ioctl, so KVM's refusal is raised here.
        """
        values = sregs_values(sregs)
        if values is not None and self._fresh & SYNC_SREGS \
                and values[100:] == _CRS_STRUCT.unpack_from(self.mm, _SYNC_CR0_OFFSET):
            SREGS_STRUCT.pack_into(self.mm, SYNC_SREGS_OFFSET, *values)
            self._dirty_sregs = values
            self._mark_dirty(SYNC_SREGS)
            return
        self.flush_state()
        self._fresh &= ~SYNC_SREGS
        self.fd.set_sregs(sregs_to_kvm(sregs, self.fd.get_sregs()))

    def get_segment_selectors(self) -> tuple[int, int, int, int, int, int]:
        """ES, CS, SS, DS, FS, GS selectors (from ``kvm_run`` when synced, without building ``SpecialRegisters``)."""
        if self._fresh & SYNC_SREGS:
            self._idle = 0
            cs, ds, es, fs, gs, ss = SELECTORS_STRUCT.unpack_from(self.mm, SYNC_SREGS_OFFSET)
        else:
            ks = self.fd.get_sregs()
            if self._sync_caps & SYNC_SREGS and not self._valid & SYNC_SREGS:
                self._set_valid(self._valid | SYNC_SREGS)
            cs, ds, es, fs, gs, ss = SELECTORS_STRUCT.unpack_from(ks)
        return es, cs, ss, ds, fs, gs

    def get_cr0(self) -> int:
        """CR0 (from ``kvm_run`` when synced)."""
        if self._fresh & SYNC_SREGS:
            self._idle = 0
            return _U64_STRUCT.unpack_from(self.mm, _SYNC_CR0_OFFSET)[0]
        return self.get_sregs().cr0

    def get_regs_selectors_cr0(self) -> tuple[int, ...]:
        """Registers, selectors (CS .. SS) and CR0: one unpack of ``kvm_run`` when KVM synced both sets."""
        if self._fresh & _SYNC_BOTH == _SYNC_BOTH:
            self._idle = 0
            return _REGS_SELECTORS_CR0_STRUCT.unpack_from(self.mm, SYNC_REGS_OFFSET)
        return super().get_regs_selectors_cr0()

    def get_msr(self, index: int) -> int:
        """``KVM_GET_MSRS`` for one MSR; KeyError if KVM keeps none by that index."""
        self.flush_state()
        got = self.fd.get_msrs([index])
        if index not in got:
            raise KeyError(index)
        return got[index]

    def set_msr(self, index: int, value: int) -> None:
        """``KVM_SET_MSRS`` for one MSR; KeyError if KVM refuses it."""
        self.flush_state()
        self._fresh = 0  # EFER and the APIC base are in kvm_sregs
        if self.fd.set_msrs([(index, value)]) != 1:
            raise KeyError(index)

    def translate(self, linear: int) -> int | None:
        """``KVM_TRANSLATE``; ``None`` if the linear address is not mapped."""
        self.flush_state()
        tr = self.fd.translate(linear)
        return tr.physical_address if tr.valid else None

    def get_mp_state(self) -> int:
        """``KVM_GET_MP_STATE``."""
        return self.fd.get_mp_state()

    def set_mp_state(self, state: int) -> None:
        """``KVM_SET_MP_STATE``."""
        self.flush_state()
        self._fresh = 0
        self.fd.set_mp_state(state)

    def readable_msrs(self) -> dict[int, int]:
        """Every MSR of ``KVM_GET_MSR_INDEX_LIST`` that this vCPU can read (``KVM_GET_MSRS``)."""
        out: dict[int, int] = {}
        todo = list(self.engine.msr_index_list)
        while todo:
            got = self.fd.get_msrs(todo)
            out.update(got)
            todo = todo[len(got) + 1:]  # skip the one KVM refused
        return out

    def save_state(self) -> dict[str, Any]:
        """Registers, segments, FPU/XSAVE, XCRs, MSRs, LAPIC, events, MP state, debug registers."""
        self.flush_state()
        fd = self.fd
        st: dict[str, Any] = {
            "regs": attrs.asdict(self.get_regs()),
            "sregs": attrs.asdict(self.get_sregs()),
            "interrupt_bitmap": list(fd.get_sregs().interrupt_bitmap),
            "fpu": _blob(fd.get_fpu()),
            "msrs": {str(i): v for i, v in self.readable_msrs().items()},
            "vcpu_events": _blob(fd.get_vcpu_events()),
            "mp_state": fd.get_mp_state(),
            "debugregs": _blob(fd.get_debugregs()),
            "cpuid": [attrs.astuple(e) for e in self.get_cpuid()],
            "vmcs": self.vmcs.state(),
        }
        if self.engine.caps.get("XSAVE"):
            st["xsave"] = _blob(fd.get_xsave())
        if self.engine.caps.get("XCRS"):
            st["xcrs"] = _blob(fd.get_xcrs())
        if self.engine.irqchip_kernel:
            st["lapic"] = _blob(fd.get_lapic())
        return st

    def restore_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`save_state` output (order after Firecracker: CPUID, MP state, registers ... events)."""
        from ...cpu import registers_from_plain, sregs_from_plain
        fd = self.fd
        self.flush_state()
        self._fresh = 0
        try:
            if state.get("cpuid"):
                self.set_cpuid(tuple(e) for e in state["cpuid"])
            fd.set_mp_state(int(state["mp_state"]))
            fd.set_regs(regs_to_kvm(registers_from_plain(state["regs"])))
            ks = sregs_to_kvm(sregs_from_plain(state["sregs"]))
            for i, w in enumerate(state.get("interrupt_bitmap", [])[:4]):
                ks.interrupt_bitmap[i] = w
            fd.set_sregs(ks)
            fd.set_fpu(_from_blob(s.kvm_fpu, state["fpu"]))
            if "xsave" in state:
                fd.set_xsave(_from_blob(s.kvm_xsave, state["xsave"]))
            if "xcrs" in state:
                fd.set_xcrs(_from_blob(s.kvm_xcrs, state["xcrs"]))
            fd.set_debugregs(_from_blob(s.kvm_debugregs, state["debugregs"]))
            if "lapic" in state and self.engine.irqchip_kernel:
                fd.set_lapic(_from_blob(s.kvm_lapic_state, state["lapic"]))
            msrs = [(int(i), int(v)) for i, v in state.get("msrs", {}).items()]
            while msrs:
                n = fd.set_msrs(msrs)
                msrs = msrs[n + 1:]  # skip the one KVM refused
            fd.set_vcpu_events(_from_blob(s.kvm_vcpu_events, state["vcpu_events"]))
            if "vmcs" in state:
                self.vmcs = Vmcs.from_state(state["vmcs"])
        except (KeyError, TypeError, ValueError) as e:
            raise EngineError(f"kvm vCPU {self.index}: bad saved state: {type(e).__name__}: {e}") from None

    def close(self) -> None:
        with self._timer_cond:
            self._closing = True
            self._timer_cond.notify()
        if self._timer_thread is not None:
            self._timer_thread.join(timeout=2)
            self._timer_thread = None
        with self._kick_lock:
            self.kvm_run = None
            if self._words is not None:
                self._words.release()
                self._words = None
            self.fd.close()

    def in_readonly_slot(self, gpa: int) -> bool:
        r = self.engine.memory.region_at(gpa)
        return r is not None and r.readonly


# -- what KVM can and cannot give user space ------------------------------------------
_REFUSED_PROC = {
    ProcBasedControls.NMI_WINDOW_EXITING: "NMI windows are handled inside KVM",
    ProcBasedControls.INVLPG_EXITING: "KVM handles INVLPG in the kernel and never reports it",
    ProcBasedControls.MWAIT_EXITING: "KVM emulates or passes MWAIT; no user-space exit exists",
    ProcBasedControls.MONITOR_EXITING: "KVM emulates or passes MONITOR; no user-space exit exists",
    ProcBasedControls.RDPMC_EXITING: "RDPMC is answered by KVM's PMU emulation in the kernel",
    ProcBasedControls.RDTSC_EXITING: "KVM never reports RDTSC to user space (it offsets/scales the TSC)",
    ProcBasedControls.CR3_LOAD_EXITING: "CR-access exits are handled by KVM's MMU in the kernel",
    ProcBasedControls.CR3_STORE_EXITING: "CR-access exits are handled by KVM's MMU in the kernel",
    ProcBasedControls.CR8_LOAD_EXITING: "CR8 (TPR) accesses are handled by KVM's APIC emulation",
    ProcBasedControls.CR8_STORE_EXITING: "CR8 (TPR) accesses are handled by KVM's APIC emulation",
    ProcBasedControls.USE_TPR_SHADOW: "the TPR shadow belongs to KVM's APIC virtualization",
    ProcBasedControls.MOV_DR_EXITING: "MOV DR is handled in the kernel; no user-space exit exists",
    ProcBasedControls.PAUSE_EXITING: "PAUSE exits are KVM's pause-loop heuristic, never reported",
    ProcBasedControls.ACTIVATE_TERTIARY_CONTROLS: "no tertiary control is available through KVM",
}
_REFUSED_PROC2 = {
    ProcBasedControls2.VIRTUALIZE_APIC_ACCESSES: "APIC virtualization belongs to KVM",
    ProcBasedControls2.DESCRIPTOR_TABLE_EXITING: "LGDT/SGDT/LIDT/... exits are never reported by KVM",
    ProcBasedControls2.VIRTUALIZE_X2APIC_MODE: "APIC virtualization belongs to KVM",
    ProcBasedControls2.WBINVD_EXITING: "KVM handles WBINVD in the kernel",
    ProcBasedControls2.APIC_REGISTER_VIRTUALIZATION: "APIC virtualization belongs to KVM",
    ProcBasedControls2.VIRTUAL_INTERRUPT_DELIVERY: "APIC virtualization belongs to KVM",
    ProcBasedControls2.PAUSE_LOOP_EXITING: "pause-loop exiting is KVM's own heuristic",
    ProcBasedControls2.RDRAND_EXITING: "RDRAND exits are never reported by KVM",
    ProcBasedControls2.RDSEED_EXITING: "RDSEED exits are never reported by KVM",
    ProcBasedControls2.ENABLE_VM_FUNCTIONS: "VM functions are not exposed by KVM",
    ProcBasedControls2.VMCS_SHADOWING: "VMCS shadowing is KVM's nested-VMX business",
    ProcBasedControls2.ENABLE_ENCLS_EXITING: "ENCLS exits are never reported by KVM",
    ProcBasedControls2.ENABLE_PML: "use dirty logging (KvmEngine.enable_dirty_logging) instead of PML",
    ProcBasedControls2.EPT_VIOLATION_VE: "#VE delivery is not exposed by KVM",
    ProcBasedControls2.ENABLE_XSAVES_XRSTORS: "XSAVES/XRSTORS exits are never reported by KVM",
    ProcBasedControls2.ENABLE_ENCLV_EXITING: "ENCLV exits are never reported by KVM",
}
_REFUSED_PIN = {
    PinBasedControls.NMI_EXITING: "NMIs are delivered by KVM; none reaches user space as an exit",
    PinBasedControls.VIRTUAL_NMIS: "virtual-NMI blocking is KVM's own",
    PinBasedControls.PROCESS_POSTED_INTERRUPTS: "posted interrupts belong to KVM's APIC virtualization",
}

CAPABILITIES: dict[str, str] = {
    "IO_INSTRUCTION exits": "yes (KVM_EXIT_IO; every port, I/O bitmaps cannot pass a port through)",
    "EPT_VIOLATION exits": "yes (KVM_EXIT_MMIO on guest-physical addresses with no slot, and writes to read-only slots)",
    "HLT exits": "yes with irqchip = \"user\"; no with the in-kernel irqchip (KVM halts the vCPU itself)",
    "RDMSR/WRMSR exits": "with USE_MSR_BITMAPS, the MSR bitmap becomes KVM_X86_SET_MSR_FILTER (also "
                         "KvmEngine.set_msr_intercepts); no for x2APIC MSRs 0x800-0x8ff, which KVM never filters; "
                         "without MSR bitmaps KVM answers MSRs itself (msr_exits = \"unknown\" sends MSRs KVM "
                         "does not know to user space)",
    "TRIPLE_FAULT exits": "yes (KVM_EXIT_SHUTDOWN)",
    "EXTERNAL_INTERRUPT exits": "yes (kick: immediate_exit + signal, KVM_RUN returns EINTR)",
    "INTERRUPT_WINDOW exits": "yes with irqchip = \"user\" (request_interrupt_window)",
    "VMX_PREEMPTION_TIMER_EXPIRED": "yes (a host timer thread kicks the vCPU)",
    "MONITOR_TRAP_FLAG": "yes (KVM guest-debug single-step)",
    "event injection": "yes for external interrupts (KVM_INTERRUPT), NMIs (KVM_NMI), hardware exceptions "
                       "(KVM_SET_VCPU_EVENTS); no for software interrupts/exceptions (no instruction length)",
    "exception bitmap": "only #DB and #BP (KVM_SET_GUEST_DEBUG); no for other vectors: KVM delivers guest "
                        "exceptions in the kernel",
    "CPUID exits": "no: KVM answers CPUID in the kernel from the KVM_SET_CPUID2 table (the exits plugin's "
                   "policy is loaded as that table)",
    "CR_ACCESS exits": "no: CR0/CR3/CR4/CR8 accesses are handled in the kernel (guest/host masks refused)",
    "MOV_DR exits": "no: handled in the kernel",
    "INVLPG/RDTSC/RDPMC/PAUSE/MWAIT/WBINVD/XSETBV/INVD exits": "no: handled in the kernel",
    "VMCALL exits": "no: KVM answers hypercalls itself (#UD or -KVM_ENOSYS to the guest)",
    "TASK_SWITCH exits": "no: KVM emulates task switches",
    "NMI exiting / NMI window": "no: NMIs are handled in the kernel",
    "in-kernel irqchip and PIT": "yes (irqchip = \"kernel\": KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2, KVM_IRQ_LINE)",
    "read-only memory (ROM)": "yes if KVM_CAP_READONLY_MEM (guest writes become EPT_VIOLATION write exits)",
    "dirty logging": "yes (KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG)",
    "guest debug": "single-step and four hardware breakpoints as EXCEPTION_NMI #DB exits; software breakpoints "
                   "as #BP where the host's KVM intercepts them",
}

_PROBE_CACHE: dict[str, Any] = {}


class KvmEngine(Engine):
    """Linux KVM through ``/dev/kvm``."""

    name = "kvm"
    description = "Linux KVM (/dev/kvm): the real VMX entry/exit loop, exits translated to SDM reasons"

    @classmethod
    def probe(cls) -> Availability:
        """Open ``/dev/kvm``, check API version 12 and vmx/svm in /proc/cpuinfo. Never raises."""
        try:
            kvm = Kvm()
        except Exception as e:  # noqa: BLE001 - probe must not raise
            return Availability(False, str(e))
        try:
            caps = {name: kvm.check_extension(code) for code, name in s.KVM_CAP_NAMES.items()}
            hw, flag = _host_has_hw_virt()
            details: dict[str, Any] = {
                "api_version": kvm.get_api_version(),
                "cpu_virtualization": flag,
                "capabilities": {n: v for n, v in caps.items() if v},
                "missing_capabilities": sorted(n for n, v in caps.items() if not v),
            }
            if not hw:
                details["note"] = ("no vmx/svm in /proc/cpuinfo: this KVM is a software or nested one; "
                                   "'auto' does not pick it, '--engine kvm' still works")
            return Availability(True, "" if hw else "usable, but not hardware-accelerated (no vmx/svm flag)",
                                details, accelerated=hw)
        except Exception as e:  # noqa: BLE001
            return Availability(False, f"/dev/kvm opened but probing failed: {e}")
        finally:
            kvm.close()

    @classmethod
    def host_details(cls) -> dict[str, Any]:
        return {"v8086": cls.host_supports_v8086()}

    @classmethod
    def host_supports_v8086(cls, kvm: Kvm | None = None) -> bool:
        """Whether RFLAGS.VM set through ``KVM_SET_REGS`` sticks (virtual-8086 mode works). Cached."""
        if "v8086" in _PROBE_CACHE:
            return _PROBE_CACHE["v8086"]
        own = kvm is None
        result = False
        try:
            kvm = kvm or Kvm()
            vm = kvm.create_vm()
            try:
                vm.set_tss_addr(TSS_ADDR)
                vcpu = vm.create_vcpu(0)
                try:
                    sr = vcpu.get_sregs()
                    sr.cr0 |= 1  # protected mode, with a TSS able to hold an I/O bitmap
                    vcpu.set_sregs(sr)
                    r = vcpu.get_regs()
                    r.rflags = 0x2 | RFLAGS_VM
                    vcpu.set_regs(r)
                    result = bool(vcpu.get_regs().rflags & RFLAGS_VM)
                finally:
                    vcpu.close()
            finally:
                vm.close()
        except Exception:  # noqa: BLE001
            result = False
        finally:
            if own and kvm is not None:
                kvm.close()
        _PROBE_CACHE["v8086"] = result
        return result

    @classmethod
    def capability_table(cls) -> dict[str, str]:
        """VMX mechanism → ``yes``/``no: why`` (printed by ``smartvm info``)."""
        return dict(CAPABILITIES)

    def __init__(self, memory: GuestMemory, options: EngineOptions) -> None:
        super().__init__(memory, options)
        if options.irqchip not in ("user", "kernel"):
            raise EngineError(f"kvm engine: irqchip must be \"user\" or \"kernel\", not {options.irqchip!r}")
        install_kick_handler()
        self.kvm = Kvm()
        self.vm = None
        self.vcpus: list[KvmVcpu] = []
        self._slots: dict[int, tuple[MemoryRegion, int]] = {}  # id(region) -> (region, slot)
        self._dirty: set[int] = set()
        self._free_slots: list[int] = []
        self._next_slot = 0
        self._undo_listener = None
        try:
            self.caps = {name: self.kvm.check_extension(code) for code, name in s.KVM_CAP_NAMES.items()}
            self.vm = self.kvm.create_vm()
            if self.caps.get("SET_TSS_ADDR"):
                self.vm.set_tss_addr(TSS_ADDR)
            if self.caps.get("SET_IDENTITY_MAP_ADDR"):
                self.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
            self.irqchip_kernel = options.irqchip == "kernel"
            if self.irqchip_kernel:
                if not self.caps.get("IRQCHIP"):
                    raise KvmMissingCapability("IRQCHIP", "irqchip = \"kernel\"")
                self.vm.create_irqchip()
                if self.caps.get("PIT2"):
                    self.vm.create_pit2(s.KVM_PIT_SPEAKER_DUMMY)
            self.msr_exits = str(options.extra.get("msr_exits", "filter"))
            if self.caps.get("X86_USER_SPACE_MSR"):
                reasons = s.KVM_MSR_EXIT_REASON_FILTER
                if self.msr_exits == "unknown":
                    reasons |= s.KVM_MSR_EXIT_REASON_UNKNOWN | s.KVM_MSR_EXIT_REASON_INVAL
                self.vm.enable_cap(s.KVM_CAP_X86_USER_SPACE_MSR, reasons)
            self.supported_cpuid_entries = self.kvm.get_supported_cpuid()
            self.msr_index_list = self.kvm.get_msr_index_list()
            for region in memory.regions:
                self._map(region)
            self._undo_listener = memory.add_listener(self._on_region)
        except BaseException:
            self.close()
            raise

    # -- memory slots -------------------------------------------------------------------
    def _slot_flags(self, region: MemoryRegion) -> int:
        flags = 0
        if region.readonly and self.caps.get("READONLY_MEM"):
            flags |= s.KVM_MEM_READONLY
        if id(region) in self._dirty:
            flags |= s.KVM_MEM_LOG_DIRTY_PAGES
        return flags

    def _map(self, region: MemoryRegion) -> None:
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot = self._next_slot
            self._next_slot += 1
        limit = self.caps.get("NR_MEMSLOTS") or 32
        if slot >= limit:
            raise EngineError(f"kvm engine: region {region.name!r} needs slot {slot}, the host allows {limit}")
        self.vm.set_user_memory_region(slot, region.gpa, region.size, region.host_address,
                                       self._slot_flags(region))
        self._slots[id(region)] = (region, slot)
        if region.readonly:
            for v in self.vcpus:
                v.readonly_slots = True

    def _unmap(self, region: MemoryRegion) -> None:
        entry = self._slots.pop(id(region), None)
        if entry is None:
            return
        _, slot = entry
        self.vm.set_user_memory_region(slot, region.gpa, 0, region.host_address, 0)
        self._dirty.discard(id(region))
        self._free_slots.append(slot)

    def _on_region(self, action: str, region: MemoryRegion) -> None:
        if action == "add":
            self._map(region)
        elif action == "remove":
            self._unmap(region)

    def slot_of(self, region: MemoryRegion) -> int:
        try:
            return self._slots[id(region)][1]
        except KeyError:
            raise EngineError(f"kvm engine: region {region.name!r} is not mapped") from None

    def enable_dirty_logging(self, region: MemoryRegion, enabled: bool = True) -> None:
        """Set or clear ``KVM_MEM_LOG_DIRTY_PAGES`` on the region's slot."""
        slot = self.slot_of(region)
        if enabled:
            self._dirty.add(id(region))
        else:
            self._dirty.discard(id(region))
        self.vm.set_user_memory_region(slot, region.gpa, region.size, region.host_address,
                                       self._slot_flags(region))

    def get_dirty_log(self, region: MemoryRegion) -> bytes:
        """``KVM_GET_DIRTY_LOG``: bitmap (bit n = page n of the region) of pages the guest wrote since the last call."""
        if id(region) not in self._dirty:
            raise EngineError(f"kvm engine: dirty logging is not enabled on region {region.name!r}")
        return self.vm.get_dirty_log(self.slot_of(region), region.size)[:(region.size // PAGE_SIZE + 7) // 8]

    def dirty_pages(self, region: MemoryRegion) -> set[int]:
        """Page indexes (within the region) the guest wrote since the last call."""
        bitmap = self.get_dirty_log(region)
        return {i * 8 + b for i, byte in enumerate(bitmap) if byte for b in range(8) if byte >> b & 1}

    # -- MSR exits -------------------------------------------------------------------------
    def set_msr_intercepts(self, read: Iterable[int] = (), write: Iterable[int] = ()) -> None:
        """Make guest RDMSR/WRMSR of these MSRs exit (``KVM_X86_SET_MSR_FILTER``); other MSRs stay with KVM."""
        if not self.caps.get("X86_MSR_FILTER") or not self.caps.get("X86_USER_SPACE_MSR"):
            raise KvmMissingCapability("X86_MSR_FILTER", "RDMSR/WRMSR exits")
        ranges = []
        for flags, msrs in ((s.KVM_MSR_FILTER_READ, sorted(set(read))), (s.KVM_MSR_FILTER_WRITE, sorted(set(write)))):
            for msr in msrs:
                # a one-MSR range whose bitmap bit is clear: denied → exit to user space
                ranges.append((flags, msr & 0xFFFFFFFF, 1, b"\x00"))
        if len(ranges) > s.KVM_MSR_FILTER_MAX_RANGES:
            raise EngineError(f"kvm engine: at most {s.KVM_MSR_FILTER_MAX_RANGES} intercepted MSRs "
                              f"(reads + writes), {len(ranges)} asked")
        self.vm.set_msr_filter(ranges)

    def set_msr_filter_from_bitmap(self, bitmap: bytes) -> None:
        """Install a VMX MSR bitmap (4 KiB: read-low, read-high, write-low, write-high) as the MSR filter.

        A set bit in the VMX bitmap means "exit"; in KVM's filter a clear bit
        means "deny", which exits to user space. MSRs outside both ranges stay with KVM.
        """
        if len(bitmap) != 4096:
            raise EngineError(f"kvm engine: MSR bitmap has {len(bitmap)} bytes, expected 4096")
        if not any(bitmap):
            self.vm.set_msr_filter([])
            return
        if not self.caps.get("X86_MSR_FILTER") or not self.caps.get("X86_USER_SPACE_MSR"):
            raise KvmMissingCapability("X86_MSR_FILTER", "USE_MSR_BITMAPS")
        inv = bytes(b ^ 0xFF for b in bitmap)
        self.vm.set_msr_filter([
            (s.KVM_MSR_FILTER_READ, 0x00000000, 0x2000, inv[0:1024]),
            (s.KVM_MSR_FILTER_READ, 0xC0000000, 0x2000, inv[1024:2048]),
            (s.KVM_MSR_FILTER_WRITE, 0x00000000, 0x2000, inv[2048:3072]),
            (s.KVM_MSR_FILTER_WRITE, 0xC0000000, 0x2000, inv[3072:4096]),
        ])

    # -- vCPUs and controls -----------------------------------------------------------------
    def create_vcpu(self, index: int) -> KvmVcpu:
        vcpu = KvmVcpu(self, index)
        vcpu.readonly_slots = any(r.readonly for r, _ in self._slots.values())
        self.vcpus.append(vcpu)
        return vcpu

    def supported_cpuid(self) -> list[CpuidEntry]:
        """``KVM_GET_SUPPORTED_CPUID`` as :class:`CpuidEntry` values."""
        return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                for e in self.supported_cpuid_entries]

    def unsupported_controls(self, vmcs: Vmcs) -> list[str]:
        """Controls in ``vmcs`` KVM cannot honour for user space, each with the reason."""
        out = []
        pin = vmcs[VmcsField.PIN_BASED_VM_EXEC_CONTROL]
        proc = vmcs[VmcsField.CPU_BASED_VM_EXEC_CONTROL]
        proc2 = vmcs[VmcsField.SECONDARY_VM_EXEC_CONTROL] if proc & ProcBasedControls.ACTIVATE_SECONDARY_CONTROLS else 0
        for table, value in ((_REFUSED_PIN, pin), (_REFUSED_PROC, proc), (_REFUSED_PROC2, proc2)):
            for flag, why in table.items():
                if value & flag:
                    out.append(f"{flag.name}: {why}")
        if self.irqchip_kernel:
            for flag, what in ((ProcBasedControls.HLT_EXITING, "HLT"),
                               (ProcBasedControls.INTERRUPT_WINDOW_EXITING, "interrupt-window")):
                if proc & flag:
                    out.append(f"{flag.name}: with irqchip = \"kernel\" KVM handles {what} in the kernel; "
                               "use irqchip = \"user\"")
            if pin & PinBasedControls.EXTERNAL_INTERRUPT_EXITING:
                out.append("EXTERNAL_INTERRUPT_EXITING: the in-kernel irqchip delivers interrupts itself")
        eb = vmcs[VmcsField.EXCEPTION_BITMAP]
        for vector in range(32):
            if eb >> vector & 1 and vector not in (Vector.DB, Vector.BP):
                try:
                    name = f"#{Vector(vector).name}"
                except ValueError:
                    name = f"vector {vector}"
                out.append(f"EXCEPTION_BITMAP bit {vector} ({name}): KVM delivers guest exceptions in the kernel; "
                           "only #DB and #BP reach user space (KVM_SET_GUEST_DEBUG)")
        for field, cr in ((VmcsField.CR0_GUEST_HOST_MASK, "CR0"), (VmcsField.CR4_GUEST_HOST_MASK, "CR4")):
            if vmcs[field]:
                out.append(f"{field.name} = {vmcs[field]:#x}: KVM never reports {cr} accesses to user space "
                           "(no CR_ACCESS exits)")
        return out

    def set_irq(self, line: int, level: bool) -> None:
        """``KVM_IRQ_LINE`` on the in-kernel irqchip (``irqchip = "kernel"``)."""
        if not self.irqchip_kernel:
            raise EngineError("kvm engine: set_irq needs irqchip = \"kernel\"")
        self.vm.irq_line(line, level)

    # -- engine state --------------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        """In-kernel irqchip (PICs, IOAPIC), PIT and the kvmclock base."""
        st: dict[str, Any] = {"irqchip": self.options.irqchip}
        if self.irqchip_kernel:
            st["chips"] = {str(c): self.vm.get_irqchip(c).hex() for c in
                           (s.KVM_IRQCHIP_PIC_MASTER, s.KVM_IRQCHIP_PIC_SLAVE, s.KVM_IRQCHIP_IOAPIC)}
            if self.caps.get("PIT2"):
                st["pit2"] = bytes(self.vm.get_pit2()).hex()
        if self.caps.get("ADJUST_CLOCK"):
            st["clock"] = self.vm.get_clock().clock
        return st

    def restore_state(self, state: dict[str, Any]) -> None:
        try:
            if state.get("irqchip", "user") != self.options.irqchip:
                raise EngineError(f"kvm engine: snapshot has irqchip = {state.get('irqchip')!r}, "
                                  f"this machine {self.options.irqchip!r}")
            for c, blob in state.get("chips", {}).items():
                self.vm.set_irqchip(int(c), bytes.fromhex(blob))
            if "pit2" in state:
                self.vm.set_pit2(_from_blob(s.kvm_pit_state2, state["pit2"]))
            if "clock" in state:
                self.vm.set_clock(int(state["clock"]))
        except (TypeError, ValueError) as e:
            raise EngineError(f"kvm engine: bad saved state: {e}") from None

    def close(self) -> None:
        """Close every vCPU, the VM and /dev/kvm; unmap kvm_run; stop timer threads."""
        if self._undo_listener is not None:
            try:
                self._undo_listener()
            except ValueError:
                pass
            self._undo_listener = None
        for v in self.vcpus:
            v.close()
        self.vcpus.clear()
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        if self.kvm is not None:
            self.kvm.close()
            self.kvm = None  # type: ignore[assignment]
