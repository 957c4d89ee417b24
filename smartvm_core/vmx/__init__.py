"""The VMX architecture model: Intel SDM names for exit reasons, vectors,
exit qualifications, interruption information, VMCS fields and controls.

Each submodule's docstring cites the SDM tables it encodes.
"""

from .controls import (
    EntryControls,
    ExitControls,
    PinBasedControls,
    ProcBasedControls,
    ProcBasedControls2,
    ProcBasedControls3,
    SecondaryExitControls,
    clts_exits,
    cr3_load_exits,
    cr_read_value,
    cr_write_exits,
    exception_exits,
    io_access_exits,
    io_bitmap_bit,
    lmsw_exits,
    msr_access_exits,
    msr_bitmap_exits,
    page_fault_exits,
)
from .exit_reasons import (
    EXIT_REASON_BASIC_MASK,
    ExitReason,
    ExitReasonFlag,
    decode_exit_reason_field,
    describe,
    encode_exit_reason_field,
)
from .qualifications import (
    GPR_NAMES,
    EntryInterruptionInfo,
    EventInjection,
    Gpr,
    InterruptionInfo,
    InterruptionType,
    decode_qualification,
    format_qualification,
)
from .vectors import EXCEPTION_CLASS, EXCEPTION_NAMES, HAS_ERROR_CODE, ExceptionClass, Vector
from .vmcs import Vmcs, VmcsField, field_bits, field_type, field_width, is_high_access

from . import qualifications as _qualifications

#: the decoders of the VM-exit information fields that this package re-exports; they are
#: defined in :mod:`.exit_info` and imported on first use through :mod:`.qualifications`
#: (PEP 562): building their classes is start-up time a run that never decodes what an
#: exit reports does not need
_LAZY = _qualifications._DECODER_NAMES - {"QUALIFICATION_DECODERS", "Qualification"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(_qualifications, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "EXCEPTION_CLASS",
    "EXCEPTION_NAMES",
    "EXIT_REASON_BASIC_MASK",
    "GPR_NAMES",
    "HAS_ERROR_CODE",
    "CrAccessQualification",
    "CrAccessType",
    "EntryControls",
    "EntryInterruptionInfo",
    "EptViolationQualification",
    "EventInjection",
    "ExceptionClass",
    "ExitControls",
    "ExitInterruptionInfo",
    "ExitReason",
    "ExitReasonFlag",
    "Gpr",
    "IdtVectoringInfo",
    "InterruptionInfo",
    "InterruptionType",
    "IoQualification",
    "MovDrQualification",
    "PinBasedControls",
    "ProcBasedControls",
    "ProcBasedControls2",
    "ProcBasedControls3",
    "SecondaryExitControls",
    "TaskSwitchQualification",
    "TaskSwitchSource",
    "Vector",
    "Vmcs",
    "VmcsField",
    "clts_exits",
    "cr3_load_exits",
    "cr_read_value",
    "cr_write_exits",
    "decode_exit_reason_field",
    "decode_qualification",
    "describe",
    "encode_exit_reason_field",
    "exception_exits",
    "field_bits",
    "field_type",
    "field_width",
    "format_qualification",
    "io_access_exits",
    "io_bitmap_bit",
    "is_high_access",
    "lmsw_exits",
    "msr_access_exits",
    "msr_bitmap_exits",
    "page_fault_exits",
]
