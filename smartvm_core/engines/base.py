"""What an engine is: the hardware under the VMX model.

An engine owns the virtual CPUs. It maps the core's guest memory into the
guest without copying, runs one vCPU until its next VM exit, and reports
that exit as a :class:`~smartvm_core.exit.VmExit` in the Intel SDM's terms.
Engines register through the ``register_engines`` hook, so a third party can
add one; the core's own ``soft`` and ``kvm`` engines are registered the same
way.

The VMX controls an experiment asks for live in each vCPU's
:class:`~smartvm_core.vmx.Vmcs` (``vcpu.vmcs``). An engine honours them as the
SDM says, or refuses them up front through :meth:`Engine.unsupported_controls`.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import attrs

from ..cpu import Registers, SpecialRegisters
from ..exit import VmExit
from ..memory import GuestMemory, MemoryRegion
from ..vmx import EventInjection, Vmcs


#: EPT permission bits (SDM Vol. 3, 29.3.2: EPT entry bits 0-2), for :meth:`Engine.set_page_protection`
EPT_READ = 1
EPT_WRITE = 2
EPT_EXEC = 4
EPT_ALL = EPT_READ | EPT_WRITE | EPT_EXEC

#: a :class:`Registers` as a tuple of its 18 fields, in field order (for get_regs_selectors_cr0)
_REGISTER_FIELDS = operator.attrgetter(*attrs.fields_dict(Registers))


@attrs.define(frozen=True)
class Availability:
    """Whether an engine can run on this host, and why not."""

    usable: bool
    reason: str = ""
    #: facts worth printing in ``smartvm info`` (capabilities, versions)
    details: dict[str, Any] = attrs.Factory(dict)
    #: hardware-speed virtualization (``auto`` prefers engines that have it)
    accelerated: bool = False


@attrs.define(frozen=True)
class EngineOptions:
    """Engine options from the experiment (``[engine]`` section)."""

    vcpus: int = 1
    #: use the engine's own interrupt controller (``kvm``: in-kernel irqchip and PIT)
    irqchip: str = "user"  # "user" or "kernel"
    extra: dict[str, Any] = attrs.Factory(dict)


class VmxBitmaps:
    """The I/O bitmaps A and B and the MSR bitmap of one vCPU (SDM 25.6.4, 25.6.9).

    In hardware these are 4-KiB pages whose addresses the VMCS holds; here
    they are host byte arrays the engine consults when ``USE_IO_BITMAPS`` /
    ``USE_MSR_BITMAPS`` are set. A set bit means "this access exits".
    """

    __slots__ = ("io_a", "io_b", "msr")

    def __init__(self) -> None:
        self.io_a = bytearray(4096)   # ports 0x0000-0x7FFF
        self.io_b = bytearray(4096)   # ports 0x8000-0xFFFF
        self.msr = bytearray(4096)    # read-low, read-high, write-low, write-high (1 KiB each)

    def trap_port(self, port: int, trap: bool = True) -> None:
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port:#x} out of range")
        bitmap = self.io_a if port < 0x8000 else self.io_b
        byte, bit = divmod(port & 0x7FFF, 8)
        if trap:
            bitmap[byte] |= 1 << bit
        else:
            bitmap[byte] &= ~(1 << bit) & 0xFF

    def trap_msr(self, msr: int, *, read: bool = True, write: bool = True, trap: bool = True) -> None:
        if msr <= 0x1FFF:
            low = True
        elif 0xC0000000 <= msr <= 0xC0001FFF:
            low = False
        else:
            raise ValueError(f"MSR {msr:#x} is outside the bitmap ranges (its accesses always exit)")
        byte, bit = divmod(msr & 0x1FFF, 8)
        for is_write, wanted in ((False, read), (True, write)):
            if not wanted:
                continue
            base = (2048 if is_write else 0) + (0 if low else 1024)
            if trap:
                self.msr[base + byte] |= 1 << bit
            else:
                self.msr[base + byte] &= ~(1 << bit) & 0xFF

    def state(self) -> dict[str, bytes]:
        return {"io_a": bytes(self.io_a), "io_b": bytes(self.io_b), "msr": bytes(self.msr)}

    def restore(self, state: dict[str, bytes]) -> None:
        for name in ("io_a", "io_b", "msr"):
            data = state[name]
            if len(data) != 4096:
                raise ValueError(f"bitmap {name} must be 4096 bytes, got {len(data)}")
            getattr(self, name)[:] = data


class EngineVcpu(ABC):
    """One virtual CPU of an engine.

    The loop calls :meth:`run` and dispatches the exit it returns. Everything
    else is state access for handlers, loaders and snapshots. Methods whose
    names match a KVM ioctl (``get_regs`` for ``KVM_GET_REGS``) mean the same.
    """

    index: int
    vmcs: Vmcs
    #: I/O and MSR bitmaps (engines that honour them; ``None`` otherwise)
    bitmaps: VmxBitmaps | None = None
    exit: VmExit

    @abstractmethod
    def run(self) -> VmExit:
        """Enter the guest and return at the next VM exit (``VMLAUNCH``/``VMRESUME``).

        Pending results of the previous exit (IN value, MMIO read value, MSR
        value) and a pending event injection are delivered first.
        """

    @abstractmethod
    def kick(self) -> None:
        """From any thread: make :meth:`run` return soon with an ``EXTERNAL_INTERRUPT`` exit."""

    def set_timer_deadline(self, deadline_ns: int | None) -> None:
        """Return from :meth:`run` with ``VMX_PREEMPTION_TIMER_EXPIRED`` once
        ``time.monotonic_ns()`` passes ``deadline_ns`` (``None``: no timer)."""
        self.timer_deadline_ns = deadline_ns

    timer_deadline_ns: int | None = None

    @abstractmethod
    def get_regs(self) -> Registers: ...

    @abstractmethod
    def set_regs(self, regs: Registers) -> None: ...

    @abstractmethod
    def get_sregs(self) -> SpecialRegisters: ...

    @abstractmethod
    def set_sregs(self, sregs: SpecialRegisters) -> None: ...

    def get_segment_selectors(self) -> tuple[int, int, int, int, int, int]:
        """The ES, CS, SS, DS, FS and GS selectors (SDM segment-register order).

        A cheap subset of :meth:`get_sregs` for hot exit handlers; engines
        that can read the selectors without building ``SpecialRegisters``
        override it.
        """
        sr = self.get_sregs()
        return sr.es.selector, sr.cs.selector, sr.ss.selector, sr.ds.selector, sr.fs.selector, sr.gs.selector

    def get_cr0(self) -> int:
        """CR0: a cheap subset of :meth:`get_sregs` (engines override it when they can)."""
        return self.get_sregs().cr0

    def get_regs_selectors_cr0(self) -> tuple[int, ...]:
        """:meth:`get_regs`, :meth:`get_segment_selectors` and :meth:`get_cr0` in one call, as 25 numbers.

        The 18 :class:`Registers` fields in their order (``rax`` .. ``r15``,
        ``rip``, ``rflags``), then the CS, DS, ES, FS, GS and SS selectors
        (:class:`SpecialRegisters`' field order, *not* that of
        :meth:`get_segment_selectors`), then CR0; no ``Registers`` is built.
        For hot exit handlers that need all three (the v8086 monitor's
        real-mode doorbell); engines that can read them at once override it.
        """
        es, cs, ss, ds, fs, gs = self.get_segment_selectors()
        return (*_REGISTER_FIELDS(self.get_regs()), cs, ds, es, fs, gs, ss, self.get_cr0())

    def get_reg(self, name: str) -> int:
        """One field of :class:`Registers` (``rax`` .. ``r15``, ``rip``, ``rflags``): a cheap subset of
        :meth:`get_regs` for hot exit handlers (engines override it when they can)."""
        if name not in attrs.fields_dict(Registers):
            raise KeyError(f"no register {name!r} (one of: {', '.join(attrs.fields_dict(Registers))})")
        return getattr(self.get_regs(), name)

    def set_reg(self, name: str, value: int) -> None:
        """Write one field of :class:`Registers`, as :meth:`set_regs` would (engines override it)."""
        if name not in attrs.fields_dict(Registers):
            raise KeyError(f"no register {name!r} (one of: {', '.join(attrs.fields_dict(Registers))})")
        regs = self.get_regs()
        setattr(regs, name, value)
        self.set_regs(regs)

    @abstractmethod
    def get_msr(self, index: int) -> int:
        """Read an MSR the engine keeps (raises KeyError if it keeps none by that index)."""

    @abstractmethod
    def set_msr(self, index: int, value: int) -> None: ...

    @abstractmethod
    def skip_instruction(self) -> None:
        """Complete the exiting instruction: advance RIP past it (VM-exit instruction length).

        Engines whose hardware already completed the instruction (KVM for
        I/O, MMIO and HLT) make this a no-op for those exits.
        """

    @abstractmethod
    def inject_event(self, event: EventInjection) -> None:
        """Set the VM-entry interruption-information field for the next entry."""

    @abstractmethod
    def interrupt_window_open(self) -> bool:
        """True if an external interrupt injected now would be delivered (IF=1, no STI/MOV SS shadow, nothing pending)."""

    @abstractmethod
    def set_interrupt_window_exiting(self, enabled: bool) -> None:
        """The primary control "interrupt-window exiting": exit once the window opens."""

    def set_inline_dispatcher(self, dispatch: "Callable[[VmExit], bool] | None") -> None:
        """Offer the loop body to the engine (see :func:`smartvm_core.loop.make_inline_dispatcher`).

        An engine that can handle exits without leaving its run call (the
        ``soft`` engine, from inside its CPU hooks) calls ``dispatch(exit)``
        and keeps running while it returns ``True``; its :meth:`run` then
        returns ``None`` instead of an exit. Engines that always return to the
        loop ignore it (the default).
        """

    def translate(self, linear: int) -> int | None:
        """Translate a guest-linear address through the guest's paging (``KVM_TRANSLATE``); ``None`` if unmapped."""
        return linear

    @abstractmethod
    def save_state(self) -> dict[str, Any]:
        """Complete vCPU state as plain data (registers, MSRs, pending events ...)."""

    @abstractmethod
    def restore_state(self, state: dict[str, Any]) -> None: ...


