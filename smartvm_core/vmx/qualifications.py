"""Exit qualifications and interruption-information fields.

Bit layouts follow the Intel SDM, Vol. 3:

* Section 28.2.1 "Basic VM-Exit Information" (numbering of recent editions;
  27.2.1 in older ones), the exit-qualification tables:
  "Exit Qualification for Task Switches", "... for Control-Register
  Accesses", "... for MOV DR", "... for I/O Instructions", "... for EPT
  Violations".
* Section 25.9.2 "Information for VM Exits Due to Vectored Events", Table
  "Format of the VM-Exit Interruption-Information Field", and Section 25.9.3,
  Table "Format of the IDT-Vectoring Information Field".
* Section 25.8.3 "VM-Entry Controls for Event Injection", Table "Format of the
  VM-Entry Interruption-Information Field", and Section 27.2.1.3 "Checks on
  VM-Entry Control Fields" for what :class:`EventInjection` accepts.

Every class is a frozen ``attrs`` class with ``decode(value)`` and
``encode()``.  Constructors refuse attribute values that do not fit their bit
field; ``decode`` refuses values wider than the VMCS field and, unless
``strict=False``, set bits the SDM leaves reserved.  ``str()`` of any
decoded object is a one-line description for reports.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from .exit_reasons import ExitReason
from .vectors import HAS_ERROR_CODE, Vector

__all__ = [
    "GPR_NAMES",
    "CrAccessQualification",
    "CrAccessType",
    "EntryInterruptionInfo",
    "EptViolationQualification",
    "EventInjection",
    "ExitInterruptionInfo",
    "Gpr",
    "IdtVectoringInfo",
    "InterruptionInfo",
    "InterruptionType",
    "IoQualification",
    "MovDrQualification",
    "QUALIFICATION_DECODERS",
    "TaskSwitchQualification",
    "TaskSwitchSource",
    "decode_qualification",
    "format_qualification",
]

# --- shared helpers ----------------------------------------------------------


def _uint(bits: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """attrs validator: a non-negative int that fits ``bits`` bits."""
    limit = 1 << bits

    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
            raise ValueError(
                f"{type(inst).__name__}.{attribute.name}: {value!r} does not fit {bits} bits"
            )

    return check


def _flag(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """attrs validator: a single bit (bool, or int 0/1)."""
    if not isinstance(value, int) or value not in (0, 1):
        raise ValueError(f"{type(inst).__name__}.{attribute.name}: {value!r} is not a bit")


def _maybe_enum(enum_cls: type[enum.Enum], value: Any) -> Any:
    """The member of ``enum_cls`` for ``value``, or ``value`` unchanged so
    that the field's validator can refuse it by name."""
    try:
        return enum_cls(value)
    except ValueError:
        return value


def _member_of(enum_cls: type[enum.Enum]) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """attrs validator: the (converted) value is a member of ``enum_cls``."""

    def check(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, enum_cls):
            raise ValueError(
                f"{type(inst).__name__}.{attribute.name}: {value!r} is not a valid "
                f"{enum_cls.__name__}"
            )

    return check


