"""Interrupt lines and the controller they feed.

A device is handed an :class:`IrqLine` (vm-superio's ``Trigger``): it raises,
lowers or pulses its line and knows nothing else. The machine's
:class:`InterruptRouter` forwards line changes to whichever interrupt
controller the experiment uses: a user-space model (the devices plugin's
8259A pair, registered with :meth:`InterruptRouter.set_controller`) or the
engine's own (``kvm`` in-kernel irqchip). Before each VM entry the loop asks
a user-space controller for a pending vector and injects it through the
VM-entry interruption-information field.
"""

from __future__ import annotations

import threading
from typing import Callable, Protocol


class InterruptController(Protocol):
    """A user-space interrupt controller (the 8259A pair, an I/O APIC model)."""

    def set_irq(self, line: int, level: bool) -> None:
        """A device line changed level."""

    def pending(self) -> bool:
        """True if an unmasked interrupt is waiting for the CPU (INTR asserted)."""

    def acknowledge(self) -> int:
        """The CPU's interrupt-acknowledge cycle: return the vector (spurious if none)."""


class IrqLine:
    """One interrupt line as a device sees it."""

    __slots__ = ("line", "_router", "level")

    def __init__(self, line: int, router: "InterruptRouter") -> None:
        self.line = line
        self._router = router
        self.level = False

    def set_level(self, level: bool) -> None:
        self.level = bool(level)
        self._router.set_irq(self.line, self.level)

    def raise_(self) -> None:
        self.set_level(True)

    def lower(self) -> None:
        self.set_level(False)

    def trigger(self) -> None:
        """An edge: raise then lower (push-button interrupt)."""
        self._router.set_irq(self.line, True)
        self._router.set_irq(self.line, False)


class InterruptRouter:
    """Routes device interrupt lines to the active interrupt controller."""

    def __init__(self, lines: int = 24) -> None:
        self.lines = lines
        self.controller: InterruptController | None = None
        self._engine_set_irq: Callable[[int, bool], None] | None = None
        self._lines = [IrqLine(i, self) for i in range(lines)]
        #: counts of line assertions while no controller was attached
        self.dropped = 0
        #: called when a line changes, to wake a halted vCPU
        self.on_change: Callable[[], None] | None = None
        self._lock = threading.RLock()

    def line(self, n: int) -> IrqLine:
        if not 0 <= n < self.lines:
            raise ValueError(f"IRQ line {n} does not exist (0..{self.lines - 1})")
        return self._lines[n]

    def set_controller(self, controller: InterruptController) -> None:
        if self.controller is not None and self.controller is not controller:
            raise ValueError("an interrupt controller is already attached")
        self.controller = controller

    def route_to_engine(self, set_irq: Callable[[int, bool], None]) -> None:
        """Send line changes to the engine's own controller (``KVM_IRQ_LINE``)."""
        self._engine_set_irq = set_irq

    @property
    def engine_routed(self) -> bool:
        """True when lines go to the engine's own interrupt controller (KVM in-kernel irqchip)."""
        return self._engine_set_irq is not None

    def set_irq(self, line: int, level: bool) -> None:
        with self._lock:
            if self._engine_set_irq is not None:
                self._engine_set_irq(line, level)
            elif self.controller is not None:
                self.controller.set_irq(line, level)
            elif level:
                self.dropped += 1
        if level and self.on_change is not None:
            self.on_change()

    def pending(self) -> bool:
        c = self.controller
        return c is not None and self._engine_set_irq is None and c.pending()

    def acknowledge(self) -> int:
        with self._lock:
            assert self.controller is not None
            return self.controller.acknowledge()
