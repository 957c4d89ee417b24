"""Images to load and what a loader reports back.

A loader (``load_image`` hook) reads an :class:`ImageSpec`, writes guest
memory and returns a :class:`LoadResult`: plain data saying where the image
went and in which state the boot vCPU must start. The core, not the loader,
then sets the vCPU (:func:`smartvm_core.boot_state.apply_entry_state`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from .cpu import Registers, SpecialRegisters


@attrs.define
class ImageSpec:
    """One image named by the experiment (``[[image]]`` or the command line)."""

    path: Path
    #: ``auto`` or a loader name (``flat``, ``bootsector``, ``com``, ``bios``, ``multiboot``, ``elf``, ``bzimage``)
    format: str = "auto"
    address: int | None = None
    entry: int | None = None
    #: CPU mode for flat images: ``real``, ``protected32``, ``long``
    mode: str | None = None
    cmdline: str = ""
    initrd: Path | None = None
    modules: list[str] = attrs.Factory(list)
    options: dict[str, Any] = attrs.Factory(dict)
    _data: bytes | None = attrs.field(default=None, alias="data")

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = self.path.read_bytes()
        return self._data


@attrs.define
class LoadResult:
    """What a loader did, and the vCPU state it asks for.

    ``regs``/``sregs`` are the complete entry state of the boot vCPU (``None``
    keeps the reset state). ``info`` holds format facts for the report.
    """

    loader: str
    start: int
    end: int
    regs: Registers | None = None
    sregs: SpecialRegisters | None = None
    #: MSRs to set on the boot vCPU (EFER is part of sregs)
    msrs: dict[int, int] = attrs.Factory(dict)
    info: dict[str, Any] = attrs.Factory(dict)
