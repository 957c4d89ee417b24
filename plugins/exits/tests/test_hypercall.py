"""Hypercalls: the ABI through the doorbell on every engine, VMCALL on soft, plugin services."""

import pytest

from exits_guests import guest, require_engine, run_guest

from smartvm_core import hookimpl
from smartvm_core.errors import PluginError
from smartvm_exits.hypercall import (DOORBELL_PORT, DOORBELL_SIGNATURE, HC_ENOSYS, HypercallTable)


def test_doorbell_services_on_each_engine(engine):
    stop, out, counts, st = run_guest(guest("hypercall16"), engine)
    assert stop.kind == "exit-code", stop
    assert stop.exit_code == 0x42, f"guest check {stop.exit_code - 0x90} failed" if stop.exit_code else stop
    assert out == b"hello via doorbell\n"
    assert st.hypercalls.calls[1] == 2 and st.hypercalls.unknown == 1  # one write, one EFAULT


def test_vmcall_on_soft():
    require_engine("soft")
    stop, out, counts, st = run_guest(guest("hypercall16", {"USE_VMCALL": 1}), "soft")
    if stop.kind == "error" and "INSN_INVALID" in stop.detail:
        pytest.xfail(f"the soft engine does not turn this mode's VMCALL into an exit yet: {stop.detail}")
    assert (stop.kind, stop.exit_code) == ("exit-code", 0x42), stop
    assert out == b"hello via doorbell\nhello via vmcall\n"
    assert counts.get("VMCALL") == 1


class EchoService:
    """A third-party plugin adding hypercall 0x100: returns a weighted sum of its four arguments."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def register_hypercalls(self, register, machine):
        def weighted(call):
            self.seen.append(call.args)
            a, b, c, d = call.args
            call.rdx = 0x77
            return a + 2 * b + 3 * c + 4 * d
        register(0x100, weighted, name="weighted")


def test_hook_register_hypercalls(engine):
    plugin = EchoService()
    stop, out, counts, st = run_guest(guest("service16"), engine, plugins=[("echo", plugin)])
    assert plugin.seen == [(1, 2, 3, 4)]
    # the guest exits with the result (1 + 4 + 9 + 16 = 30) plus 0x100 if RDX came back as 0x77
    assert (stop.kind, stop.exit_code) == ("exit-code", 30 + 0x100), stop
    assert st.hypercalls.services[0x100].plugin == "echo"


def test_registration_is_checked():
    table = HypercallTable()
    register = table.make_register("p")
    with pytest.raises(PluginError, match="reserved for standard services"):
        register(0x10, lambda call: 0)
    register(0x100, lambda call: 0, name="one")
    with pytest.raises(PluginError, match="already registered by p as one"):
        register(0x100, lambda call: 1)
    with pytest.raises(PluginError, match="not a 32-bit"):
        register(1 << 32, lambda call: 0)
    with pytest.raises(PluginError, match="not callable"):
        register(0x101, 5)


class BadService:
    @hookimpl
    def register_hypercalls(self, register, machine):
        register(0x100, lambda call: "oops", name="bad")


def test_service_returning_garbage_stops_with_error():
    require_engine("soft")
    stop, out, counts, st = run_guest(guest("service16"), "soft", plugins=[("bad", BadService())])
    assert stop.kind == "error" and "returned 'oops', not an int" in stop.detail


def test_abi_constants_match_guest_header():
    from exits_guests import ROOT
    inc = (ROOT / "guests/include/hypercall.inc").read_text()
    h = (ROOT / "guests/include/hypercall.h").read_text()
    for text in (inc, h):
        assert f"{DOORBELL_PORT:#x}" in text.lower()
        assert f"{DOORBELL_SIGNATURE:#x}" in text.lower()
        assert str(HC_ENOSYS) in text


def test_doorbell_port_is_configurable(engine):
    # the guest reads the port from CPUID.40000001H:EBX, so a moved doorbell still works
    stop, out, counts, st = run_guest(guest("service16", {"PORT_FROM_CPUID": 1}), engine,
                                      extra={"hypercalls": {"doorbell_port": 0x710}},
                                      plugins=[("echo", EchoService())])
    assert st.doorbell_port == 0x710
    assert (stop.kind, stop.exit_code) == ("exit-code", 30 + 0x100), stop
