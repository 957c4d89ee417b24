"""Whole-machine runs on the soft engine through smartvm_core.testing (builder, loop, buses, devices)."""

import shutil

import pytest

from smartvm_core.testing import run_experiment

if shutil.which("nasm") is None:
    pytest.skip("nasm is not installed", allow_module_level=True)

from build import build_guest  # noqa: E402


def _run(guest, *, mode="real", at=0x1000, defines=None, extra=None):
    image = build_guest(guest, defines=defines)
    config = {
        "machine": {"engine": "soft", "memory": "2M"},
        "image": [{"path": str(image), "format": "flat", "address": at, "entry": at, "mode": mode}],
        "device": [{"type": "isa-debug"}],
        "stop": {"timeout": 60, "max_exits": 5000},
    }
    config.update(extra or {})
    return run_experiment(config)


def test_string_io_reaches_debugcon_in_one_exit_and_guest_stops():
    r = _run("soft/strio16")
    assert r.console == "hello from rep outsb\n"
    assert r.stop.kind == "exit-code", r.stop
    assert r.exit_counts.get("IO_INSTRUCTION", 0) <= 3     # one REP OUTSB exit + the exit port


def test_msr_and_cr_exits_handled_by_the_exits_plugin():
    r = _run("soft/msr32", mode="protected32")
    # PAT reads its reset value; the MSR store refuses an unknown MSR with #GP, which the guest counts
    assert r.console == "pat=0007040600070406 gp=1\n", (r.stop, r.console)
    # the unknown MSR exits; PAT and SYSENTER_CS are CPU state the machine's MSR bitmap lets through
    assert r.exit_counts.get("RDMSR", 0) >= 1