class Engine(ABC):
    """A way to run vCPUs: one instance per machine."""

    #: the name experiments use (``engine = "soft"``)
    name: ClassVar[str]
    #: one line for ``smartvm info``
    description: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def probe(cls) -> Availability:
        """Can this engine run here? Must be cheap and must not raise."""

    @classmethod
    def capability_table(cls) -> dict[str, str]:
        """VMX mechanism → ``"yes"`` or ``"no: why"``, printed by ``smartvm info``."""
        return {}

    @classmethod
    def host_details(cls) -> dict[str, Any]:
        """Facts about this host that take a test VM to find (``smartvm info`` prints them).

        Kept out of :meth:`probe`, which every ``smartvm run`` calls and which must stay cheap.
        """
        return {}

    def __init__(self, memory: GuestMemory, options: EngineOptions) -> None:
        self.memory = memory
        self.options = options

    @abstractmethod
    def create_vcpu(self, index: int) -> EngineVcpu: ...

    def unsupported_controls(self, vmcs: Vmcs) -> list[str]:
        """The controls set in ``vmcs`` this engine cannot honour, each with the reason."""
        return []

    def set_irq(self, line: int, level: bool) -> None:
        """Drive an interrupt line of the engine's own interrupt controller (``irqchip = "kernel"``)."""
        raise NotImplementedError(f"engine {self.name} has no interrupt controller of its own")

    # -- guest-physical page policies (used by memory policies such as smartvm-ept) ----
    #: EPT permission bits an engine can take away per 4-KiB page through
    #: :meth:`set_page_protection` (a mix of :data:`EPT_READ`, :data:`EPT_WRITE`,
    #: :data:`EPT_EXEC`); 0: none.
    page_protection_bits: ClassVar[int] = 0

    def set_page_protection(self, gpa: int, size: int, allowed: int) -> None:
        """Set what the guest may do to the RAM pages of ``[gpa, gpa + size)``.

        ``allowed`` mixes :data:`EPT_READ`, :data:`EPT_WRITE`, :data:`EPT_EXEC`
        (SDM EPT entry bits 0-2); ``EPT_ALL`` restores full access. A guest
        access the protection forbids exits with ``EPT_VIOLATION``: exit
        qualification bits 0-2 say the access (read, write, fetch) and bits
        3-5 what the page allowed; ``guest_physical_address``, ``size``,
        ``is_write`` and, for writes, ``value`` are set. When the handlers
        return, the engine completes the access against the protection then
        in force: if a handler allowed it (changed the protection), it is
        performed (the retry); otherwise a write is dropped (a handler that
        wants it stored writes ``machine.memory`` itself) and the guest goes
        on, and a read or fetch exits again (its handler must allow it or
        stop the VM). Pages of read-only regions (ROM) keep their own rules.

        Engines list what they can remove in :attr:`page_protection_bits`;
        the default refuses. ``gpa`` and ``size`` must be page aligned.
        """
        raise NotImplementedError(f"engine {self.name} has no per-page protection")

    def page_protection(self, gpa: int) -> int:
        """The EPT permissions in force for the page holding ``gpa`` (``EPT_ALL`` unless restricted)."""
        return EPT_ALL

    def start_dirty_log(self, region: MemoryRegion) -> None:
        """Start logging the pages of ``region`` the guest writes (harvested by :meth:`dirty_log`).

        The default uses the engine's ``enable_dirty_logging(region)``
        (the ``kvm`` engine's ``KVM_MEM_LOG_DIRTY_PAGES``); engines without
        native dirty logging raise ``NotImplementedError`` and memory
        policies fall back to write-protecting pages (:meth:`set_page_protection`).
        """
        enable = getattr(self, "enable_dirty_logging", None)
        if enable is None:
            raise NotImplementedError(f"engine {self.name} has no native dirty logging")
        enable(region, True)

    def stop_dirty_log(self, region: MemoryRegion) -> None:
        """Stop logging ``region`` (see :meth:`start_dirty_log`)."""
        enable = getattr(self, "enable_dirty_logging", None)
        if enable is None:
            raise NotImplementedError(f"engine {self.name} has no native dirty logging")
        enable(region, False)

    def dirty_log(self, region: MemoryRegion) -> bytes:
        """Harvest: bitmap of the pages of ``region`` written since the last harvest
        (bit ``n`` = page ``n``, little-endian bit order per byte), and clear it.

        The default uses the engine's ``get_dirty_log(region)`` (``KVM_GET_DIRTY_LOG``).
        """
        get = getattr(self, "get_dirty_log", None)
        if get is None:
            raise NotImplementedError(f"engine {self.name} has no native dirty logging")
        return get(region)

    @property
    def has_native_dirty_log(self) -> bool:
        """True if :meth:`start_dirty_log` / :meth:`dirty_log` work on this engine."""
        return (type(self).start_dirty_log is not Engine.start_dirty_log
                or hasattr(self, "enable_dirty_logging"))

    def save_state(self) -> dict[str, Any]:
        """Engine-level state (in-kernel irqchip, clock ...) as plain data."""
        return {}

    def restore_state(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        """Release every host resource (file descriptors, mappings, threads)."""
