"""Entry point of the smartvm-boot plugin (group ``smartvm``, name ``boot``).

``load_image`` detects the image's format (or takes the one the user named)
and hands it to that format's loader. Detection order, first match wins:

1. bzImage: ``HdrS`` at 0x202 and the 0x55AA boot flag;
2. multiboot: a multiboot v1 header with a valid checksum in the first 8 KiB
   (ELF or a.out kludge);
3. ELF: the ELF magic (PVH note, ELF64 or ELF32 entry);
4. BIOS ROM: a ``.rom``/``.bin``/``.fd`` file of 64 KiB-16 MiB whose reset
   vector (16 bytes from the end) holds a jump;
5. .COM: a ``.com`` file of at most 65278 bytes that is not an MZ program;
6. boot sector: a 512-byte file (or ``.img`` disk image) with the 0x55AA signature;
7. flat: only when named, or when an ``address`` or ``mode`` is given.

An image nothing recognises is left to other plugins (``None``); the core
then refuses it. A recognised but malformed image raises ImageError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smartvm_core import hookimpl
from smartvm_core.images import ImageSpec, LoadResult

from .layout import fail
from .loaders import bios, bootsector, bzimage, com, elf, flat, multiboot

if TYPE_CHECKING:
    from smartvm_core.machine import Machine

LOADERS = {
    "bzimage": bzimage,
    "multiboot": multiboot,
    "elf": elf,
    "bios": bios,
    "com": com,
    "bootsector": bootsector,
    "flat": flat,
}
DETECTION_ORDER = ("bzimage", "multiboot", "elf", "bios", "com", "bootsector")


def detect(image: ImageSpec) -> str | None:
    """The format name of ``image`` (see the module docstring), or None."""
    for name in DETECTION_ORDER:
        if LOADERS[name].probe(image):
            return name
    if image.address is not None or image.mode is not None:
        return "flat"
    return None


def read_image(image: ImageSpec) -> None:
    try:
        image.data
    except OSError as e:
        raise fail(image, "", f"cannot read the image: {e.strerror or e}") from e


def load(machine_memory, image: ImageSpec) -> LoadResult | None:
    """Load ``image`` into ``machine_memory``; None if the format is not recognised."""
    read_image(image)
    name = image.format
    if name == "auto":
        name = detect(image)
        if name is None:
            return None
    elif name not in LOADERS:
        return None  # a format some other plugin may know
    return LOADERS[name].load(machine_memory, image)


@hookimpl
def load_image(machine: "Machine", image: ImageSpec) -> LoadResult | None:
    return load(machine.memory, image)
