"""Errors Smart-VM reports to its users.

Every error a user can cause (a bad experiment file, a malformed image, an
engine that cannot run here) is a :class:`SmartVMError`. The CLI prints its
message, without a traceback, and exits with status 2. Anything else is a bug
in Smart-VM or a plugin and is shown with its traceback.
"""

from __future__ import annotations


class SmartVMError(Exception):
    """Base of all user-facing errors: the message says what and where."""


class ConfigError(SmartVMError):
    """An experiment file, command-line flag or plugin option is wrong.

    The message names the file (or ``<command line>``), the key and the reason.
    """

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {reason}")


class ImageError(SmartVMError):
    """A guest image is unknown, truncated or malformed."""

    def __init__(self, path: str, field: str, reason: str) -> None:
        self.path = path
        self.field = field
        self.reason = reason
        where = f"{path}: {field}" if field else path
        super().__init__(f"{where}: {reason}")


class SnapshotError(SmartVMError):
    """A snapshot file cannot be read or does not fit this machine."""


class EngineUnavailable(SmartVMError):
    """The requested engine cannot run on this host (the reason says why)."""


class EngineError(SmartVMError):
    """The engine failed while running a guest (KVM error, emulator fault)."""


class UnsupportedControl(SmartVMError):
    """An experiment asked an engine for a VMX control it cannot provide."""


class GuestMemoryError(SmartVMError):
    """An access to guest-physical memory outside what the guest has."""

    def __init__(self, gpa: int, size: int, reason: str) -> None:
        self.gpa = gpa
        self.size = size
        super().__init__(f"guest-physical access [{gpa:#x}, +{size:#x}): {reason}")


class BusConflict(SmartVMError):
    """Two devices claim overlapping ranges on one bus."""


class PluginError(SmartVMError):
    """A plugin broke the contract (bad registration, misspelt hook)."""
