"""A small ACPI Machine Language (AML) encoder: enough for a static DSDT.

Encodings from the ACPI specification, "ACPI Machine Language (AML)
Specification": name segments are four characters from ``A-Z0-9_``, padded
with ``_``; a package length counts itself and everything after it up to the
end of the object, in 1-4 bytes; integers use the shortest of Zero/One or
the Byte/Word/DWord/QWord prefixes (``_HID`` EISA IDs always as a DWord,
which is how firmware such as SeaBIOS matches them).
"""

from __future__ import annotations

import re
import struct

ZERO_OP = 0x00
ONE_OP = 0x01
NAME_OP = 0x08
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
EXT_OP = 0x5B
DEVICE_OP = 0x82
PROCESSOR_OP = 0x83
ROOT_CHAR = 0x5C
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F

_SEG = re.compile(r"[A-Z_][A-Z0-9_]{0,3}")
MAX_PKG_LENGTH = (1 << 28) - 1


def name_seg(seg: str) -> bytes:
    if not _SEG.fullmatch(seg):
        raise ValueError(f"AML: {seg!r} is not a name segment (1-4 of A-Z 0-9 _, not starting with a digit)")
    return seg.ljust(4, "_").encode()


def name_string(path: str) -> bytes:
    """``\\_SB.PCI0`` style paths: optional root prefix, then dot-separated segments."""
    out = bytearray()
    if path.startswith("\\"):
        out.append(ROOT_CHAR)
        path = path[1:]
    segs = [s for s in path.split(".")] if path else []
    if not segs:
        return bytes(out) + b"\0"
    encoded = b"".join(name_seg(s) for s in segs)
    if len(segs) == 1:
        out += encoded
    elif len(segs) == 2:
        out += bytes((DUAL_NAME_PREFIX,)) + encoded
    else:
        out += bytes((MULTI_NAME_PREFIX, len(segs))) + encoded
    return bytes(out)


def pkg_length(body_len: int) -> bytes:
    """PkgLength for ``body_len`` bytes after it (the encoding counts its own bytes too)."""
    for n in range(1, 5):
        total = body_len + n
        if n == 1 and total < 0x40:
            return bytes((total,))
        if n > 1 and total < 1 << (4 + 8 * (n - 1)):
            out = bytearray([((n - 1) << 6) | (total & 0x0F)])
            rest = total >> 4
            for _ in range(n - 1):
                out.append(rest & 0xFF)
                rest >>= 8
            return bytes(out)
    raise ValueError(f"AML: object of {body_len} bytes is too long for a package length")


def integer(value: int) -> bytes:
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"AML: integer {value} is outside 0..2**64-1")
    if value == 0:
        return bytes((ZERO_OP,))
    if value == 1:
        return bytes((ONE_OP,))
    if value <= 0xFF:
        return bytes((BYTE_PREFIX, value))
    if value <= 0xFFFF:
        return bytes((WORD_PREFIX,)) + struct.pack("<H", value)
    if value <= 0xFFFFFFFF:
        return bytes((DWORD_PREFIX,)) + struct.pack("<I", value)
    return bytes((QWORD_PREFIX,)) + struct.pack("<Q", value)


def dword(value: int) -> bytes:
    return bytes((DWORD_PREFIX,)) + struct.pack("<I", value & 0xFFFFFFFF)


def string(text: str) -> bytes:
    raw = text.encode("ascii")
    if b"\0" in raw:
        raise ValueError("AML: strings cannot contain NUL")
    return bytes((STRING_PREFIX,)) + raw + b"\0"


def eisa_id(text: str) -> int:
    """``"PNP0303"`` -> the 32-bit compressed EISA ID (stored little-endian)."""
    if not re.fullmatch(r"[A-Z]{3}[0-9A-F]{4}", text):
        raise ValueError(f"AML: {text!r} is not an EISA ID (three letters A-Z, four hex digits)")
    c1, c2, c3 = (ord(c) - 0x40 for c in text[:3])
    product = int(text[3:], 16)
    b0 = (c1 << 2) | (c2 >> 3)
    b1 = ((c2 & 7) << 5) | c3
    return b0 | b1 << 8 | (product >> 8) << 16 | (product & 0xFF) << 24


def name(path: str, value: bytes) -> bytes:
    """``Name(path, value)``; ``value`` is an already encoded data object."""
    return bytes((NAME_OP,)) + name_string(path) + value


def scope(path: str, body: bytes) -> bytes:
    inner = name_string(path) + body
    return bytes((SCOPE_OP,)) + pkg_length(len(inner)) + inner


def device(path: str, body: bytes) -> bytes:
    inner = name_string(path) + body
    return bytes((EXT_OP, DEVICE_OP)) + pkg_length(len(inner)) + inner


def processor(path: str, proc_id: int, pblk_address: int = 0, pblk_length: int = 0, body: bytes = b"") -> bytes:
    """The ACPI 1.0/2.0 ``Processor`` object (ProcID matches the MADT's processor UID)."""
    inner = name_string(path) + struct.pack("<BIB", proc_id & 0xFF, pblk_address, pblk_length) + body
    return bytes((EXT_OP, PROCESSOR_OP)) + pkg_length(len(inner)) + inner


def buffer(data: bytes) -> bytes:
    inner = integer(len(data)) + data
    return bytes((BUFFER_OP,)) + pkg_length(len(inner)) + inner


def package(elements: list[bytes]) -> bytes:
    if len(elements) > 255:
        raise ValueError("AML: a Package holds at most 255 elements")
    inner = bytes((len(elements),)) + b"".join(elements)
    return bytes((PACKAGE_OP,)) + pkg_length(len(inner)) + inner


# -- resource descriptors (ACPI "Resource Data Types for ACPI") ----------------------------------

def io_port(base: int, length: int) -> bytes:
    """Small I/O port descriptor, 16-bit decode, fixed at ``base``."""
    if not 0 <= base <= 0xFFFF or not 0 < length <= 0xFF:
        raise ValueError(f"AML: I/O range {base:#x}+{length} does not fit an I/O descriptor")
    return struct.pack("<BBHHBB", 0x47, 0x01, base, base, 1, length)


def irq_no_flags(irq: int) -> bytes:
    """Small IRQ descriptor without flags: edge-triggered, active high, exclusive."""
    if not 0 <= irq < 16:
        raise ValueError(f"AML: IRQ {irq} is not an ISA IRQ")
    return struct.pack("<BH", 0x22, 1 << irq)


def resource_template(*descriptors: bytes) -> bytes:
    """A ``Buffer`` of descriptors closed by the End Tag (checksum 0: not checked)."""
    return buffer(b"".join(descriptors) + bytes((0x79, 0x00)))
