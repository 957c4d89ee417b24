"""The ``soft`` engine: a software CPU (unicorn) with the VT-x model on top."""

from .engine import SoftEngine, SoftVcpu

__all__ = ["SoftEngine", "SoftVcpu"]
