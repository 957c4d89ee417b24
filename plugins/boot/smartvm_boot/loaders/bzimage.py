"""Linux bzImage, boot protocol 2.06 and later (Documentation/arch/x86/boot.rst).

The real-mode setup (``(setup_sects or 4) + 1`` sectors) is not run: the
protected-mode kernel goes to ``address`` (default ``code32_start``,
0x100000) and the vCPU enters it directly:

* 64-bit (``mode`` long, the default when ``xloadflags`` has
  XLF_KERNEL_64): at load address + 0x200, long mode with the first 4 GiB
  identity-mapped, CS=__BOOT_CS (0x10), DS/ES/SS=__BOOT_DS (0x18);
* 32-bit (``mode`` protected32): at the load address, flat protected mode,
  paging off, same selectors;

with RSI/ESI = the zero page (:mod:`..configurators.zero_page`: the setup
header from the image, ``cmd_line_ptr`` within ``cmdline_size``, the e820
map, the initrd). The initrd goes page-aligned as high as it can below
``initrd_addr_max`` and above the kernel's decompression area
(``pref_address`` + ``init_size``, 2.10+), which must fit in RAM.
"""

from __future__ import annotations

import struct

from smartvm_core.arch.e820 import e820_map
from smartvm_core.images import ImageSpec, LoadResult
from smartvm_core.memory import GuestMemory

from ..configurators import zero_page
from ..layout import FOUR_GIB, Placement, align_up, encode_cmdline, fail
from . import entry
from .elf import place_cmdline, place_initrd

MIN_VERSION = 0x0206
LOADED_HIGH = 0x01
XLF_KERNEL_64 = 0x01
MAX_SETUP_SECTS = 64


def probe(image: ImageSpec) -> bool:
    data = image.data
    return len(data) >= 0x206 and data[0x202:0x206] == b"HdrS" and data[0x1FE:0x200] == b"\x55\xAA"


def _u(data: bytes, fmt: str, off: int) -> int:
    return struct.unpack_from(fmt, data, off)[0]


def load(memory: GuestMemory, image: ImageSpec) -> LoadResult:
    data = image.data
    if len(data) < 0x268:
        raise fail(image, "setup header", f"truncated: {len(data)} bytes, the setup header ends at 0x268")
    if data[0x1FE:0x200] != b"\x55\xAA":
        raise fail(image, "setup header: boot_flag", f"{data[0x1FE:0x200].hex()}, not 55aa")
    if data[0x202:0x206] != b"HdrS":
        raise fail(image, "setup header: header", "no 'HdrS' signature: not a Linux kernel image")
    version = _u(data, "<H", 0x206)
    if version < MIN_VERSION:
        raise fail(image, "setup header: version",
                   f"boot protocol {version >> 8}.{version & 0xFF:02d} is older than 2.06")
    loadflags = data[0x211]
    if not loadflags & LOADED_HIGH:
        raise fail(image, "setup header: loadflags", "a zImage (loaded low): only bzImage is supported")
    setup_sects = data[0x1F1] or 4
    if setup_sects > MAX_SETUP_SECTS:
        raise fail(image, "setup header: setup_sects", f"{setup_sects} sectors of setup (at most {MAX_SETUP_SECTS})")
    setup_size = (setup_sects + 1) * 512
    if setup_size >= len(data):
        raise fail(image, "setup header: setup_sects",
                   f"setup of {setup_size:#x} bytes leaves no kernel in a file of {len(data):#x} bytes")
    header_end = min(0x202 + data[0x201], setup_size, len(data))
    code32_start = _u(data, "<I", 0x214)
    initrd_addr_max = _u(data, "<I", 0x22C) or 0x37FFFFFF
    cmdline_size = _u(data, "<I", 0x238)
    xloadflags = _u(data, "<H", 0x236) if version >= 0x020C else 0
    kernel_alignment = _u(data, "<I", 0x230)
    relocatable = data[0x234] if version >= 0x0205 else 0
    pref_address = _u(data, "<Q", 0x258) if version >= 0x020A else code32_start
    init_size = _u(data, "<I", 0x260) if version >= 0x020A else 0

    mode = image.mode or ("long" if xloadflags & XLF_KERNEL_64 else "protected32")
    if mode == "long" and not xloadflags & XLF_KERNEL_64:
        raise fail(image, "setup header: xloadflags", "the kernel has no 64-bit entry point (XLF_KERNEL_64)")
    if mode not in ("long", "protected32"):
        raise fail(image, "mode", f"a bzImage enters in long or protected32 mode, not {mode!r}")
    load_addr = code32_start if image.address is None else image.address
    if image.address is not None and relocatable and kernel_alignment and load_addr % min(kernel_alignment, 0x100000):
        raise fail(image, "address", f"{load_addr:#x} is not aligned for this relocatable kernel")
    kernel = data[setup_size:]
    place = Placement(memory, image)
    # The decompressor runs at max(pref_address, aligned load address) and needs init_size bytes there.
    run_start = pref_address if relocatable else code32_start
    if relocatable and kernel_alignment:
        run_start = max(pref_address, align_up(load_addr, kernel_alignment))
    region_end = max(load_addr + len(kernel), run_start + init_size)
    if load_addr + len(kernel) > FOUR_GIB:
        raise fail(image, "address", "the kernel must be loaded below 4 GiB")
    if not place.in_ram(load_addr, region_end - load_addr):
        raise fail(image, "setup header: init_size",
                   f"the kernel needs RAM [{load_addr:#x}, {region_end:#x}) to load and decompress "
                   f"(init_size {init_size:#x} at {run_start:#x}); guest RAM is {place.ram_ranges()}")
    place.put(load_addr, kernel, "the kernel", "address", size=region_end - load_addr)

    cmdline = encode_cmdline(image, image.cmdline, max(cmdline_size, 255) if version >= 0x0206 else 255)
    cmdline_addr = place_cmdline(place, cmdline)
    initrd = place_initrd(place, image, low=align_up(region_end, 4096), high=min(initrd_addr_max + 1, FOUR_GIB))
    params = zero_page.write(place, setup_header=data[0x1F1:header_end], cmdline_addr=cmdline_addr,
                             cmdline_size=cmdline_size, initrd=initrd, e820=e820_map(memory))
    # The zero page's copy of code32_start names where the kernel really is.
    memory.write_u32(params + 0x214, load_addr)
    start = load_addr + 0x200 if mode == "long" else load_addr
    regs, sregs, extra = entry.enter(place, mode, start)
    regs.rsi = params
    version_str = ""
    kv = _u(data, "<H", 0x20E)
    if kv and 0x200 + kv < len(data):
        version_str = data[0x200 + kv:0x200 + kv + 256].split(b"\0")[0].decode("ascii", "replace")
    return LoadResult(loader="bzimage", start=load_addr, end=load_addr + len(kernel), regs=regs, sregs=sregs,
                      info={"protocol": f"{version >> 8}.{version & 0xFF:02d}", "mode": mode, "entry": start,
                            "zero_page": params, "cmdline": cmdline_addr, "initrd": initrd,
                            "kernel_version": version_str, "init_size": init_size, **extra})
