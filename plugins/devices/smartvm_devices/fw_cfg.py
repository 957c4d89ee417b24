"""QEMU's firmware configuration device (fw_cfg), I/O-port flavour.

Ports (QEMU's ``docs/specs/fw_cfg.rst``): 0x510 selector (16-bit write),
0x511 data (8-bit, sequential reads of the selected item), 0x514-0x51B the
DMA address register (64-bit big-endian; writing the low half starts the
transfer; reading it gives the signature ``"QEMU CFG"``).

Items: ``FW_CFG_SIGNATURE`` ("QEMU"), ``FW_CFG_ID`` (traditional interface
and DMA), ``FW_CFG_UUID``, ``FW_CFG_RAM_SIZE``, ``FW_CFG_NOGRAPHIC``,
``FW_CFG_NB_CPUS``, ``FW_CFG_MAX_CPUS``, ``FW_CFG_FILE_DIR``, the legacy
``FW_CFG_E820_TABLE``, and named files: ``etc/e820`` (the RAM map),
``etc/sercon-port`` (SeaBIOS' serial console), ``etc/boot-fail-wait``, the
ACPI and SMBIOS tables (:mod:`.firmware`) and any file a plugin or the
experiment adds.

Content that depends on the rest of the machine is produced late: a
*preparer* (:meth:`FwCfg.add_preparer`) runs once, when the machine is
complete (the plugin's ``setup_machine``) or at the guest's first access,
whichever comes first; a file with a ``refresh`` function is rebuilt each
time the guest selects it (as QEMU rebuilds its ACPI tables, which describe
registers firmware programs first, such as the PIIX4 PMBASE), keeping the
size the file directory announced.

A DMA request is ``FWCfgDmaAccess { be32 control; be32 length; be64
address; }`` in guest memory; control bits ERROR, READ, SKIP, SELECT, WRITE.
Bad guest addresses end the transfer with ERROR set, never a crash.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

import attrs

from smartvm_core.errors import GuestMemoryError

from .common import Counters, ones

FW_CFG_SIGNATURE = 0x0000
FW_CFG_ID = 0x0001
FW_CFG_UUID = 0x0002
FW_CFG_RAM_SIZE = 0x0003
FW_CFG_NOGRAPHIC = 0x0004
FW_CFG_NB_CPUS = 0x0005
FW_CFG_MACHINE_ID = 0x0006
FW_CFG_BOOT_MENU = 0x000E
FW_CFG_MAX_CPUS = 0x000F
FW_CFG_FILE_DIR = 0x0019
FW_CFG_FILE_FIRST = 0x0020
FW_CFG_WRITE_CHANNEL = 0x4000
FW_CFG_ARCH_LOCAL = 0x8000
FW_CFG_E820_TABLE = FW_CFG_ARCH_LOCAL + 3
FW_CFG_ENTRY_MASK = ~(FW_CFG_WRITE_CHANNEL | FW_CFG_ARCH_LOCAL) & 0xFFFF

FW_CFG_VERSION = 0x01
FW_CFG_VERSION_DMA = 0x02

DMA_CTL_ERROR = 0x01
DMA_CTL_READ = 0x02
DMA_CTL_SKIP = 0x04
DMA_CTL_SELECT = 0x08
DMA_CTL_WRITE = 0x10
DMA_SIGNATURE = 0x51454D5520434647  # "QEMU CFG"

E820_RAM = 1
E820_RESERVED = 2
FILE_NAME_SIZE = 56
#: a single DMA request moves at most this much (larger lengths are clipped by the item size anyway)
DMA_MAX = 64 << 20


@attrs.define(frozen=True)
class FwCfgState:
    selector: int = 0
    offset: int = 0
    dma_address: int = 0


@attrs.define
class FwCfgCounters(Counters):
    dma: int = 0
    dma_errors: int = 0


class FwCfg:
    """Items and files, the selector/data ports and the DMA engine.

    Map with :meth:`port_device` (base 0x510, 2 ports) and :meth:`dma_device`
    (base 0x514, 8 ports).
    """

    def __init__(self, memory: Any = None, *, cpus: int = 1, ram_size: int = 0, dma: bool = True,
                 name: str = "fw_cfg") -> None:
        self.name = name
        self.memory = memory
        self.dma_enabled = dma
        self.counters = FwCfgCounters()
        self.items: dict[int, bytes] = {}
        self.files: dict[str, int] = {}
        self._refresh: dict[int, Callable[[], bytes]] = {}
        self._preparers: list[Callable[["FwCfg"], None]] = []
        self.selector = 0
        self.offset = 0
        self.dma_address = 0
        self.add_item(FW_CFG_SIGNATURE, b"QEMU")
        self.add_item(FW_CFG_ID, struct.pack("<I", FW_CFG_VERSION | (FW_CFG_VERSION_DMA if dma else 0)))
        self.add_item(FW_CFG_UUID, bytes(16))
        self.add_item(FW_CFG_RAM_SIZE, struct.pack("<Q", ram_size))
        self.add_item(FW_CFG_NOGRAPHIC, struct.pack("<H", 0))
        self.add_item(FW_CFG_NB_CPUS, struct.pack("<H", cpus))
        self.add_item(FW_CFG_MAX_CPUS, struct.pack("<H", cpus))
        self.add_item(FW_CFG_MACHINE_ID, struct.pack("<I", 0))
        self.add_item(FW_CFG_BOOT_MENU, struct.pack("<H", 0))
        self._rebuild_dir()

    # -- content ----------------------------------------------------------------------
    def add_item(self, key: int, data: bytes) -> None:
        self.items[key & 0xFFFF] = bytes(data)

    def add_preparer(self, fn: Callable[["FwCfg"], None]) -> None:
        """Run ``fn(self)`` once, before the guest first sees the items (see the module doc)."""
        self._preparers.append(fn)

    def prepare(self) -> None:
        """Run the pending preparers now (idempotent)."""
        while self._preparers:
            self._preparers.pop(0)(self)

    def add_file(self, name: str, data: bytes, refresh: Callable[[], bytes] | None = None) -> int:
        """Add or replace a named file; returns its selector.

        ``refresh``: called when the guest selects the file; its result (of the
        same length) replaces the content.
        """
        raw = name.encode()
        if not raw or len(raw) >= FILE_NAME_SIZE:
            raise ValueError(f"fw_cfg file name {name!r} must be 1-{FILE_NAME_SIZE - 1} bytes")
        key = self.files.get(name)
        if key is None:
            key = FW_CFG_FILE_FIRST + len(self.files)
            if key >= FW_CFG_WRITE_CHANNEL:
                raise ValueError("fw_cfg: too many files")
            self.files[name] = key
        self.items[key] = bytes(data)
        if refresh is None:
            self._refresh.pop(key, None)
        else:
            self._refresh[key] = refresh
        self._rebuild_dir()
        return key

    def file(self, name: str) -> bytes | None:
        self.prepare()
        key = self.files.get(name)
        return None if key is None else self.items[key]

    def _rebuild_dir(self) -> None:
        out = bytearray(struct.pack(">I", len(self.files)))
        for name, key in sorted(self.files.items()):
            out += struct.pack(">IHH", len(self.items[key]), key, 0)
            out += name.encode().ljust(FILE_NAME_SIZE, b"\0")
        self.items[FW_CFG_FILE_DIR] = bytes(out)

    def set_e820(self, entries: list[tuple[int, int, int]]) -> None:
        """The RAM map: (address, length, type) entries, as ``etc/e820`` and the legacy item."""
        self.add_file("etc/e820", b"".join(struct.pack("<QQI", a, n, t) for a, n, t in entries))
        legacy = struct.pack("<I", len(entries)) + b"".join(struct.pack("<QQI", a, n, t) for a, n, t in entries)
        self.add_item(FW_CFG_E820_TABLE, legacy)

    # -- traditional interface ----------------------------------------------------------------
    def select(self, key: int) -> None:
        if self._preparers:
            self.prepare()
        self.selector = key & 0xFFFF
        self.offset = 0
        refresh = self._refresh.get(self.selector)
        if refresh is not None:
            data = refresh()
            if len(data) == len(self.items[self.selector]):
                self.items[self.selector] = bytes(data)
            else:  # the directory announced another size: keep what the guest was told
                self.counters.unknown += 1

    def _current(self) -> bytes:
        return self.items.get(self.selector, b"")

    def read_data(self) -> int:
        if self._preparers:
            self.prepare()
        data = self._current()
        if self.offset < len(data):
            value = data[self.offset]
            self.offset += 1
            return value
        return 0

    # -- DMA ----------------------------------------------------------------------------------
    def dma_request(self, address: int) -> None:
        """Run the ``FWCfgDmaAccess`` at ``address``; the control word is written back."""
        self.counters.dma += 1
        if self._preparers:
            self.prepare()
        mem = self.memory
        if mem is None:
            return
        try:
            control, length, target = struct.unpack(">IIQ", mem.read(address, 16))
        except GuestMemoryError:
            self.counters.dma_errors += 1
            return
        if control & DMA_CTL_SELECT:
            self.select(control >> 16)
        error = False
        if control & DMA_CTL_WRITE:
            error = True  # writable items are not offered: the transfer fails as in QEMU
        elif control & (DMA_CTL_READ | DMA_CTL_SKIP):
            data = self._current()
            length = min(length, DMA_MAX)
            avail = data[self.offset:self.offset + length]
            if control & DMA_CTL_READ:
                error = not self._dma_write(target, avail, length)
            self.offset += length
        try:
            mem.write(address, struct.pack(">I", DMA_CTL_ERROR if error else 0))
        except GuestMemoryError:
            error = True
        if error:
            self.counters.dma_errors += 1

    def _dma_write(self, target: int, data: bytes, length: int) -> bool:
        """Write ``data`` then zeros (past the item's end) up to ``length``; False on a bad address."""
        mem = self.memory
        try:
            if data:
                mem.guest_write(target, data)
            pos = len(data)
            while pos < length:  # past the end of the item the device supplies zeros
                n = min(length - pos, 1 << 16)
                mem.guest_write(target + pos, bytes(n))
                pos += n
        except GuestMemoryError:
            return False
        return True

    # -- bus devices ----------------------------------------------------------------------------
    def port_device(self) -> "_FwCfgPorts":
        return _FwCfgPorts(self)

    def dma_device(self) -> "_FwCfgDma":
        return _FwCfgDma(self)

    def state(self) -> FwCfgState:
        return FwCfgState(self.selector, self.offset, self.dma_address)

    def restore(self, state: FwCfgState) -> None:
        self.selector = state.selector & 0xFFFF
        self.offset = max(0, int(state.offset))
        self.dma_address = state.dma_address & 0xFFFFFFFFFFFFFFFF


class _FwCfgPorts:
    """0x510 (selector) and 0x511 (data)."""

    def __init__(self, fw: FwCfg) -> None:
        self.fw = fw
        self.name = f"{fw.name}-ports"

    def read(self, offset: int, size: int) -> int:
        fw = self.fw
        fw.counters.reads += 1
        if offset == 1:
            value = 0
            for i in range(size):  # a wider read returns successive bytes, first in the low lane
                value |= fw.read_data() << (8 * i)
            if size != 1:
                fw.counters.bad_size += 1
            return value
        fw.counters.unknown += 1
        return 0  # the selector register reads as 0

    def write(self, offset: int, size: int, value: int) -> None:
        fw = self.fw
        fw.counters.writes += 1
        if offset == 0 and size == 2:
            fw.select(value)
        elif offset == 0:
            fw.counters.bad_size += 1
            fw.select(value & ones(size))
        else:
            fw.counters.unknown += 1  # data-port writes are ignored (QEMU >= 2.4)


class _FwCfgDma:
    """0x514-0x51B: the DMA address register, big-endian."""

    def __init__(self, fw: FwCfg) -> None:
        self.fw = fw
        self.name = f"{fw.name}-dma"

    def read(self, offset: int, size: int) -> int:
        fw = self.fw
        fw.counters.reads += 1
        if not fw.dma_enabled:
            return ones(size)
        sig = DMA_SIGNATURE.to_bytes(8, "big")
        chunk = sig[offset:offset + size]
        return int.from_bytes(chunk, "big") if len(chunk) == size else ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        fw = self.fw
        fw.counters.writes += 1
        if not fw.dma_enabled:
            return
        if size == 4 and offset == 0:
            fw.dma_address = (fw.dma_address & 0xFFFFFFFF) | (int.from_bytes((value & 0xFFFFFFFF).to_bytes(4, "little"), "big") << 32)
        elif size == 4 and offset == 4:
            low = int.from_bytes((value & 0xFFFFFFFF).to_bytes(4, "little"), "big")
            address = (fw.dma_address & ~0xFFFFFFFF) | low
            fw.dma_address = 0
            fw.dma_request(address)
        elif size == 8 and offset == 0:
            address = int.from_bytes((value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little"), "big")
            fw.dma_address = 0
            fw.dma_request(address)
        else:
            fw.counters.bad_size += 1
