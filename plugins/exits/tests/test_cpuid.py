"""The CPUID policy: encoding, configuration, and the same guest-visible CPUID on both engines."""

import struct

import pytest

from exits_guests import guest, machine_for, require_engine

from smartvm_core.errors import ConfigError
from smartvm_exits.cpuid import FEATURES, CpuidHandler, CpuidPolicy

LEAVES = [(0, 0), (1, 0), (2, 0), (4, 0), (6, 0), (7, 0), (7, 1), (0xB, 0), (0xB, 1), (0xB, 5), (0xC, 0),
          (0x40000000, 0), (0x40000001, 0), (0x40000010, 0), (0x80000000, 0), (0x80000001, 0),
          (0x80000002, 0), (0x80000003, 0), (0x80000004, 0), (0x80000007, 0), (0x80000008, 0),
          (0x80000009, 0), (0x12345678, 0)]


def regs_of(policy, leaf, sub=0, **kw):
    return CpuidHandler(policy).lookup(0, leaf, sub, **kw)


def test_signature_and_vendor_encoding():
    p = CpuidPolicy.from_section({"vendor": "AuthenticAMD", "family": 0x17, "model": 0x31, "stepping": 0})
    assert regs_of(p, 1)[0] == 0x00830F10  # family 0xF + ext 8, model 1 + ext 3
    a, b, c, d = regs_of(p, 0)
    assert struct.pack("<3I", b, d, c) == b"AuthenticAMD"
    p6 = CpuidPolicy.from_section({"family": 6, "model": 0x55, "stepping": 4})
    assert regs_of(p6, 1)[0] == 0x00050654


def test_brand_string_and_hypervisor_leaves():
    p = CpuidPolicy.from_section({"brand": "Teaching CPU"}, doorbell_port=0x5356)
    brand = b"".join(struct.pack("<4I", *regs_of(p, 0x80000002 + i)) for i in range(3))
    assert brand.rstrip(b"\0") == b"Teaching CPU"
    a, b, c, d = regs_of(p, 0x40000000)
    assert a == 0x40000001 and struct.pack("<3I", b, c, d) == b"SmartVMSmtVM"
    assert regs_of(p, 0x40000001)[:2] == (1, 0x5356)


def test_features_enable_disable_and_leaf_overrides():
    p = CpuidPolicy.from_section({"enable": ["ssse3", "fsgsbase"], "disable": ["pae"],
                                  "leaves": {"0x6": {"eax": 0x77}, "0x7.0": {"edx": 5}}})
    _, _, ecx, edx = regs_of(p, 1)
    assert ecx >> 9 & 1 and not edx >> 6 & 1
    assert regs_of(p, 7)[1] & 1 and regs_of(p, 7)[3] == 5
    assert regs_of(p, 6)[0] == 0x77


@pytest.mark.parametrize("section, key", [
    ({"vendor": "Intel"}, "cpuid.vendor"),
    ({"enable": ["warp-drive"]}, "cpuid.enable"),
    ({"disable": ["apic"]}, "cpuid.disable"),
    ({"model": 0x100}, "cpuid.model"),
    ({"leaves": {"seven": {"eax": 1}}}, "cpuid.leaves.seven"),
    ({"leaves": {"7": {"exx": 1}}}, "cpuid.leaves.7"),
    ({"leaves": {"7": {"eax": 1 << 32}}}, "cpuid.leaves.7"),
])
def test_bad_configuration_names_the_key(section, key):
    with pytest.raises(ConfigError) as e:
        CpuidPolicy.from_section(section, source="exp.toml")
    assert e.value.key == key and e.value.source == "exp.toml"


def test_default_model_hides_what_the_vmm_does_not_virtualize():
    p = CpuidPolicy()
    for hidden in ("vmx", "x2apic", "mce", "mca", "xsave", "avx", "tsc_deadline_timer", "monitor", "rdrand"):
        leaf, sub, reg, bit = FEATURES[hidden]
        assert not regs_of(p, leaf, sub)[reg] >> bit & 1, hidden
    assert regs_of(p, 1)[2] >> 31 & 1  # hypervisor present


