"""SMBIOS for fw_cfg: ``etc/smbios/smbios-anchor`` and ``etc/smbios/smbios-tables``.

The anchor is the 31-byte SMBIOS 2.1 (32-bit) entry point ("_SM_" ...
"_DMI_"), version 2.8; its structure-table address is left zero for
firmware to fill in where it copies the tables (SeaBIOS: the F segment).
The structures follow the SMBIOS 2.8 layouts (DMTF DSP0134):

====  ===================================  ========
type  structure                            length
====  ===================================  ========
0     BIOS Information                     0x18
1     System Information                   0x1B
3     System Enclosure                     0x16
4     Processor Information, one per vCPU  0x2A
16    Physical Memory Array                0x17
17    Memory Device                        0x28
19    Memory Array Mapped Address, one     0x1F
      per RAM range
32    System Boot Information              0x0B
127   End-of-Table                         0x04
====  ===================================  ========

Each structure is its formatted area followed by its strings (each NUL
terminated) and one more NUL; a structure without strings ends in two NULs.
Unknown values use the specification's "unknown" encodings (0 speeds,
0xFFFE/0xFFFF handles) rather than invented ones.
"""

from __future__ import annotations

import struct

import attrs

ANCHOR_FILE = "etc/smbios/smbios-anchor"
TABLES_FILE = "etc/smbios/smbios-tables"
MAJOR = 2
MINOR = 8
ANCHOR_SIZE = 0x1F

KIB = 1024
MIB = 1024 * 1024
NO_HANDLE = 0xFFFF
NO_ERROR_INFO = 0xFFFE

H_BIOS = 0x0000
H_SYSTEM = 0x0100
H_CHASSIS = 0x0300
H_CPU = 0x0400
H_ARRAY = 0x1000
H_DEVICE = 0x1100
H_MAPPED = 0x1300
H_BOOT = 0x2000
H_END = 0x7F00


@attrs.define(frozen=True)
class SmbiosPlatform:
    cpus: int
    ram_size: int
    #: guest RAM ranges (address, length) for the type 19 structures
    ram_ranges: tuple[tuple[int, int], ...]
    manufacturer: str = "Smart-VM"
    product: str = "Smart-VM virtual machine"
    version: str = ""
    bios_vendor: str = "Smart-VM"
    bios_version: str = ""
    bios_date: str = "01/01/2025"
    uuid: bytes = bytes(16)


class _Strings:
    def __init__(self) -> None:
        self.items: list[bytes] = []

    def add(self, text: str) -> int:
        """String number (1-based), or 0 for an empty string (no string)."""
        if not text:
            return 0
        raw = text.encode("ascii", "replace").replace(b"\0", b"?")
        self.items.append(raw)
        return len(self.items)

    def encode(self) -> bytes:
        if not self.items:
            return b"\0\0"
        return b"".join(s + b"\0" for s in self.items) + b"\0"


def structure(kind: int, handle: int, formatted: bytes, strings: _Strings | None = None) -> bytes:
    """Header (type, length, handle) + ``formatted`` + the string set."""
    length = 4 + len(formatted)
    return struct.pack("<BBH", kind, length, handle) + formatted + (strings or _Strings()).encode()


def type0(p: SmbiosPlatform) -> bytes:
    s = _Strings()
    vendor, version, date = s.add(p.bios_vendor), s.add(p.bios_version), s.add(p.bios_date)
    characteristics = 1 << 3  # "BIOS characteristics are not supported"
    ext1, ext2 = 0, (1 << 2) | (1 << 4)  # targeted content distribution; SMBIOS describes a virtual machine
    body = struct.pack("<BBHBBQBBBBBB", vendor, version, 0xE800, date, 0, characteristics, ext1, ext2,
                       0, 0, 0xFF, 0xFF)  # BIOS release 0.0, no embedded controller
    return structure(0, H_BIOS, body, s)


def type1(p: SmbiosPlatform) -> bytes:
    s = _Strings()
    fields = struct.pack("<BBBB", s.add(p.manufacturer), s.add(p.product), s.add(p.version), 0)
    body = fields + p.uuid[:16].ljust(16, b"\0") + struct.pack("<BBB", 0x06, 0, 0)  # woken by power switch
    return structure(1, H_SYSTEM, body, s)


def type3(p: SmbiosPlatform) -> bytes:
    s = _Strings()
    manufacturer = s.add(p.manufacturer)
    # type Other; states "safe"; security unknown; no OEM data, height, cords, contained elements; no SKU
    body = struct.pack("<BBBBBBBBBIBBBBB", manufacturer, 0x01, 0, 0, 0, 0x03, 0x03, 0x03, 0x02, 0, 0, 0, 0, 0, 0)
    return structure(3, H_CHASSIS, body, s)


