"""The plugin as a whole: handler order, configuration sections, state."""

import struct

import pytest

from exits_guests import guest, machine_for, require_engine

from smartvm_core import hookimpl
from smartvm_core.errors import ConfigError
from smartvm_core.vmx import ExitReason


class FixedVendor:
    """A third-party plugin with its own CPUID handler: leaf 0 says "ThirdParty!!", other leaves pass on."""

    @hookimpl
    def register_exit_handlers(self, register, machine):
        def handle_cpuid(vcpu, exit):
            regs = vcpu.get_regs()
            if regs.rax & 0xFFFFFFFF != 0:
                return False  # not ours: the standard handler answers
            b, d, c = struct.unpack("<3I", b"ThirdParty!!")
            regs.rax, regs.rbx, regs.rcx, regs.rdx = 0x40, b, c, d
            vcpu.set_regs(regs)
            vcpu.skip_instruction()
            return True
        register(ExitReason.CPUID, handle_cpuid, name="handle_cpuid")


def test_third_party_handler_runs_before_the_standard_one(engine):
    if engine == "kvm":
        pytest.skip("KVM answers CPUID in the kernel (from KVM_SET_CPUID2): no CPUID exit to hand to either handler")
    m = machine_for(guest("cpuid16"), engine, plugins=[("thirdparty", FixedVendor())])
    try:
        assert m.dispatch.chain(ExitReason.CPUID) == ["thirdparty:handle_cpuid", "exits:handle_cpuid"]
        stop = m.run()
        assert (stop.kind, stop.exit_code) == ("exit-code", 0), stop
        data = m.console.data()
    finally:
        m.close()
    a, b, c, d = struct.unpack_from("<4I", data, 0)
    assert a == 0x40 and struct.pack("<3I", b, d, c) == b"ThirdParty!!"   # leaf 0: third party
    assert struct.unpack_from("<I", data, 16)[0] == 0x6FB                   # leaf 1: the standard policy


def test_standard_handlers_are_registered_last():
    require_engine("soft")
    m = machine_for(guest("hlt16"), "soft", plugins=[("thirdparty", FixedVendor())])
    try:
        table = m.dispatch.describe()
    finally:
        m.close()
    for reason in ("CPUID", "RDMSR", "WRMSR", "HLT", "CR_ACCESS", "VMCALL", "INVD", "WBINVD", "XSETBV",
                   "TRIPLE_FAULT"):
        assert table[reason][-1].startswith("exits:handle_"), (reason, table[reason])
    # the doorbell claims its port ahead of the port-I/O bus
    io = table["IO_INSTRUCTION"]
    assert io.index("port 0x5356: exits:hypercall_doorbell") < io.index("core:pio-bus")


@pytest.mark.parametrize("extra, key", [
    ({"hypercalls": {"doorbell_port": 0x10000}}, "hypercalls.doorbell_port"),
    ({"msr": {"unknown": "crash"}}, "msr.unknown"),
    ({"cpuid": {"vendor": 12}}, "cpuid.vendor"),
    ({"triple_fault": {"max_resets": -1}}, "triple_fault.max_resets"),
])
def test_config_errors_name_the_key(extra, key):
    require_engine("soft")
    with pytest.raises(ConfigError) as e:
        machine_for(guest("hlt16"), "soft", extra=extra)
    assert e.value.key == key


def test_state_round_trip_through_the_hooks():
    require_engine("soft")
    m = machine_for(guest("hlt16"), "soft")
    try:
        st = m.services["exits"]
        vcpu = m.vcpus[0]
        st.store.write(vcpu, 0x2FF, 0xC06)
        st.cache.xcr0[0] = 3
        saved = {}
        for part in m.hook.save_state(machine=m):
            saved.update(part or {})
        st.store.reset()
        st.cache.xcr0.clear()
        m.hook.restore_state(machine=m, state=saved)
        assert st.store.read(vcpu, 0x2FF) == 0xC06 and st.cache.xcr0 == {0: 3}
    finally:
        m.close()


def test_run_report_section(engine):
    from smartvm_core.report import build_run_report
    m = machine_for(guest("hypercall16"), engine)
    try:
        m.run()
        report = build_run_report(m)
    finally:
        m.close()
    lines = dict(report.sections)["exits"]
    assert lines[0].startswith("CPUID: GenuineIntel family 6")
    assert any(line.startswith("hypercalls: version 1, console_write 2") for line in lines), lines
    assert report.counters["hypercalls"] >= 6


def test_example_plugin_takes_precedence_for_its_leaf():
    """The example third-party plugin answers CPUID 0x40000000; every other leaf falls through to ours."""
    require_engine("soft")
    import sys
    from exits_guests import ROOT
    sys.path.insert(0, str(ROOT / "examples" / "smartvm-example-plugin"))
    from smartvm_example.plugin import ExamplePlugin
    m = machine_for(guest("cpuid16"), "soft", plugins=[("example", ExamplePlugin())])
    try:
        assert m.dispatch.chain(ExitReason.CPUID) == ["example:hypervisor-leaf", "exits:handle_cpuid"]
        stop = m.run()
        assert (stop.kind, stop.exit_code) == ("exit-code", 0), stop
        data = m.console.data()
    finally:
        m.close()
    hv = struct.unpack_from("<4I", data, 16 * 11)     # leaf 0x40000000 (12th entry of guests/exits/cpuid16.asm)
    assert struct.pack("<3I", *hv[1:]) == b"SmartVMxmple"
    hv1 = struct.unpack_from("<4I", data, 16 * 12)    # leaf 0x40000001: still the standard policy
    assert hv1[:2] == (1, 0x5356)
