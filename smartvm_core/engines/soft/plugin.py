"""Registers the ``soft`` engine.

By reference: the engine module (and unicorn under it) is imported only when
the ``soft`` engine is chosen, probed or listed, not when another engine runs.
"""

from __future__ import annotations

from typing import Callable

from ...hookspec import hookimpl


@hookimpl
def register_engines(register: Callable[..., None]) -> None:
    register("smartvm_core.engines.soft.engine:SoftEngine", name="soft")
