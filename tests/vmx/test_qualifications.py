"""Exit qualifications and interruption-information fields against the SDM
bit layouts (Vol. 3: exit-qualification tables of "Basic VM-Exit
Information", the interruption-information tables, and the event-injection
checks of 27.2.1.3).  Raw values below are built by hand from those tables."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartvm_core.vmx import (
    GPR_NAMES,
    HAS_ERROR_CODE,
    CrAccessQualification,
    CrAccessType,
    EntryInterruptionInfo,
    EptViolationQualification,
    EventInjection,
    ExitInterruptionInfo,
    ExitReason,
    Gpr,
    IdtVectoringInfo,
    InterruptionType,
    IoQualification,
    MovDrQualification,
    TaskSwitchQualification,
    TaskSwitchSource,
    Vector,
    decode_qualification,
    format_qualification,
)

# --- I/O instructions --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected", "text"),
    [
        # OUT DX, AL to COM1: size 0 (1 byte), OUT, port 3F8H in 31:16
        (
            0x03F8_0000,
            IoQualification(size=1, direction_in=False, port=0x3F8),
            "OUT dx, al port=0x3f8 size=1",
        ),
        # IN AL, 60H: IN (bit 3) + immediate (bit 6)
        (
            0x0060_0048,
            IoQualification(size=1, direction_in=True, operand_immediate=True, port=0x60),
            "IN al, 0x60 port=0x60 size=1",
        ),
        # IN EAX, DX from CFCH: size code 3 (4 bytes)
        (
            0x0CFC_000B,
            IoQualification(size=4, direction_in=True, port=0xCFC),
            "IN eax, dx port=0xcfc size=4",
        ),
        # OUT 80H, AX: size code 1, immediate
        (
            0x0080_0041,
            IoQualification(size=2, direction_in=False, operand_immediate=True, port=0x80),
            "OUT 0x80, ax port=0x80 size=2",
        ),
        # REP OUTSW to 1F0H: size code 1, string (bit 4), REP (bit 5)
        (
            0x01F0_0031,
            IoQualification(size=2, direction_in=False, string=True, rep=True, port=0x1F0),
            "REP OUTSW port=0x1f0 size=2",
        ),
        # INSD from FFFFH: size code 3, IN, string
        (
            0xFFFF_001B,
            IoQualification(size=4, direction_in=True, string=True, port=0xFFFF),
            "INSD port=0xffff size=4",
        ),
    ],
)
def test_io_decode_hand_built(value: int, expected: IoQualification, text: str) -> None:
    got = IoQualification.decode(value)
    assert got == expected
    assert got.encode() == value
    assert str(got) == text


@pytest.mark.parametrize("code", [2, 4, 5, 6, 7])
def test_io_unused_size_codes_refused(code: int) -> None:
    with pytest.raises(ValueError, match="size"):
        IoQualification.decode(0x03F8_0000 | code)


@pytest.mark.parametrize("bit", [7, 8, 15, 32, 63])
def test_io_reserved_bits(bit: int) -> None:
    value = 0x03F8_0000 | (1 << bit)
    with pytest.raises(ValueError, match="I/O exit qualification"):
        IoQualification.decode(value)
    assert IoQualification.decode(value, strict=False).port == 0x3F8


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_io_width_refused(value: int) -> None:
    with pytest.raises(ValueError, match="I/O exit qualification"):
        IoQualification.decode(value)


def test_io_constructor_refuses_out_of_range() -> None:
    with pytest.raises(ValueError, match="IoQualification.port"):
        IoQualification(size=1, direction_in=True, port=0x10000)
    with pytest.raises(ValueError, match="IoQualification.size"):
        IoQualification(size=3, direction_in=True)
    with pytest.raises(ValueError, match="IoQualification.rep"):
        IoQualification(size=1, direction_in=True, rep=2)  # type: ignore[arg-type]


# --- control-register accesses -----------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected", "text"),
    [
        (
            0x0000_0000,
            CrAccessQualification(cr=0, access_type=CrAccessType.MOV_TO_CR, gpr=Gpr.RAX),
            "MOV CR0, RAX",
        ),
        (
            0x0000_0303,
            CrAccessQualification(cr=3, access_type=CrAccessType.MOV_TO_CR, gpr=Gpr.RBX),
            "MOV CR3, RBX",
        ),
        (
            0x0000_0013,
            CrAccessQualification(cr=3, access_type=CrAccessType.MOV_FROM_CR),
            "MOV RAX, CR3",
        ),
        (
            0x0000_0F04,
            CrAccessQualification(cr=4, access_type=CrAccessType.MOV_TO_CR, gpr=Gpr.R15),
            "MOV CR4, R15",
        ),
        (
            0x0000_0C18,
            CrAccessQualification(cr=8, access_type=CrAccessType.MOV_FROM_CR, gpr=Gpr.R12),
            "MOV R12, CR8",
        ),
        (0x0000_0020, CrAccessQualification(cr=0, access_type=CrAccessType.CLTS), "CLTS"),
        (
            0x0001_0030,
            CrAccessQualification(cr=0, access_type=CrAccessType.LMSW, lmsw_source_data=1),
            "LMSW 0x0001 (register operand)",
        ),
        (
            0xFFFF_0070,
            CrAccessQualification(
                cr=0,
                access_type=CrAccessType.LMSW,
                lmsw_operand_memory=True,
                lmsw_source_data=0xFFFF,
            ),
            "LMSW 0xffff (memory operand)",
        ),
    ],
)
def test_cr_decode_hand_built(value: int, expected: CrAccessQualification, text: str) -> None:
    got = CrAccessQualification.decode(value)
    assert got == expected
    assert got.encode() == value
    assert str(got) == text


def test_gpr_table() -> None:
    assert GPR_NAMES == (
        "RAX",
        "RCX",
        "RDX",
        "RBX",
        "RSP",
        "RBP",
        "RSI",
        "RDI",
        "R8",
        "R9",
        "R10",
        "R11",
        "R12",
        "R13",
        "R14",
        "R15",
    )
    assert CrAccessQualification.decode(0x0000_0603).gpr_name == "RSI"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (0x0000_0023, "cr"),  # CLTS with CR number 3
        (0x0000_0120, "gpr"),  # CLTS with a GPR
        (0x0000_0130, "gpr"),  # LMSW with a GPR
        (0x0000_0043, "lmsw_operand_memory"),  # MOV to CR3 with the LMSW operand bit
        (0x0001_0013, "lmsw_source_data"),  # MOV from CR3 with LMSW data
    ],
)
def test_cr_inconsistent_combinations_refused(value: int, field: str) -> None:
    with pytest.raises(ValueError, match=f"CrAccessQualification.{field}"):
        CrAccessQualification.decode(value)


@pytest.mark.parametrize("bit", [7, 12, 15, 32])
def test_cr_reserved_bits(bit: int) -> None:
    with pytest.raises(ValueError, match="control-register-access"):
        CrAccessQualification.decode(0x303 | (1 << bit))


def test_cr_access_type_enum_values() -> None:
    assert [(t.name, t.value) for t in CrAccessType] == [
        ("MOV_TO_CR", 0),
        ("MOV_FROM_CR", 1),
        ("CLTS", 2),
        ("LMSW", 3),
    ]


# --- MOV DR ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected", "text"),
    [
        (
            0x0000_0007,
            MovDrQualification(dr=7, direction_from_dr=False, gpr=Gpr.RAX),
            "MOV DR7, RAX",
        ),
        (
            0x0000_0116,
            MovDrQualification(dr=6, direction_from_dr=True, gpr=Gpr.RCX),
            "MOV RCX, DR6",
        ),
        (
            0x0000_0D00,
            MovDrQualification(dr=0, direction_from_dr=False, gpr=Gpr.R13),
            "MOV DR0, R13",
        ),
    ],
)
def test_mov_dr_decode_hand_built(value: int, expected: MovDrQualification, text: str) -> None:
    got = MovDrQualification.decode(value)
    assert got == expected
    assert got.encode() == value
    assert str(got) == text


@pytest.mark.parametrize("bit", [3, 5, 7, 12, 40])
def test_mov_dr_reserved_bits(bit: int) -> None:
    with pytest.raises(ValueError, match="MOV-DR"):
        MovDrQualification.decode(0x7 | (1 << bit))


def test_mov_dr_constructor_range() -> None:
    with pytest.raises(ValueError, match="MovDrQualification.dr"):
        MovDrQualification(dr=8, direction_from_dr=False)
    with pytest.raises(ValueError, match="MovDrQualification.gpr"):
        MovDrQualification(dr=0, direction_from_dr=False, gpr=16)


# --- EPT violations ----------------------------------------------------------

EPT_BITS = [
    (0, "read"),
    (1, "write"),
    (2, "fetch"),
    (3, "readable"),
    (4, "writable"),
    (5, "executable"),
    (6, "user_executable"),
    (7, "guest_linear_address_valid"),
    (9, "user_mode_address"),
    (10, "read_write_page"),
    (11, "execute_disable_page"),
    (12, "nmi_unblocking"),
    (13, "shadow_stack_access"),
    (14, "supervisor_shadow_stack"),
    (15, "guest_paging_verification"),
    (16, "asynchronous"),
]


@pytest.mark.parametrize(("bit", "attr"), EPT_BITS)
def test_ept_each_bit_maps_to_its_attribute(bit: int, attr: str) -> None:
    got = EptViolationQualification.decode(1 << bit)
    set_attrs = [n for n in EptViolationQualification.BIT_NAMES if getattr(got, n)]
    assert set_attrs == [attr]
    assert got.encode() == 1 << bit


def test_ept_bit8_needs_bit7() -> None:
    got = EptViolationQualification.decode(0x180)
    assert got.guest_linear_address_valid and got.translated_access
    with pytest.raises(ValueError, match="translated_access"):
        EptViolationQualification.decode(0x100)
    assert EptViolationQualification.decode(0x100, strict=False) == EptViolationQualification()


def test_ept_write_to_read_execute_page() -> None:
    # data write (1), readable (3), executable (5), GLA valid (7), translation (8)
    got = EptViolationQualification.decode(0x1AA)
    assert got.write and not got.read and not got.fetch
    assert got.readable and not got.writable and got.executable
    assert str(got) == "EPT violation: write, entry r-x, linear address valid (translation)"


def test_ept_str_mentions_extras() -> None:
    got = EptViolationQualification.decode(0x1_F18C)
    text = str(got)
    assert text.startswith("EPT violation: fetch, entry r--")
    assert "NMI unblocking due to IRET" in text
    assert "guest-paging verification" in text
    assert "asynchronous" in text
    assert "\n" not in text


@pytest.mark.parametrize("bit", [17, 31, 63])
def test_ept_reserved_bits(bit: int) -> None:
    with pytest.raises(ValueError, match="EPT-violation"):
        EptViolationQualification.decode(1 << bit)
    with pytest.raises(ValueError, match="EPT-violation"):
        EptViolationQualification.decode(1 << 64)


# --- task switches -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected", "text"),
    [
        (
            0x0000_0028,
            TaskSwitchQualification(selector=0x28, source=TaskSwitchSource.CALL),
            "task switch via CALL selector=0x0028",
        ),
        (
            0x4000_0030,
            TaskSwitchQualification(selector=0x30, source=TaskSwitchSource.IRET),
            "task switch via IRET selector=0x0030",
        ),
        (
            0x8000_FFF8,
            TaskSwitchQualification(selector=0xFFF8, source=TaskSwitchSource.JMP),
            "task switch via JMP selector=0xfff8",
        ),
        (
            0xC000_0040,
            TaskSwitchQualification(selector=0x40, source=TaskSwitchSource.TASK_GATE),
            "task switch via task gate in IDT selector=0x0040",
        ),
    ],
)
def test_task_switch_decode_hand_built(
    value: int, expected: TaskSwitchQualification, text: str
) -> None:
    got = TaskSwitchQualification.decode(value)
    assert got == expected
    assert got.encode() == value
    assert str(got) == text


@pytest.mark.parametrize("bit", [16, 29, 32])
def test_task_switch_reserved_bits(bit: int) -> None:
    with pytest.raises(ValueError, match="task-switch"):
        TaskSwitchQualification.decode(0x28 | (1 << bit))


# --- interruption information ------------------------------------------------


def test_interruption_type_values() -> None:
    assert [(t.name, t.value) for t in InterruptionType] == [
        ("EXTERNAL_INTERRUPT", 0),
        ("RESERVED", 1),
        ("NMI", 2),
        ("HARDWARE_EXCEPTION", 3),
        ("SOFTWARE_INTERRUPT", 4),
        ("PRIVILEGED_SOFTWARE_EXCEPTION", 5),
        ("SOFTWARE_EXCEPTION", 6),
        ("OTHER_EVENT", 7),
    ]


@pytest.mark.parametrize(
    ("value", "expected", "text"),
    [
        (
            0x8000_0B0E,
            ExitInterruptionInfo(
                vector=14, type=InterruptionType.HARDWARE_EXCEPTION, error_code_valid=True
            ),
            "hardware exception #PF (vector 14), error code valid",
        ),
        (0x8000_0202, ExitInterruptionInfo(vector=2, type=InterruptionType.NMI), "NMI"),
        (
            0x8000_0020,
            ExitInterruptionInfo(vector=0x20, type=InterruptionType.EXTERNAL_INTERRUPT),
            "external interrupt vector 0x20",
        ),
        (
            0x8000_0603,
            ExitInterruptionInfo(vector=3, type=InterruptionType.SOFTWARE_EXCEPTION),
            "software exception #BP (vector 3)",
        ),
        (
            0x8000_1B0D,
            ExitInterruptionInfo(
                vector=13,
                type=InterruptionType.HARDWARE_EXCEPTION,
                error_code_valid=True,
                nmi_unblocking=True,
            ),
            "hardware exception #GP (vector 13), error code valid, NMI unblocking due to IRET",
        ),
        (
            0x0000_0000,
            ExitInterruptionInfo(vector=0, type=InterruptionType.EXTERNAL_INTERRUPT, valid=False),
            "no event (valid bit clear)",
        ),
    ],
)
def test_exit_interruption_info_hand_built(
    value: int, expected: ExitInterruptionInfo, text: str
) -> None:
    got = ExitInterruptionInfo.decode(value)
    assert got == expected
    assert got.encode() == value
    assert str(got) == text


def test_exit_interruption_info_exception_property() -> None:
    assert ExitInterruptionInfo.decode(0x8000_0B0E).exception is Vector.PF
    assert ExitInterruptionInfo.decode(0x8000_0020).exception is None
    assert ExitInterruptionInfo.decode(0x8000_030F).exception is None  # vector 15 reserved


@pytest.mark.parametrize("bit", [13, 20, 30])
def test_exit_interruption_info_reserved(bit: int) -> None:
    with pytest.raises(ValueError, match="VM-exit interruption information"):
        ExitInterruptionInfo.decode(0x8000_0B0E | (1 << bit))


@pytest.mark.parametrize("value", [-1, 1 << 32])
def test_interruption_info_width(value: int) -> None:
    for cls in (ExitInterruptionInfo, IdtVectoringInfo, EntryInterruptionInfo):
        with pytest.raises(ValueError, match="32-bit"):
            cls.decode(value)


def test_idt_vectoring_info_ignores_undefined_bit12() -> None:
    plain = IdtVectoringInfo.decode(0x8000_0B0E)
    assert plain == IdtVectoringInfo(
        vector=14, type=InterruptionType.HARDWARE_EXCEPTION, error_code_valid=True
    )
    assert IdtVectoringInfo.decode(0x8000_1B0E) == plain
    assert str(plain) == "during delivery of hardware exception #PF (vector 14), error code valid"
    assert IdtVectoringInfo.decode(0x8000_0480).type is InterruptionType.SOFTWARE_INTERRUPT


@pytest.mark.parametrize(
    ("info", "value"),
    [
        (EntryInterruptionInfo.external_interrupt(0x30), 0x8000_0030),
        (EntryInterruptionInfo.nmi(), 0x8000_0202),
        (EntryInterruptionInfo.hardware_exception(Vector.GP), 0x8000_0B0D),
        (EntryInterruptionInfo.hardware_exception(Vector.PF), 0x8000_0B0E),
        (EntryInterruptionInfo.hardware_exception(Vector.DF), 0x8000_0B08),
        (EntryInterruptionInfo.hardware_exception(Vector.CP), 0x8000_0B15),
        (EntryInterruptionInfo.hardware_exception(Vector.UD), 0x8000_0306),
        (
            EntryInterruptionInfo.hardware_exception(Vector.GP, deliver_error_code=False),
            0x8000_030D,
        ),
        (EntryInterruptionInfo.software_interrupt(0x80), 0x8000_0480),
        (EntryInterruptionInfo.software_exception(Vector.BP), 0x8000_0603),
        (EntryInterruptionInfo.privileged_software_exception(), 0x8000_0501),
        (EntryInterruptionInfo.other_event(), 0x8000_0700),
    ],
)
def test_entry_interruption_info_constructors(info: EntryInterruptionInfo, value: int) -> None:
    assert info.encode() == value
    assert EntryInterruptionInfo.decode(value) == info


def test_hardware_exception_sets_error_code_per_has_error_code() -> None:
    for vector in range(32):
        info = EntryInterruptionInfo.hardware_exception(vector)
        assert info.deliver_error_code == (vector in HAS_ERROR_CODE)


@pytest.mark.parametrize("bit", [12, 16, 30])
def test_entry_interruption_info_reserved_bits(bit: int) -> None:
    with pytest.raises(ValueError, match="VM-entry interruption information"):
        EntryInterruptionInfo.decode(0x8000_0030 | (1 << bit))


def test_entry_interruption_info_str() -> None:
    assert str(EntryInterruptionInfo.hardware_exception(13)) == (
        "inject hardware exception #GP (vector 13) with error code"
    )
    assert str(EntryInterruptionInfo.decode(0)) == "no event to inject (valid bit clear)"


def test_interruption_info_constructor_ranges() -> None:
    with pytest.raises(ValueError, match="vector"):
        EntryInterruptionInfo(vector=256, type=InterruptionType.EXTERNAL_INTERRUPT)
    with pytest.raises(ValueError, match="type"):
        ExitInterruptionInfo(vector=0, type=8)


# --- event injection ---------------------------------------------------------


def _info(vector: int, kind: InterruptionType, deliver: bool = False) -> EntryInterruptionInfo:
    return EntryInterruptionInfo(vector=vector, type=kind, deliver_error_code=deliver)


@pytest.mark.parametrize(
    ("kwargs", "field", "reason"),
    [
        ({"info": _info(0x20, InterruptionType.RESERVED)}, "info.type", "reserved"),
        ({"info": _info(3, InterruptionType.NMI)}, "info.vector", "vector 2"),
        ({"info": _info(32, InterruptionType.HARDWARE_EXCEPTION)}, "info.vector", "at most 31"),
        ({"info": _info(1, InterruptionType.OTHER_EVENT)}, "info.vector", "vector 0"),
        (
            {"info": _info(6, InterruptionType.HARDWARE_EXCEPTION, True)},
            "deliver_error_code",
            "error code",
        ),
        (
            {"info": _info(0x20, InterruptionType.EXTERNAL_INTERRUPT, True)},
            "deliver_error_code",
            "error code",
        ),
        (
            {"info": _info(13, InterruptionType.SOFTWARE_EXCEPTION, True), "instruction_length": 2},
            "deliver_error_code",
            "error code",
        ),
        (
            {"info": EntryInterruptionInfo.hardware_exception(13), "error_code": 0x1_0000},
            "error_code",
            "31:16",
        ),
        (
            {"info": EntryInterruptionInfo.hardware_exception(6), "error_code": 4},
            "error_code",
            "deliver_error_code is clear",
        ),
        ({"info": EntryInterruptionInfo.software_interrupt(0x80)}, "instruction_length", "1..15"),
        (
            {"info": EntryInterruptionInfo.software_interrupt(0x80), "instruction_length": 16},
            "instruction_length",
            "1..15",
        ),
        (
            {"info": EntryInterruptionInfo.software_exception(3), "instruction_length": 0},
            "instruction_length",
            "1..15",
        ),
        (
            {"info": EntryInterruptionInfo.privileged_software_exception()},
            "instruction_length",
            "1..15",
        ),
        (
            {"info": EntryInterruptionInfo.hardware_exception(13), "error_code": 1 << 32},
            "error_code",
            "32 bits",
        ),
    ],
)
def test_event_injection_refusals(kwargs: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        EventInjection(**kwargs)
    message = str(excinfo.value)
    assert field in message
    assert reason in message


def test_event_injection_accepts_valid_events() -> None:
    gp = EventInjection(EntryInterruptionInfo.hardware_exception(13), error_code=0x18)
    assert str(gp) == "inject hardware exception #GP (vector 13) with error code 0x18"
    sw = EventInjection(EntryInterruptionInfo.software_interrupt(0x21), instruction_length=2)
    assert str(sw) == "inject software interrupt INT 0x21 instruction_length=2"
    EventInjection(EntryInterruptionInfo.software_interrupt(0x21), zero_length_allowed=True)
    EventInjection(EntryInterruptionInfo.external_interrupt(0x30))
    EventInjection(EntryInterruptionInfo.nmi())
    EventInjection(EntryInterruptionInfo.other_event())
    # An invalid field injects nothing; its contents are not checked.
    EventInjection(EntryInterruptionInfo(vector=0, type=InterruptionType.RESERVED, valid=False))


def test_event_injection_guest_state_rule() -> None:
    gp = EventInjection(EntryInterruptionInfo.hardware_exception(13))
    gp.check_guest_state(cr0_pe=True, unrestricted_guest=True)
    gp.check_guest_state(cr0_pe=False, unrestricted_guest=False)
    with pytest.raises(ValueError, match="deliver_error_code: must be clear"):
        gp.check_guest_state(cr0_pe=False, unrestricted_guest=True)
    real_mode = EventInjection(
        EntryInterruptionInfo.hardware_exception(13, deliver_error_code=False)
    )
    real_mode.check_guest_state(cr0_pe=False, unrestricted_guest=True)
    with pytest.raises(ValueError, match="deliver_error_code: must be set"):
        real_mode.check_guest_state(cr0_pe=True, unrestricted_guest=True)


# --- dispatch ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "value", "cls"),
    [
        (ExitReason.IO_INSTRUCTION, 0x03F8_0000, IoQualification),
        (ExitReason.CR_ACCESS, 0x0303, CrAccessQualification),
        (ExitReason.MOV_DR, 0x0116, MovDrQualification),
        (ExitReason.EPT_VIOLATION, 0x1AA, EptViolationQualification),
        (ExitReason.TASK_SWITCH, 0x4000_0030, TaskSwitchQualification),
        (30, 0x03F8_0000, IoQualification),
    ],
)
def test_decode_qualification_dispatch(reason: ExitReason | int, value: int, cls: type) -> None:
    got = decode_qualification(reason, value)
    assert isinstance(got, cls)
    assert got.encode() == value  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "reason",
    [ExitReason.CPUID, ExitReason.HLT, ExitReason.EPT_MISCONFIG, ExitReason.APIC_ACCESS, 35],
)
def test_decode_qualification_raw_for_others(reason: ExitReason | int) -> None:
    assert decode_qualification(reason, 0x1234) == 0x1234


def test_format_qualification() -> None:
    assert (
        format_qualification(ExitReason.IO_INSTRUCTION, 0x03F8_0000)
        == "OUT dx, al port=0x3f8 size=1"
    )
    assert format_qualification(ExitReason.HLT, 0) == "0x0"
    text = format_qualification(ExitReason.IO_INSTRUCTION, 0x2)
    assert text.startswith("0x2 (") and "size code 2" in text


# --- round trips -------------------------------------------------------------

bits = st.booleans()

io_objects = st.builds(
    IoQualification,
    size=st.sampled_from([1, 2, 4]),
    direction_in=bits,
    string=bits,
    rep=bits,
    operand_immediate=bits,
    port=st.integers(0, 0xFFFF),
)


@st.composite
def cr_objects(draw: st.DrawFn) -> CrAccessQualification:
    kind = draw(st.sampled_from(list(CrAccessType)))
    if kind in (CrAccessType.MOV_TO_CR, CrAccessType.MOV_FROM_CR):
        return CrAccessQualification(
            cr=draw(st.integers(0, 15)), access_type=kind, gpr=draw(st.integers(0, 15))
        )
    if kind is CrAccessType.CLTS:
        return CrAccessQualification(cr=0, access_type=kind)
    return CrAccessQualification(
        cr=0,
        access_type=kind,
        lmsw_operand_memory=draw(bits),
        lmsw_source_data=draw(st.integers(0, 0xFFFF)),
    )


mov_dr_objects = st.builds(
    MovDrQualification, dr=st.integers(0, 7), direction_from_dr=bits, gpr=st.integers(0, 15)
)


@st.composite
def ept_objects(draw: st.DrawFn) -> EptViolationQualification:
    values = {name: draw(bits) for name in EptViolationQualification.BIT_NAMES}
    if not values["guest_linear_address_valid"]:
        values["translated_access"] = False
    return EptViolationQualification(**values)


task_objects = st.builds(
    TaskSwitchQualification,
    selector=st.integers(0, 0xFFFF),
    source=st.sampled_from(list(TaskSwitchSource)),
)
types = st.sampled_from(list(InterruptionType))
exit_info_objects = st.builds(
    ExitInterruptionInfo,
    vector=st.integers(0, 255),
    type=types,
    error_code_valid=bits,
    nmi_unblocking=bits,
    valid=bits,
)
idt_info_objects = st.builds(
    IdtVectoringInfo, vector=st.integers(0, 255), type=types, error_code_valid=bits, valid=bits
)
entry_info_objects = st.builds(
    EntryInterruptionInfo,
    vector=st.integers(0, 255),
    type=types,
    deliver_error_code=bits,
    valid=bits,
)

ALL_OBJECTS = st.one_of(
    io_objects,
    cr_objects(),
    mov_dr_objects,
    ept_objects(),
    task_objects,
    exit_info_objects,
    idt_info_objects,
    entry_info_objects,
)


@given(ALL_OBJECTS)
def test_object_round_trip(obj: Any) -> None:
    value = obj.encode()
    assert type(obj).decode(value) == obj
    assert type(obj).decode(value).encode() == value
    text = str(obj)
    assert text and "\n" not in text


@pytest.mark.parametrize(
    "cls",
    [
        IoQualification,
        MovDrQualification,
        EptViolationQualification,
        TaskSwitchQualification,
        ExitInterruptionInfo,
        EntryInterruptionInfo,
        CrAccessQualification,
    ],
)
@given(raw=st.integers(0, (1 << 32) - 1))
def test_raw_round_trip(cls: Any, raw: int) -> None:
    """Any value that decodes re-encodes to itself; anything refused is
    refused with ValueError."""
    value = raw & cls.DEFINED_MASK
    try:
        decoded = cls.decode(value)
    except ValueError:
        return
    assert decoded.encode() == value


@given(raw=st.integers(0, (1 << 64) - 1))
def test_lenient_decode_never_raises_on_structurally_valid_values(raw: int) -> None:
    assert MovDrQualification.decode(raw, strict=False).encode() == raw & 0xF17
    assert TaskSwitchQualification.decode(raw, strict=False).encode() == raw & 0xC000_FFFF
    ept = EptViolationQualification.decode(raw, strict=False).encode()
    assert ept & ~(1 << 8) == raw & 0x1_FEFF


@given(
    event=st.builds(
        EventInjection,
        info=st.one_of(
            st.integers(0, 255).map(EntryInterruptionInfo.external_interrupt),
            st.just(EntryInterruptionInfo.nmi()),
            st.integers(0, 31).map(EntryInterruptionInfo.hardware_exception),
        ),
    )
)
def test_event_injection_generated_ok(event: EventInjection) -> None:
    assert "\n" not in str(event)
