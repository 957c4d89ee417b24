"""Triple fault: stop with a report, or reset as [triple_fault] says."""

import pytest

from exits_guests import guest, run_guest

from smartvm_core.errors import ConfigError


def test_stop_with_report(engine):
    stop, out, counts, st = run_guest(guest("triple32"), engine, mode="protected32")
    assert stop.kind == "triple-fault" and stop.failed, stop
    report = "\n".join(stop.report)
    assert "triple fault on vCPU 0" in report and "registers:" in report and "code at RIP" in report


def test_reset_restarts_the_guest(engine):
    # the guest counts its starts in memory (which a reset keeps) and exits on the third
    stop, out, counts, st = run_guest(guest("triple32"), engine, mode="protected32", extra={"triple_fault": {"action": "reset"}})
    assert (stop.kind, stop.exit_code) == ("exit-code", 3), stop
    assert st.triple_fault.resets == 2


def test_reset_gives_up_after_max_resets(engine):
    stop, out, counts, st = run_guest(guest("triple32"), engine, mode="protected32",
                                      extra={"triple_fault": {"action": "reset", "max_resets": 1}})
    assert stop.kind == "triple-fault" and "after 1 resets" in stop.detail, stop


def test_bad_action_is_refused():
    with pytest.raises(ConfigError, match="triple_fault.action"):
        run_guest(guest("triple32"), "soft", extra={"triple_fault": {"action": "explode"}})
