"""Registers the ``kvm`` engine.

By reference: the ctypes bindings are imported only when the ``kvm`` engine
is chosen, probed or listed.
"""

from __future__ import annotations

from typing import Callable

from ...hookspec import hookimpl


@hookimpl
def register_engines(register: Callable[..., None]) -> None:
    register("smartvm_core.engines.kvm.engine:KvmEngine", name="kvm")
