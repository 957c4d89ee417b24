"""The ``soft`` engine: unicorn's x86 CPU with the VT-x model on top.

Events reach the VT-x model in three ways, none of which costs anything per
instruction on the normal path:

* native unicorn hooks, one per event type (I/O instructions, interrupts and
  exceptions, unbacked and read-only memory);
* *sites*: guest memory is mapped without execute permission, so the
  translator reports the code bytes it fetches (by guest-physical address;
  the linear page is the block's, from CS base + RIP); the first fetch from a
  (linear page, physical page) pair scans it for the instructions unicorn gives no event for (MOV CR/DR,
  RDMSR/WRMSR, INVLPG, CLTS, LMSW, VMCALL, INVD, WBINVD, XSETBV, CPUID,
  RDTSC/RDTSCP; see :mod:`.sites`) and puts a one-address code hook on each.
  A fetch whose bytes differ from the scanned copy (self-modifying code)
  rescans the page. A site hook runs before its instruction, so these exits
  are exact: the instruction has not executed, RIP points at it, and the
  handler emulates it and calls :meth:`SoftVcpu.skip_instruction`;
* the timer deadline (VMX-preemption timer, device timers), where one
  watchdog thread per vCPU stops the emulation, and, only while an interrupt
  window is awaited, a code hook on every instruction that stops before the
  first one starting with IF set.

The VMCS controls are read at each :meth:`SoftVcpu.run` entry and decide
which events become exits, as the SDM says.

I/O exits are handled inside unicorn's hook on the fast path. When the guest
must stop at that instruction boundary (the handler returned False, asked for
an injection, changed RIP; string I/O; no inline dispatcher), the engine
*drains*: it write-protects guest memory and ignores every event until the
current translation block ends, then restores the CPU state saved in the hook
and completes the instruction itself (IN value, RSI/RDI/RCX, RIP), so no
further guest instruction has run. MMIO (EPT-violation) exits drain the same
way; their state is not rolled back, so instructions without memory or I/O
side effects that follow the access in its block may have run first. During
an MMIO exit, RIP is the last one unicorn synchronised in the current
translation block (the block start, or an earlier faulting or hooked
instruction), not always the accessing instruction: the exit's guest-physical
and linear addresses, size and value are exact, its RIP is not.

Scanned pages are kept per (linear, physical) pair, so a physical page run
through a second linear alias, or a linear page that another address space
maps elsewhere, is scanned and hooked for that pair too. Host code that
rewrites guest code behind the CPU calls :meth:`SoftVcpu.invalidate_code`. Should unicorn ever return again and again
without running the instruction at RIP, the engine stops the VM with an
error instead of spinning.

Two unicorn 2.1.4 traps are avoided on purpose: the CPU runs with unicorn's
exit list enabled and empty (an ``until`` address is looked up through the
guest's page tables, and a failed walk leaves a phantom #PF that turns the
guest's next #PF into a #DF and then a silent triple fault), and events are
delivered through the IVT/IDT from the CPU loop, never from inside the
interrupt hook (a RIP written there leaves later I/O hooks with stale RIPs).

Without an inline dispatcher the CPU runs on a helper thread; every exit is
handed to the caller of :meth:`SoftVcpu.run` from the CPU loop, except MMIO
reads and writes, which park inside unicorn's MMIO callback until the next
``run()`` brings the handler's answer.
"""

from __future__ import annotations

import ctypes
import struct
import threading
import time
from typing import Any, Callable

from unicorn import (UC_ARCH_X86, UC_ERR_FETCH_UNMAPPED, UC_ERR_INSN_INVALID, UC_ERR_WRITE_PROT, UC_HOOK_CODE, UC_HOOK_INSN,
                     UC_HOOK_INSN_INVALID,
                     UC_HOOK_INTR, UC_HOOK_MEM_FETCH_PROT, UC_HOOK_MEM_READ_PROT, UC_HOOK_MEM_UNMAPPED,
                     UC_HOOK_MEM_WRITE_PROT, UC_MEM_FETCH_UNMAPPED, UC_MODE_64, UC_PROT_READ,
                     UC_PROT_WRITE, Uc, UcError)
from unicorn import x86_const as X
from unicorn.unicorn_py3.arch.intel import HOOK_INSN_CPUID_CFUNC
from unicorn.unicorn_py3.unicorn import uccallback, uclib

from ...cpu import (CR0_PE, GPR_NAMES, DescriptorTable, Registers, RFLAGS_IF, RFLAGS_VM, Segment,
                    SpecialRegisters, registers_from_plain, sregs_from_plain, state_to_plain)
from ...errors import EngineError, GuestMemoryError, SnapshotError
from ...exit import VmExit
from ...memory import PAGE_SIZE, GuestMemory, MemoryRegion
from ...vmx import (EventInjection, ExitReason, ProcBasedControls, ProcBasedControls2, Vmcs, VmcsField,
                    clts_exits, cr_read_value, cr_write_exits, exception_exits, lmsw_exits, msr_bitmap_exits)
from ..base import Availability, Engine, EngineOptions, EngineVcpu, VmxBitmaps
from . import delivery, sites
from .ucstate import EFER_MSR, SEG_INDEX, HF_CPL_MASK, HF_CS32, HF_CS64, HF_INHIBIT_IRQ, HF_LMA, Blob, layout

#: emu_start's end address; ignored, since the CPU runs with unicorn's exit list enabled and empty (see SoftVcpu.__init__)
UNTIL = 0xFFFF_FFFF_FFFF_FFFF
_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
_GPR_IDS = tuple(getattr(X, f"UC_X86_REG_{n.upper()}") for n in _GPRS[:-1]) + (X.UC_X86_REG_EFLAGS,)
_REG_ID = dict(zip(_GPRS, _GPR_IDS))
#: unicorn register ids in the SDM's GPR encoding order
_SDM_GPR = tuple(getattr(X, f"UC_X86_REG_{n.upper()}") for n in GPR_NAMES)
_EFLAGS_ID = X.UC_X86_REG_EFLAGS
_RIP, _RAX, _RCX, _RDX, _RSI, _RDI = (X.UC_X86_REG_RIP, X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX,
                                      X.UC_X86_REG_RSI, X.UC_X86_REG_RDI)
#: MSRs whose value lives in unicorn's CPU (read and written through it)
ARCH_MSRS = {
    0x174: "IA32_SYSENTER_CS", 0x175: "IA32_SYSENTER_ESP", 0x176: "IA32_SYSENTER_EIP",
    0x277: "IA32_PAT", EFER_MSR: "IA32_EFER", 0xC0000081: "IA32_STAR", 0xC0000082: "IA32_LSTAR",
    0xC0000083: "IA32_CSTAR", 0xC0000084: "IA32_FMASK", 0xC0000100: "IA32_FS_BASE",
    0xC0000101: "IA32_GS_BASE", 0xC0000102: "IA32_KERNEL_GS_BASE",
}
DEFAULT_CONTROLS = ProcBasedControls.HLT_EXITING | ProcBasedControls.UNCONDITIONAL_IO_EXITING
_SOFT_INTERRUPT, _SOFT_EXCEPTION, _HW_EXCEPTION, _NMI, _EXTERNAL = 4, 6, 3, 2, 0
_CR0_TS = 1 << 3
_CR4_TSD = 1 << 2
#: the most bytes one string-I/O exit moves (one page, as KVM does)
STRING_IO_MAX = PAGE_SIZE
_SEG_OVERRIDE = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}
_SEG_NUMBER = {"es": 0, "cs": 1, "ss": 2, "ds": 3, "fs": 4, "gs": 5}

_ENTRY_INFO = VmcsField.VM_ENTRY_INTR_INFO_FIELD
#: uc_reg_read without the binding's argument conversion (the I/O fast path reads RIP with it)
_reg_read = ctypes.CDLL(uclib._name).uc_reg_read
_reg_read.restype = ctypes.c_int
#: uc_context_save into an existing context, likewise
_ctx_save = ctypes.CDLL(uclib._name).uc_context_save
_ctx_save.restype = ctypes.c_int
_ctx_restore = ctypes.CDLL(uclib._name).uc_context_restore
_ctx_restore.restype = ctypes.c_int
_reg_write = ctypes.CDLL(uclib._name).uc_reg_write
_reg_write.restype = ctypes.c_int
_emu_stop = ctypes.CDLL(uclib._name).uc_emu_stop
_emu_start = uclib.uc_emu_start   # the binding's prototyped function: (uc, begin, until, timeout, count)
#: UC_HOOK_CODE's C signature, for a callback without the binding's wrappers (the window probe)
_HOOK_CODE_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)
#: UC_HOOK_INSN for IN and OUT: (uc, port, size, user data) -> value; (uc, port, size, value, user data)
_HOOK_IN_CFUNC = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)
_HOOK_OUT_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                                   ctypes.c_void_p)
_FAST_IO = 1   # VmExit.fast_kind of the port-I/O fast path
_FAST_EXC = 2  # ... and of exception-bitmap exits
#: plain-int control bits for the CPU loop (IntFlag arithmetic costs about a microsecond)
_WINDOW_EXITING = int(ProcBasedControls.INTERRUPT_WINDOW_EXITING)
_HLT_EXITING = int(ProcBasedControls.HLT_EXITING)
_RDTSC_EXITING = int(ProcBasedControls.RDTSC_EXITING)
#: the six segment selectors in QEMU's SegmentCache array (24 bytes each, the SDM's order)
_SELECTORS = struct.Struct("<" + "20x".join(["I"] * 6))
#: UC_HOOK_INTR: (uc, interrupt number, user data)
_HOOK_INTR_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
_GPR16 = struct.Struct("<16Q")   # QEMU's regs[]: the SDM's GPR encoding order
_SEG = struct.Struct("<IIQII")    # QEMU's SegmentCache: selector, (pad), base, limit, flags
_CR5 = struct.Struct("<5Q")       # cr[0..4]
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class _Watchdog:
    """Stops a vCPU's emulation when its timer deadline passes.

    unicorn's own ``emu_start(timeout=...)`` starts a thread and joins it on
    every call, about 100 us each; this one thread serves every run of one
    vCPU. It calls ``uc_emu_stop`` (as unicorn's timeout thread does) while an
    emulation that began before the deadline is running, and again if that
    emulation has not ended shortly after (a stop that raced with its start).
    The CPU loop checks the deadline itself before each entry.
    """

    RETRY_S = 0.0005

    def __init__(self, uch: ctypes.c_void_p) -> None:
        self._uch = uch
        self._cond = threading.Condition()
        self._deadline: int | None = None
        self._running = 0       # generation of the emulation running now (0: none)
        self._gen = 0
        self._idle = False      # the thread waits with no deadline to watch
        self._closed = False
        self._thread: threading.Thread | None = None
        #: the last emulation was stopped by the deadline
        self.fired = False

    def arm(self, deadline_ns: int) -> None:
        """An emulation is about to start; stop it at ``deadline_ns`` (monotonic)."""
        with self._cond:
            self._gen += 1
            self._running = self._gen
            self.fired = False
            earlier = self._deadline is None or deadline_ns < self._deadline
            self._deadline = deadline_ns
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="soft-timer", daemon=True)
                self._thread.start()
            elif earlier or self._idle:
                self._cond.notify()

    def disarm(self) -> None:
        self._running = 0

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _main(self) -> None:
        cond = self._cond
        with cond:
            while not self._closed:
                deadline, running = self._deadline, self._running
                if deadline is None or not running:
                    self._idle = True
                    cond.wait()
                    self._idle = False
                    continue
                left = deadline - time.monotonic_ns()
                if left > 0:
                    cond.wait(left / 1e9)
                    continue
                if self._running == running:
                    self.fired = True
                    _emu_stop(self._uch)
                    cond.wait(self.RETRY_S)   # still the same run after this: the stop was lost, stop again
                    if self._running != running:
                        self._deadline = None if self._deadline == deadline else self._deadline


