"""PCI host bridge: configuration mechanism #1, a device registry, BARs.

Ports 0xCF8-0xCFF (PCI Local Bus spec 3.0, 3.2.2.3.2): CONFIG_ADDRESS at
0xCF8 takes dword accesses only (bit 31 enable, bus 23-16, device 15-11,
function 10-8, register 7-2); CONFIG_DATA at 0xCFC-0xCFF reaches the
selected dword with byte, word or dword accesses. A byte at 0xCF9 is the
PIIX reset control register (bit 2 with bit 1: a hard reset). Functions
nobody implements read all ones.

Functions are :class:`PciFunction` objects registered with
:meth:`PciHost.add_function`: 256 bytes of configuration space with a
write mask, and up to six BARs. A BAR is sized the standard way (write all
ones, read back ``~(size - 1)`` and its type bits) and is mapped on the
port or memory bus while the command register enables that space.

The default set is the i440FX: the 82441FX host bridge (00.0, with the PAM
shadow-RAM registers), the PIIX3 PCI-to-ISA bridge (01.0) and the PIIX4
power-management function (01.3) whose PMBASE maps the ACPI PM block.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

from smartvm_core.errors import SmartVMError
from smartvm_core.memory import Backing, MemoryRegion

from ..common import Counters, ones

# Configuration header offsets
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_PROG = 0x09
HEADER_TYPE = 0x0E
BAR0 = 0x10
SUBSYSTEM_VENDOR_ID = 0x2C
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
# COMMAND bits
CMD_IO = 0x0001
CMD_MEMORY = 0x0002
CMD_MASTER = 0x0004
CMD_INTX_DISABLE = 0x0400
# BAR type bits
BAR_IO = 0x01
BAR_MEM64 = 0x04
BAR_PREFETCH = 0x08

CONFIG_ENABLE = 0x80000000
# PIIX reset control register (0xCF9)
RCR_SYS_RST = 0x02
RCR_RST_CPU = 0x04


@attrs.define
class Bar:
    """One base address register: ``size`` bytes of ``kind`` ("io", "mem32", "mem64") served by ``device``."""

    index: int
    size: int
    kind: str
    device: Any
    prefetchable: bool = False
    mapped: Any = None  # the bus range while mapped

    @property
    def type_bits(self) -> int:
        if self.kind == "io":
            return BAR_IO
        return (BAR_MEM64 if self.kind == "mem64" else 0) | (BAR_PREFETCH if self.prefetchable else 0)


@attrs.define(frozen=True)
class PciFunctionState:
    config: bytes


class PciFunction:
    """A function's configuration space; subclasses react to writes of their registers."""

    def __init__(self, vendor: int, device: int, class_code: int, *, revision: int = 0,
                 header_type: int = 0, name: str = "pci-function", interrupt_pin: int = 0) -> None:
        self.name = name
        self.config = bytearray(256)
        self.wmask = bytearray(256)
        self.bars: dict[int, Bar] = {}
        self.host: "PciHost | None" = None
        self.set16(VENDOR_ID, vendor)
        self.set16(DEVICE_ID, device)
        self.config[REVISION_ID] = revision
        self.config[CLASS_PROG] = class_code & 0xFF
        self.config[CLASS_PROG + 1] = class_code >> 8 & 0xFF
        self.config[CLASS_PROG + 2] = class_code >> 16 & 0xFF
        self.config[HEADER_TYPE] = header_type
        self.config[INTERRUPT_PIN] = interrupt_pin
        self.set16(COMMAND, 0)
        # QEMU's subsystem ids: SeaBIOS reads them on 00.0 to know it runs on QEMU's i440FX
        self.set16(SUBSYSTEM_VENDOR_ID, 0x1AF4)
        self.set16(SUBSYSTEM_VENDOR_ID + 2, 0x1100)
        self.wmask[COMMAND] = CMD_IO | CMD_MEMORY | CMD_MASTER | 0x40  # + parity error response
        self.wmask[COMMAND + 1] = CMD_INTX_DISABLE >> 8 | 0x01  # + SERR#
        self.wmask[INTERRUPT_LINE] = 0xFF

    def set16(self, off: int, v: int) -> None:
        self.config[off:off + 2] = (v & 0xFFFF).to_bytes(2, "little")

    def set32(self, off: int, v: int) -> None:
        self.config[off:off + 4] = (v & 0xFFFFFFFF).to_bytes(4, "little")

    def get(self, off: int, size: int) -> int:
        return int.from_bytes(self.config[off:off + size], "little")

    def add_bar(self, index: int, size: int, kind: str, device: Any, prefetchable: bool = False) -> Bar:
        """Declare BAR ``index``; ``size`` must be a power of two (io >= 4, memory >= 16)."""
        if kind not in ("io", "mem32", "mem64") or not 0 <= index < 6 or (kind == "mem64" and index == 5):
            raise SmartVMError(f"pci: {self.name}: bad BAR {index} of kind {kind!r}")
        if size & (size - 1) or size < (4 if kind == "io" else 16):
            raise SmartVMError(f"pci: {self.name}: BAR size {size:#x} is not a power of two of at least "
                               f"{4 if kind == 'io' else 16}")
        bar = Bar(index, size, kind, device, prefetchable)
        self.bars[index] = bar
        off = BAR0 + 4 * index
        self.set32(off, bar.type_bits)
        mask = ~(size - 1) & (0xFFFFFFFC if kind == "io" else 0xFFFFFFF0)
        self.wmask[off:off + 4] = (mask & 0xFFFFFFFF).to_bytes(4, "little")
        if kind == "mem64":
            hi = ~((size - 1) >> 32) & 0xFFFFFFFF
            self.wmask[off + 4:off + 8] = hi.to_bytes(4, "little")
        return bar

    def bar_address(self, bar: Bar) -> int:
        off = BAR0 + 4 * bar.index
        value = self.get(off, 4)
        if bar.kind == "io":
            return value & 0xFFFFFFFC
        addr = value & 0xFFFFFFF0
        if bar.kind == "mem64":
            addr |= self.get(off + 4, 4) << 32
        return addr

    # -- configuration access (offsets within the 256 bytes) ---------------------------------
    def config_read(self, offset: int, size: int) -> int:
        return self.get(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        old_cmd = self.get(COMMAND, 2)
        for i in range(size):
            off = offset + i
            byte = (value >> (8 * i)) & 0xFF
            mask = self.wmask[off]
            self.config[off] = (self.config[off] & ~mask) | (byte & mask)
            if off in (STATUS, STATUS + 1):
                self.config[off] &= ~(byte & 0xF9 if off == STATUS + 1 else 0)  # RW1C error bits
        if self.bars and (offset < BAR0 + 24 and offset + size > BAR0 or
                          (offset <= COMMAND < offset + size and self.get(COMMAND, 2) != old_cmd)):
            self.update_bars()
        self.written(offset, size)

    def written(self, offset: int, size: int) -> None:
        """A subclass hook: registers in ``[offset, offset + size)`` were written."""

    def update_bars(self) -> None:
        host = self.host
        if host is None:
            return
        cmd = self.get(COMMAND, 2)
        for bar in self.bars.values():
            enabled = bool(cmd & (CMD_IO if bar.kind == "io" else CMD_MEMORY))
            addr = self.bar_address(bar)
            want = enabled and addr != 0 and addr + bar.size <= (0x10000 if bar.kind == "io" else 1 << 52)
            if bar.mapped is not None and (not want or bar.mapped.base != addr):
                host.unmap(bar.mapped)
                bar.mapped = None
            if want and bar.mapped is None:
                bar.mapped = host.map_bar(bar, addr, f"{self.name}-bar{bar.index}")

    def state(self) -> PciFunctionState:
        return PciFunctionState(bytes(self.config))

    def restore(self, state: PciFunctionState) -> None:
        if len(state.config) != 256:
            raise ValueError("PCI configuration space must be 256 bytes")
        self.config[:] = state.config
        self.update_bars()
        self.written(0, 256)


class I440FXHostBridge(PciFunction):
    """82441FX PMC (00.0) with the PAM registers that put RAM under the BIOS area."""

    PAM0 = 0x59
    SMRAM = 0x72

    def __init__(self, shadow: "ShadowRam | None") -> None:
        super().__init__(0x8086, 0x1237, 0x060000, revision=0x02, name="i440fx")
        self.shadow = shadow
        for r in range(self.PAM0, self.PAM0 + 7):
            self.wmask[r] = 0x33 if r != self.PAM0 else 0x30
        self.wmask[self.SMRAM] = 0x78
        self.config[self.SMRAM] = 0x02

    def written(self, offset: int, size: int) -> None:
        if self.shadow is not None and offset < self.PAM0 + 7 and offset + size > self.PAM0:
            self.shadow.apply(bytes(self.config[self.PAM0:self.PAM0 + 7]))


class Piix3IsaBridge(PciFunction):
    """PIIX3 PCI-to-ISA bridge (01.0): PIRQ routing registers 0x60-0x63."""

    def __init__(self) -> None:
        super().__init__(0x8086, 0x7000, 0x060100, header_type=0x80, name="piix3")
        for r in range(0x60, 0x64):
            self.config[r] = 0x80  # routing disabled
            self.wmask[r] = 0x8F
        self.wmask[0x4C] = 0xFF  # ISA I/O recovery timer
        self.wmask[0x4E] = 0xFF  # X-bus chip select
        self.config[0x4C] = 0x4D
        self.config[0x4E] = 0x03
        self.wmask[0x69] = 0xFE  # top of memory
        self.config[0x69] = 0x02
        self.wmask[0x6A] = 0xFF  # miscellaneous status
        self.wmask[0x70] = 0x8F  # MBIRQ0
        self.config[0x70] = 0x80


class Piix4Pm(PciFunction):
    """PIIX4 power management (01.3): PMBASE (0x40) and PMREGMISC (0x80) map the ACPI PM block."""

    PMBASE = 0x40
    PMREGMISC = 0x80

    def __init__(self, pm_block: Any, block_size: int = 0x40) -> None:
        super().__init__(0x8086, 0x7113, 0x068000, revision=0x03, name="piix4-pm", interrupt_pin=1)
        self.pm_block = pm_block
        self.block_size = block_size
        self.config[INTERRUPT_LINE] = 9
        self.set32(self.PMBASE, 0x00000001)
        self.wmask[self.PMBASE] = 0xC0
        self.wmask[self.PMBASE + 1] = 0xFF
        self.wmask[self.PMREGMISC] = 0x01
        self.mapped: Any = None

    def written(self, offset: int, size: int) -> None:
        if offset <= self.PMREGMISC < offset + size or offset < self.PMBASE + 4 and offset + size > self.PMBASE:
            self.update_pm()

    def update_pm(self) -> None:
        host = self.host
        if host is None:
            return
        base = self.get(self.PMBASE, 4) & 0xFFC0
        want = bool(self.config[self.PMREGMISC] & 1) and base != 0
        if self.mapped is not None and (not want or self.mapped.base != base):
            host.unmap(self.mapped)
            self.mapped = None
        if want and self.mapped is None:
            self.mapped = host.map_io(base, self.block_size, self.pm_block, "acpi-pm")


PAM_LOW = 0xC0000
PAM_END = 0x100000


class ShadowRam:
    """RAM behind 0xC0000-0xFFFFF, shown or hidden per PAM segment (82441FX datasheet, 3.2.18).

    Per segment the PAM field selects: 0 the PCI side (the BIOS ROM alias or
    nothing), 1 read-only RAM, 3 read/write RAM. Mode 2 (writes to RAM, reads
    from PCI) cannot be expressed with memory regions and is treated as 3.
    """

    def __init__(self, memory: Any) -> None:
        self.memory = memory
        self.backing: Backing | None = None
        self.modes = {start: 0 for start, _ in self.segments()}
        self.pci_view: dict[int, list[MemoryRegion]] = {}
        self.shadow: dict[int, MemoryRegion] = {}
        self.failures = 0

    @staticmethod
    def segments() -> list[tuple[int, int]]:
        out = [(0xC0000 + i * 0x4000, 0x4000) for i in range(12)]
        out.append((0xF0000, 0x10000))
        return out

    @staticmethod
    def modes_from_pam(pam: bytes) -> dict[int, int]:
        modes = {}
        for i in range(12):
            reg = pam[1 + i // 2]
            modes[0xC0000 + i * 0x4000] = (reg >> 4 if i & 1 else reg) & 3
        modes[0xF0000] = pam[0] >> 4 & 3
        return modes

    def apply(self, pam: bytes) -> None:
        for (start, size), (_, mode) in zip(self.segments(), sorted(self.modes_from_pam(pam).items())):
            if mode != self.modes[start]:
                try:
                    self._switch(start, size, mode)
                except SmartVMError:
                    self.failures += 1
                self.modes[start] = mode

    def _take_pci_view(self, start: int, size: int) -> list[MemoryRegion]:
        end = start + size
        inside: list[MemoryRegion] = []
        for r in list(self.memory.regions):
            if r.end <= start or r.gpa >= end:
                continue
            self.memory.remove_region(r)
            lo, hi = max(r.gpa, start), min(r.end, end)
            if r.gpa < lo:
                self.memory.add_region(MemoryRegion(r.name, r.gpa, lo - r.gpa, r.backing, r.offset,
                                                    r.readonly, r.kind))
            if hi < r.end:
                self.memory.add_region(MemoryRegion(r.name, hi, r.end - hi, r.backing, r.offset + (hi - r.gpa),
                                                    r.readonly, r.kind))
            inside.append(MemoryRegion(r.name, lo, hi - lo, r.backing, r.offset + (lo - r.gpa), r.readonly, r.kind))
        return inside

    def _switch(self, start: int, size: int, mode: int) -> None:
        old = self.modes[start]
        mem = self.memory
        if old == 0:
            self.pci_view[start] = self._take_pci_view(start, size)
        else:
            region = self.shadow.pop(start, None)
            if region is not None:
                mem.remove_region(region)
        if mode == 0:
            for r in self.pci_view.pop(start, []):
                mem.add_region(r)
            return
        if self.backing is None:
            self.backing = Backing(PAM_END - PAM_LOW, name="pam-shadow")
        region = MemoryRegion(f"shadow-{start:05x}", start, size, self.backing, start - PAM_LOW,
                              readonly=mode == 1, kind="rom" if mode == 1 else "ram")
        mem.add_region(region)
        self.shadow[start] = region

    def state(self) -> dict[int, int]:
        return dict(self.modes)


@attrs.define(frozen=True)
class PciHostState:
    config_address: int
    functions: tuple[tuple[int, PciFunctionState], ...]
    shadow: bytes = b""


@attrs.define
class PciCounters(Counters):
    config_reads: int = 0
    config_writes: int = 0
    bar_conflicts: int = 0
    resets: int = 0


class PciHost:
    """Mechanism #1 at 0xCF8-0xCFF and the registry of functions (``services["pci"]``)."""

    def __init__(self, *, map_io: Callable[..., Any] | None = None, map_mmio: Callable[..., Any] | None = None,
                 unmap: Callable[[Any], None] | None = None, request_reset: Callable[[], None] | None = None,
                 name: str = "pci") -> None:
        self.name = name
        self._map_io = map_io
        self._map_mmio = map_mmio
        self._unmap = unmap
        self.request_reset = request_reset
        self.counters = PciCounters()
        #: parts with their own counters, for the run report (the PIIX4 PM registers)
        self.parts: dict[str, Any] = {}
        self.functions: dict[int, PciFunction] = {}  # bdf -> function
        self.config_address = 0
        self.rcr = 0
        self.shadow: ShadowRam | None = None

    @staticmethod
    def bdf(bus: int, dev: int, fn: int) -> int:
        return (bus & 0xFF) << 8 | (dev & 0x1F) << 3 | (fn & 7)

    def add_function(self, function: PciFunction, dev: int | None = None, fn: int = 0, bus: int = 0) -> int:
        """Register ``function``; ``dev=None`` takes the first free slot. Returns its bdf."""
        if dev is None:
            dev = next((d for d in range(32) if self.bdf(bus, d, 0) not in self.functions), None)
            if dev is None:
                raise SmartVMError(f"pci: no free slot on bus {bus} for {function.name}")
        bdf = self.bdf(bus, dev, fn)
        if bdf in self.functions:
            raise SmartVMError(f"pci: {bus:02x}:{dev:02x}.{fn} is already taken by {self.functions[bdf].name}; "
                               f"cannot add {function.name}")
        function.host = self
        self.functions[bdf] = function
        return bdf

    # -- mapping helpers (guest-programmed BARs must never crash the VMM) ----------------------
    def map_bar(self, bar: Bar, addr: int, name: str) -> Any:
        return self.map_io(addr, bar.size, bar.device, name) if bar.kind == "io" else \
            self._map(self._map_mmio, addr, bar.size, bar.device, name)

    def map_io(self, base: int, size: int, device: Any, name: str) -> Any:
        return self._map(self._map_io, base, size, device, name)

    def _map(self, fn: Callable[..., Any] | None, base: int, size: int, device: Any, name: str) -> Any:
        if fn is None:
            return None
        try:
            return fn(base, size, device, name)
        except SmartVMError:
            # the guest placed a BAR over another device: the real bus would have a
            # decode conflict; here the BAR stays unmapped and the event is counted
            self.counters.bar_conflicts += 1
            return None

    def unmap(self, rng: Any) -> None:
        if rng is not None and self._unmap is not None:
            self._unmap(rng)

    # -- configuration cycles ------------------------------------------------------------------------
    def _target(self) -> tuple[PciFunction | None, int]:
        addr = self.config_address
        if not addr & CONFIG_ENABLE:
            return None, 0
        bdf = (addr >> 8) & 0xFFFF
        return self.functions.get(bdf), addr & 0xFC

    def config_read(self, bdf: int, offset: int, size: int) -> int:
        fn = self.functions.get(bdf)
        if fn is None or offset + size > 256:
            return ones(size)
        return fn.config_read(offset, size)

    def config_write(self, bdf: int, offset: int, size: int, value: int) -> None:
        fn = self.functions.get(bdf)
        if fn is not None and offset + size <= 256:
            fn.config_write(offset, size, value & ones(size))

    def read(self, offset: int, size: int) -> int:
        self.counters.reads += 1
        if offset == 0 and size == 4:
            return self.config_address
        if offset == 1 and size == 1:
            return self.rcr
        if offset >= 4:
            fn, reg = self._target()
            self.counters.config_reads += 1
            if fn is None:
                return ones(size)
            off = reg + (offset - 4)
            if off + size > 256:
                self.counters.bad_size += 1
                return ones(size)
            return fn.config_read(off, size)
        self.counters.bad_size += 1
        return ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.counters.writes += 1
        if offset == 0 and size == 4:
            self.config_address = value & 0x80FFFFFC
        elif offset == 1 and size == 1:
            value &= 0xFF
            if value & RCR_RST_CPU and not self.rcr & RCR_RST_CPU:
                self.counters.resets += 1
                if self.request_reset is not None:
                    self.request_reset()
            self.rcr = value & RCR_SYS_RST
        elif offset >= 4:
            fn, reg = self._target()
            self.counters.config_writes += 1
            if fn is None:
                return
            off = reg + (offset - 4)
            if off + size > 256:
                self.counters.bad_size += 1
                return
            fn.config_write(off, size, value & ones(size))
        else:
            self.counters.bad_size += 1

    # -- state -----------------------------------------------------------------------------------------
    def state(self) -> PciHostState:
        shadow = b""
        if self.shadow is not None and self.shadow.backing is not None:
            shadow = bytes(self.shadow.backing.mmap[:])
        return PciHostState(self.config_address, tuple((bdf, f.state()) for bdf, f in sorted(self.functions.items())),
                            shadow)

    def restore(self, state: PciHostState) -> None:
        self.config_address = state.config_address & 0x80FFFFFC
        for bdf, fstate in state.functions:
            fn = self.functions.get(bdf)
            if fn is None:
                raise ValueError(f"snapshot has PCI function {bdf:#06x}, which this machine does not have")
            fn.restore(fstate)
        if state.shadow and self.shadow is not None:
            if self.shadow.backing is None:
                self.shadow.backing = Backing(PAM_END - PAM_LOW, name="pam-shadow")
            self.shadow.backing.mmap[:len(state.shadow)] = state.shadow[:PAM_END - PAM_LOW]
