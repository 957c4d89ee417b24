"""Exit reasons against SDM Vol. 3 Appendix C (Table C-1) and the exit-reason
field format (Table "Format of Exit Reason")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartvm_core.vmx import (
    ExitReason,
    ExitReasonFlag,
    decode_exit_reason_field,
    describe,
    encode_exit_reason_field,
)

# Written out from Table C-1, independently of the enum.
SDM_TABLE_C1 = {
    0: "EXCEPTION_NMI",
    1: "EXTERNAL_INTERRUPT",
    2: "TRIPLE_FAULT",
    3: "INIT_SIGNAL",
    4: "SIPI",
    5: "IO_SMI",
    6: "OTHER_SMI",
    7: "INTERRUPT_WINDOW",
    8: "NMI_WINDOW",
    9: "TASK_SWITCH",
    10: "CPUID",
    11: "GETSEC",
    12: "HLT",
    13: "INVD",
    14: "INVLPG",
    15: "RDPMC",
    16: "RDTSC",
    17: "RSM",
    18: "VMCALL",
    19: "VMCLEAR",
    20: "VMLAUNCH",
    21: "VMPTRLD",
    22: "VMPTRST",
    23: "VMREAD",
    24: "VMRESUME",
    25: "VMWRITE",
    26: "VMXOFF",
    27: "VMXON",
    28: "CR_ACCESS",
    29: "MOV_DR",
    30: "IO_INSTRUCTION",
    31: "RDMSR",
    32: "WRMSR",
    33: "VM_ENTRY_FAILURE_INVALID_GUEST_STATE",
    34: "VM_ENTRY_FAILURE_MSR_LOADING",
    36: "MWAIT",
    37: "MONITOR_TRAP_FLAG",
    39: "MONITOR",
    40: "PAUSE",
    41: "VM_ENTRY_FAILURE_MACHINE_CHECK",
    43: "TPR_BELOW_THRESHOLD",
    44: "APIC_ACCESS",
    45: "VIRTUALIZED_EOI",
    46: "ACCESS_GDTR_IDTR",
    47: "ACCESS_LDTR_TR",
    48: "EPT_VIOLATION",
    49: "EPT_MISCONFIG",
    50: "INVEPT",
    51: "RDTSCP",
    52: "VMX_PREEMPTION_TIMER_EXPIRED",
    53: "INVVPID",
    54: "WBINVD",
    55: "XSETBV",
    56: "APIC_WRITE",
    57: "RDRAND",
    58: "INVPCID",
    59: "VMFUNC",
    60: "ENCLS",
    61: "RDSEED",
    62: "PML_FULL",
    63: "XSAVES",
    64: "XRSTORS",
    65: "PCONFIG",
    66: "SPP_RELATED_EVENT",
    67: "UMWAIT",
    68: "TPAUSE",
    69: "LOADIWKEY",
    70: "ENCLV",
    72: "ENQCMD_PASID_TRANSLATION_FAILURE",
    73: "ENQCMDS_PASID_TRANSLATION_FAILURE",
    74: "BUS_LOCK",
    75: "INSTRUCTION_TIMEOUT",
    76: "SEAMCALL",
    77: "TDCALL",
    78: "RDMSRLIST",
    79: "WRMSRLIST",
}
NEWER = {80: "URDMSR", 81: "UWRMSR", 84: "RDMSR_IMM", 85: "WRMSRNS_IMM"}


@pytest.mark.parametrize(("number", "name"), sorted(SDM_TABLE_C1.items()))
def test_every_sdm_reason_has_its_number(number: int, name: str) -> None:
    assert ExitReason[name] == number
    assert ExitReason(number).name == name


def test_no_extra_members_beyond_table_and_newest_additions() -> None:
    assert {m.value: m.name for m in ExitReason} == SDM_TABLE_C1 | NEWER


@pytest.mark.parametrize("gap", [35, 38, 42, 71, 82, 83])
def test_gaps_are_not_members(gap: int) -> None:
    with pytest.raises(ValueError):
        ExitReason(gap)


@pytest.mark.parametrize(
    ("reason", "title"),
    [
        (ExitReason.EXCEPTION_NMI, "Exception or non-maskable interrupt (NMI)"),
        (ExitReason.SIPI, "Start-up IPI (SIPI)"),
        (ExitReason.CR_ACCESS, "Control-register accesses"),
        (ExitReason.IO_INSTRUCTION, "I/O instruction"),
        (ExitReason.VM_ENTRY_FAILURE_MACHINE_CHECK, "VM-entry failure due to machine-check event"),
        (ExitReason.WBINVD, "WBINVD or WBNOINVD"),
        (ExitReason.PML_FULL, "Page-modification log full"),
        (ExitReason.EPT_MISCONFIG, "EPT misconfiguration"),
    ],
)
def test_describe_uses_sdm_titles(reason: ExitReason, title: str) -> None:
    assert describe(reason) == title
    assert describe(int(reason)) == title


def test_describe_covers_every_member_and_unknown_numbers() -> None:
    for reason in ExitReason:
        text = describe(reason)
        assert text and "\n" not in text
    assert describe(35) == "unknown basic exit reason 35"
    assert describe(0xFFFF) == "unknown basic exit reason 65535"


def test_flag_bit_positions() -> None:
    assert ExitReasonFlag.BUS_LOCK_DETECTED == 1 << 26
    assert ExitReasonFlag.ENCLAVE_MODE == 1 << 27
    assert ExitReasonFlag.PENDING_MTF_VM_EXIT == 1 << 28
    assert ExitReasonFlag.VM_EXIT_FROM_VMX_ROOT_OPERATION == 1 << 29
    assert ExitReasonFlag.VM_ENTRY_FAILURE == 1 << 31


@pytest.mark.parametrize(
    ("value", "basic", "flags"),
    [
        (0x0000_000C, ExitReason.HLT, ExitReasonFlag(0)),
        (
            0x8000_0021,
            ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE,
            ExitReasonFlag.VM_ENTRY_FAILURE,
        ),
        (0x8000_0029, ExitReason.VM_ENTRY_FAILURE_MACHINE_CHECK, ExitReasonFlag.VM_ENTRY_FAILURE),
        (0x0800_0030, ExitReason.EPT_VIOLATION, ExitReasonFlag.ENCLAVE_MODE),
        (0x0400_001E, ExitReason.IO_INSTRUCTION, ExitReasonFlag.BUS_LOCK_DETECTED),
        (
            0x3000_0006,
            ExitReason.OTHER_SMI,
            ExitReasonFlag.PENDING_MTF_VM_EXIT | ExitReasonFlag.VM_EXIT_FROM_VMX_ROOT_OPERATION,
        ),
    ],
)
def test_decode_hand_built_fields(value: int, basic: ExitReason, flags: ExitReasonFlag) -> None:
    got_basic, got_flags = decode_exit_reason_field(value)
    assert got_basic is basic
    assert got_flags == flags
    assert encode_exit_reason_field(got_basic, got_flags) == value


def test_unknown_basic_reason_decodes_to_int() -> None:
    basic, flags = decode_exit_reason_field(35)
    assert basic == 35 and not isinstance(basic, ExitReason)
    assert flags == 0


@pytest.mark.parametrize("value", [-1, 1 << 32, (1 << 40) | 12])
def test_decode_refuses_values_wider_than_32_bits(value: int) -> None:
    with pytest.raises(ValueError, match="exit reason"):
        decode_exit_reason_field(value)


@pytest.mark.parametrize("bit", [16, 17, 20, 25, 30])
def test_undefined_bits_refused_when_strict_dropped_when_lenient(bit: int) -> None:
    value = (1 << bit) | int(ExitReason.CPUID)
    with pytest.raises(ValueError, match="undefined bits"):
        decode_exit_reason_field(value)
    assert decode_exit_reason_field(value, strict=False) == (ExitReason.CPUID, ExitReasonFlag(0))


def test_encode_refuses_bad_parts() -> None:
    with pytest.raises(ValueError):
        encode_exit_reason_field(0x10000)
    with pytest.raises(ValueError):
        encode_exit_reason_field(ExitReason.HLT, 1 << 16)


flag_sets = st.sets(st.sampled_from(list(ExitReasonFlag))).map(
    lambda fs: ExitReasonFlag(sum(int(f) for f in fs))
)


@given(basic=st.integers(0, 0xFFFF), flags=flag_sets)
def test_round_trip(basic: int, flags: ExitReasonFlag) -> None:
    value = encode_exit_reason_field(basic, flags)
    assert decode_exit_reason_field(value) == (basic, flags)
    assert encode_exit_reason_field(*decode_exit_reason_field(value)) == value
