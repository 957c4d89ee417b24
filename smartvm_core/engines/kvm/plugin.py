"""Registers the ``kvm`` engine."""

from __future__ import annotations

from typing import Callable

from ...hookspec import hookimpl


@hookimpl
def register_engines(register: Callable[..., None]) -> None:
    from .engine import KvmEngine
    register(KvmEngine)
