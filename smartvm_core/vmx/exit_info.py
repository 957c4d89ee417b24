"""Decoders of the VM-exit information fields: the exit qualification of I/O
instructions, control-register accesses, MOV DR, EPT violations and task
switches, the VM-exit interruption information and the IDT-vectoring
information.

Bit layouts follow the Intel SDM, Vol. 3, Section 28.2.1 "Basic VM-Exit
Information" (27.2.1 in older editions), the exit-qualification tables
"Exit Qualification for Task Switches", "... for Control-Register Accesses",
"... for MOV DR", "... for I/O Instructions" and "... for EPT Violations";
Section 25.9.2, Table "Format of the VM-Exit Interruption-Information
Field", and Section 25.9.3, Table "Format of the IDT-Vectoring Information
Field".

These classes live apart from :mod:`smartvm_core.vmx.qualifications` (the
shared helpers, :class:`~smartvm_core.vmx.qualifications.EntryInterruptionInfo`
and :class:`~smartvm_core.vmx.qualifications.EventInjection`, which the loop
and the engines use from start-up on) because a run needs them only when it
decodes or reports what an exit says: a handler that does (CR access on the
soft engine, an EPT policy, a report) imports them then, and a run that never
does skips building them. Every name stays importable from
:mod:`smartvm_core.vmx.qualifications` and :mod:`smartvm_core.vmx`, which
load this module on first use of one of its names (PEP 562).

Every class is a frozen ``attrs`` class with ``decode(value)`` and
``encode()``; see :mod:`smartvm_core.vmx.qualifications` for the rules they
share.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import attrs

from .exit_reasons import ExitReason
from .qualifications import (
    GPR_NAMES,
    Gpr,
    InterruptionInfo,
    _bit,
    _check_raw,
    _event_text,
    _flag,
    _maybe_enum,
    _member_of,
    _to_gpr,
    _uint,
)

__all__ = [
    "QUALIFICATION_DECODERS",
    "CrAccessQualification",
    "CrAccessType",
    "EptViolationQualification",
    "ExitInterruptionInfo",
    "IdtVectoringInfo",
    "IoQualification",
    "MovDrQualification",
    "Qualification",
    "TaskSwitchQualification",
    "TaskSwitchSource",
]

# --- I/O instructions --------------------------------------------------------

_IO_SIZE_DECODE = {0: 1, 1: 2, 3: 4}
_IO_SIZE_ENCODE = {1: 0, 2: 1, 4: 3}
_IO_REG = {1: "al", 2: "ax", 4: "eax"}
_IO_SUFFIX = {1: "B", 2: "W", 4: "D"}


def _io_size(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or value not in (1, 2, 4):
        raise ValueError(f"{type(inst).__name__}.{attribute.name}: {value!r} is not 1, 2 or 4")


@attrs.frozen
class IoQualification:
    """Exit qualification for I/O instructions (bits 2:0 size, 3 IN, 4 string,
    5 REP, 6 immediate operand, 31:16 port)."""

    size: int = attrs.field(validator=_io_size)
    direction_in: bool = attrs.field(validator=_flag)
    string: bool = attrs.field(default=False, validator=_flag)
    rep: bool = attrs.field(default=False, validator=_flag)
    operand_immediate: bool = attrs.field(default=False, validator=_flag)
    port: int = attrs.field(default=0, validator=_uint(16))

    LABEL: ClassVar[str] = "I/O exit qualification"
    WIDTH: ClassVar[int] = 64
    DEFINED_MASK: ClassVar[int] = 0xFFFF_007F

    @classmethod
    def decode(cls, value: int, *, strict: bool = True) -> IoQualification:
        """Decode the raw exit qualification."""
        value = _check_raw(cls.LABEL, value, cls.WIDTH, cls.DEFINED_MASK, strict)
        code = value & 0x7
        if code not in _IO_SIZE_DECODE:
            raise ValueError(f"{cls.LABEL}: size code {code} in bits 2:0 is not used by the SDM")
        return cls(
            size=_IO_SIZE_DECODE[code],
            direction_in=_bit(value, 3),
            string=_bit(value, 4),
            rep=_bit(value, 5),
            operand_immediate=_bit(value, 6),
            port=(value >> 16) & 0xFFFF,
        )

    def encode(self) -> int:
        """The raw exit qualification."""
        return (
            _IO_SIZE_ENCODE[self.size]
            | int(self.direction_in) << 3
            | int(self.string) << 4
            | int(self.rep) << 5
            | int(self.operand_immediate) << 6
            | self.port << 16
        )

    def __str__(self) -> str:
        where = f"port=0x{self.port:x} size={self.size}"
        if self.string:
            mnemonic = ("INS" if self.direction_in else "OUTS") + _IO_SUFFIX[self.size]
            return f"{'REP ' if self.rep else ''}{mnemonic} {where}"
        reg = _IO_REG[self.size]
        port = f"0x{self.port:x}" if self.operand_immediate else "dx"
        if self.direction_in:
            return f"IN {reg}, {port} {where}"
        return f"OUT {port}, {reg} {where}"


# --- control-register accesses -----------------------------------------------


class CrAccessType(enum.IntEnum):
    """Bits 5:4 of the control-register-access exit qualification."""

    MOV_TO_CR = 0
    MOV_FROM_CR = 1
    CLTS = 2
    LMSW = 3


def _to_cr_access_type(value: Any) -> CrAccessType:
    result: CrAccessType = _maybe_enum(CrAccessType, value)
    return result


@attrs.frozen
class CrAccessQualification:
    """Exit qualification for control-register accesses (bits 3:0 CR number,
    5:4 access type, 6 LMSW operand type, 11:8 GPR, 31:16 LMSW source data).

    As the SDM says, the GPR is 0 for CLTS and LMSW, the LMSW operand type
    and source data are 0 for CLTS and MOV CR, and the CR number is 0 for
    CLTS and LMSW; other combinations are refused.
    """

    cr: int = attrs.field(validator=_uint(4))
    access_type: CrAccessType = attrs.field(
        converter=_to_cr_access_type, validator=_member_of(CrAccessType)
    )
    gpr: Gpr = attrs.field(default=Gpr.RAX, converter=_to_gpr, validator=_member_of(Gpr))
    lmsw_operand_memory: bool = attrs.field(default=False, validator=_flag)
    lmsw_source_data: int = attrs.field(default=0, validator=_uint(16))

    LABEL: ClassVar[str] = "control-register-access exit qualification"
    WIDTH: ClassVar[int] = 64
    DEFINED_MASK: ClassVar[int] = 0xFFFF_0F7F

    def __attrs_post_init__(self) -> None:
        kind = self.access_type
        name = type(self).__name__
        if kind in (CrAccessType.CLTS, CrAccessType.LMSW):
            if self.cr != 0:
                raise ValueError(f"{name}.cr: must be 0 for {kind.name}, got {self.cr}")
            if self.gpr != 0:
                raise ValueError(f"{name}.gpr: must be 0 (RAX) for {kind.name}")
        if kind is not CrAccessType.LMSW:
            if self.lmsw_operand_memory:
                raise ValueError(f"{name}.lmsw_operand_memory: only meaningful for LMSW")
            if self.lmsw_source_data:
                raise ValueError(f"{name}.lmsw_source_data: only meaningful for LMSW")

    @property
    def gpr_name(self) -> str:
        """Name of the general-purpose register operand (MOV CR only)."""
        return GPR_NAMES[self.gpr]

    @classmethod
    def decode(cls, value: int, *, strict: bool = True) -> CrAccessQualification:
        """Decode the raw exit qualification."""
        value = _check_raw(cls.LABEL, value, cls.WIDTH, cls.DEFINED_MASK, strict)
        return cls(
            cr=value & 0xF,
            access_type=(value >> 4) & 0x3,
            lmsw_operand_memory=_bit(value, 6),
            gpr=(value >> 8) & 0xF,
            lmsw_source_data=(value >> 16) & 0xFFFF,
        )

    def encode(self) -> int:
        """The raw exit qualification."""
        return (
            self.cr
            | int(self.access_type) << 4
            | int(self.lmsw_operand_memory) << 6
            | int(self.gpr) << 8
            | self.lmsw_source_data << 16
        )

    def __str__(self) -> str:
        kind = self.access_type
        if kind is CrAccessType.MOV_TO_CR:
            return f"MOV CR{self.cr}, {self.gpr_name}"
        if kind is CrAccessType.MOV_FROM_CR:
            return f"MOV {self.gpr_name}, CR{self.cr}"
        if kind is CrAccessType.CLTS:
            return "CLTS"
        operand = "memory" if self.lmsw_operand_memory else "register"
        return f"LMSW 0x{self.lmsw_source_data:04x} ({operand} operand)"


# --- MOV DR ------------------------------------------------------------------


@attrs.frozen
class MovDrQualification:
    """Exit qualification for MOV DR (bits 2:0 DR number, 4 direction
    (1 = MOV from DR), 11:8 GPR)."""

    dr: int = attrs.field(validator=_uint(3))
    direction_from_dr: bool = attrs.field(validator=_flag)
    gpr: Gpr = attrs.field(default=Gpr.RAX, converter=_to_gpr, validator=_member_of(Gpr))

    LABEL: ClassVar[str] = "MOV-DR exit qualification"
    WIDTH: ClassVar[int] = 64
    DEFINED_MASK: ClassVar[int] = 0xF17

    @property
    def gpr_name(self) -> str:
        """Name of the general-purpose register operand."""
        return GPR_NAMES[self.gpr]

    @classmethod
    def decode(cls, value: int, *, strict: bool = True) -> MovDrQualification:
        """Decode the raw exit qualification."""
        value = _check_raw(cls.LABEL, value, cls.WIDTH, cls.DEFINED_MASK, strict)
        return cls(dr=value & 0x7, direction_from_dr=_bit(value, 4), gpr=(value >> 8) & 0xF)

    def encode(self) -> int:
        """The raw exit qualification."""
        return self.dr | int(self.direction_from_dr) << 4 | int(self.gpr) << 8

    def __str__(self) -> str:
        if self.direction_from_dr:
            return f"MOV {self.gpr_name}, DR{self.dr}"
        return f"MOV DR{self.dr}, {self.gpr_name}"


# --- EPT violations ----------------------------------------------------------


@attrs.frozen
class EptViolationQualification:
    """Exit qualification for EPT violations (bits 16:0).

    Bits: 0 data read, 1 data write, 2 instruction fetch; 3/4/5 the
    guest-physical address was readable / writable / executable (for
    supervisor-mode linear addresses when mode-based execute control is on);
    6 executable for user-mode linear addresses; 7 guest linear-address field
    valid; 8 the access was to the translation of that linear address (not
    to a paging-structure entry) -- reserved, cleared, when bit 7 is 0;
    9 user-mode linear address; 10 read/write page (0 = read-only);
    11 execute-disable page (bits 9-11 meaningful only when bits 7 and 8 are
    set and advanced EPT-violation information is supported); 12 NMI
    unblocking due to IRET; 13 shadow-stack access; 14 supervisor
    shadow-stack page; 15 caused by guest-paging verification; 16 access
    asynchronous to instruction execution.
    """

    read: bool = attrs.field(default=False, validator=_flag)
    write: bool = attrs.field(default=False, validator=_flag)
    fetch: bool = attrs.field(default=False, validator=_flag)
    readable: bool = attrs.field(default=False, validator=_flag)
    writable: bool = attrs.field(default=False, validator=_flag)
    executable: bool = attrs.field(default=False, validator=_flag)
    user_executable: bool = attrs.field(default=False, validator=_flag)
    guest_linear_address_valid: bool = attrs.field(default=False, validator=_flag)
    translated_access: bool = attrs.field(default=False, validator=_flag)
    user_mode_address: bool = attrs.field(default=False, validator=_flag)
    read_write_page: bool = attrs.field(default=False, validator=_flag)
    execute_disable_page: bool = attrs.field(default=False, validator=_flag)
    nmi_unblocking: bool = attrs.field(default=False, validator=_flag)
    shadow_stack_access: bool = attrs.field(default=False, validator=_flag)
    supervisor_shadow_stack: bool = attrs.field(default=False, validator=_flag)
    guest_paging_verification: bool = attrs.field(default=False, validator=_flag)
    asynchronous: bool = attrs.field(default=False, validator=_flag)

    LABEL: ClassVar[str] = "EPT-violation exit qualification"
    WIDTH: ClassVar[int] = 64
    DEFINED_MASK: ClassVar[int] = 0x1_FFFF
    # Attribute names in bit order (bit n is BIT_NAMES[n]).
    BIT_NAMES: ClassVar[tuple[str, ...]] = (
        "read",
        "write",
        "fetch",
        "readable",
        "writable",
        "executable",
        "user_executable",
        "guest_linear_address_valid",
        "translated_access",
        "user_mode_address",
        "read_write_page",
        "execute_disable_page",
        "nmi_unblocking",
        "shadow_stack_access",
        "supervisor_shadow_stack",
        "guest_paging_verification",
        "asynchronous",
    )

    def __attrs_post_init__(self) -> None:
        if self.translated_access and not self.guest_linear_address_valid:
            raise ValueError(
                f"{type(self).__name__}.translated_access: bit 8 is reserved (0) "
                "when guest_linear_address_valid (bit 7) is clear"
            )

    @classmethod
    def decode(cls, value: int, *, strict: bool = True) -> EptViolationQualification:
        """Decode the raw exit qualification (lenient mode also clears bit 8
        when bit 7 is clear)."""
        value = _check_raw(cls.LABEL, value, cls.WIDTH, cls.DEFINED_MASK, strict)
        if not strict and not _bit(value, 7):
            value &= ~(1 << 8)
        return cls(**{name: _bit(value, n) for n, name in enumerate(cls.BIT_NAMES)})

    def encode(self) -> int:
        """The raw exit qualification."""
        return sum(int(getattr(self, name)) << n for n, name in enumerate(self.BIT_NAMES))

    def __str__(self) -> str:
        access = [
            n for n, on in (("read", self.read), ("write", self.write), ("fetch", self.fetch)) if on
        ]
        perms = (
            ("r" if self.readable else "-")
            + ("w" if self.writable else "-")
            + ("x" if self.executable else "-")
            + ("u" if self.user_executable else "")
        )
        parts = [f"EPT violation: {'/'.join(access) or 'no access bits'}", f"entry {perms}"]
        if self.guest_linear_address_valid:
            what = "translation" if self.translated_access else "paging-structure access"
            parts.append(f"linear address valid ({what})")
            if self.translated_access and (
                self.user_mode_address or self.read_write_page or self.execute_disable_page
            ):
                page = "user" if self.user_mode_address else "supervisor"
                page += " rw" if self.read_write_page else " ro"
                page += " xd" if self.execute_disable_page else ""
                parts.append(f"page {page}")
        for name, text in (
            ("nmi_unblocking", "NMI unblocking due to IRET"),
            ("shadow_stack_access", "shadow-stack access"),
            ("supervisor_shadow_stack", "supervisor shadow stack"),
            ("guest_paging_verification", "guest-paging verification"),
            ("asynchronous", "asynchronous to instruction execution"),
        ):
            if getattr(self, name):
                parts.append(text)
        return ", ".join(parts)


# --- task switches -----------------------------------------------------------


class TaskSwitchSource(enum.IntEnum):
    """Bits 31:30 of the task-switch exit qualification."""

    CALL = 0
    IRET = 1
    JMP = 2
    TASK_GATE = 3  # task gate in the IDT


def _to_task_switch_source(value: Any) -> TaskSwitchSource:
    result: TaskSwitchSource = _maybe_enum(TaskSwitchSource, value)
    return result


@attrs.frozen
class TaskSwitchQualification:
    """Exit qualification for task switches (bits 15:0 TSS selector,
    31:30 source)."""

    selector: int = attrs.field(validator=_uint(16))
    source: TaskSwitchSource = attrs.field(
        converter=_to_task_switch_source, validator=_member_of(TaskSwitchSource)
    )

    LABEL: ClassVar[str] = "task-switch exit qualification"
    WIDTH: ClassVar[int] = 64
    DEFINED_MASK: ClassVar[int] = 0xC000_FFFF

    @classmethod
    def decode(cls, value: int, *, strict: bool = True) -> TaskSwitchQualification:
        """Decode the raw exit qualification."""
        value = _check_raw(cls.LABEL, value, cls.WIDTH, cls.DEFINED_MASK, strict)
        return cls(selector=value & 0xFFFF, source=(value >> 30) & 0x3)

    def encode(self) -> int:
        """The raw exit qualification."""
        return self.selector | int(self.source) << 30

    def __str__(self) -> str:
        via = "task gate in IDT" if self.source is TaskSwitchSource.TASK_GATE else self.source.name
        return f"task switch via {via} selector=0x{self.selector:04x}"


# --- interruption information of a VM exit ---------------------------------


@attrs.frozen
class ExitInterruptionInfo(InterruptionInfo):
    """VM-exit interruption-information field (bits 7:0 vector, 10:8 type,
    11 error code valid, 12 NMI unblocking due to IRET, 31 valid)."""

    error_code_valid: bool = attrs.field(default=False, validator=_flag)
    nmi_unblocking: bool = attrs.field(default=False, validator=_flag)
    valid: bool = attrs.field(default=True, validator=_flag)

    LABEL: ClassVar[str] = "VM-exit interruption information"
    DEFINED_MASK: ClassVar[int] = 0x8000_1FFF

    @classmethod
    def decode(cls, value: int, *, strict: bool = True) -> ExitInterruptionInfo:
        """Decode the raw 32-bit field."""
        value = _check_raw(cls.LABEL, value, cls.WIDTH, cls.DEFINED_MASK, strict)
        return cls(
            vector=value & 0xFF,
            type=(value >> 8) & 0x7,
            error_code_valid=_bit(value, 11),
            nmi_unblocking=_bit(value, 12),
            valid=_bit(value, 31),
        )

    def encode(self) -> int:
        """The raw 32-bit field."""
        return (
            self._base_bits()
            | int(self.error_code_valid) << 11
            | int(self.nmi_unblocking) << 12
            | int(self.valid) << 31
        )

    def __str__(self) -> str:
        if not self.valid:
            return "no event (valid bit clear)"
        text = _event_text(self.vector, self.type)
        if self.error_code_valid:
            text += ", error code valid"
        if self.nmi_unblocking:
            text += ", NMI unblocking due to IRET"
        return text


@attrs.frozen
class IdtVectoringInfo(InterruptionInfo):
    """IDT-vectoring information field (bits 7:0 vector, 10:8 type,
    11 error code valid, 31 valid).  Bit 12 is undefined in this field; decode
    ignores it."""

    error_code_valid: bool = attrs.field(default=False, validator=_flag)
    valid: bool = attrs.field(default=True, validator=_flag)

    LABEL: ClassVar[str] = "IDT-vectoring information"
    DEFINED_MASK: ClassVar[int] = 0x8000_1FFF  # bit 12 accepted, then dropped

    @classmethod
    def decode(cls, value: int, *, strict: bool = True) -> IdtVectoringInfo:
        """Decode the raw 32-bit field."""
        value = _check_raw(cls.LABEL, value, cls.WIDTH, cls.DEFINED_MASK, strict)
        return cls(
            vector=value & 0xFF,
            type=(value >> 8) & 0x7,
            error_code_valid=_bit(value, 11),
            valid=_bit(value, 31),
        )

    def encode(self) -> int:
        """The raw 32-bit field (bit 12 written as 0)."""
        return self._base_bits() | int(self.error_code_valid) << 11 | int(self.valid) << 31

    def __str__(self) -> str:
        if not self.valid:
            return "no event being delivered"
        text = "during delivery of " + _event_text(self.vector, self.type)
        if self.error_code_valid:
            text += ", error code valid"
        return text



# --- dispatch ----------------------------------------------------------------

QUALIFICATION_DECODERS: dict[int, Any] = {
    ExitReason.IO_INSTRUCTION: IoQualification,
    ExitReason.CR_ACCESS: CrAccessQualification,
    ExitReason.MOV_DR: MovDrQualification,
    ExitReason.EPT_VIOLATION: EptViolationQualification,
    ExitReason.TASK_SWITCH: TaskSwitchQualification,
}
"""Exit reasons with a structured exit-qualification decoder."""

Qualification = (
    IoQualification
    | CrAccessQualification
    | MovDrQualification
    | EptViolationQualification
    | TaskSwitchQualification
)
