"""The fw_cfg linker/loader script (``etc/table-loader``), as QEMU defines it.

The script is an array of 128-byte little-endian entries; firmware (SeaBIOS,
OVMF) runs them in order:

``ALLOCATE`` (1)
    ``char file[56]; u32 align; u8 zone`` -- read fw_cfg file ``file`` into
    memory aligned to ``align`` (a power of two) in zone HIGH (1, 32-bit RAM)
    or FSEG (2, the 0xE0000-0xFFFFF segment, where the RSDP must live).
``ADD_POINTER`` (2)
    ``char dest[56]; char src[56]; u32 offset; u8 size`` -- add the address
    at which ``src`` was loaded to the ``size``-byte (1, 2, 4 or 8)
    little-endian integer at ``offset`` in ``dest``: a pointer field holds
    an offset into ``src`` before, an address after.
``ADD_CHECKSUM`` (3)
    ``char file[56]; u32 offset; u32 start; u32 length`` -- subtract the byte
    sum of ``file[start:start+length]`` from the byte at ``offset`` so that
    range sums to zero (mod 256).

Unknown commands are skipped by firmware; names are NUL-padded to 56 bytes.
"""

from __future__ import annotations

import struct

import attrs

ENTRY_SIZE = 128
FILE_NAME_SIZE = 56

COMMAND_ALLOCATE = 1
COMMAND_ADD_POINTER = 2
COMMAND_ADD_CHECKSUM = 3

ZONE_HIGH = 1
ZONE_FSEG = 2


def _name(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= FILE_NAME_SIZE:
        raise ValueError(f"linker: file name {name!r} must be 1-{FILE_NAME_SIZE - 1} bytes")
    return raw.ljust(FILE_NAME_SIZE, b"\0")


@attrs.define
class Linker:
    """Builds a loader script; :meth:`script` gives the ``etc/table-loader`` bytes."""

    entries: list[bytes] = attrs.field(factory=list)

    def allocate(self, file: str, align: int, zone: int) -> None:
        if align <= 0 or align & (align - 1):
            raise ValueError(f"linker: alignment {align} of {file!r} is not a power of two")
        if zone not in (ZONE_HIGH, ZONE_FSEG):
            raise ValueError(f"linker: zone {zone} is neither HIGH (1) nor FSEG (2)")
        self._add(struct.pack("<I", COMMAND_ALLOCATE) + _name(file) + struct.pack("<IB", align, zone))

    def add_pointer(self, dest: str, offset: int, size: int, src: str) -> None:
        if size not in (1, 2, 4, 8):
            raise ValueError(f"linker: pointer size {size} is not 1, 2, 4 or 8")
        self._add(struct.pack("<I", COMMAND_ADD_POINTER) + _name(dest) + _name(src)
                  + struct.pack("<IB", offset, size))

    def add_checksum(self, file: str, offset: int, start: int, length: int) -> None:
        if not start <= offset < start + length:
            raise ValueError(f"linker: checksum byte {offset} of {file!r} is outside {start}+{length}")
        self._add(struct.pack("<I", COMMAND_ADD_CHECKSUM) + _name(file) + struct.pack("<III", offset, start, length))

    def _add(self, body: bytes) -> None:
        self.entries.append(body.ljust(ENTRY_SIZE, b"\0"))

    def script(self) -> bytes:
        return b"".join(self.entries)
