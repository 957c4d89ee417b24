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

Each loader module is imported the first time it is needed (its ``probe`` or
its ``load``), not when the plugin is: a run that names its format (``format =
"bios"``) imports that loader only, and detection stops importing at the first
format that matches. ``LOADERS[name]`` and ``smartvm_boot.plugin.bzimage``
(etc.) still give the modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from smartvm_core import hookimpl
from smartvm_core.images import ImageSpec, LoadResult

from .layout import fail

if TYPE_CHECKING:
    from smartvm_core.machine import Machine


class _LoaderTable(MutableMapping[str, Any]):
    """Format name → loader module, each module imported on first lookup.

    A dict for every purpose a caller has (``in``, iteration in insertion
    order, ``[name]``, adding or replacing a loader); a value given as a
    string is the dotted name of the module, imported when first asked for.
    """

    def __init__(self, names: dict[str, str]) -> None:
        self._entries: dict[str, Any] = dict(names)

    def __getitem__(self, name: str) -> Any:
        value = self._entries[name]
        if isinstance(value, str):
            value = self._entries[name] = importlib.import_module(value)
        return value

    def __setitem__(self, name: str, loader: Any) -> None:
        self._entries[name] = loader

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"LOADERS({', '.join(self._entries)})"


LOADERS: MutableMapping[str, Any] = _LoaderTable({
    "bzimage": "smartvm_boot.loaders.bzimage",
    "multiboot": "smartvm_boot.loaders.multiboot",
    "elf": "smartvm_boot.loaders.elf",
    "bios": "smartvm_boot.loaders.bios",
    "com": "smartvm_boot.loaders.com",
    "bootsector": "smartvm_boot.loaders.bootsector",
    "flat": "smartvm_boot.loaders.flat",
})
_LOADER_MODULES = ("bios", "bootsector", "bzimage", "com", "elf", "flat", "multiboot")


def __getattr__(name: str) -> ModuleType:
    """``smartvm_boot.plugin.bzimage`` (etc.): the loader module, imported on first use."""
    if name in _LOADER_MODULES:
        module = importlib.import_module(f"smartvm_boot.loaders.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
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
