import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "guests"))

from smartvm_core.engines.soft import SoftEngine  # noqa: E402

_avail = SoftEngine.probe()
if not _avail.usable:
    pytest.skip(f"soft engine unusable: {_avail.reason}", allow_module_level=True)
