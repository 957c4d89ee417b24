"""Fixtures for the smartvm-v8086 tests: every (engine, route) this host can run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# The helpers, importable as ``v8086_guests`` without putting this folder on sys.path
# (where this conftest.py would shadow other plugins' ``from conftest import``).
_spec = importlib.util.spec_from_file_location("v8086_guests", Path(__file__).resolve().parent / "v8086_guests.py")
v8086_guests = importlib.util.module_from_spec(_spec)
sys.modules["v8086_guests"] = v8086_guests
_spec.loader.exec_module(v8086_guests)

ENGINE_ROUTES = [pytest.param((e, r), id=f"{e}-{r}") for e in ("soft", "kvm") for r in v8086_guests.ROUTES]


@pytest.fixture(params=ENGINE_ROUTES)
def engine_route(request):
    engine, route = request.param
    reason = v8086_guests.route_skip_reason(engine, route)
    if reason:
        pytest.skip(reason)
    return engine, route
