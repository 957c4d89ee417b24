"""Shared helpers: build a machine with this plugin and the boot loader, run a guest, read what it printed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
for p in (ROOT, ROOT / "guests", ROOT / "plugins" / "exits", ROOT / "plugins" / "boot"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from smartvm_core.testing import ENGINES, engine_availability, require_engine  # noqa: E402,F401


@pytest.fixture(params=ENGINES)
def engine(request):
    """Each guest test runs on every engine this host can run (the others skip with the probed reason)."""
    require_engine(request.param)
    return request.param


def guest(name: str, defines=None) -> Path:
    if shutil.which("nasm") is None:
        pytest.skip("nasm is not installed (it assembles the test guests)")
    from build import build_guest
    return build_guest(f"exits/{name}", defines=defines)


def machine_for(image: Path, engine: str, *, extra: dict | None = None, plugins=(), address: int = 0x1000,
                mode: str = "real", timeout: float = 30):
    """A loaded machine running ``image`` (flat, at ``address``) with smartvm-exits and smartvm-boot."""
    import smartvm_boot.plugin
    import smartvm_exits.plugin
    from smartvm_core.testing import make_machine
    config = {"machine": {"engine": engine, "memory": "1M"},
              "image": [{"path": str(image), "format": "flat", "address": address, "entry": address,
                         "mode": mode}],
              "stop": {"timeout": timeout}}
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    return make_machine(config, plugins=[("exits", smartvm_exits.plugin), ("boot", smartvm_boot.plugin),
                                         *plugins], entry_points=False)


def run_guest(image: Path, engine: str, **kwargs):
    """Run to the end; returns (stop reason, console bytes, exit counts, the exits state)."""
    m = machine_for(image, engine, **kwargs)
    try:
        stop = m.run()
        return stop, m.console.data(), m.exit_counts(), m.services.get("exits")
    finally:
        m.close()
