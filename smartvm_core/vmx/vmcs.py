"""VMCS field encodings and a plain VMCS store.

Source: Intel SDM Vol. 3, Appendix B "Field Encoding in VMCS" (Tables B-1 to
B-14), and Section 25.11.2 "VMREAD, VMWRITE, and Encodings of VMCS Fields"
(Table "Structure of VMCS Component Encoding"):

* bit 0: access type (0 = full, 1 = high; high is only valid for 64-bit
  fields and reaches their upper 32 bits),
* bits 9:1: index,
* bits 11:10: type (0 control, 1 VM-exit information / read-only data,
  2 guest state, 3 host state),
* bits 14:13: width (0 16-bit, 1 64-bit, 2 32-bit, 3 natural width).

Member names are the ones Linux uses in ``arch/x86/include/asm/vmx.h``
(``enum vmcs_field``), which follow the SDM's field names; fields Linux does
not define are named in the same style after the SDM (e.g. ``EPTP_INDEX``,
``IO_RCX``, ``GUEST_SMBASE``, ``GUEST_SSP``).  The ``*_HIGH`` encodings are not
members: pass the raw int (member + 1) to :class:`Vmcs` to reach the upper
half of a 64-bit field.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Literal

from .controls import (
    EntryControls,
    ExitControls,
    PinBasedControls,
    ProcBasedControls,
    ProcBasedControls2,
)
from .exit_reasons import ExitReason, ExitReasonFlag, decode_exit_reason_field
from .qualifications import EntryInterruptionInfo, EventInjection

if TYPE_CHECKING:
    from .exit_info import ExitInterruptionInfo, IdtVectoringInfo

__all__ = [
    "FieldType",
    "FieldWidth",
    "Vmcs",
    "VmcsField",
    "field_bits",
    "field_type",
    "field_width",
    "is_high_access",
]

FieldWidth = Literal[16, 32, 64, "natural"]
FieldType = Literal["control", "read-only", "guest", "host"]


class VmcsField(enum.IntEnum):
    """VMCS component encodings (SDM Vol. 3, Appendix B), full access."""

    # B.1.1 16-bit control fields
    VIRTUAL_PROCESSOR_ID = 0x0000
    POSTED_INTR_NV = 0x0002
    EPTP_INDEX = 0x0004
    HLAT_PREFIX_SIZE = 0x0006
    LAST_PID_POINTER_INDEX = 0x0008
    # B.1.2 16-bit guest-state fields
    GUEST_ES_SELECTOR = 0x0800
    GUEST_CS_SELECTOR = 0x0802
    GUEST_SS_SELECTOR = 0x0804
    GUEST_DS_SELECTOR = 0x0806
    GUEST_FS_SELECTOR = 0x0808
    GUEST_GS_SELECTOR = 0x080A
    GUEST_LDTR_SELECTOR = 0x080C
    GUEST_TR_SELECTOR = 0x080E
    GUEST_INTR_STATUS = 0x0810
    GUEST_PML_INDEX = 0x0812
    GUEST_UINV = 0x0814
    # B.1.3 16-bit host-state fields
    HOST_ES_SELECTOR = 0x0C00
    HOST_CS_SELECTOR = 0x0C02
    HOST_SS_SELECTOR = 0x0C04
    HOST_DS_SELECTOR = 0x0C06
    HOST_FS_SELECTOR = 0x0C08
    HOST_GS_SELECTOR = 0x0C0A
    HOST_TR_SELECTOR = 0x0C0C
    # B.2.1 64-bit control fields
    IO_BITMAP_A = 0x2000
    IO_BITMAP_B = 0x2002
    MSR_BITMAP = 0x2004
    VM_EXIT_MSR_STORE_ADDR = 0x2006
    VM_EXIT_MSR_LOAD_ADDR = 0x2008
    VM_ENTRY_MSR_LOAD_ADDR = 0x200A
    EXECUTIVE_VMCS_POINTER = 0x200C
    PML_ADDRESS = 0x200E
    TSC_OFFSET = 0x2010
    VIRTUAL_APIC_PAGE_ADDR = 0x2012
    APIC_ACCESS_ADDR = 0x2014
    POSTED_INTR_DESC_ADDR = 0x2016
    VM_FUNCTION_CONTROL = 0x2018
    EPT_POINTER = 0x201A
    EOI_EXIT_BITMAP0 = 0x201C
    EOI_EXIT_BITMAP1 = 0x201E
    EOI_EXIT_BITMAP2 = 0x2020
    EOI_EXIT_BITMAP3 = 0x2022
    EPTP_LIST_ADDRESS = 0x2024
    VMREAD_BITMAP = 0x2026
    VMWRITE_BITMAP = 0x2028
    VE_INFORMATION_ADDRESS = 0x202A
    XSS_EXIT_BITMAP = 0x202C
    ENCLS_EXITING_BITMAP = 0x202E
    SPPT_POINTER = 0x2030
    TSC_MULTIPLIER = 0x2032
    TERTIARY_VM_EXEC_CONTROL = 0x2034
    ENCLV_EXITING_BITMAP = 0x2036
    LOW_PASID_DIRECTORY = 0x2038
    HIGH_PASID_DIRECTORY = 0x203A
    SHARED_EPT_POINTER = 0x203C
    PCONFIG_EXITING_BITMAP = 0x203E
    HLAT_POINTER = 0x2040
    PID_POINTER_TABLE = 0x2042
    SECONDARY_VM_EXIT_CONTROLS = 0x2044
    IA32_SPEC_CTRL_MASK = 0x204A
    IA32_SPEC_CTRL_SHADOW = 0x204C
    INJECTED_EVENT_DATA = 0x2052
    # B.2.2 64-bit read-only data fields
    GUEST_PHYSICAL_ADDRESS = 0x2400
    ORIGINAL_EVENT_DATA = 0x2404
    # B.2.3 64-bit guest-state fields
    VMCS_LINK_POINTER = 0x2800
    GUEST_IA32_DEBUGCTL = 0x2802
    GUEST_IA32_PAT = 0x2804
    GUEST_IA32_EFER = 0x2806
    GUEST_IA32_PERF_GLOBAL_CTRL = 0x2808
    GUEST_PDPTR0 = 0x280A
    GUEST_PDPTR1 = 0x280C
    GUEST_PDPTR2 = 0x280E
    GUEST_PDPTR3 = 0x2810
    GUEST_BNDCFGS = 0x2812
    GUEST_IA32_RTIT_CTL = 0x2814
    GUEST_IA32_LBR_CTL = 0x2816
    GUEST_IA32_PKRS = 0x2818
    GUEST_IA32_FRED_CONFIG = 0x281A
    GUEST_IA32_FRED_RSP1 = 0x281C
    GUEST_IA32_FRED_RSP2 = 0x281E
    GUEST_IA32_FRED_RSP3 = 0x2820
    GUEST_IA32_FRED_STKLVLS = 0x2822
    GUEST_IA32_FRED_SSP1 = 0x2824
    GUEST_IA32_FRED_SSP2 = 0x2826
    GUEST_IA32_FRED_SSP3 = 0x2828
    # B.2.4 64-bit host-state fields
    HOST_IA32_PAT = 0x2C00
    HOST_IA32_EFER = 0x2C02
    HOST_IA32_PERF_GLOBAL_CTRL = 0x2C04
    HOST_IA32_PKRS = 0x2C06
    HOST_IA32_FRED_CONFIG = 0x2C08
    HOST_IA32_FRED_RSP1 = 0x2C0A
    HOST_IA32_FRED_RSP2 = 0x2C0C
    HOST_IA32_FRED_RSP3 = 0x2C0E
    HOST_IA32_FRED_STKLVLS = 0x2C10
    HOST_IA32_FRED_SSP1 = 0x2C12
    HOST_IA32_FRED_SSP2 = 0x2C14
    HOST_IA32_FRED_SSP3 = 0x2C16
    # B.3.1 32-bit control fields
    PIN_BASED_VM_EXEC_CONTROL = 0x4000
    CPU_BASED_VM_EXEC_CONTROL = 0x4002
    EXCEPTION_BITMAP = 0x4004
    PAGE_FAULT_ERROR_CODE_MASK = 0x4006
    PAGE_FAULT_ERROR_CODE_MATCH = 0x4008
    CR3_TARGET_COUNT = 0x400A
    VM_EXIT_CONTROLS = 0x400C
    VM_EXIT_MSR_STORE_COUNT = 0x400E
    VM_EXIT_MSR_LOAD_COUNT = 0x4010
    VM_ENTRY_CONTROLS = 0x4012
    VM_ENTRY_MSR_LOAD_COUNT = 0x4014
    VM_ENTRY_INTR_INFO_FIELD = 0x4016
    VM_ENTRY_EXCEPTION_ERROR_CODE = 0x4018
    VM_ENTRY_INSTRUCTION_LEN = 0x401A
    TPR_THRESHOLD = 0x401C
    SECONDARY_VM_EXEC_CONTROL = 0x401E
    PLE_GAP = 0x4020
    PLE_WINDOW = 0x4022
    NOTIFY_WINDOW = 0x4024
    # B.3.2 32-bit read-only data fields
    VM_INSTRUCTION_ERROR = 0x4400
    VM_EXIT_REASON = 0x4402
    VM_EXIT_INTR_INFO = 0x4404
    VM_EXIT_INTR_ERROR_CODE = 0x4406
    IDT_VECTORING_INFO_FIELD = 0x4408
    IDT_VECTORING_ERROR_CODE = 0x440A
    VM_EXIT_INSTRUCTION_LEN = 0x440C
    VMX_INSTRUCTION_INFO = 0x440E
    # B.3.3 32-bit guest-state fields
    GUEST_ES_LIMIT = 0x4800
    GUEST_CS_LIMIT = 0x4802
    GUEST_SS_LIMIT = 0x4804
    GUEST_DS_LIMIT = 0x4806
    GUEST_FS_LIMIT = 0x4808
    GUEST_GS_LIMIT = 0x480A
    GUEST_LDTR_LIMIT = 0x480C
    GUEST_TR_LIMIT = 0x480E
    GUEST_GDTR_LIMIT = 0x4810
    GUEST_IDTR_LIMIT = 0x4812
    GUEST_ES_AR_BYTES = 0x4814
    GUEST_CS_AR_BYTES = 0x4816
    GUEST_SS_AR_BYTES = 0x4818
    GUEST_DS_AR_BYTES = 0x481A
    GUEST_FS_AR_BYTES = 0x481C
    GUEST_GS_AR_BYTES = 0x481E
    GUEST_LDTR_AR_BYTES = 0x4820
    GUEST_TR_AR_BYTES = 0x4822
    GUEST_INTERRUPTIBILITY_INFO = 0x4824
    GUEST_ACTIVITY_STATE = 0x4826
    GUEST_SMBASE = 0x4828
    GUEST_SYSENTER_CS = 0x482A
    VMX_PREEMPTION_TIMER_VALUE = 0x482E
    # B.3.4 32-bit host-state field
    HOST_IA32_SYSENTER_CS = 0x4C00
    # B.4.1 natural-width control fields
    CR0_GUEST_HOST_MASK = 0x6000
    CR4_GUEST_HOST_MASK = 0x6002
    CR0_READ_SHADOW = 0x6004
    CR4_READ_SHADOW = 0x6006
    CR3_TARGET_VALUE0 = 0x6008
    CR3_TARGET_VALUE1 = 0x600A
    CR3_TARGET_VALUE2 = 0x600C
    CR3_TARGET_VALUE3 = 0x600E
    # B.4.2 natural-width read-only data fields
    EXIT_QUALIFICATION = 0x6400
    IO_RCX = 0x6402
    IO_RSI = 0x6404
    IO_RDI = 0x6406
    IO_RIP = 0x6408
    GUEST_LINEAR_ADDRESS = 0x640A
    # B.4.3 natural-width guest-state fields
    GUEST_CR0 = 0x6800
    GUEST_CR3 = 0x6802
    GUEST_CR4 = 0x6804
    GUEST_ES_BASE = 0x6806
    GUEST_CS_BASE = 0x6808
    GUEST_SS_BASE = 0x680A
    GUEST_DS_BASE = 0x680C
    GUEST_FS_BASE = 0x680E
    GUEST_GS_BASE = 0x6810
    GUEST_LDTR_BASE = 0x6812
    GUEST_TR_BASE = 0x6814
    GUEST_GDTR_BASE = 0x6816
    GUEST_IDTR_BASE = 0x6818
    GUEST_DR7 = 0x681A
    GUEST_RSP = 0x681C
    GUEST_RIP = 0x681E
    GUEST_RFLAGS = 0x6820
    GUEST_PENDING_DBG_EXCEPTIONS = 0x6822
    GUEST_SYSENTER_ESP = 0x6824
    GUEST_SYSENTER_EIP = 0x6826
    GUEST_S_CET = 0x6828
    GUEST_SSP = 0x682A
    GUEST_INTR_SSP_TABLE = 0x682C
    # B.4.4 natural-width host-state fields
    HOST_CR0 = 0x6C00
    HOST_CR3 = 0x6C02
    HOST_CR4 = 0x6C04
    HOST_FS_BASE = 0x6C06
    HOST_GS_BASE = 0x6C08
    HOST_TR_BASE = 0x6C0A
    HOST_GDTR_BASE = 0x6C0C
    HOST_IDTR_BASE = 0x6C0E
    HOST_IA32_SYSENTER_ESP = 0x6C10
    HOST_IA32_SYSENTER_EIP = 0x6C12
    HOST_RSP = 0x6C14
    HOST_RIP = 0x6C16
    HOST_S_CET = 0x6C18
    HOST_SSP = 0x6C1A
    HOST_INTR_SSP_TABLE = 0x6C1C


_WIDTHS: tuple[FieldWidth, ...] = (16, 64, 32, "natural")
_TYPES: tuple[FieldType, ...] = ("control", "read-only", "guest", "host")


def _encoding(field: VmcsField | int) -> int:
    if isinstance(field, bool) or not isinstance(field, int) or not 0 <= field <= 0x7FFF:
        raise ValueError(f"VMCS field encoding {field!r} is out of range")
    return int(field)


def is_high_access(field: VmcsField | int) -> bool:
    """Whether an encoding is the "high" access of a 64-bit field."""
    enc = _encoding(field)
    return bool(enc & 1) and (enc >> 13) & 3 == 1


def field_width(field: VmcsField | int) -> FieldWidth:
    """Width of a field from encoding bits 14:13 (16, 32, 64 or "natural").

    A high access (bit 0 set on a 64-bit field) reads 32 bits.
    """
    enc = _encoding(field)
    width = _WIDTHS[(enc >> 13) & 3]
    if width == 64 and enc & 1:
        return 32
    return width


def field_bits(field: VmcsField | int) -> int:
    """Number of value bits in a field (natural width counts as 64)."""
    width = field_width(field)
    return 64 if width == "natural" else width


def field_type(field: VmcsField | int) -> FieldType:
    """Type of a field from encoding bits 11:10."""
    return _TYPES[(_encoding(field) >> 10) & 3]


def _resolve(field: VmcsField | int) -> tuple[VmcsField, bool]:
    """Map an encoding to (full field, high access?)."""
    enc = _encoding(field)
    try:
        return VmcsField(enc), False
    except ValueError:
        pass
    if is_high_access(enc):
        try:
            return VmcsField(enc - 1), True
        except ValueError:
            pass
    raise ValueError(f"unknown VMCS field encoding 0x{enc:04x}")


class Vmcs:
    """A VMCS as a store of field values (a dict inside); unset fields read 0.

    Writes are refused when the value is negative or wider than the field
    (natural width = 64 bits).  Read-only (VM-exit information) fields are
    writable here so that engines can record VM exits.
    """

    __slots__ = ("_values", "version")

    def __init__(self, values: Mapping[VmcsField | int, int] | None = None) -> None:
        self._values: dict[VmcsField, int] = {}
        #: counts writes, so an engine can tell cheaply that a handler changed a control
        self.version = 0
        for field, value in (values or {}).items():
            self.write(field, value)

    # --- access --------------------------------------------------------------

    def read(self, field: VmcsField | int) -> int:
        """Read a field (an int encoding with bit 0 set reads the upper half
        of a 64-bit field)."""
        member, high = _resolve(field)
        value = self._values.get(member, 0)
        return value >> 32 if high else value

    def write(self, field: VmcsField | int, value: int) -> None:
        """Write a field, refusing values that do not fit it."""
        member, high = _resolve(field)
        bits = 32 if high else field_bits(member)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"VMCS field {member.name}: expected an int, got {type(value).__name__}"
            )
        if value < 0 or value >> bits:
            part = f"{member.name} (high)" if high else member.name
            raise ValueError(f"VMCS field {part}: {value:#x} does not fit {bits} bits")
        if high:
            value = (self._values.get(member, 0) & 0xFFFF_FFFF) | value << 32
        self._values[member] = value
        self.version += 1

    def __getitem__(self, field: VmcsField | int) -> int:
        return self.read(field)

    def __setitem__(self, field: VmcsField | int, value: int) -> None:
        self.write(field, value)

    def __iter__(self) -> Iterator[VmcsField]:
        """Fields that hold a value."""
        return iter(list(self._values))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vmcs):
            return NotImplemented
        return self._nonzero() == other._nonzero()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}=0x{v:x}" for f, v in sorted(self._nonzero().items()))
        return f"Vmcs({inner})"

    def _nonzero(self) -> dict[VmcsField, int]:
        return {f: v for f, v in self._values.items() if v}

    def copy(self) -> Vmcs:
        """An independent copy."""
        new = Vmcs()
        new._values = dict(self._values)
        return new

    # --- save / restore ------------------------------------------------------

    def state(self) -> dict[str, int]:
        """Every written field, keyed by field name."""
        return {field.name: value for field, value in self._values.items()}

    @classmethod
    def from_state(cls, state: Mapping[str, int]) -> Vmcs:
        """Rebuild from :meth:`state`, refusing unknown names and bad widths."""
        vmcs = cls()
        for name, value in state.items():
            try:
                field = VmcsField[name]
            except KeyError:
                raise ValueError(f"unknown VMCS field name {name!r}") from None
            vmcs.write(field, value)
        return vmcs

    # --- helpers for engines -------------------------------------------------

    @property
    def pin_based_controls(self) -> PinBasedControls:
        """PIN_BASED_VM_EXEC_CONTROL as flags."""
        return PinBasedControls(self.read(VmcsField.PIN_BASED_VM_EXEC_CONTROL))

    @property
    def cpu_based_controls(self) -> ProcBasedControls:
        """CPU_BASED_VM_EXEC_CONTROL (primary processor-based) as flags."""
        return ProcBasedControls(self.read(VmcsField.CPU_BASED_VM_EXEC_CONTROL))

    @property
    def secondary_controls(self) -> ProcBasedControls2:
        """Secondary controls in effect: all 0 unless the primary "activate
        secondary controls" bit is set (SDM 25.6.2)."""
        if not self.cpu_based_controls & ProcBasedControls.ACTIVATE_SECONDARY_CONTROLS:
            return ProcBasedControls2(0)
        return ProcBasedControls2(self.read(VmcsField.SECONDARY_VM_EXEC_CONTROL))

    @property
    def exit_controls(self) -> ExitControls:
        """VM_EXIT_CONTROLS as flags."""
        return ExitControls(self.read(VmcsField.VM_EXIT_CONTROLS))

    @property
    def entry_controls(self) -> EntryControls:
        """VM_ENTRY_CONTROLS as flags."""
        return EntryControls(self.read(VmcsField.VM_ENTRY_CONTROLS))

    @property
    def exit_reason(self) -> ExitReason | int:
        """Basic exit reason of the last VM exit."""
        return decode_exit_reason_field(self.read(VmcsField.VM_EXIT_REASON), strict=False)[0]

    @property
    def exit_reason_flags(self) -> ExitReasonFlag:
        """Flag bits of the exit-reason field."""
        return decode_exit_reason_field(self.read(VmcsField.VM_EXIT_REASON), strict=False)[1]

    @property
    def exit_qualification(self) -> int:
        """EXIT_QUALIFICATION, raw."""
        return self.read(VmcsField.EXIT_QUALIFICATION)

    @property
    def exit_interruption_info(self) -> ExitInterruptionInfo:
        """VM_EXIT_INTR_INFO, decoded."""
        from .exit_info import ExitInterruptionInfo
        return ExitInterruptionInfo.decode(self.read(VmcsField.VM_EXIT_INTR_INFO), strict=False)

    @property
    def idt_vectoring_info(self) -> IdtVectoringInfo:
        """IDT_VECTORING_INFO_FIELD, decoded."""
        from .exit_info import IdtVectoringInfo
        return IdtVectoringInfo.decode(self.read(VmcsField.IDT_VECTORING_INFO_FIELD), strict=False)

    @property
    def entry_interruption_info(self) -> EntryInterruptionInfo:
        """VM_ENTRY_INTR_INFO_FIELD, decoded (reserved bits refused)."""
        return EntryInterruptionInfo.decode(self.read(VmcsField.VM_ENTRY_INTR_INFO_FIELD))

    def record_exit(
        self,
        reason: ExitReason | int,
        qualification: int = 0,
        *,
        flags: ExitReasonFlag | int = 0,
        instruction_length: int | None = None,
    ) -> None:
        """Record a VM exit: exit reason, qualification and (if given) the
        instruction length; clear the valid bit of the VM-entry
        interruption-information field as the SDM says every VM exit does."""
        self.write(VmcsField.VM_EXIT_REASON, int(reason) | int(flags))
        self.write(VmcsField.EXIT_QUALIFICATION, qualification)
        if instruction_length is not None:
            self.write(VmcsField.VM_EXIT_INSTRUCTION_LEN, instruction_length)
        info = self.read(VmcsField.VM_ENTRY_INTR_INFO_FIELD)
        self.write(VmcsField.VM_ENTRY_INTR_INFO_FIELD, info & 0x7FFF_FFFF)

    def inject(self, event: EventInjection) -> None:
        """Program the VM-entry event-injection fields from ``event``."""
        self.write(VmcsField.VM_ENTRY_INTR_INFO_FIELD, event.info.encode())
        self.write(VmcsField.VM_ENTRY_EXCEPTION_ERROR_CODE, event.error_code)
        self.write(VmcsField.VM_ENTRY_INSTRUCTION_LEN, event.instruction_length)

    def pending_event(self, *, zero_length_allowed: bool = False) -> EventInjection | None:
        """The event programmed for injection, or None when the valid bit is
        clear.  Raises ValueError if the fields fail the SDM checks (a zero
        instruction length passes only with ``zero_length_allowed``)."""
        info = self.entry_interruption_info
        if not info.valid:
            return None
        return EventInjection(
            info,
            error_code=self.read(VmcsField.VM_ENTRY_EXCEPTION_ERROR_CODE)
            if info.deliver_error_code
            else 0,
            instruction_length=self.read(VmcsField.VM_ENTRY_INSTRUCTION_LEN),
            zero_length_allowed=zero_length_allowed,
        )
