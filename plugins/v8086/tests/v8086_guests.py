"""Helpers for the v8086 tests: build the guests in guests/v8086 and run them on a route and engine."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "guests"))

from build import build_guest  # noqa: E402

from smartvm_core.testing import run_experiment  # noqa: E402

ROUTES = ("exception-bitmap", "stub", "real-mode")


def route_skip_reason(engine: str, route: str) -> str | None:
    """Why ``route`` cannot run on ``engine`` here (found by probing), or None."""
    if engine == "soft":
        from smartvm_core.engines.soft.engine import SoftEngine
        avail = SoftEngine.probe()
        return None if avail.usable else f"soft engine unusable: {avail.reason}"
    from smartvm_core.engines.kvm.engine import KvmEngine
    avail = KvmEngine.probe()
    if not avail.usable:
        return f"kvm unusable: {avail.reason}"
    if route != "real-mode" and not KvmEngine.host_supports_v8086():
        return "this host's KVM cannot run virtual-8086 mode (EFLAGS.VM set through KVM_SET_REGS does not stick)"
    if route == "exception-bitmap":
        from smartvm_core.memory import GuestMemory
        from smartvm_core.engines.base import EngineOptions
        from smartvm_core.vmx import Vmcs, VmcsField
        vmcs = Vmcs()
        vmcs[VmcsField.EXCEPTION_BITMAP] = 1 << 13
        engine_obj = KvmEngine(GuestMemory(), EngineOptions())
        try:
            problems = engine_obj.unsupported_controls(vmcs)
        finally:
            engine_obj.close()
        if problems:
            return "kvm cannot exit on #GP through the exception bitmap: " + "; ".join(problems)
    return None


def plugins():
    import smartvm_boot.plugin as boot
    import smartvm_devices.plugin as devices
    import smartvm_exits.plugin as exits
    import smartvm_v8086.plugin as v8086
    return [("boot", boot), ("exits", exits), ("devices", devices), ("v8086", v8086)]


def run_guest(name: str, *, engine: str, route: str, fmt: str, devices=(), v8086=None, extra_plugins=(),
              defines=None, memory="1M", timeout=20):
    image = build_guest(f"v8086/{name}", defines=defines)
    cfg = {"machine": {"engine": engine, "memory": memory},
           "image": [{"path": str(image), "format": fmt}],
           "device": [dict(d) for d in devices],
           "v8086": {"route": route, **(v8086 or {})},
           "stop": {"timeout": timeout}}
    return run_experiment(cfg, entry_points=False, plugins=[*plugins(), *extra_plugins])




_PM_IRET: dict[str, str | None] = {}


def kvm_protected_mode_iret_reason() -> str | None:
    """Why this host's KVM cannot IRET in 32-bit protected mode (found by running a probe guest), or None."""
    if "reason" not in _PM_IRET:
        r = run_guest("pmode", engine="kvm", route="real-mode", fmt="com", defines={"IRET_PROBE": 1},
                      devices=[{"type": "debugcon"}, {"type": "isa-debug-exit"}])
        ok = r.stop.kind == "exit-code" and r.stop.exit_code == 33
        _PM_IRET["reason"] = None if ok else f"this host's KVM cannot IRET in protected mode: {r.stop.detail}"
    return _PM_IRET["reason"]
