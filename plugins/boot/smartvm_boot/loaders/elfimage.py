"""Reading ELF images with pyelftools, checked field by field before trusting them.

Shared by the ELF and multiboot loaders. Every pyelftools failure comes back
as an :class:`~smartvm_core.errors.ImageError` naming the ELF field, with the
library's exception chained.
"""

from __future__ import annotations

import io
import struct
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:  # pyelftools is imported when an ELF image is read, not at start-up
    from elftools.elf.elffile import ELFFile

from smartvm_core.images import ImageSpec

from ..layout import Placement, fail

ELF_MAGIC = b"\x7fELF"
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
MAX_PHNUM = 256
MAX_NOTES_SIZE = 1 << 20


@attrs.define
class Segment:
    paddr: int
    vaddr: int
    offset: int
    filesz: int
    memsz: int


@attrs.define
class ElfImage:
    elfclass: int
    machine: int
    entry: int
    segments: list[Segment]
    elf: "ELFFile"

    def entry_physical(self) -> int:
        """``e_entry``, translated to a physical address when it lies in a segment's virtual range."""
        for s in self.segments:
            if s.vaddr <= self.entry < s.vaddr + s.memsz:
                return s.paddr + (self.entry - s.vaddr)
        return self.entry


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def parse(image: ImageSpec, *, machines: tuple[int, ...] = (EM_386, EM_X86_64)) -> ElfImage:
    data = image.data
    if len(data) < 52:
        raise fail(image, "ELF header", f"truncated: {len(data)} bytes, an ELF header needs at least 52")
    if data[:4] != ELF_MAGIC:
        raise fail(image, "ELF e_ident", "no ELF magic")
    if data[4] not in (1, 2):
        raise fail(image, "ELF EI_CLASS", f"invalid class {data[4]}")
    if data[5] != 1:
        raise fail(image, "ELF EI_DATA", "big-endian (or invalid) ELF on a little-endian machine")
    is64 = data[4] == 2
    ehsize = 64 if is64 else 52
    if len(data) < ehsize:
        raise fail(image, "ELF header", f"truncated: {len(data)} bytes, an ELF{64 if is64 else 32} header needs {ehsize}")
    if is64:
        e_type, e_machine, _, e_entry, e_phoff, _, _, _, e_phentsize, e_phnum = struct.unpack_from(
            "<HHIQQQIHHH", data, 16)
    else:
        e_type, e_machine, _, e_entry, e_phoff, _, _, _, e_phentsize, e_phnum = struct.unpack_from(
            "<HHIIIIIHHH", data, 16)
    if e_machine not in machines:
        raise fail(image, "ELF e_machine", f"machine {e_machine} is not x86 ({' or '.join(map(str, machines))})")
    if e_type not in (2, 3):
        raise fail(image, "ELF e_type", f"type {e_type} is neither an executable nor a shared object")
    want_phentsize = 56 if is64 else 32
    if e_phnum == 0:
        raise fail(image, "ELF e_phnum", "no program headers: nothing to load")
    if e_phentsize != want_phentsize:
        raise fail(image, "ELF e_phentsize", f"{e_phentsize}, expected {want_phentsize}")
    if e_phnum > MAX_PHNUM:
        raise fail(image, "ELF e_phnum", f"{e_phnum} program headers (at most {MAX_PHNUM})")
    if e_phoff + e_phnum * e_phentsize > len(data):
        raise fail(image, "ELF e_phoff", f"program headers [{e_phoff:#x}, +{e_phnum * e_phentsize:#x}) run past "
                   f"the end of the file ({len(data):#x} bytes)")
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        elf = ELFFile(io.BytesIO(data))
        segments = []
        for i in range(e_phnum):
            ph = elf.get_segment(i).header
            if ph.p_type != "PT_LOAD" or ph.p_memsz == 0:
                continue
            if ph.p_filesz > ph.p_memsz:
                raise fail(image, f"ELF program header {i} p_filesz",
                           f"{ph.p_filesz:#x} is larger than p_memsz {ph.p_memsz:#x}")
            if ph.p_offset + ph.p_filesz > len(data):
                raise fail(image, f"ELF program header {i} p_offset",
                           f"segment [{ph.p_offset:#x}, +{ph.p_filesz:#x}) runs past the end of the file "
                           f"({len(data):#x} bytes)")
            segments.append(Segment(ph.p_paddr, ph.p_vaddr, ph.p_offset, ph.p_filesz, ph.p_memsz))
    except (ELFError, struct.error, ValueError, IndexError, KeyError) as e:
        raise fail(image, "ELF program headers", f"malformed: {e}") from e
    if not segments:
        raise fail(image, "ELF program headers", "no PT_LOAD segment with contents")
    return ElfImage(elfclass=64 if is64 else 32, machine=e_machine, entry=e_entry, segments=segments, elf=elf)


def load_segments(place: Placement, elf: ElfImage, *, below: int = 1 << 52, physical: bool = True) -> tuple[int, int]:
    """Write every PT_LOAD segment at its physical address; returns ``(low, high)``."""
    data = place.image.data
    for i, s in enumerate(elf.segments):
        addr = s.paddr if physical else s.vaddr
        if addr + s.memsz > below:
            raise fail(place.image, f"ELF segment {i} p_paddr",
                       f"[{addr:#x}, {addr + s.memsz:#x}) ends above {below:#x}")
        place.put(addr, data[s.offset:s.offset + s.filesz], f"ELF segment {i}", f"ELF segment {i} p_paddr",
                  size=s.memsz)
    low = min(s.paddr for s in elf.segments)
    high = max(s.paddr + s.memsz for s in elf.segments)
    return low, high


def notes(image: ImageSpec, elf: ElfImage) -> list[tuple[str, int, bytes]]:
    """All ELF notes from PT_NOTE segments as ``(name, type, desc)``."""
    from elftools.common.exceptions import ELFError
    out = []
    data = image.data
    try:
        for i, seg in enumerate(elf.elf.iter_segments()):
            h = seg.header
            if h.p_type != "PT_NOTE":
                continue
            if h.p_offset + h.p_filesz > len(data) or h.p_filesz > MAX_NOTES_SIZE:
                raise fail(image, f"ELF program header {i} p_offset", "note segment runs past the end of the file")
            blob = data[h.p_offset:h.p_offset + h.p_filesz]
            pos = 0
            while pos + 12 <= len(blob):
                namesz, descsz, ntype = struct.unpack_from("<III", blob, pos)
                pos += 12
                name_end = pos + namesz
                desc_start = pos + (namesz + 3 & ~3)
                desc_end = desc_start + descsz
                if desc_end > len(blob):
                    raise fail(image, f"ELF note in segment {i}", f"note of {namesz}+{descsz} bytes runs past its segment")
                name = blob[pos:name_end].rstrip(b"\0").decode("ascii", "replace")
                out.append((name, ntype, blob[desc_start:desc_end]))
                pos = desc_start + (descsz + 3 & ~3)
    except (ELFError, struct.error, ValueError, IndexError) as e:
        raise fail(image, "ELF program headers", f"malformed: {e}") from e
    return out