def _check_raw(label: str, value: int, width: int, defined: int, strict: bool) -> int:
    """Validate a raw field value before decoding; return it (masked if lenient)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{label}: expected an int, got {type(value).__name__}")
    if value < 0 or value >> width:
        raise ValueError(f"{label}: 0x{value:x} does not fit the {width}-bit field")
    undefined = value & ~defined
    if undefined:
        if strict:
            raise ValueError(f"{label}: reserved bits set (0x{undefined:x})")
        value &= defined
    return value


def _bit(value: int, n: int) -> bool:
    return bool((value >> n) & 1)


# --- general-purpose registers ----------------------------------------------


class Gpr(enum.IntEnum):
    """General-purpose register numbering used by exit qualifications."""

    RAX = 0
    RCX = 1
    RDX = 2
    RBX = 3
    RSP = 4
    RBP = 5
    RSI = 6
    RDI = 7
    R8 = 8
    R9 = 9
    R10 = 10
    R11 = 11
    R12 = 12
    R13 = 13
    R14 = 14
    R15 = 15


def _to_gpr(value: Any) -> Gpr:
    result: Gpr = _maybe_enum(Gpr, value)
    return result


GPR_NAMES: tuple[str, ...] = tuple(g.name for g in Gpr)
"""``GPR_NAMES[n]`` is the name of register number ``n`` (0 = RAX ... 15 = R15)."""


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


# --- interruption information ------------------------------------------------


class InterruptionType(enum.IntEnum):
    """Bits 10:8 of the interruption-information fields.

    ``RESERVED`` (1) is never produced by a VM exit and refused for injection.
    """

    EXTERNAL_INTERRUPT = 0
    RESERVED = 1
    NMI = 2
    HARDWARE_EXCEPTION = 3
    SOFTWARE_INTERRUPT = 4
    PRIVILEGED_SOFTWARE_EXCEPTION = 5
    SOFTWARE_EXCEPTION = 6
    OTHER_EVENT = 7


def _to_interruption_type(value: Any) -> InterruptionType:
    result: InterruptionType = _maybe_enum(InterruptionType, value)
    return result


_SOFTWARE_TYPES = frozenset(
    {
        InterruptionType.SOFTWARE_INTERRUPT,
        InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION,
        InterruptionType.SOFTWARE_EXCEPTION,
    }
)
_EXCEPTION_TYPES = frozenset(
    {
        InterruptionType.HARDWARE_EXCEPTION,
        InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION,
        InterruptionType.SOFTWARE_EXCEPTION,
    }
)


def _vector_text(vector: int) -> str:
    try:
        return f"{Vector(vector).mnemonic} (vector {vector})"
    except ValueError:
        return f"vector {vector}"


def _event_text(vector: int, kind: InterruptionType) -> str:
    if kind is InterruptionType.EXTERNAL_INTERRUPT:
        return f"external interrupt vector 0x{vector:02x}"
    if kind is InterruptionType.NMI:
        return "NMI" if vector == Vector.NMI else f"NMI (vector {vector})"
    if kind is InterruptionType.HARDWARE_EXCEPTION:
        return f"hardware exception {_vector_text(vector)}"
    if kind is InterruptionType.SOFTWARE_INTERRUPT:
        return f"software interrupt INT 0x{vector:02x}"
    if kind is InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION:
        return f"privileged software exception {_vector_text(vector)}"
    if kind is InterruptionType.SOFTWARE_EXCEPTION:
        return f"software exception {_vector_text(vector)}"
    if kind is InterruptionType.OTHER_EVENT:
        return (
            "other event (pending MTF VM exit)" if vector == 0 else f"other event vector {vector}"
        )
    return f"reserved interruption type 1 vector {vector}"


@attrs.frozen
class InterruptionInfo:
    """Fields shared by the three interruption-information formats:
    vector (bits 7:0), interruption type (10:8), valid (31)."""

    vector: int = attrs.field(validator=_uint(8))
    type: InterruptionType = attrs.field(
        converter=_to_interruption_type, validator=_member_of(InterruptionType)
    )

    LABEL: ClassVar[str] = "interruption information"
    WIDTH: ClassVar[int] = 32

    @property
    def exception(self) -> Vector | None:
        """The exception vector for exception types, else None."""
        if self.type in _EXCEPTION_TYPES:
            try:
                return Vector(self.vector)
            except ValueError:
                return None
        return None

    def _base_bits(self) -> int:
        return self.vector | int(self.type) << 8


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


@attrs.frozen
class EntryInterruptionInfo(InterruptionInfo):
    """VM-entry interruption-information field (bits 7:0 vector, 10:8 type,
    11 deliver error code, 31 valid; 30:12 reserved).

    The constructor only checks that each attribute fits its bits; the SDM's
    consistency checks run in :meth:`check` (and in :class:`EventInjection`).
    """

    deliver_error_code: bool = attrs.field(default=False, validator=_flag)
    valid: bool = attrs.field(default=True, validator=_flag)

    LABEL: ClassVar[str] = "VM-entry interruption information"
    DEFINED_MASK: ClassVar[int] = 0x8000_0FFF

    @classmethod
    def decode(cls, value: int, *, strict: bool = True) -> EntryInterruptionInfo:
        """Decode the raw 32-bit field."""
        value = _check_raw(cls.LABEL, value, cls.WIDTH, cls.DEFINED_MASK, strict)
        return cls(
            vector=value & 0xFF,
            type=(value >> 8) & 0x7,
            deliver_error_code=_bit(value, 11),
            valid=_bit(value, 31),
        )

    def encode(self) -> int:
        """The raw 32-bit field."""
        return self._base_bits() | int(self.deliver_error_code) << 11 | int(self.valid) << 31

    # Convenience constructors ------------------------------------------------

    @classmethod
    def external_interrupt(cls, vector: int) -> EntryInterruptionInfo:
        """Inject external interrupt ``vector``."""
        return cls(vector=vector, type=InterruptionType.EXTERNAL_INTERRUPT)

    @classmethod
    def nmi(cls) -> EntryInterruptionInfo:
        """Inject an NMI (vector 2)."""
        return cls(vector=Vector.NMI, type=InterruptionType.NMI)

    @classmethod
    def hardware_exception(
        cls, vector: int, *, deliver_error_code: bool | None = None
    ) -> EntryInterruptionInfo:
        """Inject hardware exception ``vector``.

        ``deliver_error_code`` defaults to whether the exception has an error
        code (:data:`HAS_ERROR_CODE`); pass False for a real-mode guest under
        "unrestricted guest" with CR0.PE = 0.
        """
        if deliver_error_code is None:
            deliver_error_code = vector in HAS_ERROR_CODE
        return cls(
            vector=vector,
            type=InterruptionType.HARDWARE_EXCEPTION,
            deliver_error_code=deliver_error_code,
        )

    @classmethod
    def software_interrupt(cls, vector: int) -> EntryInterruptionInfo:
        """Inject ``INT n`` (needs a VM-entry instruction length)."""
        return cls(vector=vector, type=InterruptionType.SOFTWARE_INTERRUPT)

    @classmethod
    def software_exception(cls, vector: int) -> EntryInterruptionInfo:
        """Inject a software exception (#BP from INT3, #OF from INTO)."""
        return cls(vector=vector, type=InterruptionType.SOFTWARE_EXCEPTION)

    @classmethod
    def privileged_software_exception(cls, vector: int = Vector.DB) -> EntryInterruptionInfo:
        """Inject a privileged software exception (#DB from INT1)."""
        return cls(vector=vector, type=InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION)

    @classmethod
    def other_event(cls) -> EntryInterruptionInfo:
        """Inject a pending MTF VM exit (type 7, vector 0)."""
        return cls(vector=0, type=InterruptionType.OTHER_EVENT)

    def check(self, label: str | None = None) -> None:
        """Apply the SDM 27.2.1.3 checks that need no guest state or error
        code; raise ValueError naming the field (prefixed with ``label``,
        default the class name) on failure.  An invalid (valid = 0) field
        passes."""
        if not self.valid:
            return
        name = label or type(self).__name__
        kind = self.type
        if kind is InterruptionType.RESERVED:
            raise ValueError(f"{name}.type: interruption type 1 is reserved")
        if kind is InterruptionType.NMI and self.vector != Vector.NMI:
            raise ValueError(f"{name}.vector: an NMI must use vector 2, got {self.vector}")
        if kind is InterruptionType.HARDWARE_EXCEPTION and self.vector > 31:
            raise ValueError(
                f"{name}.vector: a hardware exception needs a vector of at most 31, "
                f"got {self.vector}"
            )
        if kind is InterruptionType.OTHER_EVENT and self.vector != 0:
            raise ValueError(f"{name}.vector: 'other event' must use vector 0, got {self.vector}")
        if self.deliver_error_code and not (
            kind is InterruptionType.HARDWARE_EXCEPTION and self.vector in HAS_ERROR_CODE
        ):
            raise ValueError(
                f"{name}.deliver_error_code: only hardware exceptions with an error code "
                f"({', '.join(sorted(v.mnemonic for v in HAS_ERROR_CODE))}) may deliver one"
            )

    def __str__(self) -> str:
        if not self.valid:
            return "no event to inject (valid bit clear)"
        text = "inject " + _event_text(self.vector, self.type)
        if self.deliver_error_code:
            text += " with error code"
        return text


@attrs.frozen
class EventInjection:
    """An event to inject on the next VM entry: the VM-entry
    interruption-information field, the VM-entry exception error code and the
    VM-entry instruction length.

    Construction applies the SDM 27.2.1.3 checks that need no guest state:
    interruption type 1 is reserved; an NMI uses vector 2; a hardware
    exception uses a vector below 32; "other event" uses vector 0; an error
    code is delivered only for hardware exceptions that have one, and then
    bits 31:16 of the error code are 0; software interrupts and (privileged)
    software exceptions need an instruction length of 1-15 (0 too when
    ``zero_length_allowed``, i.e. IA32_VMX_MISC bit 30 is 1).  Beyond the SDM,
    a nonzero ``error_code`` without ``deliver_error_code`` is refused as a
    likely mistake.  :meth:`check_guest_state` adds the CR0.PE rule.
    """

    info: EntryInterruptionInfo
    error_code: int = attrs.field(default=0, validator=_uint(32))
    instruction_length: int = attrs.field(default=0, validator=_uint(32))
    zero_length_allowed: bool = attrs.field(default=False, kw_only=True, validator=_flag)

    def __attrs_post_init__(self) -> None:
        info = self.info
        if not isinstance(info, EntryInterruptionInfo):
            raise TypeError("EventInjection.info: expected an EntryInterruptionInfo")
        if not info.valid:
            return
        info.check("EventInjection.info")
        if info.deliver_error_code:
            if self.error_code >> 16:
                raise ValueError(
                    f"EventInjection.error_code: bits 31:16 must be 0, got 0x{self.error_code:x}"
                )
        elif self.error_code:
            raise ValueError(
                "EventInjection.error_code: given but info.deliver_error_code is clear"
            )
        if info.type in _SOFTWARE_TYPES:
            low = 0 if self.zero_length_allowed else 1
            if not low <= self.instruction_length <= 15:
                raise ValueError(
                    f"EventInjection.instruction_length: {info.type.name} needs a length in "
                    f"{low}..15, got {self.instruction_length}"
                )

    def check_guest_state(self, *, cr0_pe: bool, unrestricted_guest: bool) -> None:
        """The SDM rule that needs guest state: the deliver-error-code bit is 1
        exactly when the event is a hardware exception with an error code and
        either "unrestricted guest" is 0 or guest CR0.PE is 1."""
        info = self.info
        if not info.valid:
            return
        expected = (
            (not unrestricted_guest or cr0_pe)
            and info.type is InterruptionType.HARDWARE_EXCEPTION
            and info.vector in HAS_ERROR_CODE
        )
        if bool(info.deliver_error_code) != expected:
            state = "set" if expected else "clear"
            raise ValueError(
                f"EventInjection.info.deliver_error_code: must be {state} for "
                f"{_event_text(info.vector, info.type)} with CR0.PE={int(cr0_pe)}, "
                f"unrestricted guest={int(unrestricted_guest)}"
            )

    def __str__(self) -> str:
        text = str(self.info)
        if self.info.valid and self.info.deliver_error_code:
            text += f" 0x{self.error_code:x}"
        if self.info.valid and self.info.type in _SOFTWARE_TYPES:
            text += f" instruction_length={self.instruction_length}"
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


def decode_qualification(
    reason: ExitReason | int, value: int, *, strict: bool = True
) -> Qualification | int:
    """Decode ``value`` as the exit qualification of ``reason``.

    Returns the decoded object for I/O instruction, control-register access,
    MOV DR, EPT violation and task switch exits; the raw int otherwise.
    """
    decoder = QUALIFICATION_DECODERS.get(reason)
    if decoder is None:
        return value
    result: Qualification = decoder.decode(value, strict=strict)
    return result


def format_qualification(reason: ExitReason | int, value: int) -> str:
    """One-line text for an exit qualification, for reports.

    Never raises: a value that does not decode is shown in hex with the
    reason it was refused.
    """
    try:
        decoded = decode_qualification(reason, value)
    except (ValueError, TypeError) as exc:
        return f"0x{value:x} ({exc})"
    if isinstance(decoded, int):
        return f"0x{decoded:x}"
    return str(decoded)