class _PendingIo:
    """An I/O instruction whose exit was taken and whose completion is due."""

    __slots__ = ("rip", "length", "is_in", "size", "string", "rep", "count", "addr_mask",
                 "mem_linear", "mem_phys", "backward", "exit", "value", "data", "snapshot")


class SoftVcpu(EngineVcpu):
    """One unicorn CPU with the VMX controls of its :class:`Vmcs`."""

    def __init__(self, engine: "SoftEngine", index: int) -> None:
        self.engine = engine
        self.index = index
        self.memory: GuestMemory = engine.memory
        self.vmcs = Vmcs({VmcsField.CPU_BASED_VM_EXEC_CONTROL: int(DEFAULT_CONTROLS)})
        self.bitmaps = VmxBitmaps()
        self.exit = VmExit()
        self.lay = layout()
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_64)
        # no end address: unicorn 2.1.4 looks emu_start's ``until`` up through the guest's page tables, and
        # where it is not mapped the failed walk is a #PF that nobody sees but that QEMU records as the
        # "previous exception": the guest's next #PF becomes a #DF, the one after that a silent triple fault
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        self._mapped: dict[int, MemoryRegion] = {}
        self._mmio_pages: set[int] = set()
        # code-site scanning: (linear page, guest-physical page) -> the bytes scanned, and the
        # candidate site addresses each pair holds; one code hook per linear address: [handle, users]
        self._pages: dict[tuple[int, int], bytes] = {}
        self._page_sites: dict[tuple[int, int], list[int]] = {}
        self._site_hooks: dict[int, list[int]] = {}
        self._io_cache: dict[int, tuple[int, dict[str, Any]] | None] = {}
        self._retranslate: set[int] = set()
        self._site_hook_cb = self._on_site
        # RIP read on the I/O fast path without the Python register-class lookup
        self._uch = ctypes.c_void_p(uc._uch.value)
        self._rbuf = ctypes.c_uint64()
        self._rbuf_ref = ctypes.byref(self._rbuf)
        # one preallocated context: a uc_context_save into it (about 1 us) reads any CPU field at once
        self._ctx = uc.context_save()
        self._ctx_buf = (ctypes.c_char * self._ctx.size).from_address(self._ctx.context.value)
        self._ctx_handle = self._ctx.context
        self._gpr_off = self.lay.rip - 128
        self._seg_cache: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._wbuf = ctypes.c_uint64()
        self._wbuf_ref = ctypes.byref(self._wbuf)
        self._ripw = ctypes.c_uint64()
        self._ripw_ref = ctypes.byref(self._ripw)
        for region in self.memory.regions:
            self._map(region)
        self._undo_listener = self.memory.add_listener(self._on_layout)
        self._dispatch: Callable[[VmExit], bool] | None = None
        self._kicked = False
        self._leave = False
        self._entry_pending = False
        self._deferred: VmExit | None = None
        self._in_hook = False
        self._depth = 0
        self._tsc_offset = 0
        self._exit_rip: int | None = None
        #: RIP to put back when emu_start returns (an exit taken in a hook after which unicorn moves RIP)
        self._rip_after_stop: int | None = None
        self._rip_override: int | None = None
        self._pending_io: _PendingIo | None = None
        self._pending_fault: tuple[int, int | None, int] | None = None
        #: an event unicorn raised that goes through the guest's IVT/IDT: (vector, error code, software, RIP, return RIP)
        self._pending_event: tuple[int, int | None, bool, int, int] | None = None
        self._pending_rdmsr: VmExit | None = None
        #: an exception the guest's own instruction raised (vector, error code, RIP): the exception bitmap applies
        self._guest_fault: tuple[int, int | None, int] | None = None
        self._draining = False
        self._drain_perms: list[tuple[int, int, int]] = []
        self._drain_tb: int | None = None
        # interrupt-window probe: a code hook on every instruction while the window is awaited with IF=0
        self._probe_hook: int | None = None
        self._probe_skip = False
        self._probe_stopped = False
        self._fbuf = ctypes.c_uint64()
        self._fbuf_ref = ctypes.byref(self._fbuf)
        self._probe_cb = _HOOK_CODE_CFUNC(self._on_window_probe)
        self._no_progress = 0
        #: stops the emulation at the timer deadline (VMX-preemption timer, device timers)
        self._watchdog = _Watchdog(self._uch)
        self.msr_store: dict[int, int] = {}
        # helper thread for the no-dispatcher mode
        self._thread: threading.Thread | None = None
        self._to_caller = threading.Semaphore(0)
        self._to_cpu = threading.Semaphore(0)
        self._posted: VmExit | None = None
        self._closed = False
        self._error: BaseException | None = None
        # one native hook per event type
        self._intr_cb = _HOOK_INTR_CFUNC(self._raw_intr)
        uc._Uc__do_hook_add(UC_HOOK_INTR, self._intr_cb, 1, 0)
        # IN/OUT: raw ctypes callbacks straight into the engine, without the binding's two wrapper
        # frames (the I/O round trip is the hot path); _hook_failed keeps the binding's exception contract
        self._in_cb = _HOOK_IN_CFUNC(self._raw_in)
        self._out_cb = _HOOK_OUT_CFUNC(self._raw_out)
        uc._Uc__do_hook_add(UC_HOOK_INSN, self._in_cb, 1, 0, ctypes.c_int(X.UC_X86_INS_IN))
        uc._Uc__do_hook_add(UC_HOOK_INSN, self._out_cb, 1, 0, ctypes.c_int(X.UC_X86_INS_OUT))
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        self._keep = []
        for insn in (X.UC_X86_INS_RDTSC, X.UC_X86_INS_RDTSCP):
            cb = uccallback(uc, HOOK_INSN_CPUID_CFUNC)(lambda _uc, _key: self._on_rdtsc())
            self._keep.append(cb)
            uc._Uc__do_hook_add(UC_HOOK_INSN, cb, 1, 0, __import__("ctypes").c_int(insn))
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._on_write_prot)
        uc.hook_add(UC_HOOK_MEM_READ_PROT, self._on_read_prot)
        uc.hook_add(UC_HOOK_MEM_FETCH_PROT, self._on_fetch)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        self.reset()
        self._load_controls()

    # -- memory -----------------------------------------------------------------
    def _map(self, region: MemoryRegion) -> None:
        for page in [p for p in self._mmio_pages if region.gpa <= p < region.end]:
            self.uc.mem_unmap(page, PAGE_SIZE)
            self._mmio_pages.discard(page)
        # no UC_PROT_EXEC: every code fetch of the translator reaches _on_fetch (site scanning)
        perms = UC_PROT_READ if region.readonly else UC_PROT_READ | UC_PROT_WRITE
        self.uc.mem_map_ptr(region.gpa, region.size, perms, region.host_address)
        self._mapped[region.gpa] = region
        self._reprotect(region)
        self._forget_code()

    def _on_layout(self, what: str, region: MemoryRegion) -> None:
        if what == "add":
            self._map(region)
        elif self._mapped.pop(region.gpa, None) is not None:
            self.uc.mem_unmap(region.gpa, region.size)
            self._forget_code()

    def _forget_code(self) -> None:
        """Drop every scanned page and its site hooks (guest-physical layout changed)."""
        for handle, _users in self._site_hooks.values():
            self.uc.hook_del(handle)
        self._site_hooks.clear()
        self._page_sites.clear()
        self._pages.clear()
        self._io_cache.clear()
        self.uc.ctl_flush_tb()

    def invalidate_code(self, gpa: int = 0, size: int = 1 << 64) -> None:
        """Host code wrote guest code behind the CPU's back (loader, DMA): rescan and retranslate."""
        self._forget_code()

    def _on_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int, _: Any) -> bool:
        if self._draining:
            return False
        if access == UC_MEM_FETCH_UNMAPPED:
            gpa = self._gpa(address)
            self._deferred = self._ept_exit(gpa, size, write=False, fetch=True, linear=address)
            return False
        gpa = self._gpa(address)
        page = gpa & ~(PAGE_SIZE - 1)
        if gpa >> 52 or page in self._mmio_pages:
            return False
        uc.mmio_map(page, PAGE_SIZE, self._mmio_read, page, self._mmio_write, page)
        self._mmio_pages.add(page)
        return True

    def _gpa(self, linear: int) -> int:
        sregs = self._crs()
        try:
            return delivery.translate(self.memory, *sregs, linear)
        except delivery.DeliveryFault:
            return linear

    def _crs(self) -> tuple[int, int, int, int]:
        """(CR0, CR3, CR4, EFER), for page walks: one context copy instead of four register reads."""
        buf, lay = self._fresh(), self.lay
        cr0, _, _, cr3, cr4 = _CR5.unpack_from(buf, lay.cr)
        return cr0, cr3, cr4, _U64.unpack_from(buf, lay.efer)[0]

    def _ept_exit(self, gpa: int, size: int, *, write: bool, fetch: bool = False, value: int = 0,
                  linear: int | None = None, readonly: bool = False) -> VmExit:
        q = (1 if not write and not fetch else 0) | (2 if write else 0) | (4 if fetch else 0)
        if readonly:
            q |= 1 << 3 | 1 << 5  # the page is readable and executable
        if linear is not None:
            q |= 1 << 7 | 1 << 8
        e = self.exit.reset(ExitReason.EPT_VIOLATION, q)
        e.guest_physical_address = gpa
        e.guest_linear_address = linear or 0
        e.size = size
        e.is_write = write
        e.value = value
        return e

    def _mmio_read(self, uc: Uc, offset: int, size: int, page: int) -> int:
        if self._draining:
            return 0
        e = self._ept_exit(page + offset, size, write=False)
        self._deliver_mmio(e)
        return e.value & ((1 << (8 * size)) - 1)

    def _mmio_write(self, uc: Uc, offset: int, size: int, value: int, page: int) -> None:
        if self._draining:
            return
        self._deliver_mmio(self._ept_exit(page + offset, size, write=True, value=value))

    def _on_write_prot(self, uc: Uc, access: int, address: int, size: int, value: int, _: Any) -> bool:
        if self._draining:
            return False  # stop exactly before the store
        self._deferred = self._ept_exit(self._gpa(address), size, write=True, value=value,
                                        linear=address, readonly=True)
        return False  # the write must not reach ROM: stop before it

    def _on_read_prot(self, uc: Uc, access: int, address: int, size: int, value: int, _: Any) -> bool:
        if not self._draining and self.engine._prot and self._policy_fault(0, address, size):
            return False  # a page Engine.set_page_protection made unreadable
        return False  # only MMIO pages while draining are read-protected

    # -- per-page EPT protection (Engine.set_page_protection) ----------------------------
    def _protect(self, gpa: int, size: int, allowed: int) -> None:
        """mem_protect the mapped RAM in ``[gpa, gpa + size)``: read/write as ``allowed`` says.

        Execute is never given to unicorn (fetches reach _on_fetch, which
        applies the fetch bit itself).
        """
        perms = (UC_PROT_READ if allowed & 1 else 0) | (UC_PROT_WRITE if allowed & 2 else 0)
        end = gpa + size
        for region in self._mapped.values():
            lo, hi = max(gpa, region.gpa), min(end, region.end)
            if lo < hi and not region.readonly:
                self.uc.mem_protect(lo, hi - lo, perms)

    def _reprotect(self, region: MemoryRegion) -> None:
        """Re-apply the engine's page protection to a region just (re)mapped."""
        prot = self.engine._prot
        for page in range(region.gpa >> 12, region.end >> 12):
            if page in prot:
                self._protect(page << 12, PAGE_SIZE, prot[page])

    def _policy_fault(self, kind: int, address: int, size: int, gpa: int | None = None) -> bool:
        """A read (0) or fetch (2) of a page whose protection forbids it: a deferred EPT_VIOLATION.

        ``address`` is linear; ``gpa`` its guest-physical address when the caller knows it.
        Returns True if it was one (the access must not go on); the CPU loop
        hands the exit out and retries the instruction.
        """
        if gpa is None:
            gpa = self._gpa(address)
        allowed = self.engine._prot.get(gpa >> 12)
        if allowed is None or allowed & (1 << kind):
            return False
        e = self._ept_exit(gpa, size, write=False, fetch=kind == 2, linear=address)
        e.qualification |= allowed << 3
        self._deferred = e
        return True

    # -- code sites ---------------------------------------------------------------
    def _on_fetch(self, uc: Uc, access: int, address: int, size: int, value: int, _: Any) -> bool:
        """The translator fetches code bytes: scan new (linear page, physical page) pairs, rescan changed ones.

        unicorn reports the guest-physical address of the bytes; the linear page comes from the
        CPU state, whose CS base + RIP is the start of the block being translated (the bytes are
        on that page or, for a block crossing a page boundary, on the next).
        """
        if self._draining:
            return False
        pa = address & ~(PAGE_SIZE - 1)
        off = address - pa
        start = self._linear(_U64.unpack_from(self._ctx_buf, self.lay.rip)[0])   # _linear refreshed the buffer
        lp = start & ~(PAGE_SIZE - 1)
        snap = self._pages.get((lp, pa))
        if snap is None:
            nxt = (lp + PAGE_SIZE) & self._linear_mask()
            snap = self._pages.get((nxt, pa))
            if snap is not None:
                lp = nxt
            else:
                found = self._linear_page_of(pa, lp)
                if found is None:
                    # not reached through this block's pages: no sites can be hooked by address, but the
                    # page's execute permission still applies
                    return not (self.engine._prot and self._policy_fault(2, start, size, gpa=address))
                lp = found
        if self.engine._prot and self._policy_fault(2, lp + off, size, gpa=address):
            return False  # Engine.set_page_protection took execute away
        if snap is not None:
            if off + size > PAGE_SIZE or not snap:
                return True
            try:
                if self.memory.read(address, size) == snap[off:off + size]:
                    return True
            except GuestMemoryError:
                return True
        starts = self._scan_page(lp, pa)
        # the translator asked whether the current instruction is hooked before fetching it: if a
        # site may start here, drop the block before it runs so it is translated again with the hook
        here = lp + off
        if any(here - 15 < a <= here for a in starts):
            self._retranslate.add(lp)
            uc.emu_stop()
        return True

    def _linear_mask(self) -> int:
        return 0xFFFF_FFFF_FFFF_FFFF if _U32.unpack_from(self._ctx_buf, self.lay.hflags)[0] & HF_LMA \
            else 0xFFFF_FFFF

    def _linear_page_of(self, pa: int, lp: int) -> int | None:
        """Which of the linear pages ``lp`` and the one after it maps to guest-physical page ``pa``."""
        crs = self._crs()
        for cand in (lp, (lp + PAGE_SIZE) & self._linear_mask()):
            try:
                if delivery.translate(self.memory, *crs, cand) & ~(PAGE_SIZE - 1) == pa:
                    return cand
            except delivery.DeliveryFault:
                pass
        return None

    def _scan_page(self, lp: int, pa: int) -> list[int]:
        """Scan guest-physical page ``pa`` as linear page ``lp`` and hook its candidate sites.

        Returns their linear addresses. Sites are kept per (linear, physical) pair: one physical
        page reached through several linear aliases, or one linear page mapped to different
        physical pages by different address spaces, each gets its own hooks (one hook per linear
        address, shared by the pairs that need it).
        """
        key = (lp, pa)
        self._unhook(key)
        for a in [a for a in self._io_cache if a & ~(PAGE_SIZE - 1) == lp]:
            del self._io_cache[a]
        try:
            data = self.memory.read(pa, PAGE_SIZE)
        except GuestMemoryError:
            # not plain RAM/ROM (unicorn faults the fetch itself): nothing to scan
            self._pages[key] = b""
            return []
        ahead = b""
        try:
            nphys = delivery.translate(self.memory, *self._crs(), (lp + PAGE_SIZE) & self._linear_mask())
            ahead = self.memory.read(nphys, 15)
        except (delivery.DeliveryFault, GuestMemoryError):
            pass
        self._pages[key] = data
        starts = sites.scan(data + ahead, lp, 0, PAGE_SIZE)
        hooks = self._site_hooks
        for a in starts:
            entry = hooks.get(a)
            if entry is None:
                hooks[a] = [self.uc.hook_add(UC_HOOK_CODE, self._site_hook_cb, None, a, a), 1]
            else:
                entry[1] += 1
        self._page_sites[key] = starts
        return starts

    def _unhook(self, key: tuple[int, int]) -> None:
        """Release the site hooks that one scanned (linear, physical) pair holds."""
        hooks = self._site_hooks
        for a in self._page_sites.pop(key, ()):
            entry = hooks[a]
            entry[1] -= 1
            if not entry[1]:
                self.uc.hook_del(entry[0])
                del hooks[a]

    def _read_code(self, linear: int, size: int = 15) -> bytes:
        out = b""
        while len(out) < size:
            try:
                phys = delivery.translate(self.memory, *self._crs(), linear + len(out))
                run = min(size - len(out), PAGE_SIZE - ((linear + len(out)) & (PAGE_SIZE - 1)))
                out += self.memory.read(phys, run)
            except (delivery.DeliveryFault, GuestMemoryError):
                break
        return out

    def _cpu_state(self) -> tuple[int, int, bool]:
        """(address bits of CS: 16/32/64, CPL, virtual-8086) from unicorn's hflags."""
        buf = self._fresh()
        h = _U32.unpack_from(buf, self.lay.hflags)[0]
        bits = 64 if h & HF_CS64 else 32 if h & HF_CS32 else 16
        return bits, h & HF_CPL_MASK, bool(_U32.unpack_from(buf, self.lay.eflags)[0] & RFLAGS_VM)

    def _rip(self) -> int:
        """RIP, without the binding's register-class lookup (about 2 us per call through it)."""
        _reg_read(self._uch, _RIP, self._rbuf_ref)
        return self._rbuf.value

    def _set_rip(self, value: int) -> None:
        self._ripw.value = value & 0xFFFF_FFFF_FFFF_FFFF
        _reg_write(self._uch, _RIP, self._ripw_ref)

    def _fresh(self) -> Any:
        """Refresh the preallocated context from the CPU; returns its buffer (offsets in ``self.lay``)."""
        _ctx_save(self._uch, self._ctx_handle)
        return self._ctx_buf

    def _linear(self, ip: int) -> int:
        """Linear address of ``ip`` in the current code segment (RIP is an offset into CS)."""
        buf = self._fresh()
        if _U32.unpack_from(buf, self.lay.hflags)[0] & HF_CS64:
            return ip
        return (_U64.unpack_from(buf, self.lay.segs + 8 + 24)[0] + ip) & 0xFFFF_FFFF  # CS: segment cache 1

    def _on_site(self, uc: Uc, address: int, size: int, _: Any) -> None:
        """A candidate sensitive instruction is about to run (``address`` is linear: CS base + RIP)."""
        if self._draining:
            uc.emu_stop()
            return
        bits, cpl, vm86 = self._cpu_state()
        site = sites.decode(self._read_code(address), bits)
        if site is None:
            return
        ip = self._rip()   # unicorn syncs RIP before a code hook
        try:
            e = self._site_exit(site, ip, bits, cpl, vm86, address)
        except delivery.DeliveryFault as f:
            self._guest_fault = (f.vector, f.error_code if f.vector in (10, 11, 12, 13, 14, 17) else None, ip)
            uc.emu_stop()
            return
        if e is None:
            return  # the instruction runs natively (or was emulated: RIP already moved)
        self._exit_rip = ip
        self._deferred = e
        uc.emu_stop()   # in a code hook this stops before the instruction

    def _site_exit(self, site: sites.Site, rip: int, bits: int, cpl: int, vm86: bool,
                   code_at: int | None = None) -> VmExit | None:
        """Apply the VMX rules to one sensitive instruction: an exit, or ``None`` to go on.

        ``rip`` is the instruction's RIP, ``code_at`` its linear address (default: ``rip``).
        """
        code_at = rip if code_at is None else code_at
        uc = self.uc
        kind = site.kind
        v = self.vmcs
        proc = self._proc
        privileged = kind in ("rdmsr", "wrmsr", "mov_to_cr", "mov_from_cr", "clts", "lmsw", "invlpg",
                              "mov_to_dr", "mov_from_dr", "invd", "wbinvd", "xsetbv")
        if kind == "vmcall" and vm86:
            raise delivery.DeliveryFault(6)   # VMCALL is #UD in virtual-8086 mode
        if privileged and (cpl or vm86):
            raise delivery.DeliveryFault(13, 0)  # privilege checks come before VM exits (SDM 26.1.1)
        e = self.exit
        if kind in ("rdmsr", "wrmsr"):
            msr = uc.reg_read(_RCX) & 0xFFFF_FFFF
            write = kind == "wrmsr"
            if proc & ProcBasedControls.USE_MSR_BITMAPS and not msr_bitmap_exits(self.bitmaps.msr, msr, write):
                return None  # the "hardware" (unicorn) does the access
            e.reset(ExitReason.WRMSR if write else ExitReason.RDMSR)
            e.msr = msr
            if write:
                e.value = (uc.reg_read(_RDX) & 0xFFFF_FFFF) << 32 | uc.reg_read(_RAX) & 0xFFFF_FFFF
        elif kind in ("mov_to_cr", "mov_from_cr"):
            cr, gpr = site.reg, site.gpr
            if cr not in (0, 2, 3, 4, 8):
                raise delivery.DeliveryFault(6)
            to = kind == "mov_to_cr"
            width = 0xFFFF_FFFF_FFFF_FFFF if bits == 64 else 0xFFFF_FFFF
            reg_id = _SDM_GPR[gpr]
            qual = cr | (0 if to else 1) << 4 | gpr << 8
            exits = False
            if cr in (0, 4):
                mask = v.read(VmcsField.CR0_GUEST_HOST_MASK if cr == 0 else VmcsField.CR4_GUEST_HOST_MASK)
                shadow = v.read(VmcsField.CR0_READ_SHADOW if cr == 0 else VmcsField.CR4_READ_SHADOW)
                cr_id = X.UC_X86_REG_CR0 if cr == 0 else X.UC_X86_REG_CR4
                if not mask:
                    return None
                if to:
                    value = uc.reg_read(reg_id) & width
                    if cr_write_exits(mask, shadow, value):
                        exits = True
                    else:   # host-owned bits keep their value (SDM 27.3)
                        uc.reg_write(cr_id, (value & ~mask) | (uc.reg_read(cr_id) & mask))
                        self._after_cr_write()
                        self._set_rip(rip + site.length)
                        return None
                else:
                    uc.reg_write(reg_id, cr_read_value(mask, shadow, uc.reg_read(cr_id)) & width)
                    self._set_rip(rip + site.length)
                    return None
            elif cr == 3:
                if to:
                    exits = bool(proc & ProcBasedControls.CR3_LOAD_EXITING) and not self._cr3_target(
                        uc.reg_read(reg_id) & width)
                else:
                    exits = bool(proc & ProcBasedControls.CR3_STORE_EXITING)
            elif cr == 8:
                flag = ProcBasedControls.CR8_LOAD_EXITING if to else ProcBasedControls.CR8_STORE_EXITING
                exits = bool(proc & flag)
            if not exits:
                if to:
                    self._after_cr_write()
                return None
            e.reset(ExitReason.CR_ACCESS, qual)
        elif kind == "clts":
            mask, shadow = v.read(VmcsField.CR0_GUEST_HOST_MASK), v.read(VmcsField.CR0_READ_SHADOW)
            if clts_exits(mask, shadow):
                e.reset(ExitReason.CR_ACCESS, 2 << 4)
            elif mask & _CR0_TS:
                self._set_rip(rip + site.length)  # TS is the host's: CLTS leaves it alone
                return None
            else:
                return None
        elif kind == "lmsw":
            mask, shadow = v.read(VmcsField.CR0_GUEST_HOST_MASK), v.read(VmcsField.CR0_READ_SHADOW)
            if site.memory:
                linear = self._effective_address(code_at, rip, site, bits)
                cpu = self._delivery_cpu()
                src = cpu.read(linear, 2)
            else:
                src = uc.reg_read(_SDM_GPR[site.gpr]) & 0xFFFF
            if not mask:
                return None
            if lmsw_exits(mask, shadow, src):
                e.reset(ExitReason.CR_ACCESS, 3 << 4 | (1 << 6 if site.memory else 0) | src << 16)
                if site.memory:
                    e.guest_linear_address = linear
            else:   # loads the unmasked bits of PE/MP/EM/TS; never clears PE
                cr0 = uc.reg_read(X.UC_X86_REG_CR0)
                load = 0xF & ~mask
                new = (cr0 & ~load) | (src & load) | (cr0 & CR0_PE)
                uc.reg_write(X.UC_X86_REG_CR0, new)
                self._after_cr_write()
                self._set_rip(rip + site.length)
                return None
        elif kind == "invlpg":
            linear = self._effective_address(code_at, rip, site, bits)
            if not proc & ProcBasedControls.INVLPG_EXITING:
                page = linear & ~(PAGE_SIZE - 1)
                for a in [a for a in self._io_cache if a & ~(PAGE_SIZE - 1) == page]:
                    del self._io_cache[a]
                return None
            e.reset(ExitReason.INVLPG, linear)
            e.guest_linear_address = linear
        elif kind in ("mov_to_dr", "mov_from_dr"):
            if not proc & ProcBasedControls.MOV_DR_EXITING:
                return None
            e.reset(ExitReason.MOV_DR, site.reg & 7 | (1 << 4 if kind == "mov_from_dr" else 0) | site.gpr << 8)
        elif kind == "vmcall":
            e.reset(ExitReason.VMCALL)
        elif kind == "cpuid":
            e.reset(ExitReason.CPUID)
        elif kind in ("rdtsc", "rdtscp"):
            if uc.reg_read(X.UC_X86_REG_CR4) & _CR4_TSD and (cpl or vm86):
                raise delivery.DeliveryFault(13, 0)
            if not proc & ProcBasedControls.RDTSC_EXITING:
                return None   # the RDTSC hook supplies the engine's TSC
            e.reset(ExitReason.RDTSC if kind == "rdtsc" else ExitReason.RDTSCP)
        elif kind == "invd":
            e.reset(ExitReason.INVD)
        elif kind == "wbinvd":
            if not self._proc2 & ProcBasedControls2.WBINVD_EXITING:
                return None
            e.reset(ExitReason.WBINVD)
        elif kind == "xsetbv":
            e.reset(ExitReason.XSETBV)
        else:
            return None
        e.instruction_length = site.length
        return e

    def _cr3_target(self, value: int) -> bool:
        count = self.vmcs.read(VmcsField.CR3_TARGET_COUNT)
        fields = (VmcsField.CR3_TARGET_VALUE0, VmcsField.CR3_TARGET_VALUE1, VmcsField.CR3_TARGET_VALUE2,
                  VmcsField.CR3_TARGET_VALUE3)
        return any(self.vmcs.read(f) == value for f in fields[:min(count, 4)])

    def _after_cr_write(self) -> None:
        """Paging may change: what is cached per linear address (I/O instruction facts) is stale.

        Scanned code pages are kept per (linear, physical) pair, so they stay valid.
        """
        self._io_cache.clear()

    def _effective_address(self, code_at: int, rip: int, site: sites.Site, bits: int) -> int:
        """Linear address of a memory operand (INVLPG, LMSW m16), via capstone (code at linear ``code_at``)."""
        import capstone
        from capstone import x86_const as CX
        code = self._read_code(code_at)
        md = capstone.Cs(capstone.CS_ARCH_X86, {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32,
                                                64: capstone.CS_MODE_64}[bits])
        md.detail = True
        insn = next(md.disasm(code, rip), None)
        if insn is None:
            raise delivery.DeliveryFault(6)
        blob = Blob(self.uc, self.lay)
        for op in insn.operands:
            if op.type != CX.X86_OP_MEM:
                continue
            m = op.mem
            addr = m.disp
            if m.base == CX.X86_REG_RIP:
                addr += rip + insn.size
            elif m.base:
                addr += self._cs_reg(insn.reg_name(m.base))
            if m.index:
                addr += self._cs_reg(insn.reg_name(m.index)) * m.scale
            asize = 16 if (bits == 16) != (0x67 in code[:site.modrm_at]) and bits != 64 else bits
            addr &= (1 << asize) - 1
            seg = insn.reg_name(m.segment) if m.segment else (
                "ss" if m.base in (CX.X86_REG_BP, CX.X86_REG_EBP, CX.X86_REG_RBP, CX.X86_REG_SP,
                                   CX.X86_REG_ESP, CX.X86_REG_RSP) else "ds")
            base = blob.seg(seg)[1] if bits != 64 or seg in ("fs", "gs") else 0
            return (base + addr) & (0xFFFF_FFFF_FFFF_FFFF if bits == 64 else 0xFFFF_FFFF)
        raise delivery.DeliveryFault(6)

    def _cs_reg(self, name: str) -> int:
        return self.uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}"))

    def _delivery_cpu(self) -> delivery.Cpu:
        uc = self.uc
        cr0, cr3, cr4, efer = self._crs()
        return delivery.Cpu(self.memory, Blob(uc, self.lay), self._rip(), uc.reg_read(X.UC_X86_REG_RSP),
                            uc.reg_read(X.UC_X86_REG_EFLAGS), cr0, cr3, cr4, efer)

    # -- controls ---------------------------------------------------------------
    def _load_controls(self) -> None:
        v = self.vmcs
        self._vmcs_version = v.version
        # plain ints: a control word may be stored as an IntFlag, whose arithmetic is slow on hot paths
        self._proc = int(v.read(VmcsField.CPU_BASED_VM_EXEC_CONTROL))
        self._proc2 = int(v.read(VmcsField.SECONDARY_VM_EXEC_CONTROL)) \
            if self._proc & ProcBasedControls.ACTIVATE_SECONDARY_CONTROLS else 0
        self._pin = int(v.read(VmcsField.PIN_BASED_VM_EXEC_CONTROL))
        self._exc_bitmap = int(v.read(VmcsField.EXCEPTION_BITMAP))
        self._pf_mask = v.read(VmcsField.PAGE_FAULT_ERROR_CODE_MASK)
        self._pf_match = v.read(VmcsField.PAGE_FAULT_ERROR_CODE_MATCH)
        if self._proc & ProcBasedControls.USE_IO_BITMAPS:
            self._io_mode = 2
        else:
            self._io_mode = 1 if self._proc & ProcBasedControls.UNCONDITIONAL_IO_EXITING else 0

    def _io_exits(self, port: int, size: int) -> bool:
        mode = self._io_mode
        if mode < 2:
            return mode == 1
        if port + size > 0x10000:
            return True
        for p in range(port, port + size):
            bm = self.bitmaps.io_a if p < 0x8000 else self.bitmaps.io_b
            q = p & 0x7FFF
            if bm[q >> 3] >> (q & 7) & 1:
                return True
        return False

    # -- exit hand-off ----------------------------------------------------------
    def set_inline_dispatcher(self, dispatch: Callable[[VmExit], bool] | None) -> None:
        self._dispatch = dispatch

    def _deliver(self, e: VmExit) -> None:
        """Hand an exit to the handlers from the CPU loop (unicorn is not running)."""
        if self._closed:
            return
        self._depth += 1
        try:
            self._hand_over(e)
        finally:
            self._depth -= 1

    def _hand_over(self, e: VmExit) -> bool:
        """Run the handlers for ``e``: inline, or by posting it to the thread in ``run()``.

        Returns False if the vCPU was closed while the exit was out.
        """
        d = self._dispatch
        if d is not None and self._thread is None:
            if not d(e):
                self._leave = True
            return True
        self._posted = e
        self._to_caller.release()
        self._to_cpu.acquire()
        if self._closed:
            return False
        self._load_controls()
        return True

    def _deliver_mmio(self, e: VmExit) -> None:
        """An MMIO access inside unicorn: answer it now, drain if the guest must stop here."""
        if self._closed:
            self.uc.emu_stop()
            return
        self._rip_override = None
        self._drain_tb = self._rip()   # unicorn's RIP is the block start here
        self._in_hook = True
        self._depth += 1
        try:
            if not self._hand_over(e):
                self.uc.emu_stop()
                return
        finally:
            self._depth -= 1
            self._in_hook = False
        if self._leave or self._kicked or self._rip_override is not None \
                or self.vmcs.version != self._vmcs_version or self.vmcs._values.get(_ENTRY_INFO, 0) >> 31:
            self._entry_pending = True
            self._start_drain(io=False)

    # -- draining -----------------------------------------------------------------
    def _start_drain(self, io: bool) -> None:
        """Stop at this instruction boundary: no later side effect may happen."""
        uc = self.uc
        self._draining = True
        self._drain_perms = []
        for begin, end, perms in uc.mem_regions():
            page = begin & ~(PAGE_SIZE - 1)
            new = perms & ~UC_PROT_WRITE
            if page in self._mmio_pages:
                new = 0
            if new != perms:
                uc.mem_protect(begin, end - begin + 1, new)
                self._drain_perms.append((begin, end, perms))
        if io:
            self._drain_tb = None
        uc.emu_stop()

    def _end_drain(self) -> None:
        for begin, end, perms in self._drain_perms:
            self.uc.mem_protect(begin, end - begin + 1, perms)
        self._drain_perms = []
        self._draining = False

    def _halted_while_draining(self) -> bool:
        """Did the block that drained after an MMIO exit end with HLT (RIP is past it)?"""
        start = self._drain_tb
        self._drain_tb = None
        if start is None:
            return False
        import capstone
        rip = self._rip()
        if not 0 < rip - start <= 4096:
            return False
        bits = self._cpu_state()[0]
        md = capstone.Cs(capstone.CS_ARCH_X86, {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32,
                                                64: capstone.CS_MODE_64}[bits])
        last = None
        for insn in md.disasm(self._read_code(self._linear(start), rip - start), start):
            last = insn
        return last is not None and last.address + last.size == rip and last.mnemonic == "hlt"

    # -- I/O instructions ---------------------------------------------------------
    def _io_site(self, linear: int, bits: int) -> tuple[int, int, dict[str, Any] | None]:
        """(length, string/REP/immediate qualification bits, string facts or None) of the I/O instruction at ``linear``."""
        found = sites.io_length(self._read_code(linear), bits)
        if found is None:
            out = (1, 0, None)
        else:
            length, facts = found
            bits = (16 | (32 if facts["rep"] else 0)) if facts["string"] else (64 if facts["immediate"] else 0)
            out = (length, bits, facts if facts["string"] else None)
        self._io_cache[linear] = out
        return out

    def _io_exit(self, port: int, size: int, is_in: bool, value: int) -> int:
        uc = self.uc
        buf = self._fresh()
        lay = self.lay
        rip = _U64.unpack_from(buf, lay.rip)[0]
        hflags = _U32.unpack_from(buf, lay.hflags)[0]
        if hflags & HF_CS64:
            linear = rip
        else:   # the code segment's base: RIP is an offset into CS (real mode, BIOS trampolines)
            linear = (_U64.unpack_from(buf, lay.segs + 8 + 24)[0] + rip) & 0xFFFF_FFFF
        site = self._io_cache.get(linear)
        if site is None:
            site = self._io_site(linear, 64 if hflags & HF_CS64 else 32 if hflags & HF_CS32 else 16)
        length, qbits, string = site
        e = self.exit
        if string is not None:
            e.reset(ExitReason.IO_INSTRUCTION)
        elif e.fast_kind != _FAST_IO:
            # every field outside the ones set below is neutral after the reset; later I/O exits of
            # this kind skip it (see smartvm_core.exit)
            e.reset(ExitReason.IO_INSTRUCTION)
            e.fast_kind = _FAST_IO
        e.qualification = (size - 1) | (8 if is_in else 0) | qbits | port << 16
        e.port, e.size, e.is_in = port, size, is_in
        e.instruction_length = length
        full = (1 << (8 * size)) - 1
        e.value = full if is_in else value & full
        if string is not None:
            return self._string_io(e, rip, length, string, size, is_in)
        d = self._dispatch
        if d is None or self._thread is not None:
            # hand the exit to run()'s caller from the CPU loop: stop exactly before the instruction
            p = self._new_pending(rip, length, is_in, size, e)
            p.snapshot = uc.context_save()
            self._deferred = e
            self._exit_rip = rip
            self._start_drain(io=True)
            return e.value
        self._rip_override = None
        self._in_hook = True
        self._depth += 1
        try:
            ok = d(e)
        finally:
            self._depth -= 1
            self._in_hook = False
        vmcs = self.vmcs
        if ok and not self._kicked and self._rip_override is None and vmcs.version == self._vmcs_version \
                and not vmcs._values.get(_ENTRY_INFO, 0) >> 31:
            return e.value & full   # fast path: the instruction completes in unicorn
        if not ok:
            self._leave = True
        self._entry_pending = True
        p = self._new_pending(rip, length, is_in, size, e)
        p.value = e.value
        p.snapshot = uc.context_save()
        if self._rip_override is not None:
            p.exit = None   # the handler moved RIP: its state stands, no completion
            p.rip = self._rip_override
        self._start_drain(io=True)
        return e.value & full

    def _new_pending(self, rip: int, length: int, is_in: bool, size: int, e: VmExit) -> _PendingIo:
        p = _PendingIo()
        p.rip, p.length, p.is_in, p.size, p.exit = rip, length, is_in, size, e
        p.string = False
        p.rep = False
        p.count = 1
        p.value = None
        p.data = None
        p.snapshot = None
        self._pending_io = p
        return p

    def _string_io(self, e: VmExit, rip: int, length: int, facts: dict[str, Any], size: int, is_in: bool) -> int:
        """INS/OUTS (REP or not): one exit moving up to a page; the engine moves the data."""
        uc = self.uc
        bits, _, _ = self._cpu_state()
        asize = 64 if bits == 64 and not facts["addrsize"] else 32 if (bits == 32) != bool(facts["addrsize"]) \
            or (bits == 64 and facts["addrsize"]) else 16
        amask = (1 << asize) - 1
        blob = Blob(uc, self.lay)
        flags = uc.reg_read(X.UC_X86_REG_EFLAGS)
        backward = bool(flags & (1 << 10))
        if is_in:
            seg, reg = "es", _RDI
        else:
            seg, reg = _SEG_OVERRIDE.get(facts["seg"], "ds"), _RSI
        offset = uc.reg_read(reg) & amask
        base = blob.seg(seg)[1] if bits != 64 or seg in ("fs", "gs") else 0
        linear = (base + offset) & (0xFFFF_FFFF_FFFF_FFFF if bits == 64 else 0xFFFF_FFFF)
        count = 1
        if facts["rep"]:
            count = max(1, uc.reg_read(_RCX) & amask)
        # stay within one page of the memory operand
        in_page = ((linear & (PAGE_SIZE - 1)) // size + 1) if backward else \
            (PAGE_SIZE - (linear & (PAGE_SIZE - 1))) // size
        count = max(1, min(count, STRING_IO_MAX // size, in_page))
        e.count = count
        e.guest_linear_address = linear
        e.instruction_info = (0 if asize == 16 else 1 if asize == 32 else 2) << 7 | _SEG_NUMBER[seg] << 15
        p = self._new_pending(rip, length, is_in, size, e)
        p.string, p.rep, p.count, p.addr_mask = True, bool(facts["rep"]), count, amask
        p.backward = backward
        p.snapshot = uc.context_save()   # before the instruction (inline: retaken after the handler)
        first = linear - (count - 1) * size if backward else linear
        try:
            cpu = self._delivery_cpu()
            p.mem_phys = cpu.phys(first, write=is_in)
        except delivery.DeliveryFault as f:
            p.exit = None
            self._pending_io = None
            self._pending_fault = (f.vector, f.error_code, rip)
            if f.cr2 is not None:
                uc.reg_write(X.UC_X86_REG_CR2, f.cr2)
            self._start_drain(io=True)
            return 0
        p.mem_linear = first
        if is_in:
            e.data = bytearray(b"\xff" * (count * size))
        else:
            raw = self.memory.read(p.mem_phys, count * size) if self.memory.is_backed(p.mem_phys, count * size) \
                else b"\xff" * (count * size)
            if backward:  # element order as the CPU sends them: from RSI downwards
                raw = b"".join(raw[i * size:(i + 1) * size] for i in reversed(range(count)))
            e.data = bytearray(raw)
            e.value = int.from_bytes(raw[:size], "little")
        self._exit_rip = rip
        d = self._dispatch
        if d is None or self._thread is not None:
            self._deferred = e
        else:
            self._rip_override = None
            self._in_hook = True
            self._depth += 1
            try:
                if not d(e):
                    self._leave = True
            finally:
                self._depth -= 1
                self._in_hook = False
            p.snapshot = uc.context_save()
            if self._rip_override is not None:
                p.exit = None
                p.rip = self._rip_override
            self._entry_pending = True
        self._start_drain(io=True)
        return e.value & ((1 << (8 * size)) - 1)

    def _complete_io(self) -> None:
        """Finish the I/O instruction of the last exit with the handler's answer."""
        p = self._pending_io
        if p is None:
            return
        self._pending_io = None
        uc = self.uc
        if p.snapshot is not None:
            uc.context_restore(p.snapshot)
            p.snapshot = None
        if p.exit is None:          # the handler took over (moved RIP)
            self._set_rip(p.rip)
            return
        if self._rip() != p.rip:
            return                  # run()'s caller moved RIP: its state stands
        e = p.exit
        size = p.size
        if not p.string:
            if p.is_in:
                value = (p.value if p.value is not None else e.value) & ((1 << (8 * size)) - 1)
                rax = uc.reg_read(_RAX)
                if size == 4:
                    rax = value
                else:
                    rax = (rax & ~((1 << (8 * size)) - 1)) | value
                uc.reg_write(_RAX, rax)
            self._set_rip(p.rip + p.length)
            return
        n = p.count
        if p.is_in and e.data is not None:
            data = bytes(e.data[:n * size]).ljust(n * size, b"\xff")
            if p.backward:
                data = b"".join(data[i * size:(i + 1) * size] for i in reversed(range(n)))
            self.memory.guest_write(p.mem_phys, data)
        step = -n * size if p.backward else n * size
        reg = _RDI if p.is_in else _RSI
        old = uc.reg_read(reg)
        uc.reg_write(reg, (old & ~p.addr_mask) | ((old + step) & p.addr_mask))
        left = 0
        if p.rep:
            rcx = uc.reg_read(_RCX)
            left = ((rcx & p.addr_mask) - n) & p.addr_mask
            uc.reg_write(_RCX, (rcx & ~p.addr_mask) | left)
        if not left:
            self._set_rip(p.rip + p.length)

    def _raw_in(self, _uch: Any, port: int, size: int, _: Any) -> int:
        try:
            if self._draining or (self._io_mode != 1 and not self._io_exits(port, size)):
                return (1 << (8 * size)) - 1  # nothing answers: the bus floats high
            return self._io_exit(port, size, True, 0)
        except BaseException as exc:
            self._hook_failed(exc)
            return 0

    def _raw_out(self, _uch: Any, port: int, size: int, value: int, _: Any) -> None:
        try:
            if self._draining or (self._io_mode != 1 and not self._io_exits(port, size)):
                return
            self._io_exit(port, size, False, value)
        except BaseException as exc:
            self._hook_failed(exc)

    def _hook_failed(self, exc: BaseException) -> None:
        """A raw hook raised: record it where ``Uc.emu_start`` re-raises it, and stop (the binding's contract)."""
        if self.uc._hook_exception is None:
            self.uc._hook_exception = exc
        _emu_stop(self._uch)

    def _on_cpuid(self, uc: Uc, _: Any) -> int:
        """CPUID that no site hook caught (code written behind the scanner's back)."""
        if self._draining:
            return 1
        e = self.exit.reset(ExitReason.CPUID)
        e.instruction_length = 2
        self._in_hook = True
        try:
            self._deliver_mmio_like(e)
        finally:
            self._in_hook = False
        return 1  # the handler has set RAX..RDX; unicorn completes the instruction

    def _deliver_mmio_like(self, e: VmExit) -> None:
        d = self._dispatch
        if d is not None and self._thread is None:
            if not d(e):
                self._leave = True
                self.uc.emu_stop()
        else:
            self._posted = e
            self._to_caller.release()
            self._to_cpu.acquire()

    def _on_rdtsc(self) -> int:
        if self._draining:
            return 1
        if self._proc & _RDTSC_EXITING:
            e = self.exit.reset(ExitReason.RDTSC)
            e.instruction_length = 2
            self._in_hook = True
            try:
                self._deliver_mmio_like(e)
            finally:
                self._in_hook = False
            return 1
        tsc = (time.monotonic_ns() * 3 + self._tsc_offset) & 0xFFFF_FFFF_FFFF_FFFF  # 3 GHz
        self.uc.reg_write(X.UC_X86_REG_RAX, tsc & 0xFFFFFFFF)
        self.uc.reg_write(X.UC_X86_REG_RDX, tsc >> 32)
        return 1

    # -- exceptions and interrupts ------------------------------------------------
    def _raw_intr(self, _uch: Any, intno: int, _: Any) -> None:
        try:
            self._on_intr(self.uc, intno)
        except BaseException as exc:
            self._hook_failed(exc)

    def _on_intr(self, uc: Uc, intno: int) -> None:
        # RIP is the faulting instruction's (an INT n: the INT's); it is not written here (see _pending_event)
        lay = self.lay
        buf = self._fresh()
        _U32.pack_into(buf, lay.old_exception, 0xFFFFFFFF)  # unicorn issue 1883: no stale #DF escalation
        _ctx_restore(self._uch, self._ctx_handle)
        is_int = _U32.unpack_from(buf, lay.is_int)[0]
        rip = _U64.unpack_from(buf, lay.rip)[0]
        if is_int:
            kind = _SOFT_EXCEPTION if intno in (3, 4) else _SOFT_INTERRUPT
            length = 1 if intno in (3, 4) else 2
            next_rip = _U64.unpack_from(buf, lay.error_code + 8)[0]
            if next_rip == rip and intno in (3, 4):
                rip = next_rip - 1   # unicorn has already moved RIP past INT3/INTO (one byte each)
            length = max(1, (next_rip - rip) & 0xF) if next_rip > rip else length
            error = None
        else:
            kind, length, next_rip = _HW_EXCEPTION, 0, rip
            error = _U32.unpack_from(buf, lay.error_code)[0] if intno in (8, 10, 11, 12, 13, 14, 17, 21) else None
        if self._draining:
            _emu_stop(self._uch)   # the instruction runs again after the drain
            return
        if intno == 6 and not is_int and self._is_vmcall(rip):
            # a VMCALL no site hook caught (code written behind the scanner's back)
            if not uc.reg_read(X.UC_X86_REG_EFLAGS) & RFLAGS_VM:
                e = self.exit.reset(ExitReason.VMCALL)
                e.instruction_length = 3
                self._exit_rip = rip
                self._deferred = e
                _emu_stop(self._uch)
                return
        if kind != _SOFT_INTERRUPT and intno < 32 and exception_exits(
                self._exc_bitmap, intno, error_code=error or 0, pfec_mask=self._pf_mask, pfec_match=self._pf_match):
            e = self._exception_exit(uc.reg_read(X.UC_X86_REG_CR2) if intno == 14 else 0)
            e.interruption_info = intno | kind << 8 | (1 << 11 if error is not None else 0) | 1 << 31
            e.interruption_error_code = error or 0
            e.instruction_length = length
            self._exit_rip = rip
            self._deferred = e
            if is_int:
                self._rip_after_stop = rip   # unicorn moves past INT3/INTO after this hook
            _emu_stop(self._uch)
            return
        # delivered from the CPU loop, not here: a RIP written inside unicorn's interrupt hook leaves
        # unicorn 2.1.4 reporting stale RIPs to later I/O hooks (seen after IRET from a #PF handler)
        self._pending_event = (intno, error, kind == _SOFT_INTERRUPT, rip, next_rip if is_int else rip)
        _emu_stop(self._uch)

    def _exception(self, vector: int, error: int | None, rip: int) -> None:
        """A hardware exception of the guest's instruction at ``rip``: an exit if the bitmap says so, else delivered."""
        if exception_exits(self._exc_bitmap, vector, error_code=error or 0, pfec_mask=self._pf_mask,
                           pfec_match=self._pf_match):
            e = self._exception_exit(self.uc.reg_read(X.UC_X86_REG_CR2) if vector == 14 else 0)
            e.interruption_info = vector | _HW_EXCEPTION << 8 | (1 << 11 if error is not None else 0) | 1 << 31
            e.interruption_error_code = error or 0
            self._exit_rip = rip
            self._deferred = e
            return
        self._raise(vector, error, False, rip)

    def _exception_exit(self, qualification: int) -> VmExit:
        """The exit object for an exception-bitmap exit; the caller sets interruption info, error code, length.

        An exception exit after an exception exit skips the full reset (``fast_kind``): the
        fields outside the ones set here are still neutral.
        """
        e = self.exit
        if e.fast_kind != _FAST_EXC:
            e.reset(ExitReason.EXCEPTION_NMI)
            e.fast_kind = _FAST_EXC
        e.qualification = qualification
        e.instruction_length = 0
        e.value = 0
        e.data = None
        return e

    def _on_invalid(self, uc: Uc, _: Any) -> bool:
        """#UD: unicorn reports invalid opcodes here, not through UC_HOOK_INTR; it stops (returns False)."""
        rip = self._rip()
        if self._draining:
            return False
        buf, lay = self._fresh(), self.lay
        if _U32.unpack_from(buf, lay.is_int)[0]:
            # INT 6 (CD 06): unicorn reports every vector-6 event here, also the software interrupt,
            # which returns to the next instruction and is not subject to the exception bitmap
            next_rip = _U64.unpack_from(buf, lay.error_code + 8)[0]
            self._pending_event = (6, None, True, rip, next_rip)
            return False
        if self._is_vmcall(rip) and not uc.reg_read(X.UC_X86_REG_EFLAGS) & RFLAGS_VM:
            e = self.exit.reset(ExitReason.VMCALL)   # a VMCALL no site hook caught
            e.instruction_length = 3
            self._exit_rip = rip
            self._deferred = e
            return False
        self._guest_fault = (6, None, rip)
        return False

    def _is_vmcall(self, rip: int) -> bool:
        """Is the instruction that raised #UD a VMCALL (0F 01 C1)? (unicorn has no VMX)."""
        site = sites.decode(self._read_code(self._linear(rip)), self._cpu_state()[0])
        return site is not None and site.kind == "vmcall"

    def _raise(self, vector: int, error: int | None, software: bool, return_rip: int) -> None:
        """Deliver an event through the guest's IVT/IDT, forming #DF and triple faults (SDM Table 6-5)."""
        while True:
            try:
                self._deliver_event(vector, error, software, return_rip)
                return
            except delivery.DeliveryFault as f:
                if f.cr2 is not None:
                    self.uc.reg_write(X.UC_X86_REG_CR2, f.cr2)
                if vector == 8:
                    self._triple_fault()
                    return
                if not software and delivery.is_double_fault(vector, f.vector):
                    vector, error = 8, 0
                else:
                    vector, error = f.vector, f.error_code if f.vector in (10, 11, 12, 13, 14) else None
                software = False

    def _deliver_event(self, vector: int, error: int | None, software: bool, return_rip: int) -> None:
        uc = self.uc
        cr0, cr3, cr4, efer = self._crs()
        blob = Blob(uc, self.lay)
        cpu = delivery.Cpu(self.memory, blob, uc.reg_read(X.UC_X86_REG_RIP), uc.reg_read(X.UC_X86_REG_RSP),
                           uc.reg_read(X.UC_X86_REG_EFLAGS), cr0, cr3, cr4, efer)
        delivery.deliver(cpu, vector, error_code=error, software=software, return_rip=return_rip)
        delivery.fix_hflags(blob, cpu.rflags)
        delivery.clear_shadow(blob)
        blob.put32(self.lay.old_exception, 0xFFFFFFFF)
        blob.restore(uc)
        uc.reg_write(X.UC_X86_REG_RSP, cpu.rsp)
        uc.reg_write(X.UC_X86_REG_EFLAGS, cpu.rflags)
        uc.reg_write(X.UC_X86_REG_RIP, cpu.rip)

    def _triple_fault(self) -> None:
        self._deferred = self.exit.reset(ExitReason.TRIPLE_FAULT)
        self.uc.emu_stop()

    def _apply_entry(self) -> None:
        """Inject the event programmed in the VM-entry interruption-information field."""
        if not self.vmcs._values.get(_ENTRY_INFO, 0) >> 31:
            return
        info = self.vmcs.read(VmcsField.VM_ENTRY_INTR_INFO_FIELD)
        self.vmcs.write(VmcsField.VM_ENTRY_INTR_INFO_FIELD, info & 0x7FFFFFFF)
        vector, kind = info & 0xFF, (info >> 8) & 7
        error = self.vmcs.read(VmcsField.VM_ENTRY_EXCEPTION_ERROR_CODE) if info >> 11 & 1 else None
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        software = kind in (_SOFT_INTERRUPT, _SOFT_EXCEPTION, 5)
        ret = rip + self.vmcs.read(VmcsField.VM_ENTRY_INSTRUCTION_LEN) if software else rip
        self._raise(vector, error, kind in (_SOFT_INTERRUPT,), ret)

    # -- the CPU loop -------------------------------------------------------------
    def run(self) -> VmExit | None:
        if self._dispatch is not None:
            self._load_controls()
            self._complete_pending()
            return self._cpu_loop()
        if self._error is not None:
            raise self._error
        if self._thread is None:
            self._load_controls()
            self._thread = threading.Thread(target=self._thread_main, name=f"soft-vcpu{self.index}", daemon=True)
            self._thread.start()
        else:
            self._to_cpu.release()
        self._to_caller.acquire()
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return self._posted

    def _thread_main(self) -> None:
        try:
            while not self._closed:
                self._cpu_loop()
        except BaseException as exc:  # handed to the caller's run()
            self._error = exc
            self._to_caller.release()

    def _complete_pending(self) -> None:
        """Results of the last exit that the next entry delivers (IN value, RDMSR value, #GP)."""
        self._complete_io()
        e = self._pending_rdmsr
        if e is not None:
            self._pending_rdmsr = None
            if e.fault:
                self._pending_fault = (13, 0, self._exit_rip if self._exit_rip is not None else self._rip())
            elif e.reason == ExitReason.RDMSR:
                self.uc.reg_write(_RAX, e.value & 0xFFFF_FFFF)
                self.uc.reg_write(_RDX, (e.value >> 32) & 0xFFFF_FFFF)
        f = self._pending_fault
        if f is not None:
            self._pending_fault = None
            vector, error, rip = f
            self._set_rip(rip)
            self._raise(vector, error if vector in (8, 10, 11, 12, 13, 14, 17) else None, False, rip)

    def _hand_out(self, e: VmExit) -> bool:
        """Deliver a deferred exit from the loop; True if run() must return."""
        is_msr = e.reason in (ExitReason.RDMSR, ExitReason.WRMSR)
        self._deliver(e)
        if self._closed:
            return True
        if is_msr:
            self._pending_rdmsr = e
        self._complete_pending()
        if e.reason == ExitReason.TRIPLE_FAULT:
            self._leave = True
        return self._leave_now()

    def _window_open_now(self) -> bool:
        return bool(self._proc & _WINDOW_EXITING) and self.interrupt_window_open()

    def _cpu_loop(self) -> None:
        uc = self.uc
        while True:
            if self.vmcs.version != self._vmcs_version:
                self._load_controls()   # a handler changed the controls during an inline exit
            if self._kicked:
                self._kicked = False
                if self._hand_out(self.exit.reset(ExitReason.EXTERNAL_INTERRUPT)):
                    return None
            self._entry_pending = False
            self._apply_entry()
            if self._deferred is not None:      # a triple fault while injecting
                e, self._deferred = self._deferred, None
                if self._hand_out(e):
                    return None
                continue
            window = bool(self._proc & _WINDOW_EXITING)
            if window and self.interrupt_window_open():
                self._set_window_probe(False)
                if self._hand_out(self.exit.reset(ExitReason.INTERRUPT_WINDOW)):
                    return None
                continue
            # the window is closed: stop before the first instruction that starts with IF set (the
            # instruction at RIP runs first: it is the one in an STI/MOV SS shadow, if any)
            self._set_window_probe(window)
            self._probe_skip = True
            deadline = self.timer_deadline_ns
            if deadline is not None:
                if deadline - time.monotonic_ns() <= 0:
                    if self._hand_out(self.exit.reset(ExitReason.VMX_PREEMPTION_TIMER_EXPIRED)):
                        return None
                    continue
                # not unicorn's emu_start timeout: it starts and joins a thread on every call (~100 us)
                self._watchdog.arm(deadline)
            self._deferred = None
            error = None
            _reg_read(self._uch, _RIP, self._rbuf_ref)
            start = self._rbuf.value
            try:
                # uc_emu_start without the binding's wrapper (its exception contract kept)
                uc._hook_exception = None
                status = _emu_start(self._uch, start, UNTIL, 0, 0)
                if status:
                    raise UcError(status)
                if uc._hook_exception is not None:
                    raise uc._hook_exception
            except UcError as exc:
                error = exc
            finally:
                if deadline is not None:
                    self._watchdog.disarm()
            if self._closed:
                return None
            if self._rip_after_stop is not None:
                self._set_rip(self._rip_after_stop)
                self._rip_after_stop = None
            rescanned = bool(self._retranslate)
            if rescanned:
                # all blocks: unicorn's per-range removal takes physical addresses, these are linear
                uc.ctl_flush_tb()
                self._retranslate.clear()
            if error is not None and error.errno == UC_ERR_INSN_INVALID:
                error = None   # _on_invalid recorded the #UD (or VMCALL)
            drained = self._draining
            if drained:
                self._end_drain()
                if self._pending_io is not None and self._pending_io.snapshot is not None \
                        and (self._deferred is None or self._pending_io.exit is not self._deferred):
                    self._complete_io()     # inline exit already handled: finish the instruction
                elif self._pending_io is not None and self._pending_io.snapshot is not None:
                    uc.context_restore(self._pending_io.snapshot)   # back before the instruction
                    self._pending_io.snapshot = None
                elif error is None and self._halted_while_draining():
                    self._set_rip(self._rip() - 1)
                    if self._proc & _HLT_EXITING:
                        e = self.exit.reset(ExitReason.HLT)
                        e.instruction_length = 1
                        self._exit_rip = self._rip()
                        self._deferred = self._deferred or e
                    else:
                        self._set_rip(self._rip() + 1)
                error = None
            if self._guest_fault is not None and self._deferred is None:
                vector, code, rip = self._guest_fault
                self._guest_fault = None
                self._set_rip(rip)
                self._exception(vector, code, rip)
                continue   # an exit it made is handed out at the top
            if self._pending_event is not None:
                vector, code, software, rip, ret = self._pending_event
                self._pending_event = None
                self._set_rip(rip)
                if self._deferred is None:
                    self._raise(vector, code, software, ret)
                    continue   # a triple fault it made is handed out at the top
                # else: the exit comes first; the instruction raises its event again when it reruns
            if self._pending_fault is not None and self._deferred is None:
                self._complete_pending()
                if self._leave_now():
                    return None
                continue
            if self._deferred is not None:
                e = self._deferred
                self._deferred = None
                if e.reason == ExitReason.EPT_VIOLATION and e.is_write and error is not None \
                        and error.errno == UC_ERR_WRITE_PROT:
                    self._deliver(e)
                    if self._closed:
                        return None
                    if self._write_denied(e.guest_physical_address):
                        self._drop_store(e.guest_physical_address)   # ROM, or a page still protected
                    # else: a handler made the page writable (set_page_protection): retry the store
                    if self._leave_now():
                        return None
                    continue
                if self._hand_out(e):
                    return None
                continue
            if error is not None:
                if error.errno == UC_ERR_FETCH_UNMAPPED:
                    continue
                raise EngineError(f"soft engine: unicorn stopped at RIP "
                                  f"{self._rip():#x}: {error}")
            probed, self._probe_stopped = self._probe_stopped, False
            if drained:
                if self._leave_now():
                    return None
                continue
            if self._leave_now():
                return None
            if self._entry_pending or self._kicked or rescanned or probed:
                continue
            if self._rip() == start:
                # stopped before the first instruction (a page was scanned)
                self._no_progress += 1
                if self._no_progress > 10000:
                    raise EngineError(f"soft engine: unicorn makes no progress at RIP {start:#x} "
                                      "(emulation returns before the instruction runs)")
                continue
            self._no_progress = 0
            if deadline is not None and self._watchdog.fired:
                continue  # the timer check at the top reports it
            # unicorn returned on its own: after HLT (RIP is past it), or after it dropped a block
            # the guest wrote to (self-modifying code): only the first ends with an F4 byte
            if self._read_code(self._linear(self._rip() - 1), 1) != b"\xf4":
                continue
            if self._proc & _HLT_EXITING:
                self._set_rip(self._rip() - 1)
                e = self.exit.reset(ExitReason.HLT)
                e.instruction_length = 1
                self._exit_rip = self._rip()
                if self._hand_out(e):
                    return None

    def _write_denied(self, gpa: int) -> bool:
        region = self.memory.region_at(gpa)
        return region is not None and (region.readonly or not self.engine.page_protection(gpa) & 2)

    def _drop_store(self, gpa: int) -> None:
        """Run the store that faulted once more with its page(s) backed by a scratch copy: that store is
        dropped, the instruction goes on (a REP string instruction: one iteration; the next store faults
        again and makes its own exit, as on KVM)."""
        uc = self.uc
        pages = [gpa & ~(PAGE_SIZE - 1)]
        for _ in range(4):
            self._deferred = None
            error = self._step_with_scratch(pages)
            e = self._deferred
            if error is None or error.errno != UC_ERR_WRITE_PROT or e is None \
                    or e.reason != ExitReason.EPT_VIOLATION or not e.is_write:
                return    # done; an exit or event the step made is handled by the CPU loop
            # the same instruction also stores to another protected page (a store across pages)
            self._deferred = None
            self._deliver(e)
            if self._closed:
                return
            page = e.guest_physical_address & ~(PAGE_SIZE - 1)
            if self._write_denied(page) and page not in pages:
                pages.append(page)
        uc.emu_stop()

    def _step_with_scratch(self, pages: list[int]) -> UcError | None:
        """One instruction (one REP iteration) with ``pages`` mapped to writable copies; then the real pages."""
        uc = self.uc
        scratch = []
        for page in pages:
            copy = ctypes.create_string_buffer(self.memory.read(page, PAGE_SIZE), PAGE_SIZE)
            uc.mem_unmap(page, PAGE_SIZE)
            uc.mem_map_ptr(page, PAGE_SIZE, UC_PROT_READ | UC_PROT_WRITE, ctypes.addressof(copy))
            scratch.append(copy)
        error = None
        try:
            self._probe_skip = True
            uc.ctl_flush_tb()   # unicorn compiles its instruction counter into blocks translated from now on
            uc.emu_start(self._rip(), UNTIL, count=1)
        except UcError as exc:
            error = exc
        finally:
            for page in pages:
                uc.mem_unmap(page, PAGE_SIZE)
                region = self.memory.region_at(page)
                if region is None:
                    continue
                uc.mem_map_ptr(page, PAGE_SIZE, UC_PROT_READ if region.readonly else UC_PROT_READ | UC_PROT_WRITE,
                               region.host_address + (page - region.gpa))
                allowed = self.engine._prot.get(page >> 12)
                if allowed is not None:
                    self._protect(page, PAGE_SIZE, allowed)
        return error

    def _set_window_probe(self, on: bool) -> None:
        """Hook every instruction while an interrupt window is awaited (see :meth:`_on_window_probe`)."""
        if on == (self._probe_hook is not None):
            return
        if on:
            self._probe_hook = self.uc._Uc__do_hook_add(UC_HOOK_CODE, self._probe_cb, 1, 0)
        else:
            self.uc.hook_del(self._probe_hook)
            self._probe_hook = None
        self.uc.ctl_flush_tb()   # blocks translated with or without the hook call

    def _on_window_probe(self, _uch: Any, address: int, size: int, _: Any) -> None:
        """Before each instruction while the window is awaited: stop once IF is set.

        The first instruction of each emu_start always runs (it is the one
        in an STI/MOV SS shadow when IF is already set).
        """
        if self._probe_skip:
            self._probe_skip = False
            return
        _reg_read(self._uch, _EFLAGS_ID, self._fbuf_ref)
        if self._fbuf.value & RFLAGS_IF and not self._draining:
            self._probe_stopped = True
            _emu_stop(self._uch)   # before this instruction; the CPU loop checks the window

    def _leave_now(self) -> bool:
        if self._leave:
            self._leave = False
            return True
        return False

    def _mode(self) -> str:
        from ...cpu import cpu_mode
        return cpu_mode(self.get_sregs(), self.uc.reg_read(X.UC_X86_REG_EFLAGS))

    def kick(self) -> None:
        self._kicked = True
        self.uc.emu_stop()

    def skip_instruction(self) -> None:
        if self._in_hook:
            return  # unicorn completes CPUID/RDTSC when its hook returns
        reason = self.exit.reason
        if reason in (ExitReason.IO_INSTRUCTION, ExitReason.EPT_VIOLATION):
            return  # completed by the engine
        length = self.exit.instruction_length
        if self._exit_rip is not None and length:
            self._set_rip(self._exit_rip + length)
        elif length:
            self._set_rip(self._rip() + length)

    def inject_event(self, event: EventInjection) -> None:
        self.vmcs.inject(event)

    def interrupt_window_open(self) -> bool:
        if not self.uc.reg_read(X.UC_X86_REG_EFLAGS) & RFLAGS_IF:
            return False
        if self.vmcs.read(VmcsField.VM_ENTRY_INTR_INFO_FIELD) >> 31:
            return False
        return not _U32.unpack_from(self._fresh(), self.lay.hflags)[0] & HF_INHIBIT_IRQ

    def set_interrupt_window_exiting(self, enabled: bool) -> None:
        f = VmcsField.CPU_BASED_VM_EXEC_CONTROL
        bit = int(ProcBasedControls.INTERRUPT_WINDOW_EXITING)
        self.vmcs[f] = self.vmcs[f] | bit if enabled else self.vmcs[f] & ~bit
        self._proc = self.vmcs[f]

    def translate(self, linear: int) -> int | None:
        try:
            return delivery.translate(self.memory, *self._crs(), linear)
        except delivery.DeliveryFault:
            return None

    # -- state ------------------------------------------------------------------
    def reset(self) -> None:
        """The power-on state (SDM Vol. 3, 10.1.1): real mode at F000:FFF0."""
        self.set_sregs(SpecialRegisters())
        self.set_regs(Registers(rip=0xFFF0, rdx=0x600))

    def get_regs(self) -> Registers:
        # one context save (about 1 us) instead of a register read each; RFLAGS is computed by unicorn
        # (QEMU keeps the arithmetic flags apart)
        buf = self._fresh()
        g = _GPR16.unpack_from(buf, self._gpr_off)
        _reg_read(self._uch, _EFLAGS_ID, self._wbuf_ref)
        return Registers(rax=g[0], rcx=g[1], rdx=g[2], rbx=g[3], rsp=g[4], rbp=g[5], rsi=g[6], rdi=g[7],
                         r8=g[8], r9=g[9], r10=g[10], r11=g[11], r12=g[12], r13=g[13], r14=g[14], r15=g[15],
                         rip=_U64.unpack_from(buf, self.lay.rip)[0], rflags=self._wbuf.value)

    def set_regs(self, regs: Registers) -> None:
        m = 0xFFFF_FFFF_FFFF_FFFF
        buf = self._fresh()
        _GPR16.pack_into(buf, self._gpr_off, regs.rax & m, regs.rcx & m, regs.rdx & m, regs.rbx & m, regs.rsp & m,
                         regs.rbp & m, regs.rsi & m, regs.rdi & m, regs.r8 & m, regs.r9 & m, regs.r10 & m,
                         regs.r11 & m, regs.r12 & m, regs.r13 & m, regs.r14 & m, regs.r15 & m)
        rip = regs.rip & m
        if self._in_hook:
            # inside an I/O or MMIO hook unicorn ignores RIP writes: the engine applies it
            # at the instruction boundary (see _io_exit / _deliver_mmio)
            if rip != _U64.unpack_from(buf, self.lay.rip)[0]:
                self._rip_override = rip
        else:
            _U64.pack_into(buf, self.lay.rip, rip)
        _ctx_restore(self._uch, self._ctx_handle)
        self._wbuf.value = regs.rflags & m
        _reg_write(self._uch, _EFLAGS_ID, self._wbuf_ref)

    def get_sregs(self) -> SpecialRegisters:
        buf, lay = self._fresh(), self.lay
        segs = {}
        cache = self._seg_cache
        for name in SpecialRegisters.SEGMENTS:
            raw = _SEG.unpack_from(buf, lay.segs + SEG_INDEX[name] * 24)
            fields = cache.get(raw)
            if fields is None:
                sel, _, base, limit, f = raw
                # Segment's field order: selector, base, limit, type, present, dpl, db, s, l, g, avl, unusable
                fields = (sel & 0xFFFF, base, limit, (f >> 8) & 0xF, (f >> 15) & 1, (f >> 13) & 3, (f >> 22) & 1,
                          (f >> 12) & 1, (f >> 21) & 1, (f >> 23) & 1, (f >> 20) & 1, 0 if f & (1 << 15) else 1)
                if len(cache) > 256:
                    cache.clear()
                cache[raw] = fields
            segs[name] = Segment(*fields)
        _, _, gbase, glimit, _ = _SEG.unpack_from(buf, lay.gdt)
        _, _, ibase, ilimit, _ = _SEG.unpack_from(buf, lay.idt)
        cr = _CR5.unpack_from(buf, lay.cr)
        _reg_read(self._uch, X.UC_X86_REG_CR8, self._wbuf_ref)
        return SpecialRegisters(gdt=DescriptorTable(gbase, glimit), idt=DescriptorTable(ibase, ilimit),
                                cr0=cr[0], cr2=cr[2], cr3=cr[3], cr4=cr[4], cr8=self._wbuf.value,
                                efer=_U64.unpack_from(buf, lay.efer)[0],
                                apic_base=getattr(self, "_apic_base", 0xFEE00900), **segs)

    def get_reg(self, name: str) -> int:
        rid = _REG_ID.get(name)
        if rid is None:
            raise KeyError(f"no register {name!r} (one of: {', '.join(_GPRS)})")
        _reg_read(self._uch, rid, self._wbuf_ref)
        return self._wbuf.value

    def set_reg(self, name: str, value: int) -> None:
        rid = _REG_ID.get(name)
        if rid is None:
            raise KeyError(f"no register {name!r} (one of: {', '.join(_GPRS)})")
        value &= 0xFFFF_FFFF_FFFF_FFFF
        if rid == _RIP and self._in_hook:
            _reg_read(self._uch, _RIP, self._wbuf_ref)
            if value != self._wbuf.value:
                self._rip_override = value   # applied at the instruction boundary, as in set_regs
            return
        self._wbuf.value = value
        _reg_write(self._uch, rid, self._wbuf_ref)

    def get_segment_selectors(self) -> tuple[int, int, int, int, int, int]:
        es, cs, ss, ds, fs, gs = _SELECTORS.unpack_from(self._fresh(), self.lay.segs)
        return es & 0xFFFF, cs & 0xFFFF, ss & 0xFFFF, ds & 0xFFFF, fs & 0xFFFF, gs & 0xFFFF

    def get_cr0(self) -> int:
        return _U64.unpack_from(self._fresh(), self.lay.cr)[0]

    def set_sregs(self, sregs: SpecialRegisters) -> None:
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_CR4, sregs.cr4)
        uc.reg_write(X.UC_X86_REG_CR3, sregs.cr3)
        uc.reg_write(X.UC_X86_REG_CR0, sregs.cr0)
        uc.reg_write(X.UC_X86_REG_CR2, sregs.cr2)
        self._apic_base = sregs.apic_base
        blob = Blob(uc, self.lay)
        for name in SpecialRegisters.SEGMENTS:
            s: Segment = getattr(sregs, name)
            flags = (s.type << 8 | s.s << 12 | s.dpl << 13 | (0 if s.unusable else s.present) << 15
                     | s.avl << 20 | s.l << 21 | s.db << 22 | s.g << 23)
            blob.put_seg(name, s.selector, s.base, s.limit, flags)
        blob.put64(self.lay.gdt + 8, sregs.gdt.base)
        blob.put32(self.lay.gdt + 16, sregs.gdt.limit)
        blob.put64(self.lay.idt + 8, sregs.idt.base)
        blob.put32(self.lay.idt + 16, sregs.idt.limit)
        blob.put64(self.lay.efer, sregs.efer)
        delivery.fix_hflags(blob, uc.reg_read(X.UC_X86_REG_EFLAGS))
        blob.restore(uc)
        uc.ctl_flush_tb()
        self._after_cr_write()

    def get_msr(self, index: int) -> int:
        if index == 0x10:
            return (time.monotonic_ns() * 3 + self._tsc_offset) & 0xFFFF_FFFF_FFFF_FFFF
        if index in ARCH_MSRS:
            if index == EFER_MSR:
                return Blob(self.uc, self.lay).u64(self.lay.efer)
            return self.uc.reg_read(X.UC_X86_REG_MSR, index)
        return self.msr_store[index]

    def set_msr(self, index: int, value: int) -> None:
        if index == 0x10:
            self._tsc_offset = value - time.monotonic_ns() * 3
        elif index == EFER_MSR:
            blob = Blob(self.uc, self.lay)
            blob.put64(self.lay.efer, value)
            delivery.fix_hflags(blob, self.uc.reg_read(X.UC_X86_REG_EFLAGS))
            blob.restore(self.uc)
        elif index in ARCH_MSRS:
            self.uc.reg_write(X.UC_X86_REG_MSR, (index, value))
        else:
            self.msr_store[index] = value

    def save_state(self) -> dict[str, Any]:
        """Complete state; an I/O instruction whose exit was handled is completed first (as KVM does)."""
        if self._pending_io is not None and self._pending_io.snapshot is None:
            self._complete_io()
        blob = Blob(self.uc, self.lay)
        return {
            "regs": state_to_plain(self.get_regs()),
            "sregs": state_to_plain(self.get_sregs()),
            "msrs": {**{i: self.get_msr(i) for i in ARCH_MSRS}, **self.msr_store},
            "tsc_offset": self._tsc_offset,
            "interrupt_shadow": bool(blob.u32(self.lay.hflags) & HF_INHIBIT_IRQ),
            "vmcs": self.vmcs.state(),
            "bitmaps": self.bitmaps.state(),
            "fpu": bytes(self._fpu_state()),
        }

    def _fpu_state(self) -> bytes:
        out = bytearray()
        for i in range(16):
            out += self.uc.reg_read(X.UC_X86_REG_XMM0 + i).to_bytes(16, "little")
        out += self.uc.reg_read(X.UC_X86_REG_MXCSR).to_bytes(4, "little")
        return bytes(out)

    def restore_state(self, state: dict[str, Any]) -> None:
        try:
            sregs = sregs_from_plain(state["sregs"])
            regs = registers_from_plain(state["regs"])
            msrs = {int(k): int(v) for k, v in state["msrs"].items()}
            vmcs = Vmcs.from_state(state["vmcs"])
            fpu = bytes(state.get("fpu", b""))
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"soft engine vCPU {self.index}: bad saved state: {exc}") from exc
        self.set_regs(regs)
        self.set_sregs(sregs)
        self.msr_store.clear()
        for index, value in msrs.items():
            if index != EFER_MSR:
                self.set_msr(index, value)
        self._tsc_offset = int(state.get("tsc_offset", 0))
        self.vmcs = vmcs
        self.bitmaps.restore(state["bitmaps"])
        if len(fpu) == 16 * 16 + 4:
            for i in range(16):
                self.uc.reg_write(X.UC_X86_REG_XMM0 + i, int.from_bytes(fpu[16 * i:16 * i + 16], "little"))
            self.uc.reg_write(X.UC_X86_REG_MXCSR, int.from_bytes(fpu[256:260], "little"))
        if state.get("interrupt_shadow"):
            blob = Blob(self.uc, self.lay)
            blob.put32(self.lay.hflags, blob.u32(self.lay.hflags) | HF_INHIBIT_IRQ)
            blob.restore(self.uc)
        self._load_controls()

    def close(self) -> None:
        self._closed = True
        self.uc.emu_stop()
        self._watchdog.close()
        if self._thread is not None:
            self._to_cpu.release()
        self._undo_listener()


class SoftEngine(Engine):
    """unicorn 2 as the CPU, the VT-x controls modelled in Python."""

    name = "soft"
    description = "software CPU (unicorn) with the VT-x model on top; runs anywhere"

    @classmethod
    def probe(cls) -> Availability:
        try:
            import unicorn
            layout()
        except Exception as exc:  # noqa: BLE001 - probe must not raise
            return Availability(False, f"unicorn unusable: {exc}")
        return Availability(True, details={"unicorn": unicorn.__version__}, accelerated=False)

    @classmethod
    def capability_table(cls) -> dict[str, str]:
        return {
            "exception bitmap (with #PF error-code mask/match)": "yes",
            "HLT exiting": "yes",
            "unconditional I/O exiting, I/O bitmaps A/B": "yes",
            "I/O qualification (string, REP, immediate), string I/O in one exit": "yes",
            "CPUID exiting": "yes (always, as on VT-x)",
            "RDTSC exiting": "yes",
            "RDMSR/WRMSR exiting, MSR bitmaps": "yes",
            "CR0/CR4 guest/host masks and read shadows, CLTS, LMSW": "yes",
            "CR3 load/store exiting (CR3-target values), CR8 load/store exiting": "yes",
            "INVLPG exiting, MOV-DR exiting": "yes",
            "VMCALL, INVD, XSETBV (unconditional), WBINVD exiting": "yes",
            "EPT violations (unbacked guest-physical, ROM writes)":
                "yes (MMIO: exact address, size and value; RIP may be an earlier instruction of the block)",
            "triple fault": "yes",
            "interrupt-window exiting": "yes (hooks every instruction while the window is closed)",
            "event injection (IVT/IDT, TSS stack switch, 64-bit IST, from virtual-8086)": "yes",
            "VMX-preemption timer": "yes (host-time deadline)",
            "sensitive instructions through linear aliases and per-address-space mappings":
                "yes (sites are scanned per linear/physical page pair)",
            "task gates": "no",
            "EPT paging structures and permissions (guest-physical is the machine's memory map)": "no",
            "TPR shadow, virtual APIC, NMI-window exiting, monitor trap flag": "no",
        }

    def __init__(self, memory: GuestMemory, options: EngineOptions) -> None:
        super().__init__(memory, options)
        self.vcpus: list[SoftVcpu] = []
        #: restricted pages: page number -> EPT permission bits (absent: all allowed)
        self._prot: dict[int, int] = {}

    page_protection_bits = 7  # read, write and fetch, per 4-KiB page (unicorn mem_protect)

    def set_page_protection(self, gpa: int, size: int, allowed: int) -> None:
        if gpa % PAGE_SIZE or size % PAGE_SIZE or size < 0:
            raise ValueError(f"page protection range {gpa:#x}+{size:#x} is not page aligned")
        allowed &= 7
        first, last = gpa >> 12, (gpa + size) >> 12
        if allowed == 7:
            for page in range(first, last):
                self._prot.pop(page, None)
        else:
            self._prot.update(dict.fromkeys(range(first, last), allowed))
        for vcpu in self.vcpus:
            vcpu._protect(gpa, size, allowed)

    def page_protection(self, gpa: int) -> int:
        return self._prot.get(gpa >> 12, 7)

    def create_vcpu(self, index: int) -> SoftVcpu:
        vcpu = SoftVcpu(self, index)
        self.vcpus.append(vcpu)
        return vcpu

    def unsupported_controls(self, vmcs: Vmcs) -> list[str]:
        out = []
        proc = vmcs.read(VmcsField.CPU_BASED_VM_EXEC_CONTROL)
        for flag, why in ((ProcBasedControls.USE_TPR_SHADOW, "no virtual APIC / TPR shadow"),
                          (ProcBasedControls.MONITOR_TRAP_FLAG, "no monitor trap flag"),
                          (ProcBasedControls.NMI_WINDOW_EXITING, "no virtual NMIs")):
            if proc & flag:
                out.append(f"{flag.name}: {why}")
        if proc & ProcBasedControls.ACTIVATE_SECONDARY_CONTROLS:
            sec = vmcs.read(VmcsField.SECONDARY_VM_EXEC_CONTROL)
            # EPT: guest-physical memory is the machine's memory map, with exits for what is unbacked;
            # unrestricted guest: real mode always runs; RDTSCP: unicorn has it
            supported = (ProcBasedControls2.WBINVD_EXITING | ProcBasedControls2.ENABLE_EPT
                         | ProcBasedControls2.UNRESTRICTED_GUEST | ProcBasedControls2.ENABLE_RDTSCP)
            for flag in ProcBasedControls2:
                if sec & flag and not flag & supported:
                    out.append(f"{flag.name}: not modelled by the soft engine")
        return out

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
