"""Builders for synthetic test images (ELF32/64 with notes, bzImage headers, multiboot headers)."""

from __future__ import annotations

import struct

MB_MAGIC = 0x1BADB002


def multiboot_header(flags: int = 3, fields: tuple[int, ...] = ()) -> bytes:
    return struct.pack("<III", MB_MAGIC, flags, -(MB_MAGIC + flags) & 0xFFFFFFFF) + struct.pack(f"<{len(fields)}I", *fields)


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    name += b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def make_elf(*, is64: bool, entry: int, segments: list[tuple[int, int, bytes, int]], notes: bytes = b"",
             machine: int | None = None, phnum: int | None = None, payload_prefix: bytes = b"") -> bytes:
    """An ELF executable: ``segments`` are ``(paddr, vaddr, data, memsz)``; ``notes`` go in a PT_NOTE.

    ``payload_prefix`` is placed right after the program headers (a multiboot header, say).
    """
    machine = machine if machine is not None else (62 if is64 else 3)
    ehsize, phentsize = (64, 56) if is64 else (52, 32)
    nph = len(segments) + (1 if notes else 0)
    off = ehsize + nph * phentsize
    body = bytearray(payload_prefix)
    phdrs = bytearray()

    def ph(ptype, offset, vaddr, paddr, filesz, memsz):
        if is64:
            return struct.pack("<IIQQQQQQ", ptype, 7, offset, vaddr, paddr, filesz, memsz, 0x1000)
        return struct.pack("<IIIIIIII", ptype, offset, vaddr, paddr, filesz, memsz, 7, 0x1000)

    for paddr, vaddr, data, memsz in segments:
        body += b"\0" * (-len(body) % 16)
        phdrs += ph(1, off + len(body), vaddr, paddr, len(data), memsz)
        body += data
    if notes:
        body += b"\0" * (-len(body) % 4)
        phdrs += ph(4, off + len(body), 0, 0, len(notes), len(notes))
        body += notes
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1]) + b"\0" * 9
    if is64:
        hdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry, ehsize, 0, 0, ehsize, phentsize,
                                  nph if phnum is None else phnum, 64, 0, 0)
    else:
        hdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, entry, ehsize, 0, 0, ehsize, phentsize,
                                  nph if phnum is None else phnum, 40, 0, 0)
    return hdr + bytes(phdrs) + bytes(body)


def make_bzimage(*, version: int = 0x020F, setup_sects: int = 4, xloadflags: int = 1, kernel: bytes = b"",
                 init_size: int = 0x400000, pref_address: int = 0x1000000, initrd_addr_max: int = 0x7FFFFFFF,
                 cmdline_size: int = 2047, loadflags: int = 0x01, relocatable: int = 1) -> bytes:
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200] = 0xEB
    setup[0x201] = 0x268 - 0x202  # jump over the header: its length
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, 0x100000)
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, 0x200000)
    setup[0x234] = relocatable
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    struct.pack_into("<H", setup, 0x20E, 0x300 - 0x200)
    setup[0x300:0x310] = b"6.99-test (x)\0\0\0"
    return bytes(setup) + (kernel or b"\x90" * 0x1000)
