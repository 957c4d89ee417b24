"""Registers the ``soft`` engine."""

from ...hookspec import hookimpl


@hookimpl
def register_engines(register):  # type: ignore[no-untyped-def]
    from .engine import SoftEngine
    register(SoftEngine)
