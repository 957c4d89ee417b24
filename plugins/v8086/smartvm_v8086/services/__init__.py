"""Services for 8086 programs: what answers an INT n the program's IVT does not handle itself.

A service is a function ``service(call) -> None`` working on a
:class:`ServiceCall`: the program's registers as they are at the INT n
(``call.state``), its memory, the machine and the monitor. It changes
registers and flags in place; the monitor commits them when the program
resumes after the INT. A service may ask for more:

* ``call.chain(vector)``: after the service, deliver ``vector`` to the
  program's own handler (the BIOS timer interrupt calls INT 1Ch this way);
* ``call.halt()``: the program waits (INT 16h with no key): it resumes by
  re-executing the INT once an interrupt was delivered or input arrived.

Services are registered per vector, optionally per AH (``register(0x21,
fn, ah=0x09)``): an AH-specific service wins over the vector-wide one. The
standard BIOS and DOS services live in :mod:`.bios` and :mod:`.dos`;
plugins add or replace services with the ``register_v8086_services`` hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from smartvm_core.errors import PluginError

from ..state import FLAG_CF, FLAG_ZF, ProgramMemory, ProgramState

if TYPE_CHECKING:
    from smartvm_core.machine import Machine

Service = Callable[["ServiceCall"], None]


class ServiceCall:
    """One INT n being served."""

    __slots__ = ("vector", "state", "memory", "machine", "monitor", "chained", "halted", "name")

    def __init__(self, vector: int, state: ProgramState, memory: ProgramMemory, machine: "Machine | None",
                 monitor: Any, name: str | None = None) -> None:
        self.vector = vector
        self.state = state
        self.memory = memory
        self.machine = machine
        self.monitor = monitor
        self.chained: list[int] = []
        self.halted = False
        #: the counter key, e.g. "INT 21h/AH=09h"
        self.name = name if name is not None else f"INT {vector:02X}h"

    def set_carry(self, on: bool) -> None:
        self.state.set_flag(FLAG_CF, on)

    def set_zero(self, on: bool) -> None:
        self.state.set_flag(FLAG_ZF, on)

    def fail(self, ah: int) -> None:
        """The BIOS error convention: CF=1, AH=status."""
        self.state.ah = ah
        self.set_carry(True)

    def ok(self, ah: int | None = 0) -> None:
        if ah is not None:
            self.state.ah = ah
        self.set_carry(False)

    def chain(self, vector: int) -> None:
        self.chained.append(vector & 0xFF)

    def halt(self) -> None:
        self.halted = True


class ServiceTable:
    """vector → (AH → service, vector-wide service), with the plugin that registered each."""

    def __init__(self) -> None:
        self.by_ah: dict[tuple[int, int], tuple[Service, str]] = {}
        self.by_vector: dict[int, tuple[Service, str]] = {}
        #: (vector, AH) → what lookup() answered (cleared by every registration)
        self._found: dict[int, tuple[Service | None, str]] = {}

    def make_register(self, plugin: str) -> Callable[..., None]:
        def register(vector: int, service: Service, *, ah: int | None = None, replace: bool = False) -> None:
            if not isinstance(vector, int) or not 0 <= vector <= 0xFF:
                raise PluginError(f"plugin {plugin}: v8086 service vector {vector!r} is not 0-255")
            if ah is not None and (not isinstance(ah, int) or not 0 <= ah <= 0xFF):
                raise PluginError(f"plugin {plugin}: v8086 service AH {ah!r} is not 0-255")
            if not callable(service):
                raise PluginError(f"plugin {plugin}: v8086 service for INT {vector:02X}h is not callable")
            table: dict[Any, tuple[Service, str]] = self.by_vector if ah is None else self.by_ah  # type: ignore
            key: Any = vector if ah is None else (vector, ah)
            if key in table and not replace:
                what = f"INT {vector:02X}h" + ("" if ah is None else f"/AH={ah:02X}h")
                raise PluginError(f"plugin {plugin}: {what} is already served by plugin {table[key][1]} "
                                  "(pass replace=True to take it over)")
            table[key] = (service, plugin)
            self._found.clear()
        return register

    def serves(self, vector: int) -> bool:
        return vector in self.by_vector or any(v == vector for v, _ in self.by_ah)

    def lookup(self, vector: int, ah: int) -> tuple[Service | None, str]:
        """The service for ``vector`` with ``ah``, and the counter key."""
        found = self._found.get(vector << 8 | ah)
        if found is None:
            found = self._found[vector << 8 | ah] = self._lookup(vector, ah)
        return found

    def _lookup(self, vector: int, ah: int) -> tuple[Service | None, str]:
        entry = self.by_ah.get((vector, ah))
        if entry is not None:
            return entry[0], f"INT {vector:02X}h/AH={ah:02X}h"
        entry = self.by_vector.get(vector)
        if entry is not None:
            return entry[0], f"INT {vector:02X}h"
        if any(v == vector for v, _ in self.by_ah):
            return None, f"INT {vector:02X}h/AH={ah:02X}h"
        return None, f"INT {vector:02X}h"

    def vectors(self) -> list[int]:
        return sorted(set(self.by_vector) | {v for v, _ in self.by_ah})