def test_runtime_bits_follow_machine_state():
    p = CpuidPolicy.from_section({"enable": ["xsave"]})
    assert regs_of(p, 1, cr4=1 << 18)[2] >> 27 & 1
    assert not regs_of(p, 1, cr4=0)[2] >> 27 & 1
    assert regs_of(p, 1, apic_base=0xFEE00900)[3] >> 9 & 1
    assert not regs_of(p, 1, apic_base=0xFEE00100)[3] >> 9 & 1
    assert regs_of(p, 0xD, xcr0=3)[1] == 576


def test_out_of_range_leaves_follow_the_sdm():
    p = CpuidPolicy()
    top = regs_of(p, 0)[0]
    assert regs_of(p, 0x80000009) == regs_of(p, top)            # above the extended maximum
    assert regs_of(p, 0x12345678) == regs_of(p, top)
    assert regs_of(p, 3) == (0, 0, 0, 0)                         # within range, undefined
    assert regs_of(p, 0xB, 5) == (0, 0, 5, 0)                    # undefined 0BH subleaf keeps ECX[7:0]


def test_restricted_to_engine_support():
    p = CpuidPolicy.from_section({"enable": ["ssse3"]})
    supported = [(1, 0, 0, 0, 0, 0xFFFFFFFF), (0x80000001, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF)]
    q, missing = p.restricted_to(supported)
    assert "ssse3" in missing and "pni" in missing and "ssse3" not in q.features
    assert "sse2" in q.features


def cpuid_dump(engine, extra=None, plugins=()):
    m = machine_for(guest("cpuid16"), engine, extra=extra, plugins=plugins)
    try:
        stop = m.run()
        assert (stop.kind, stop.exit_code) == ("exit-code", 0), stop
        data = m.console.data()
        st = m.services["exits"]
        return {leaf: struct.unpack_from("<4I", data, 16 * i) for i, leaf in enumerate(LEAVES)}, st
    finally:
        m.close()


def test_handle_cpuid_answers_the_guest_from_the_policy():
    require_engine("soft")
    config = {"cpuid": {"vendor": "GenuineIotel", "brand": "Lab CPU", "leaves": {"0x6": {"eax": 0x77}}}}
    seen, st = cpuid_dump("soft", config)
    policy = CpuidPolicy.from_section(config["cpuid"], doorbell_port=0x5356)
    handler = CpuidHandler(policy)
    for (leaf, sub), regs in seen.items():
        assert regs == handler.lookup(0, leaf, sub, apic_base=0xFEE00900), f"leaf {leaf:#x}.{sub}"
    assert struct.pack("<3I", seen[(0, 0)][1], seen[(0, 0)][3], seen[(0, 0)][2]) == b"GenuineIotel"
    assert seen[(6, 0)][0] == 0x77


def test_same_cpuid_on_both_engines():
    require_engine("soft")
    require_engine("kvm")
    config = {"cpuid": {"brand": "Lab CPU", "leaves": {"0x6": {"eax": 0x77}}}}
    soft, _ = cpuid_dump("soft", config)
    kvm, st = cpuid_dump("kvm", config)
    rewritten = {tuple(int(x, 0) for x in key.split(".")) for key in st.engine_rewrote}
    compared = [leaf for leaf in LEAVES if leaf[0] not in {r[0] for r in rewritten}]
    assert len(compared) >= len(LEAVES) - 4
    for leaf in compared:
        assert soft[leaf] == kvm[leaf], f"leaf {leaf[0]:#x}.{leaf[1]}: soft {soft[leaf]} kvm {kvm[leaf]}"
    if rewritten:
        pytest.skip("this host's KVM rewrites CPUID leaves after KVM_SET_CPUID2 (probed with KVM_GET_CPUID2): "
                    + ", ".join(st.engine_rewrote) + "; all other leaves compared equal")
