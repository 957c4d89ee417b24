"""Loader modules are imported when a format needs them, and stay reachable as before."""

from __future__ import annotations

import subprocess
import sys

import pytest

from smartvm_boot import plugin
from smartvm_boot.loaders import bios, bootsector, bzimage, com, elf, flat, multiboot

MODULES = {"bzimage": bzimage, "multiboot": multiboot, "elf": elf, "bios": bios, "com": com,
           "bootsector": bootsector, "flat": flat}


def test_loaders_table_and_module_attributes() -> None:
    assert list(plugin.LOADERS) == list(MODULES)
    assert len(plugin.LOADERS) == len(MODULES)
    for name, module in MODULES.items():
        assert name in plugin.LOADERS
        assert plugin.LOADERS[name] is module
        assert getattr(plugin, name) is module
    assert dict(plugin.LOADERS.items()) == MODULES
    assert "vhd" not in plugin.LOADERS and plugin.LOADERS.get("vhd") is None
    with pytest.raises(AttributeError):
        plugin.no_such_loader  # noqa: B018


def test_a_loader_can_be_added_and_removed() -> None:
    plugin.LOADERS["flat2"] = flat
    try:
        assert plugin.LOADERS["flat2"] is flat and "flat2" in plugin.LOADERS
    finally:
        del plugin.LOADERS["flat2"]
    assert "flat2" not in plugin.LOADERS


def test_named_format_imports_only_its_loader(tmp_path) -> None:
    """A ``bios`` image loads through the BIOS loader without importing the ELF or bzImage loaders."""
    rom = tmp_path / "tiny.bin"
    image = bytearray(0x10000)
    image[-16:-11] = b"\xea\x00\x00\x00\xf0"  # jmp far f000:0000 at the reset vector
    rom.write_bytes(bytes(image))
    code = f"""
import sys
from pathlib import Path
from smartvm_core.images import ImageSpec
from smartvm_core.memory import GuestMemory
from smartvm_boot import plugin
loaded = lambda: sorted(m for m in sys.modules if m.startswith("smartvm_boot.loaders."))
assert loaded() == [], loaded()
mem = GuestMemory()
mem.add_ram(0, 0xA0000)
result = plugin.load(mem, ImageSpec(path=Path({str(rom)!r}), format="bios"))
assert result is not None and result.loader == "bios", result
print(" ".join(loaded()))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["smartvm_boot.loaders.bios"]
