"""The loop's stop conditions and the unhandled-exit report, with real guests on both engines."""

from __future__ import annotations

import pytest

from guests_build import build_guest
from smartvm_core.testing import ENGINES, require_engine, run_experiment


@pytest.fixture(params=ENGINES)
def engine(request):
    require_engine(request.param)
    return request.param


def config(engine, mode, **extra):
    img = build_guest("demo/stops", defines={"MODE": mode})
    return {"machine": {"engine": engine, "memory": "1M"}, "device": [{"type": "isa-debug"}],
            "image": [{"path": str(img), "format": "flat", "address": 0x7C00, "entry": 0x7C00,
                       "mode": "real"}], **extra}


def test_guest_exit_code(engine):
    r = run_experiment(config(engine, 1))
    assert (r.stop.kind, r.stop.exit_code) == ("exit-code", 15)
    assert r.console == "bye\n"


def test_max_exits(engine):
    r = run_experiment(config(engine, 0, stop={"max_exits": 500}))
    assert r.stop.kind == "max-exits"
    assert sum(r.exit_counts.values()) == 500


def test_console_marker(engine):
    r = run_experiment(config(engine, 0, stop={"marker": "ready"}))
    assert r.stop.kind == "marker" and r.console.startswith("ready")


def test_wall_time_limit(engine):
    r = run_experiment(config(engine, 0, stop={"timeout": 0.3}))
    assert r.stop.kind == "timeout"
    assert r.exit_counts["IO_INSTRUCTION"] > 6


def test_halted_forever_is_a_clean_stop(engine):
    r = run_experiment(config(engine, 2))
    assert r.stop.kind == "halted" and not r.stop.failed
    assert r.console == "halt\n"


def test_unhandled_exit_report_without_the_exits_plugin(engine):
    # nobody handles HLT once smartvm-exits is left out
    r = run_experiment(config(engine, 2), disable=["exits"])
    assert r.stop.kind == "unhandled-exit" and r.stop.failed
    text = "\n".join(r.stop.report)
    assert "unhandled VM exit on vCPU 0: HLT (12)" in text
    assert "RIP=" in text and "mode=real" in text
    assert "code at RIP (real mode):" in text
    if engine == "soft":  # KVM has already moved RIP past the HLT
        assert "hlt" in text
