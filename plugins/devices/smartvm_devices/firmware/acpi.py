"""ACPI tables for fw_cfg: ``etc/acpi/tables``, ``etc/acpi/rsdp`` and ``etc/table-loader``.

The set follows ACPI 2.0 (the revision that introduced 64-bit pointers):
RSDP revision 2 (36 bytes, RSDT and XSDT), RSDT and XSDT revision 1, FADT
revision 3 (244 bytes), FACS version 1, DSDT revision 2 (64-bit integers)
and, when the machine has APICs, a MADT revision 1. Every table carries the
common 36-byte header; its checksum makes the whole table sum to zero.

``etc/acpi/tables`` holds, in this order: FACS (at offset 0, so the 64-byte
alignment of the allocation aligns it), DSDT, FADT, MADT, RSDT, XSDT.
Pointer fields hold offsets into that blob and checksum bytes are zero: the
loader script (see :mod:`.linker`) makes firmware patch the pointers to
where it loaded the blob and then compute the checksums, as QEMU's tables do.

What the tables say comes from the machine (:class:`AcpiPlatform`): the PM1
event/control blocks and the PM timer at the ACPI PM block's port, the SCI
line, the reset register (PIIX 0xCF9) when present, the vCPUs as processors,
and the ISA devices the device models describe (:class:`IsaDevice`).
"""

from __future__ import annotations

import re
import struct
from typing import Callable

import attrs

from . import aml
from .linker import ZONE_FSEG, ZONE_HIGH, Linker

TABLES_FILE = "etc/acpi/tables"
RSDP_FILE = "etc/acpi/rsdp"
LOADER_FILE = "etc/table-loader"

OEM_ID = b"SMARTV"
OEM_TABLE_ID = b"SMARTVM "
OEM_REVISION = 1
CREATOR_ID = b"SVM "
CREATOR_REVISION = 1
HEADER_SIZE = 36

FADT_REVISION = 3
FADT_SIZE = 244
FACS_SIZE = 64
FACS_VERSION = 1
DSDT_REVISION = 2
MADT_REVISION = 1
RSDT_REVISION = 1
XSDT_REVISION = 1
RSDP_REVISION = 2
RSDP_SIZE = 36

LOCAL_APIC_ADDRESS = 0xFEE00000
IO_APIC_ADDRESS = 0xFEC00000

# FADT flags (ACPI 2.0, table 5-9)
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_SLP_BUTTON = 1 << 5
FADT_FIX_RTC = 1 << 6
FADT_RESET_REG_SUP = 1 << 10
# IA-PC boot architecture flags
BOOT_LEGACY_DEVICES = 1 << 0
BOOT_8042 = 1 << 1
# MADT
MADT_PCAT_COMPAT = 1 << 0
MADT_LOCAL_APIC = 0
MADT_IO_APIC = 1
MADT_INTERRUPT_OVERRIDE = 2
MADT_LOCAL_APIC_NMI = 4
# MPS INTI flags: polarity bits 0-1 (1 active high, 3 active low), trigger bits 2-3 (1 edge, 3 level)
INTI_ACTIVE_HIGH_LEVEL = 0x1 | 0x3 << 2

GAS_SYSTEM_IO = 1
RTC_CENTURY_INDEX = 0x32


@attrs.define(frozen=True)
class IsaDevice:
    """An ISA device the DSDT lists: ``_HID`` (EISA ID, or a string ID such as ``QEMU0002``), ports, IRQs."""

    name: str
    hid: str
    io: tuple[tuple[int, int], ...] = ()
    irqs: tuple[int, ...] = ()
    uid: int | None = None
    #: ``_STA`` value, or None for none (present, enabled, shown, functioning)
    sta: int | None = None


@attrs.define(frozen=True)
class PmBlock:
    """The ACPI PM1 block: ``base`` (PM1_STS at +0, PM1_CNT at +4, PM_TMR at +8), read when tables are built."""

    base: Callable[[], int]
    sci_irq: int
    #: SLP_TYP value that powers the machine off (the ``_S5`` package)
    soft_off_type: int = 0


@attrs.define(frozen=True)
class AcpiPlatform:
    cpus: int
    pm: PmBlock | None = None
    devices: tuple[IsaDevice, ...] = ()
    #: an I/O APIC and local APICs exist (the in-kernel irqchip): a MADT is offered
    apic: bool = False
    #: an 8259 pair exists (MADT PCAT_COMPAT, FADT legacy devices)
    pic: bool = True
    i8042: bool = False
    #: the PIIX reset control register at 0xCF9 (value 0x06 resets)
    reset_port: int | None = None
    pci: bool = False


