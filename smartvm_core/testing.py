"""Helpers for testing plugins and guests: build a machine in-process.

Use from any test (core or plugin)::

    from smartvm_core.testing import run_experiment

    result = run_experiment({"machine": {"engine": "soft", "memory": "1M"},
                             "image": [{"path": str(image), "format": "flat", "address": 0x7C00,
                                        "entry": 0x7C00, "mode": "real"}],
                             "device": [{"type": "isa-debug"}]},
                            plugins=[("mine", MyPlugin())])
    assert result.console == "hello\\n"

The plugin manager is built fresh for every machine. ``entry_points=True``
(the default) loads the installed plugins as ``smartvm run`` would; pass
``entry_points=False`` and list plugins explicitly for unit tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import attrs

from .builder import build_machine
from .console import Console
from .machine import Machine, StopReason
from .plugins import get_plugin_manager
from .report import RunReport, build_run_report


@attrs.define
class RunResult:
    stop: StopReason
    console: str
    report: RunReport
    exit_counts: dict[str, int]
    machine: Machine


def make_machine(config: dict[str, Any], *, plugins: Iterable[tuple[str, Any]] = (),
                 entry_points: bool = True, disable: Iterable[str] = (), base_dir: Path | None = None) -> Machine:
    """Build a loaded machine from an experiment given as a TOML-shaped dict."""
    pm = get_plugin_manager(disable=disable, plugins=plugins, entry_points=entry_points, base_dir=base_dir)
    # validate the dict as if it were a file, through the same path as real experiments
    from .builder import config_sections
    from .config import build_experiment
    experiment = build_experiment(config, config_sections(pm), source="<test>", base_dir=base_dir or Path.cwd())
    pm.hook.configure.call_historic(kwargs={"experiment": experiment})
    return build_machine(pm, experiment, console=Console(None))


def run_experiment(config: dict[str, Any], **kwargs: Any) -> RunResult:
    """Build, run and close a machine; return what happened."""
    machine = make_machine(config, **kwargs)
    try:
        stop = machine.run()
        report = build_run_report(machine)
        return RunResult(stop, machine.console.text(), report, machine.exit_counts(), machine)
    finally:
        machine.close()


#: the core's engines, for tests that run a guest on each
ENGINES = ("soft", "kvm")

_availability: dict[str, Any] = {}


def engine_availability(name: str) -> Any:
    """The :class:`~smartvm_core.engines.base.Availability` of a registered engine (probed once)."""
    if name not in _availability:
        from .builder import registered_engines
        from .engines.base import Availability
        engines = registered_engines(get_plugin_manager(entry_points=False))
        cls = engines.get(name)
        _availability[name] = (cls.probe() if cls is not None
                               else Availability(False, f"engine {name} is not registered"))
    return _availability[name]


def require_engine(name: str) -> None:
    """Skip the calling test, with the probed reason, unless engine ``name`` can run here."""
    import pytest
    avail = engine_availability(name)
    if not avail.usable:
        pytest.skip(f"{name} engine unusable here: {avail.reason}")
