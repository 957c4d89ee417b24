"""Test helpers: run a fw_cfg loader script on a byte array, and parse ACPI/SMBIOS tables back.

Written from the formats (QEMU's linker/loader script, the ACPI and SMBIOS
specifications), independently of the code that builds the tables. Every
reader takes ``read(address, length) -> bytes`` so it works on the simulated
memory here and on a guest's memory after a firmware run.
"""

from __future__ import annotations

import struct
from typing import Callable

Read = Callable[[int, int], bytes]


def byte_sum(data: bytes) -> int:
    return sum(data) & 0xFF


class LoaderError(Exception):
    pass


class FlatMemory:
    """4 GiB address space with two bump allocators: HIGH at ``high`` and FSEG at 0xE0000-0xFFFFF."""

    def __init__(self, high: int = 0x07F00000) -> None:
        self.bytes: dict[int, bytearray] = {}
        self.next = {1: high, 2: 0xE0000}
        self.limit = {1: high + (1 << 20), 2: 0x100000}

    def alloc(self, zone: int, size: int, align: int) -> int:
        if zone not in self.next:
            raise LoaderError(f"unknown zone {zone}")
        addr = -(-self.next[zone] // align) * align
        if addr + size > self.limit[zone]:
            raise LoaderError("zone full")
        self.next[zone] = addr + size
        return addr

    def write(self, addr: int, data: bytes) -> None:
        self.bytes[addr] = bytearray(data)

    def read(self, addr: int, n: int) -> bytes:
        for base, buf in self.bytes.items():
            if base <= addr and addr + n <= base + len(buf):
                return bytes(buf[addr - base:addr - base + n])
        raise LoaderError(f"read of {n} bytes at {addr:#x} outside every allocation")


def run_loader(script: bytes, files: dict[str, bytes], mem: FlatMemory) -> dict[str, int]:
    """Execute the script as firmware would; returns where each file was loaded. Strict: any bad entry raises."""
    if len(script) % 128:
        raise LoaderError("script length is not a multiple of 128")
    loaded: dict[str, tuple[int, bytearray]] = {}

    def fname(raw: bytes) -> str:
        if raw[55] != 0:
            raise LoaderError("file name not NUL terminated")
        return raw.split(b"\0", 1)[0].decode()

    for pos in range(0, len(script), 128):
        e = script[pos:pos + 128]
        (cmd,) = struct.unpack_from("<I", e)
        if cmd == 1:
            name = fname(e[4:60])
            align, zone = struct.unpack_from("<IB", e, 60)
            if align & (align - 1):
                raise LoaderError("alignment not a power of two")
            data = files[name]
            addr = mem.alloc(zone, len(data), max(align, 16))
            loaded[name] = (addr, bytearray(data))
        elif cmd == 2:
            dest, src = fname(e[4:60]), fname(e[60:116])
            offset, size = struct.unpack_from("<IB", e, 116)
            if size not in (1, 2, 4, 8):
                raise LoaderError("bad pointer size")
            daddr, dbuf = loaded[dest]
            if offset + size > len(dbuf):
                raise LoaderError("pointer outside its file")
            value = int.from_bytes(dbuf[offset:offset + size], "little") + loaded[src][0]
            dbuf[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        elif cmd == 3:
            name = fname(e[4:60])
            offset, start, length = struct.unpack_from("<III", e, 60)
            _, buf = loaded[name]
            if offset >= len(buf) or start + length > len(buf):
                raise LoaderError("checksum outside its file")
            buf[offset] = (buf[offset] - byte_sum(buf[start:start + length])) & 0xFF
        else:
            raise LoaderError(f"unknown command {cmd}")
    for name, (addr, buf) in loaded.items():
        mem.write(addr, bytes(buf))
    return {name: addr for name, (addr, _) in loaded.items()}


# -- ACPI ------------------------------------------------------------------------------------------

def find_rsdp(read: Read, start: int = 0xE0000, end: int = 0x100000) -> int | None:
    for addr in range(start, end, 16):
        try:
            if read(addr, 8) == b"RSD PTR " and byte_sum(read(addr, 20)) == 0:
                return addr
        except Exception:
            continue
    return None


def read_table(read: Read, addr: int) -> bytes:
    length = struct.unpack("<I", read(addr + 4, 4))[0]
    assert 36 <= length < 1 << 20, length
    data = read(addr, length)
    assert byte_sum(data) == 0, f"{data[:4]!r} at {addr:#x}: checksum"
    return data


def parse_acpi(read: Read, rsdp_addr: int) -> dict:
    """RSDP -> RSDT/XSDT -> tables; asserts every checksum and pointer as an OS would need them."""
    rsdp = read(rsdp_addr, 36)
    assert rsdp[:8] == b"RSD PTR " and byte_sum(rsdp[:20]) == 0
    out: dict = {"rsdp": rsdp, "oem": rsdp[9:15], "revision": rsdp[15]}
    rsdt_addr = struct.unpack_from("<I", rsdp, 16)[0]
    if rsdp[15] >= 2:
        length, xsdt_addr = struct.unpack_from("<IQ", rsdp, 20)
        assert length == 36 and byte_sum(rsdp[:36]) == 0
        xsdt = read_table(read, xsdt_addr)
        assert xsdt[:4] == b"XSDT"
        out["xsdt"] = [struct.unpack_from("<Q", xsdt, o)[0] for o in range(36, len(xsdt), 8)]
    rsdt = read_table(read, rsdt_addr)
    assert rsdt[:4] == b"RSDT"
    out["rsdt"] = [struct.unpack_from("<I", rsdt, o)[0] for o in range(36, len(rsdt), 4)]
    out["tables"] = {}
    for addr in out["rsdt"]:
        t = read_table(read, addr)
        out["tables"][t[:4].decode()] = (addr, t)
    fadt = out["tables"]["FACP"][1]
    facs_addr, dsdt_addr = struct.unpack_from("<II", fadt, 36)
    facs = read(facs_addr, 64)
    assert facs[:4] == b"FACS" and struct.unpack_from("<I", facs, 4)[0] == 64
    out["facs_addr"] = facs_addr
    if len(fadt) >= 148:
        assert struct.unpack_from("<Q", fadt, 140)[0] in (0, dsdt_addr)
    out["dsdt"] = read_table(read, dsdt_addr)
    assert out["dsdt"][:4] == b"DSDT"
    return out


def _pkg_length(aml: bytes, pos: int) -> tuple[int, int]:
    """(package length, bytes of the encoding)."""
    lead = aml[pos]
    n = lead >> 6
    if n == 0:
        return lead & 0x3F, 1
    value = lead & 0x0F
    for i in range(n):
        value |= aml[pos + 1 + i] << (4 + 8 * i)
    return value, n + 1


def _name_string(aml: bytes, pos: int) -> tuple[str, int]:
    start = pos
    prefix = ""
    while aml[pos] in (0x5C, 0x5E):
        prefix += chr(aml[pos])
        pos += 1
    if aml[pos] == 0x00:
        return prefix, pos + 1 - start
    if aml[pos] == 0x2E:
        count, pos = 2, pos + 1
    elif aml[pos] == 0x2F:
        count, pos = aml[pos + 1], pos + 2
    else:
        count = 1
    segs = []
    for _ in range(count):
        seg = aml[pos:pos + 4].decode()
        assert all(c.isupper() or c.isdigit() or c == "_" for c in seg), seg
        segs.append(seg.rstrip("_") or "_")
        pos += 4
    return prefix + ".".join(segs), pos - start


def _data(aml: bytes, pos: int) -> tuple[object, int]:
    op = aml[pos]
    if op in (0x00, 0x01):
        return op, 1
    if op == 0xFF:
        return (1 << 64) - 1, 1
    size = {0x0A: 1, 0x0B: 2, 0x0C: 4, 0x0E: 8}.get(op)
    if size:
        value = int.from_bytes(aml[pos + 1:pos + 1 + size], "little")
        return (("dword", value) if size == 4 else value), 1 + size
    if op == 0x0D:
        end = aml.index(b"\0", pos + 1)
        return aml[pos + 1:end].decode(), end + 1 - pos
    if op in (0x11, 0x12):
        length, n = _pkg_length(aml, pos + 1)
        body = aml[pos + 1 + n:pos + 1 + length]
        if op == 0x11:  # BufferSize (an integer term), then exactly that many bytes
            size, k = _data(body, 0)
            assert len(body) - k == size, "buffer size does not match its package"
            return ("buffer", body[k:]), 1 + length
        return ("package", body), 1 + length
    raise AssertionError(f"AML: unexpected data op {op:#x} at {pos}")


def parse_aml(aml: bytes, pos: int, end: int, scope: str, out: dict) -> None:
    """Walk a term list; every package must end exactly where its length says."""
    while pos < end:
        op = aml[pos]
        if op == 0x08:
            name, n = _name_string(aml, pos + 1)
            value, m = _data(aml, pos + 1 + n)
            out.setdefault(scope, {})[name] = value
            pos += 1 + n + m
        elif op == 0x10:
            length, n = _pkg_length(aml, pos + 1)
            name, k = _name_string(aml, pos + 1 + n)
            parse_aml(aml, pos + 1 + n + k, pos + 1 + length, name, out)
            pos += 1 + length
        elif op == 0x5B and aml[pos + 1] in (0x82, 0x83):
            length, n = _pkg_length(aml, pos + 2)
            name, k = _name_string(aml, pos + 2 + n)
            body = pos + 2 + n + k
            full = f"{scope}.{name}"
            if aml[pos + 1] == 0x83:
                out.setdefault("processors", []).append((full, aml[body]))
                body += 6
            else:
                out.setdefault("devices", []).append(full)
            parse_aml(aml, body, pos + 2 + length, full, out)
            pos += 2 + length
        else:
            raise AssertionError(f"AML: unexpected op {op:#x} at {pos}")
    assert pos == end, f"AML: term list overruns its package ({pos} != {end})"


def resources(buf: bytes) -> list[tuple]:
    """Small I/O (0x47) and IRQ (0x22) descriptors up to the end tag."""
    out, pos = [], 0
    while True:
        tag = buf[pos]
        if tag == 0x79:
            return out
        if tag == 0x47:
            out.append(("io", struct.unpack_from("<H", buf, pos + 2)[0], buf[pos + 7]))
            pos += 8
        elif tag == 0x22:
            mask = struct.unpack_from("<H", buf, pos + 1)[0]
            out.append(("irq", mask.bit_length() - 1))
            pos += 3
        else:
            raise AssertionError(f"unexpected resource tag {tag:#x}")


def eisa(text: str) -> int:
    c = [ord(x) - 0x40 for x in text[:3]]
    p = int(text[3:], 16)
    return (c[0] << 2 | c[1] >> 3) | ((c[1] & 7) << 5 | c[2]) << 8 | (p >> 8) << 16 | (p & 0xFF) << 24


# -- SMBIOS ----------------------------------------------------------------------------------------

def parse_smbios(anchor: bytes, tables: bytes) -> list[dict]:
    assert anchor[:4] == b"_SM_" and anchor[5] == 0x1F and len(anchor) >= 0x1F
    assert byte_sum(anchor[:0x10]) == 0 and byte_sum(anchor[0x10:0x1F]) == 0 and byte_sum(anchor[:0x1F]) == 0
    assert anchor[0x10:0x15] == b"_DMI_"
    length, _addr, count = struct.unpack_from("<HIH", anchor, 0x16)
    assert length == len(tables)
    out, pos, biggest = [], 0, 0
    while pos < len(tables):
        kind, flen, handle = struct.unpack_from("<BBH", tables, pos)
        formatted = tables[pos:pos + flen]
        end = tables.index(b"\0\0", pos + flen) + 2
        strings = [s.decode() for s in tables[pos + flen:end - 2].split(b"\0")] if end - 2 > pos + flen else []
        out.append({"type": kind, "length": flen, "handle": handle, "data": formatted, "strings": strings})
        biggest = max(biggest, end - pos)
        pos = end
    assert pos == len(tables)
    assert len(out) == count
    assert struct.unpack_from("<H", anchor, 8)[0] == biggest
    return out


def smbios_string(s: dict, offset: int) -> str | None:
    n = s["data"][offset]
    return s["strings"][n - 1] if n else None
