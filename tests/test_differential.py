"""Engines agree: the same guest on ``soft`` and on ``kvm`` gives the same serial output and I/O exits.

Each guest runs through the whole framework (builder, loop, buses, devices)
on both engines. A recording exit handler, first in the IO_INSTRUCTION
chain, notes every port access and passes the exit on. String I/O is
flattened into its element accesses, because engines may split one
``REP INS/OUTS`` into differently sized batches of exits; the accesses and
their order must still match. Skips cleanly where either engine is unusable.
"""

from __future__ import annotations

import shutil

import pytest

from smartvm_core import hookimpl
from smartvm_core.engines.kvm.engine import KvmEngine
from smartvm_core.vmx import ExitReason

if shutil.which("nasm") is None:
    pytest.skip("nasm is not installed", allow_module_level=True)

from build import build_guest  # noqa: E402

try:
    from smartvm_core.engines.soft import SoftEngine
except Exception as e:  # noqa: BLE001 - the soft engine may be missing or broken
    SoftEngine = None
    _SOFT_ERROR = str(e)


def _usable(name: str) -> None:
    if name == "soft":
        if SoftEngine is None:
            pytest.skip(f"soft engine cannot be imported: {_SOFT_ERROR}")
        a = SoftEngine.probe()
    else:
        a = KvmEngine.probe()
    if not a.usable:
        pytest.skip(f"{name} engine unusable here: {a.reason}")


class IoRecorder:
    """Records port accesses; never handles the exit (returns False)."""

    __name__ = "io-recorder"

    def __init__(self) -> None:
        self.accesses: list[tuple] = []
        self.pending_in: list[tuple] = []

    @hookimpl
    def register_exit_handlers(self, register, machine) -> None:
        def record(vcpu, exit) -> bool:
            size = exit.size
            if exit.data is not None:
                n = exit.count
                if exit.is_in:
                    self.accesses.extend(("in", exit.port, size) for _ in range(n))
                else:
                    self.accesses.extend(("out", exit.port, size, int.from_bytes(exit.data[i * size:(i + 1) * size],
                                                                               "little")) for i in range(n))
            elif exit.is_in:
                self.accesses.append(("in", exit.port, size))
            else:
                self.accesses.append(("out", exit.port, size, exit.value))
            return False
        register(ExitReason.IO_INSTRUCTION, record, name="record", priority=1000)


GUESTS = {
    "hello": dict(guest="demo/hello", at=0x7C00, devices=[{"type": "uart"}]),
    "outloop": dict(guest="soft/outloop", at=0x7C00, defines={"COUNT": 40}, devices=[{"type": "isa-debug"}]),
    "exits16": dict(guest="soft/exits16", at=0x1000, devices=[{"type": "isa-debug"}]),
    "kvm-exits16": dict(guest="kvm/exits16", at=0x1000, devices=[{"type": "isa-debug"}]),
}


def _run(engine: str, spec: dict):
    from smartvm_core.testing import run_experiment
    image = build_guest(spec["guest"], defines=spec.get("defines"))
    rec = IoRecorder()
    result = run_experiment({
        "machine": {"engine": engine, "memory": "1M"},
        "image": [{"path": str(image), "format": "flat", "address": spec["at"], "entry": spec["at"], "mode": "real"}],
        "device": spec["devices"],
        "stop": {"timeout": 60, "max_exits": 20000},
    }, plugins=[("io-recorder", rec)])
    return result, rec.accesses


@pytest.mark.parametrize("name", sorted(GUESTS))
def test_soft_and_kvm_agree(name):
    _usable("soft")
    _usable("kvm")
    spec = GUESTS[name]
    soft, soft_io = _run("soft", spec)
    kvm, kvm_io = _run("kvm", spec)
    if kvm.stop.kind == "error" and "KVM internal error" in kvm.stop.detail:
        pytest.skip(f"this host's KVM cannot run {name}: {kvm.stop.detail}")
    assert soft_io, "the guest made no port access: nothing was compared"
    assert kvm.console == soft.console
    assert kvm_io == soft_io
    assert (kvm.stop.kind, kvm.stop.exit_code) == (soft.stop.kind, soft.stop.exit_code)
