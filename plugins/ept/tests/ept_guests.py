"""Helpers: a machine running guests/ept/writes.asm with a script of guest writes."""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
for p in (ROOT, ROOT / "guests", ROOT / "plugins" / "ept", ROOT / "plugins" / "exits", ROOT / "plugins" / "boot"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from smartvm_core.testing import ENGINES, engine_availability, require_engine  # noqa: E402,F401
SCRIPT_GPA = 0x800
ROUND = object()


@pytest.fixture(params=ENGINES)
def engine(request):
    """Each guest test runs on every engine this host can run (the others skip with the probed reason)."""
    require_engine(request.param)
    return request.param


def writer_image() -> Path:
    if shutil.which("nasm") is None:
        pytest.skip("nasm is not installed (it assembles the test guests)")
    from build import build_guest
    return build_guest("ept/writes")


def script(*steps) -> bytes:
    """Steps: (gpa, value) word stores, (gpa, byte, count) rep stosb, or ROUND."""
    out = bytearray()
    for step in steps:
        if step is ROUND:
            out += struct.pack("<H", 0)
            continue
        gpa, value, *count = step
        assert gpa < 0x100000
        seg = (gpa >> 4) & 0xFF00
        assert seg, "the writer cannot address page 0 (its script lives there)"
        off = gpa - seg * 16
        out += struct.pack("<HHHH", seg, off, value, count[0] if count else 0)
    out += struct.pack("<H", 0xFFFF)
    assert len(out) < 0x800
    return bytes(out)


class Port80:
    """A port-I/O device at 0x80 that calls ``on_round`` at the end of each round."""

    def __init__(self, on_round):
        self.on_round = on_round

    def read(self, offset, size):
        return 0xFF

    def write(self, offset, size, value):
        self.on_round()


def make(engine: str, steps, *, ept: dict | None = None, memory: str = "1M", on_round=None):
    """A loaded machine with smartvm-ept (and -exits, -boot) running the writer on ``steps``."""
    import smartvm_boot.plugin
    import smartvm_ept.plugin
    import smartvm_exits.plugin
    from smartvm_core.testing import make_machine
    config = {"machine": {"engine": engine, "memory": memory},
              "image": [{"path": str(writer_image()), "format": "flat", "address": 0x1000, "entry": 0x1000,
                         "mode": "real"}],
              "stop": {"timeout": 60}}
    if ept:
        config["ept"] = ept
    m = make_machine(config, plugins=[("exits", smartvm_exits.plugin), ("boot", smartvm_boot.plugin),
                                      ("ept", smartvm_ept.plugin)], entry_points=False)
    m.memory.write(SCRIPT_GPA, script(*steps))
    if on_round is not None:
        m.pio.register(0x80, 1, Port80(on_round), name="round")
    return m