@attrs.define(frozen=True)
class AcpiBlobs:
    tables: bytes
    rsdp: bytes
    loader: bytes
    #: offset of each table in ``tables``, by signature
    offsets: dict[str, int]


def header(signature: bytes, length: int, revision: int) -> bytes:
    """The common description header with a zero checksum."""
    return (signature + struct.pack("<IBB", length, revision, 0) + OEM_ID + OEM_TABLE_ID
            + struct.pack("<I", OEM_REVISION) + CREATOR_ID + struct.pack("<I", CREATOR_REVISION))


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    return header(signature, HEADER_SIZE + len(body), revision) + body


def gas_io(address: int, width_bits: int) -> bytes:
    """Generic Address Structure for ``width_bits`` of system I/O at ``address`` (zeros for none)."""
    if not address:
        return bytes(12)
    access = {8: 1, 16: 2, 32: 3, 64: 4}.get(width_bits, 0)
    return struct.pack("<BBBBQ", GAS_SYSTEM_IO, width_bits, 0, access, address)


def build_dsdt(p: AcpiPlatform) -> bytes:
    sb = bytearray()
    for i in range(p.cpus):
        sb += aml.processor(f"C{i:03X}", i)
    if p.pci:
        sb += aml.device("PCI0", aml.name("_HID", aml.dword(aml.eisa_id("PNP0A03")))
                         + aml.name("_ADR", aml.integer(0)) + aml.name("_UID", aml.integer(0)))
    for dev in p.devices:
        body = bytearray()
        if re.fullmatch(r"[A-Z]{3}[0-9A-F]{4}", dev.hid):  # an EISA ID, as a DWord
            body += aml.name("_HID", aml.dword(aml.eisa_id(dev.hid)))
        else:
            body += aml.name("_HID", aml.string(dev.hid))
        if dev.uid is not None:
            body += aml.name("_UID", aml.integer(dev.uid))
        if dev.sta is not None:
            body += aml.name("_STA", aml.integer(dev.sta))
        resources = [aml.io_port(b, n) for b, n in dev.io] + [aml.irq_no_flags(i) for i in dev.irqs]
        body += aml.name("_CRS", aml.resource_template(*resources))
        sb += aml.device(dev.name, bytes(body))
    body = aml.scope("\\_SB", bytes(sb))
    if p.pm is not None:
        t = p.pm.soft_off_type
        body += aml.name("\\_S5", aml.package([aml.integer(t), aml.integer(t), aml.integer(0), aml.integer(0)]))
    return table(b"DSDT", DSDT_REVISION, body)


def build_facs() -> bytes:
    # signature, length, hardware signature, waking vector, global lock, flags, X waking vector, version
    return (b"FACS" + struct.pack("<IIIIIQB", FACS_SIZE, 0, 0, 0, 0, 0, FACS_VERSION)).ljust(FACS_SIZE, b"\0")


def build_fadt(p: AcpiPlatform, facs_offset: int, dsdt_offset: int) -> bytes:
    """FADT with FIRMWARE_CTRL/DSDT/X_DSDT holding blob offsets (the loader patches them)."""
    pm_base = p.pm.base() if p.pm is not None else 0
    pm_base &= 0xFFFF
    evt = pm_base
    cnt = pm_base + 4 if pm_base else 0
    tmr = pm_base + 8 if pm_base else 0
    flags = FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_FIX_RTC
    if p.reset_port is not None:
        flags |= FADT_RESET_REG_SUP
    boot = (BOOT_LEGACY_DEVICES if p.pic else 0) | (BOOT_8042 if p.i8042 else 0)
    body = bytearray()
    body += struct.pack("<II", facs_offset, dsdt_offset)
    body += struct.pack("<BBH", 0, 0, p.pm.sci_irq if p.pm is not None else 0)  # reserved, profile unspecified, SCI
    body += struct.pack("<IBBBB", 0, 0, 0, 0, 0)  # SMI_CMD 0: ACPI mode is always on (no transition)
    body += struct.pack("<IIIIIIII", evt, 0, cnt, 0, 0, tmr, 0, 0)
    body += struct.pack("<BBBBBBBB", 4 if evt else 0, 2 if cnt else 0, 0, 4 if tmr else 0, 0, 0, 0, 0)
    body += struct.pack("<HHHHBB", 0x0FFF, 0x0FFF, 0, 0, 0, 0)  # C2/C3 latencies > 100/1000: unsupported
    body += struct.pack("<BBBHB", 0, 0, RTC_CENTURY_INDEX, boot, 0)
    body += struct.pack("<I", flags)
    body += gas_io(p.reset_port or 0, 8) + struct.pack("<B3x", 0x06 if p.reset_port is not None else 0)
    body += struct.pack("<QQ", 0, dsdt_offset)  # X_FIRMWARE_CTRL (FIRMWARE_CTRL is used), X_DSDT
    body += gas_io(evt, 32) + gas_io(0, 0) + gas_io(cnt, 16) + gas_io(0, 0) + gas_io(0, 0)
    body += gas_io(tmr, 32) + gas_io(0, 0) + gas_io(0, 0)
    out = table(b"FACP", FADT_REVISION, bytes(body))
    assert len(out) == FADT_SIZE, len(out)
    return out


