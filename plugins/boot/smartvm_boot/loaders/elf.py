"""ELF kernels (no multiboot header): PVH or direct 64-/32-bit entry.

PT_LOAD segments go to their physical addresses (``p_paddr``).

* With a PVH note (name ``Xen``, type 18 ``XEN_ELFNOTE_PHYS32_ENTRY``, a
  32-bit entry address) and ``mode`` unset or ``protected32``: the PVH boot
  ABI (Xen docs/misc/pvh.pandoc): 32-bit protected mode, paging off, flat
  CS/DS, TR a 32-bit busy TSS with base 0 and limit 0x67, EBX =
  ``hvm_start_info`` (command line, the initrd as module 0, memory map).
* Otherwise an ELF64 kernel enters in long mode at ``e_entry`` (translated
  to physical when it is a virtual address of a segment) with the first
  4 GiB identity-mapped, and an ELF32 one in 32-bit protected mode. Both
  get a Linux zero page in RSI/ESI (command line, initrd, e820), as the
  Linux boot protocol's 32/64-bit entries want; other kernels ignore it.
"""

from __future__ import annotations

import struct
from pathlib import Path

from smartvm_core.arch.e820 import e820_map
from smartvm_core.images import ImageSpec, LoadResult
from smartvm_core.memory import GuestMemory

from ..configurators import pvh, zero_page
from ..layout import FOUR_GIB, Placement, align_up, encode_cmdline, fail, read_file
from . import elfimage, entry

XEN_ELFNOTE_PHYS32_ENTRY = 18
MAX_CMDLINE = 65535
CMDLINE_PREFERRED = 0x20000


def probe(image: ImageSpec) -> bool:
    return elfimage.is_elf(image.data)


def pvh_entry(image: ImageSpec, elf: elfimage.ElfImage) -> int | None:
    for name, ntype, desc in elfimage.notes(image, elf):
        if name == "Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
            if len(desc) < 4:
                raise fail(image, "ELF PVH note", f"XEN_ELFNOTE_PHYS32_ENTRY holds {len(desc)} bytes, not an address")
            return struct.unpack_from("<I", desc)[0]
    return None


def place_cmdline(place: Placement, raw: bytes) -> int:
    if place.is_free(CMDLINE_PREFERRED, len(raw)) and CMDLINE_PREFERRED + len(raw) <= 0xA0000:
        return place.put(CMDLINE_PREFERRED, raw, "the command line", "cmdline")
    addr = place.alloc(len(raw), "the command line", align=16, field="cmdline")
    place.memory.write(addr, raw)
    return addr


def place_initrd(place: Placement, image: ImageSpec, *, low: int, high: int) -> tuple[int, int] | None:
    if image.initrd is None:
        return None
    blob = read_file(image, Path(image.initrd), "initrd")
    addr = place.alloc(len(blob), "the initrd", align=4096, low=low, high=high, top_down=True, field="initrd")
    place.memory.write(addr, blob)
    return addr, len(blob)


def load(memory: GuestMemory, image: ImageSpec) -> LoadResult:
    elf = elfimage.parse(image)
    place = Placement(memory, image)
    low, high = elfimage.load_segments(place, elf)
    mode = image.mode
    if mode not in (None, "protected32", "long"):
        raise fail(image, "mode", f"an ELF kernel enters in protected32 or long mode, not {mode!r}")
    pvh_start = pvh_entry(image, elf) if mode in (None, "protected32") else None
    cmdline = encode_cmdline(image, image.cmdline, MAX_CMDLINE)
    e820 = e820_map(memory)
    initrd = place_initrd(place, image, low=align_up(high, 4096), high=FOUR_GIB)
    info: dict = {"elfclass": elf.elfclass}
    if pvh_start is not None:
        modules = [(initrd[0], initrd[1], b"")] if initrd else []
        start_info = pvh.write(place, cmdline=cmdline if image.cmdline else b"", modules=modules, e820=e820)
        regs, sregs, extra = entry.enter(place, "protected32", pvh_start, tss_base=0)
        regs.rbx = start_info
        info.update(protocol="pvh", start_info=start_info)
    else:
        if mode is None:
            mode = "long" if elf.elfclass == 64 else "protected32"
        start = elf.entry_physical() if image.entry is None else image.entry
        if mode == "protected32" and start >= FOUR_GIB:
            raise fail(image, "ELF e_entry", f"entry {start:#x} is above 4 GiB, unreachable in 32-bit mode")
        cmdline_addr = place_cmdline(place, cmdline)
        params = zero_page.write(place, setup_header=None, cmdline_addr=cmdline_addr, cmdline_size=len(cmdline) - 1,
                                 initrd=initrd, e820=e820)
        regs, sregs, extra = entry.enter(place, mode, start)
        regs.rsi = params
        info.update(protocol="linux-" + ("64" if mode == "long" else "32"), zero_page=params, cmdline=cmdline_addr)
    if initrd:
        info["initrd"] = initrd
    info.update(entry=regs.rip, **extra)
    return LoadResult(loader="elf", start=low, end=high, regs=regs, sregs=sregs, info=info)
