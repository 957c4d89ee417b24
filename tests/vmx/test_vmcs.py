"""VMCS encodings against SDM Vol. 3 Appendix B and the encoding structure of
25.11.2, and the :class:`Vmcs` store."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartvm_core.vmx import (
    EntryInterruptionInfo,
    EventInjection,
    ExitReason,
    ExitReasonFlag,
    InterruptionType,
    PinBasedControls,
    ProcBasedControls,
    ProcBasedControls2,
    Vmcs,
    VmcsField,
    field_bits,
    field_type,
    field_width,
    is_high_access,
)

# Encodings copied by hand from the Appendix B tables.
SDM_ENCODINGS = {
    "VIRTUAL_PROCESSOR_ID": 0x0000,
    "POSTED_INTR_NV": 0x0002,
    "EPTP_INDEX": 0x0004,
    "GUEST_ES_SELECTOR": 0x0800,
    "GUEST_TR_SELECTOR": 0x080E,
    "GUEST_INTR_STATUS": 0x0810,
    "GUEST_PML_INDEX": 0x0812,
    "HOST_ES_SELECTOR": 0x0C00,
    "HOST_TR_SELECTOR": 0x0C0C,
    "IO_BITMAP_A": 0x2000,
    "IO_BITMAP_B": 0x2002,
    "MSR_BITMAP": 0x2004,
    "VM_EXIT_MSR_STORE_ADDR": 0x2006,
    "VM_ENTRY_MSR_LOAD_ADDR": 0x200A,
    "TSC_OFFSET": 0x2010,
    "VIRTUAL_APIC_PAGE_ADDR": 0x2012,
    "APIC_ACCESS_ADDR": 0x2014,
    "EPT_POINTER": 0x201A,
    "XSS_EXIT_BITMAP": 0x202C,
    "TSC_MULTIPLIER": 0x2032,
    "TERTIARY_VM_EXEC_CONTROL": 0x2034,
    "GUEST_PHYSICAL_ADDRESS": 0x2400,
    "VMCS_LINK_POINTER": 0x2800,
    "GUEST_IA32_DEBUGCTL": 0x2802,
    "GUEST_IA32_PAT": 0x2804,
    "GUEST_IA32_EFER": 0x2806,
    "GUEST_PDPTR0": 0x280A,
    "GUEST_PDPTR3": 0x2810,
    "HOST_IA32_PAT": 0x2C00,
    "HOST_IA32_EFER": 0x2C02,
    "PIN_BASED_VM_EXEC_CONTROL": 0x4000,
    "CPU_BASED_VM_EXEC_CONTROL": 0x4002,
    "EXCEPTION_BITMAP": 0x4004,
    "PAGE_FAULT_ERROR_CODE_MASK": 0x4006,
    "PAGE_FAULT_ERROR_CODE_MATCH": 0x4008,
    "CR3_TARGET_COUNT": 0x400A,
    "VM_EXIT_CONTROLS": 0x400C,
    "VM_ENTRY_CONTROLS": 0x4012,
    "VM_ENTRY_INTR_INFO_FIELD": 0x4016,
    "VM_ENTRY_EXCEPTION_ERROR_CODE": 0x4018,
    "VM_ENTRY_INSTRUCTION_LEN": 0x401A,
    "TPR_THRESHOLD": 0x401C,
    "SECONDARY_VM_EXEC_CONTROL": 0x401E,
    "PLE_GAP": 0x4020,
    "PLE_WINDOW": 0x4022,
    "VM_INSTRUCTION_ERROR": 0x4400,
    "VM_EXIT_REASON": 0x4402,
    "VM_EXIT_INTR_INFO": 0x4404,
    "VM_EXIT_INTR_ERROR_CODE": 0x4406,
    "IDT_VECTORING_INFO_FIELD": 0x4408,
    "IDT_VECTORING_ERROR_CODE": 0x440A,
    "VM_EXIT_INSTRUCTION_LEN": 0x440C,
    "VMX_INSTRUCTION_INFO": 0x440E,
    "GUEST_ES_LIMIT": 0x4800,
    "GUEST_IDTR_LIMIT": 0x4812,
    "GUEST_ES_AR_BYTES": 0x4814,
    "GUEST_TR_AR_BYTES": 0x4822,
    "GUEST_INTERRUPTIBILITY_INFO": 0x4824,
    "GUEST_ACTIVITY_STATE": 0x4826,
    "GUEST_SMBASE": 0x4828,
    "GUEST_SYSENTER_CS": 0x482A,
    "VMX_PREEMPTION_TIMER_VALUE": 0x482E,
    "HOST_IA32_SYSENTER_CS": 0x4C00,
    "CR0_GUEST_HOST_MASK": 0x6000,
    "CR4_GUEST_HOST_MASK": 0x6002,
    "CR0_READ_SHADOW": 0x6004,
    "CR4_READ_SHADOW": 0x6006,
    "CR3_TARGET_VALUE0": 0x6008,
    "CR3_TARGET_VALUE3": 0x600E,
    "EXIT_QUALIFICATION": 0x6400,
    "IO_RCX": 0x6402,
    "IO_RIP": 0x6408,
    "GUEST_LINEAR_ADDRESS": 0x640A,
    "GUEST_CR0": 0x6800,
    "GUEST_CR3": 0x6802,
    "GUEST_CR4": 0x6804,
    "GUEST_ES_BASE": 0x6806,
    "GUEST_GDTR_BASE": 0x6816,
    "GUEST_IDTR_BASE": 0x6818,
    "GUEST_DR7": 0x681A,
    "GUEST_RSP": 0x681C,
    "GUEST_RIP": 0x681E,
    "GUEST_RFLAGS": 0x6820,
    "GUEST_PENDING_DBG_EXCEPTIONS": 0x6822,
    "GUEST_SYSENTER_EIP": 0x6826,
    "HOST_CR0": 0x6C00,
    "HOST_CR3": 0x6C02,
    "HOST_CR4": 0x6C04,
    "HOST_RSP": 0x6C14,
    "HOST_RIP": 0x6C16,
}


@pytest.mark.parametrize(("name", "encoding"), sorted(SDM_ENCODINGS.items()))
def test_encodings_match_appendix_b(name: str, encoding: int) -> None:
    assert VmcsField[name] == encoding


def test_encodings_are_unique_and_well_formed() -> None:
    values = [int(f) for f in VmcsField]
    assert len(values) == len(set(values))
    for field in VmcsField:
        assert field & 1 == 0, field.name  # full access
        assert field & (1 << 12) == 0, field.name  # reserved bit
        assert field >> 15 == 0, field.name  # reserved bit


@pytest.mark.parametrize(
    ("field", "width", "kind"),
    [
        (VmcsField.VIRTUAL_PROCESSOR_ID, 16, "control"),
        (VmcsField.GUEST_CS_SELECTOR, 16, "guest"),
        (VmcsField.HOST_CS_SELECTOR, 16, "host"),
        (VmcsField.IO_BITMAP_A, 64, "control"),
        (VmcsField.EPT_POINTER, 64, "control"),
        (VmcsField.GUEST_PHYSICAL_ADDRESS, 64, "read-only"),
        (VmcsField.GUEST_IA32_EFER, 64, "guest"),
        (VmcsField.HOST_IA32_EFER, 64, "host"),
        (VmcsField.PIN_BASED_VM_EXEC_CONTROL, 32, "control"),
        (VmcsField.VM_EXIT_REASON, 32, "read-only"),
        (VmcsField.GUEST_CS_AR_BYTES, 32, "guest"),
        (VmcsField.HOST_IA32_SYSENTER_CS, 32, "host"),
        (VmcsField.CR0_GUEST_HOST_MASK, "natural", "control"),
        (VmcsField.EXIT_QUALIFICATION, "natural", "read-only"),
        (VmcsField.GUEST_RIP, "natural", "guest"),
        (VmcsField.HOST_RIP, "natural", "host"),
    ],
)
def test_width_and_type_from_encoding(field: VmcsField, width: object, kind: str) -> None:
    assert field_width(field) == width
    assert field_type(field) == kind
    assert field_width(int(field)) == width


def test_high_access() -> None:
    assert is_high_access(0x2001)
    assert field_width(0x2001) == 32
    assert not is_high_access(VmcsField.IO_BITMAP_A)
    assert not is_high_access(0x0001)  # bit 0 on a 16-bit field is not a high access
    assert field_bits(VmcsField.GUEST_RIP) == 64
    assert field_bits(VmcsField.GUEST_ES_SELECTOR) == 16


def test_names_agree_with_types() -> None:
    read_only = {"GUEST_PHYSICAL_ADDRESS", "ORIGINAL_EVENT_DATA", "GUEST_LINEAR_ADDRESS"}
    for field in VmcsField:
        kind = field_type(field)
        if field.name in read_only:
            assert kind == "read-only"
        elif field.name.startswith("GUEST_"):
            assert kind == "guest", field.name
        elif field.name.startswith("HOST_"):
            assert kind == "host", field.name
    assert {f.name for f in VmcsField if field_type(f) == "read-only"} == read_only | {
        "VM_INSTRUCTION_ERROR",
        "VM_EXIT_REASON",
        "VM_EXIT_INTR_INFO",
        "VM_EXIT_INTR_ERROR_CODE",
        "IDT_VECTORING_INFO_FIELD",
        "IDT_VECTORING_ERROR_CODE",
        "VM_EXIT_INSTRUCTION_LEN",
        "VMX_INSTRUCTION_INFO",
        "EXIT_QUALIFICATION",
        "IO_RCX",
        "IO_RSI",
        "IO_RDI",
        "IO_RIP",
    }


@pytest.mark.parametrize("bad", [-1, 0x8000, True, "GUEST_RIP"])
def test_field_functions_refuse_bad_encodings(bad: object) -> None:
    with pytest.raises(ValueError):
        field_width(bad)  # type: ignore[arg-type]


# --- the store ---------------------------------------------------------------


def test_defaults_and_access() -> None:
    vmcs = Vmcs()
    assert vmcs.read(VmcsField.GUEST_RIP) == 0
    vmcs.write(VmcsField.GUEST_RIP, 0xFFF0)
    vmcs[VmcsField.GUEST_CS_SELECTOR] = 0xF000
    assert vmcs[VmcsField.GUEST_RIP] == 0xFFF0
    assert vmcs.read(0x0802) == 0xF000
    assert set(vmcs) == {VmcsField.GUEST_RIP, VmcsField.GUEST_CS_SELECTOR}


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        (VmcsField.GUEST_ES_SELECTOR, 1 << 16),
        (VmcsField.EXCEPTION_BITMAP, 1 << 32),
        (VmcsField.TSC_OFFSET, 1 << 64),
        (VmcsField.GUEST_RIP, 1 << 64),
    ],
)
def test_write_refuses_values_wider_than_field(field: VmcsField, limit: int) -> None:
    vmcs = Vmcs()
    vmcs.write(field, limit - 1)
    assert vmcs.read(field) == limit - 1
    with pytest.raises(ValueError, match=field.name):
        vmcs.write(field, limit)
    with pytest.raises(ValueError, match=field.name):
        vmcs.write(field, -1)
    with pytest.raises(TypeError, match=field.name):
        vmcs.write(field, True)


def test_high_access_reads_and_writes_upper_half() -> None:
    vmcs = Vmcs()
    vmcs.write(VmcsField.TSC_OFFSET, 0x1111_2222_3333_4444)
    assert vmcs.read(0x2011) == 0x1111_2222
    vmcs.write(0x2011, 0xAAAA_BBBB)
    assert vmcs.read(VmcsField.TSC_OFFSET) == 0xAAAA_BBBB_3333_4444
    with pytest.raises(ValueError, match="TSC_OFFSET"):
        vmcs.write(0x2011, 1 << 32)


@pytest.mark.parametrize("encoding", [0x0001, 0x4001, 0x7FFE, 0x2401 + 0x10])
def test_unknown_encodings_refused(encoding: int) -> None:
    with pytest.raises(ValueError, match="unknown VMCS field"):
        Vmcs().read(encoding)


def test_state_round_trip_and_refusals() -> None:
    vmcs = Vmcs({VmcsField.GUEST_RIP: 0x7C00, VmcsField.GUEST_CR0: 0x10})
    state = vmcs.state()
    assert state == {"GUEST_RIP": 0x7C00, "GUEST_CR0": 0x10}
    assert Vmcs.from_state(state) == vmcs
    with pytest.raises(ValueError, match="unknown VMCS field name 'GUEST_RIPP'"):
        Vmcs.from_state({"GUEST_RIPP": 1})
    with pytest.raises(ValueError, match="GUEST_ES_SELECTOR"):
        Vmcs.from_state({"GUEST_ES_SELECTOR": 0x10000})


def test_equality_ignores_explicit_zeros_and_copy_is_independent() -> None:
    a = Vmcs()
    b = Vmcs({VmcsField.GUEST_RSP: 0})
    assert a == b
    c = b.copy()
    c[VmcsField.GUEST_RSP] = 8
    assert b[VmcsField.GUEST_RSP] == 0
    assert c != b
    assert "GUEST_RSP=0x8" in repr(c)


values_for = st.sampled_from(list(VmcsField)).flatmap(
    lambda f: st.tuples(st.just(f), st.integers(0, (1 << field_bits(f)) - 1))
)


@given(st.lists(values_for, max_size=20))
def test_state_round_trip_property(items: list[tuple[VmcsField, int]]) -> None:
    vmcs = Vmcs()
    for field, value in items:
        vmcs.write(field, value)
    again = Vmcs.from_state(vmcs.state())
    assert again == vmcs
    for field, _ in items:
        assert again.read(field) == vmcs.read(field)


# --- helpers -----------------------------------------------------------------


def test_control_properties() -> None:
    vmcs = Vmcs()
    vmcs[VmcsField.PIN_BASED_VM_EXEC_CONTROL] = PinBasedControls.NMI_EXITING
    vmcs[VmcsField.SECONDARY_VM_EXEC_CONTROL] = ProcBasedControls2.ENABLE_EPT
    assert vmcs.pin_based_controls == PinBasedControls.NMI_EXITING
    assert vmcs.secondary_controls == ProcBasedControls2(0)  # not activated
    vmcs[VmcsField.CPU_BASED_VM_EXEC_CONTROL] = (
        ProcBasedControls.HLT_EXITING | ProcBasedControls.ACTIVATE_SECONDARY_CONTROLS
    )
    assert vmcs.secondary_controls == ProcBasedControls2.ENABLE_EPT
    assert ProcBasedControls.HLT_EXITING in vmcs.cpu_based_controls


def test_record_exit_clears_entry_valid_bit() -> None:
    vmcs = Vmcs()
    vmcs.inject(EventInjection(EntryInterruptionInfo.external_interrupt(0x20)))
    assert vmcs.pending_event() is not None
    vmcs.record_exit(ExitReason.IO_INSTRUCTION, 0x03F8_0000, instruction_length=1)
    assert vmcs.exit_reason is ExitReason.IO_INSTRUCTION
    assert vmcs.exit_qualification == 0x03F8_0000
    assert vmcs[VmcsField.VM_EXIT_INSTRUCTION_LEN] == 1
    assert vmcs.pending_event() is None
    assert vmcs[VmcsField.VM_ENTRY_INTR_INFO_FIELD] == 0x20


def test_record_entry_failure_flags() -> None:
    vmcs = Vmcs()
    vmcs.record_exit(
        ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE, flags=ExitReasonFlag.VM_ENTRY_FAILURE
    )
    assert vmcs[VmcsField.VM_EXIT_REASON] == 0x8000_0021
    assert vmcs.exit_reason is ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE
    assert vmcs.exit_reason_flags == ExitReasonFlag.VM_ENTRY_FAILURE


def test_inject_and_pending_event_round_trip() -> None:
    vmcs = Vmcs()
    event = EventInjection(EntryInterruptionInfo.hardware_exception(14), error_code=0x2)
    vmcs.inject(event)
    assert vmcs[VmcsField.VM_ENTRY_INTR_INFO_FIELD] == 0x8000_0B0E
    assert vmcs[VmcsField.VM_ENTRY_EXCEPTION_ERROR_CODE] == 2
    assert vmcs.pending_event() == event
    assert vmcs.entry_interruption_info.type is InterruptionType.HARDWARE_EXCEPTION


def test_pending_event_applies_sdm_checks() -> None:
    vmcs = Vmcs()
    vmcs[VmcsField.VM_ENTRY_INTR_INFO_FIELD] = 0x8000_0480  # INT 80h, length 0
    with pytest.raises(ValueError, match="instruction_length"):
        vmcs.pending_event()
    assert vmcs.pending_event(zero_length_allowed=True) is not None
    vmcs[VmcsField.VM_ENTRY_INTR_INFO_FIELD] = 0x8000_0203  # NMI with vector 3
    with pytest.raises(ValueError, match="vector"):
        vmcs.pending_event()


def test_exit_info_properties() -> None:
    vmcs = Vmcs()
    vmcs[VmcsField.VM_EXIT_INTR_INFO] = 0x8000_0B0E
    vmcs[VmcsField.IDT_VECTORING_INFO_FIELD] = 0x8000_0020
    assert vmcs.exit_interruption_info.error_code_valid
    assert vmcs.idt_vectoring_info.vector == 0x20
