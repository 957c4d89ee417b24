"""Hypercalls: ``handle_vmcall`` and the I/O-port doorbell.

The ABI (``docs/hypercalls.md``; the guest side is
``guests/include/hypercall.inc`` and ``hypercall.h``):

* RAX holds the service number, RBX, RCX, RSI, RDI the arguments 0-3 (their
  low 32 bits outside 64-bit mode); the result comes back in RAX (a negative
  value is an error, :data:`HC_ENOSYS` ...), 64-bit results of 32-bit
  callers also in EDX (the high half). Other registers are preserved.
* Two ways in, the same services: VMCALL (exits on ``soft``; KVM handles
  VMCALL itself and never hands it to user space), and the doorbell, a
  32-bit ``OUT DX, EAX`` to port :data:`DOORBELL_PORT`, on every engine.
  A 32-bit IN from the port reads :data:`DOORBELL_SIGNATURE` ("SVHC"), so a
  guest can probe for it; other sizes to the port are ignored (reads give
  the low bytes of the signature).
* Standard services are numbers 0x00-0xFF; plugins add services at 0x100
  and above with the ``register_hypercalls`` hook.

Arguments are guest values and may be garbage: a bad address or length is
answered with an error code, never with an exception in the VMM.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable

import attrs

from smartvm_core.cpu import Registers, cpu_mode
from smartvm_core.errors import GuestMemoryError, PluginError


if TYPE_CHECKING:
    from smartvm_core.engines.base import EngineVcpu
    from smartvm_core.exit import VmExit
    from smartvm_core.machine import Machine

ABI_VERSION = 1
#: the doorbell port ("SV"); documented in docs/hypercalls.md and the guest headers
DOORBELL_PORT = 0x5356
#: what a 32-bit IN from the doorbell port reads: "SVHC" in little-endian
DOORBELL_SIGNATURE = 0x43485653

# Standard services (0x00-0xFF are reserved for them)
HC_VERSION = 0x00
HC_CONSOLE_WRITE = 0x01
HC_EXIT = 0x02
HC_TIME = 0x03
HC_YIELD = 0x04
FIRST_PLUGIN_SERVICE = 0x100

# Error results (negative, as signed 64-bit; -1000 matches KVM's ENOSYS)
HC_ENOSYS = -1000
HC_EFAULT = -14
HC_EINVAL = -22

#: the most bytes one console write takes
CONSOLE_WRITE_MAX = 1 << 16
TIME_VIRTUAL = 0
TIME_REALTIME = 1

U64 = (1 << 64) - 1


@attrs.define
class HypercallContext:
    """What a service is given: the caller, its arguments, and guest memory access.

    A service returns the value for RAX (an int; negative for errors) and may
    set :attr:`rdx` to return a second value in RDX.
    """

    vcpu: "EngineVcpu"
    machine: "Machine"
    number: int
    args: tuple[int, int, int, int]
    regs: Registers
    #: the caller runs in 64-bit mode (else arguments and results are 32-bit)
    long_mode: bool
    rdx: int | None = None

    def read(self, linear: int, size: int) -> bytes:
        """Guest bytes at a guest-linear address (through the guest's paging).

        Raises :class:`~smartvm_core.errors.GuestMemoryError` for memory the
        guest does not have; the dispatcher answers that with :data:`HC_EFAULT`.
        """
        out = bytearray()
        while size > 0:
            chunk = min(size, 0x1000 - (linear & 0xFFF))
            gpa = self.vcpu.translate(linear)
            if gpa is None:
                raise GuestMemoryError(linear, chunk, "guest-linear address is not mapped")
            out += self.machine.memory.read(gpa, chunk)
            linear += chunk
            size -= chunk
        return bytes(out)

    def write(self, linear: int, data: bytes) -> None:
        """Write guest bytes at a guest-linear address (same errors as :meth:`read`)."""
        view = memoryview(data)
        while view:
            chunk = min(len(view), 0x1000 - (linear & 0xFFF))
            gpa = self.vcpu.translate(linear)
            if gpa is None:
                raise GuestMemoryError(linear, chunk, "guest-linear address is not mapped")
            self.machine.memory.write(gpa, view[:chunk])
            linear += chunk
            view = view[chunk:]


Service = Callable[[HypercallContext], int]


@attrs.define(frozen=True)
class ServiceEntry:
    number: int
    name: str
    handler: Service
    plugin: str


class HypercallTable:
    """Service number → service; filled through the ``register_hypercalls`` hook."""

    def __init__(self) -> None:
        self.services: dict[int, ServiceEntry] = {}
        #: calls per service number, and calls to unknown numbers
        self.calls: dict[int, int] = {}
        self.unknown = 0

    def make_register(self, plugin: str, *, standard: bool = False) -> Callable[..., None]:
        def register(number: int, handler: Service, *, name: str | None = None) -> None:
            """Add service ``number`` (0x100 and above for plugins)."""
            if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= 0xFFFF_FFFF:
                raise PluginError(f"plugin {plugin}: hypercall number {number!r} is not a 32-bit unsigned int")
            if number < FIRST_PLUGIN_SERVICE and not standard:
                raise PluginError(f"plugin {plugin}: hypercall {number:#x} is in the range reserved for "
                                  f"standard services (0x0-0xff); use {FIRST_PLUGIN_SERVICE:#x} or above")
            if not callable(handler):
                raise PluginError(f"plugin {plugin}: hypercall {number:#x} handler is not callable: {handler!r}")
            label = name or getattr(handler, "__name__", type(handler).__name__)
            old = self.services.get(number)
            if old is not None:
                raise PluginError(f"plugin {plugin}: hypercall {number:#x} ({label}) is already "
                                  f"registered by {old.plugin} as {old.name}")
            self.services[number] = ServiceEntry(number, label, handler, plugin)
        return register

    def call(self, vcpu: "EngineVcpu", machine: "Machine") -> None:
        """Perform the hypercall in the vCPU's registers; the result goes to RAX."""
        regs = vcpu.get_regs()
        long_mode = cpu_mode(vcpu.get_sregs(), regs.rflags) == "long"
        width = U64 if long_mode else 0xFFFF_FFFF
        number = regs.rax & 0xFFFF_FFFF
        args = (regs.rbx & width, regs.rcx & width, regs.rsi & width, regs.rdi & width)
        entry = self.services.get(number)
        ctx = HypercallContext(vcpu, machine, number, args, regs, long_mode)
        if entry is None:
            self.unknown += 1
            result = HC_ENOSYS
        else:
            self.calls[number] = self.calls.get(number, 0) + 1
            try:
                result = entry.handler(ctx)
            except GuestMemoryError:
                result = HC_EFAULT
            if isinstance(result, bool) or not isinstance(result, int):
                raise PluginError(f"plugin {entry.plugin}: hypercall {number:#x} ({entry.name}) "
                                  f"returned {result!r}, not an int")
        regs = vcpu.get_regs()  # a service may have changed registers (or reset the machine)
        regs.rax = result & width
        if ctx.rdx is not None:
            regs.rdx = ctx.rdx & width
        vcpu.set_regs(regs)


# -- the standard services -------------------------------------------------------------
def hc_version(ctx: HypercallContext) -> int:
    """0x00: the ABI version (RAX); RDX = the doorbell port."""
    ctx.rdx = DOORBELL_PORT
    return ABI_VERSION


def hc_console_write(ctx: HypercallContext) -> int:
    """0x01 (address, length): write guest bytes to the console; returns the count written.

    At most :data:`CONSOLE_WRITE_MAX` bytes per call; an unmapped address gives
    :data:`HC_EFAULT` and nothing is written.
    """
    address, length = ctx.args[0], ctx.args[1]
    if length > CONSOLE_WRITE_MAX:
        length = CONSOLE_WRITE_MAX
    if length:
        ctx.machine.console.write(ctx.read(address, length))
    return length


def hc_exit(ctx: HypercallContext) -> int:
    """0x02 (code): end the run with exit code ``code`` (its low 32 bits)."""
    code = ctx.args[0] & 0xFFFF_FFFF
    ctx.machine.request_exit(code)
    return 0


def hc_time(ctx: HypercallContext) -> int:
    """0x03 (clock): nanoseconds; clock 0 = machine virtual time since it was
    created, 1 = host real time since the Unix epoch. RDX = the high 32 bits."""
    clock = ctx.args[0]
    if clock == TIME_VIRTUAL:
        value = ctx.machine.clock.now_ns()
    elif clock == TIME_REALTIME:
        value = time.time_ns()
    else:
        return HC_EINVAL
    ctx.rdx = value >> 32
    return value if ctx.long_mode else value & 0xFFFF_FFFF


def hc_yield(ctx: HypercallContext) -> int:
    """0x04: give up the host CPU; due timers run first. Returns 0."""
    ctx.machine.clock.run_due()
    os.sched_yield()
    return 0


STANDARD_SERVICES: tuple[tuple[int, str, Service], ...] = (
    (HC_VERSION, "version", hc_version),
    (HC_CONSOLE_WRITE, "console_write", hc_console_write),
    (HC_EXIT, "exit", hc_exit),
    (HC_TIME, "time", hc_time),
    (HC_YIELD, "yield", hc_yield),
)


class HypercallHandlers:
    """``handle_vmcall`` and the doorbell's ``handle_io_instruction``."""

    def __init__(self, machine: "Machine", table: HypercallTable, port: int = DOORBELL_PORT) -> None:
        self.machine = machine
        self.table = table
        self.port = port
        self.doorbell_ignored = 0

    def handle_vmcall(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        self.table.call(vcpu, self.machine)
        vcpu.skip_instruction()
        return True

    def handle_io_instruction(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        """The doorbell: claims only its own port, passes every other port on."""
        if exit.port != self.port:
            return False
        if exit.data is not None:  # string I/O to the doorbell: not part of the ABI
            if exit.is_in:
                exit.data[:] = bytes(len(exit.data))
            self.doorbell_ignored += 1
        elif exit.is_in:
            exit.value = DOORBELL_SIGNATURE & ((1 << (8 * exit.size)) - 1)
        elif exit.size == 4:
            self.table.call(vcpu, self.machine)
        else:
            self.doorbell_ignored += 1
        vcpu.skip_instruction()
        return True




def describe_services(table: HypercallTable) -> list[str]:
    """One line per service, for reports and ``docs``."""
    return [f"{e.number:#06x} {e.name} ({e.plugin})" for e in sorted(table.services.values(), key=lambda e: e.number)]


