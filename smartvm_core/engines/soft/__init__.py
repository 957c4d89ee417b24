"""The ``soft`` engine: a software CPU (unicorn) with the VT-x model on top.

``SoftEngine`` and ``SoftVcpu`` are importable from here; the engine module,
and unicorn with it, load on first access, so registering the engine (its
plugin module lives in this package) imports neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import SoftEngine, SoftVcpu

__all__ = ["SoftEngine", "SoftVcpu"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import engine
        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
