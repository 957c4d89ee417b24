"""Fixtures for the device tests (helpers live in devhelpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the helpers module beside the tests

from devhelpers import Lines, Rig


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


@pytest.fixture
def lines():
    return Lines()
