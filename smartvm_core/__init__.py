"""Smart-VM core: the VMX model, the entry/exit loop, the plugin contract."""

from .hookspec import hookimpl

__version__ = "0.1.0"

__all__ = ["hookimpl", "__version__"]