def build_madt(p: AcpiPlatform) -> bytes:
    body = bytearray(struct.pack("<II", LOCAL_APIC_ADDRESS, MADT_PCAT_COMPAT if p.pic else 0))
    for i in range(p.cpus):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, i, i, 1)  # UID i, APIC ID i, enabled
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, p.cpus, 0, IO_APIC_ADDRESS, 0)  # ID after the CPUs, GSI base 0
    if p.pm is not None:
        # the SCI is level-triggered, active high here (the ACPI default for an ISA SCI is active low)
        body += struct.pack("<BBBBIH", MADT_INTERRUPT_OVERRIDE, 10, 0, p.pm.sci_irq, p.pm.sci_irq,
                            INTI_ACTIVE_HIGH_LEVEL)
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, 0xFF, 0, 1)  # every processor: NMI on LINT1
    return table(b"APIC", MADT_REVISION, bytes(body))


def build(p: AcpiPlatform) -> AcpiBlobs:
    """All three fw_cfg files; the same platform gives the same sizes whatever the PM base is."""
    blob = bytearray()
    offsets: dict[str, int] = {}

    def put(sig: str, data: bytes, align: int = 8) -> int:
        while len(blob) % align:
            blob.append(0)
        offsets[sig] = len(blob)
        blob.extend(data)
        return offsets[sig]

    facs = put("FACS", build_facs(), 64)
    dsdt = put("DSDT", build_dsdt(p))
    put("FACP", build_fadt(p, facs, dsdt))
    listed = ["FACP"]
    if p.apic:
        put("APIC", build_madt(p))
        listed.append("APIC")
    rsdt = put("RSDT", table(b"RSDT", RSDT_REVISION, b"".join(struct.pack("<I", offsets[s]) for s in listed)))
    xsdt = put("XSDT", table(b"XSDT", XSDT_REVISION, b"".join(struct.pack("<Q", offsets[s]) for s in listed)))

    rsdp = bytearray(b"RSD PTR " + struct.pack("<B", 0) + OEM_ID + struct.pack("<BI", RSDP_REVISION, rsdt))
    rsdp += struct.pack("<IQB3x", RSDP_SIZE, xsdt, 0)
    assert len(rsdp) == RSDP_SIZE

    ld = Linker()
    ld.allocate(TABLES_FILE, 64, ZONE_HIGH)
    ld.allocate(RSDP_FILE, 16, ZONE_FSEG)
    fadt = offsets["FACP"]
    ld.add_pointer(TABLES_FILE, fadt + 36, 4, TABLES_FILE)   # FIRMWARE_CTRL -> FACS
    ld.add_pointer(TABLES_FILE, fadt + 40, 4, TABLES_FILE)   # DSDT
    ld.add_pointer(TABLES_FILE, fadt + 140, 8, TABLES_FILE)  # X_DSDT
    for i, _ in enumerate(listed):
        ld.add_pointer(TABLES_FILE, rsdt + HEADER_SIZE + 4 * i, 4, TABLES_FILE)
        ld.add_pointer(TABLES_FILE, xsdt + HEADER_SIZE + 8 * i, 8, TABLES_FILE)
    for sig in ("DSDT", *listed, "RSDT", "XSDT"):
        start = offsets[sig]
        length = struct.unpack_from("<I", blob, start + 4)[0]
        ld.add_checksum(TABLES_FILE, start + 9, start, length)
    ld.add_pointer(RSDP_FILE, 16, 4, TABLES_FILE)
    ld.add_pointer(RSDP_FILE, 24, 8, TABLES_FILE)
    ld.add_checksum(RSDP_FILE, 8, 0, 20)
    ld.add_checksum(RSDP_FILE, 32, 0, RSDP_SIZE)
    return AcpiBlobs(bytes(blob), bytes(rsdp), ld.script(), offsets)
