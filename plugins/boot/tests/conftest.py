"""Fixtures for the smartvm-boot tests: a PC memory layout and image specs from bytes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from smartvm_core.builder import ram_layout
from smartvm_core.images import ImageSpec
from smartvm_core.memory import GuestMemory

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "guests"))

# The image builders, importable as ``boot_test_images`` without putting this folder on
# sys.path (where its conftest.py would shadow other plugins' ``from conftest import``).
_spec = importlib.util.spec_from_file_location("boot_test_images", Path(__file__).resolve().parent / "boot_test_images.py")
_mod = importlib.util.module_from_spec(_spec)
sys.modules["boot_test_images"] = _mod
_spec.loader.exec_module(_mod)


def pc_memory(size: int) -> GuestMemory:
    mem = GuestMemory()
    for name, gpa, length in ram_layout(size):
        mem.add_ram(gpa, length, name)
    return mem


@pytest.fixture
def make_memory():
    """``make_memory(size)``: a PC RAM layout of ``size`` bytes, closed after the test."""
    made = []

    def make(size: int) -> GuestMemory:
        made.append(pc_memory(size))
        return made[-1]
    yield make
    for mem in made:
        mem.close()


@pytest.fixture
def memory():
    mem = pc_memory(64 << 20)
    yield mem
    mem.close()


@pytest.fixture
def make_image(tmp_path):
    """``make_image(data, name="image.bin", **fields)`` writes the file and returns its ImageSpec."""
    def make(data: bytes, name: str = "image.bin", **fields) -> ImageSpec:
        path = tmp_path / name
        path.write_bytes(data)
        return ImageSpec(path=path, **fields)
    return make