def type4(p: SmbiosPlatform, cpu: int) -> bytes:
    s = _Strings()
    socket = s.add(f"CPU {cpu}")
    manufacturer = s.add(p.manufacturer)
    body = struct.pack("<BBBB", socket, 0x03, 0x01, manufacturer)  # central processor, family "Other"
    body += bytes(8)  # processor ID (CPUID leaf 1): the engine decides it; 0 = not given
    body += struct.pack("<BBHHHBB", 0, 0, 0, 0, 0, 0x41, 0x01)  # no version; speeds unknown; populated+enabled
    body += struct.pack("<HHH", NO_HANDLE, NO_HANDLE, NO_HANDLE)  # no cache structures
    body += struct.pack("<BBB", 0, 0, 0)  # serial, asset tag, part number
    body += struct.pack("<BBBHH", 1, 1, 1, 0x0002, 0x0001)  # 1 core, 1 enabled, 1 thread; "unknown"; family 2
    return structure(4, H_CPU + cpu, body, s)


def type16(p: SmbiosPlatform) -> bytes:
    kib = -(-p.ram_size // KIB)
    if kib < 0x80000000:
        maximum, extended = kib, 0
    else:
        maximum, extended = 0x80000000, p.ram_size
    # location other, use system memory, error correction none
    body = struct.pack("<BBBIHHQ", 0x01, 0x03, 0x03, maximum, NO_ERROR_INFO, 1, extended)
    return structure(16, H_ARRAY, body)


def _device_size(size: int) -> tuple[int, int]:
    """(Size field, Extended Size field) of a type 17 structure for ``size`` bytes."""
    if size % MIB == 0 and size // MIB < 0x7FFF:
        return size // MIB, 0
    if size % MIB:
        kib = -(-size // KIB)
        if kib < 0x8000:
            return 0x8000 | kib, 0  # bit 15: the value is in KiB
    return 0x7FFF, -(-size // MIB)


def type17(p: SmbiosPlatform) -> bytes:
    s = _Strings()
    size, extended = _device_size(p.ram_size)
    locator = s.add("DIMM 0")
    body = struct.pack("<HHHHHBBBBBH", H_ARRAY, NO_ERROR_INFO, 64, 64, size, 0x09, 0, locator, 0,
                       0x07, 0x0002)  # DIMM; memory type RAM; type detail "other"
    body += struct.pack("<HBBBBB", 0, 0, 0, 0, 0, 0)  # speed unknown; no strings; rank unknown
    body += struct.pack("<IHHHH", extended, 0, 0, 0, 0)
    return structure(17, H_DEVICE, body, s)


def type19(start: int, length: int, index: int) -> bytes:
    end = start + length - 1
    if end // KIB < 0xFFFFFFFF and start % KIB == 0 and length % KIB == 0:
        body = struct.pack("<IIHBQQ", start // KIB, end // KIB, H_ARRAY, 1, 0, 0)
    else:
        body = struct.pack("<IIHBQQ", 0xFFFFFFFF, 0xFFFFFFFF, H_ARRAY, 1, start, end)
    return structure(19, H_MAPPED + index, body)


def type32() -> bytes:
    return structure(32, H_BOOT, bytes(6) + b"\0")  # reserved; "no errors detected"


def type127() -> bytes:
    return structure(127, H_END, b"")


def build(p: SmbiosPlatform) -> tuple[bytes, bytes]:
    """``(anchor, tables)`` for the two fw_cfg files."""
    structs = [type0(p), type1(p), type3(p)]
    structs += [type4(p, i) for i in range(p.cpus)]
    structs += [type16(p), type17(p)]
    structs += [type19(a, n, i) for i, (a, n) in enumerate(p.ram_ranges)]
    structs += [type32(), type127()]
    tables = b"".join(structs)
    if len(tables) > 0xFFFF:
        raise ValueError(f"SMBIOS: {len(tables)} bytes of structures do not fit a 2.1 entry point")
    max_size = max(len(x) for x in structs)
    head = bytearray(b"_SM_" + struct.pack("<BBBBHB", 0, ANCHOR_SIZE, MAJOR, MINOR, max_size, 0) + bytes(5))
    tail = bytearray(b"_DMI_" + struct.pack("<BHIHB", 0, len(tables), 0, len(structs), MAJOR << 4 | MINOR))
    anchor = head + tail
    assert len(anchor) == ANCHOR_SIZE
    anchor[0x15] = (-sum(anchor[0x10:])) & 0xFF
    anchor[4] = (-sum(anchor[:0x10])) & 0xFF
    return bytes(anchor), tables
