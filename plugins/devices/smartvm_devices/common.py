"""Helpers shared by the device models: access counters, masks, IRQ claims."""

from __future__ import annotations

from typing import Any

import attrs

from smartvm_core.errors import SmartVMError

MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}


def ones(size: int) -> int:
    """All-ones for an access of ``size`` bytes (a floating ISA bus)."""
    return MASKS.get(size, (1 << (8 * max(size, 0))) - 1)


@attrs.define
class Counters:
    """Plain event counts a device keeps for the end-of-run report."""

    reads: int = 0
    writes: int = 0
    #: accesses of a width the part does not decode (answered as the part does)
    bad_size: int = 0
    #: accesses to offsets or registers the part does not have
    unknown: int = 0
    #: bytes or events lost (UART overrun, full queues, output with no listener)
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


def claim_irq(ctx: Any, irq: int, what: str = "") -> None:
    """Refuse a second device on an ISA interrupt line (edge lines are not shareable)."""
    owners: dict[int, str] = ctx.services.setdefault("isa_irq_owners", {})
    if not 0 <= irq < 16:
        raise SmartVMError(f"irq: ISA IRQ {irq} does not exist (0..15)")
    other = owners.get(irq)
    if other is not None and other != ctx.name:
        raise SmartVMError(f"irq: IRQ {irq} is already used by device {other!r}{what}")
    owners[irq] = ctx.name


def publish(ctx: Any, key: str, obj: Any) -> None:
    """Publish ``obj`` under ``services[key]``; a second provider is refused."""
    if key in ctx.services and ctx.services[key] is not obj:
        raise SmartVMError(f"a {key} is already provided by another device; only one is allowed")
    ctx.services[key] = obj
