"""Boot sector: the image's first 512 bytes at 0x7C00, entered at 0000:7C00.

This is what a PC BIOS does after INT 19h: DL holds the boot drive
(``options.drive``, default 0x80, the first hard disk), CS=DS=ES=SS=0,
SP=0x7C00. The sector must end with the 0x55 0xAA signature. The whole
image stays the drive's contents: BIOS disk services (the v8086 plugin's,
or real firmware's) read further sectors from ``info["image"]``.
"""

from __future__ import annotations

from smartvm_core.arch import modes
from smartvm_core.images import ImageSpec, LoadResult
from smartvm_core.memory import GuestMemory

from ..layout import Placement, fail

SECTOR = 512
LOAD_ADDR = 0x7C00
SIGNATURE = b"\x55\xAA"


def probe(image: ImageSpec) -> bool:
    data = image.data
    if len(data) < SECTOR or len(data) % SECTOR or data[510:512] != SIGNATURE:
        return False
    # A 512-byte file is a boot sector; larger ones only as disk images (.img).
    return len(data) == SECTOR or image.path.suffix.lower() in (".img", ".ima", ".dsk", ".hdd", ".vfd")


def load(memory: GuestMemory, image: ImageSpec) -> LoadResult:
    data = image.data
    if len(data) < SECTOR:
        raise fail(image, "size", f"a boot sector is {SECTOR} bytes, the image has {len(data)}")
    if data[510:512] != SIGNATURE:
        raise fail(image, "boot signature", f"bytes 510-511 are {data[510:512].hex()}, not 55aa")
    drive = image.options.get("drive", 0x80)
    if not isinstance(drive, int) or not 0 <= drive <= 0xFF:
        raise fail(image, "options.drive", f"boot drive must be a BIOS drive number 0-255, not {drive!r}")
    place = Placement(memory, image)
    place.put(LOAD_ADDR, data[:SECTOR], "the boot sector", "address")
    regs, sregs = modes.real_mode_state(0, LOAD_ADDR, ds=0, sp=LOAD_ADDR)
    regs.rdx = drive
    return LoadResult(loader="bootsector", start=LOAD_ADDR, end=LOAD_ADDR + SECTOR, regs=regs, sregs=sregs,
                      info={"drive": drive, "image": str(image.path), "image_size": len(data)})
