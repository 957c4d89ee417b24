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

The decoders of what a VM exit reports (:class:`IoQualification`,
:class:`CrAccessQualification`, :class:`MovDrQualification`,
:class:`EptViolationQualification`, :class:`TaskSwitchQualification`, their
enums, ``QUALIFICATION_DECODERS``, :class:`ExitInterruptionInfo` and
:class:`IdtVectoringInfo`) are defined in :mod:`smartvm_core.vmx.exit_info`
and load on first use: importing them from here still works (PEP 562
``__getattr__``), but a run that never decodes an exit's information does not
pay for building their classes at start-up. :class:`EntryInterruptionInfo`
and :class:`EventInjection`, which the loop and the engines use to inject
events, stay here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from .exit_reasons import ExitReason
from .vectors import HAS_ERROR_CODE, Vector

if TYPE_CHECKING:
    from .exit_info import Qualification

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

#: names defined in :mod:`.exit_info`, loaded on first use (PEP 562)
_DECODER_NAMES = frozenset({
    "QUALIFICATION_DECODERS",
    "ExitInterruptionInfo",
    "IdtVectoringInfo",
    "CrAccessQualification",
    "CrAccessType",
    "EptViolationQualification",
    "IoQualification",
    "MovDrQualification",
    "Qualification",
    "TaskSwitchQualification",
    "TaskSwitchSource",
})


def __getattr__(name: str) -> Any:
    """The decoders of the VM-exit information fields, imported when first asked for.

    Building their ``attrs`` classes is a start-up cost that a run which never
    decodes a qualification need not pay; ``from smartvm_core.vmx.qualifications
    import IoQualification`` still works, and gives the same class object.
    """
    if name in _DECODER_NAMES:
        from . import exit_info
        value = getattr(exit_info, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_DECODER_NAMES})


def decode_qualification(
    reason: ExitReason | int, value: int, *, strict: bool = True
) -> Qualification | int:
    """Decode ``value`` as the exit qualification of ``reason``.

    Returns the decoded object for I/O instruction, control-register access,
    MOV DR, EPT violation and task switch exits; the raw int otherwise.
    """
    from .exit_info import QUALIFICATION_DECODERS

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
