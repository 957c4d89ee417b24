"""VMX basic exit reasons and the 32-bit exit-reason field.

Sources (Intel SDM, Vol. 3):

* Appendix C, Table C-1 "Basic Exit Reasons": the numbers and their titles.
  Numbers the table does not list (35, 38, 42, 71) are gaps here too.
* Section "Basic VM-Exit Information" (25.9.1 in recent editions), Table
  "Format of Exit Reason": the flag bits above the basic exit reason.

Reasons 80, 81, 84 and 85 (URDMSR, UWRMSR and the immediate-operand forms of
RDMSR / WRMSRNS) come from the Intel Architecture Instruction Set Extensions
reference and the newest SDM revisions; older SDM editions end at 79
(WRMSRLIST).  They are listed so that an exit carrying them still decodes to
a name.
"""

from __future__ import annotations

import enum

__all__ = [
    "EXIT_REASON_BASIC_MASK",
    "EXIT_REASON_FIELD_DEFINED_MASK",
    "ExitReason",
    "ExitReasonFlag",
    "decode_exit_reason_field",
    "describe",
    "encode_exit_reason_field",
]


class ExitReason(enum.IntEnum):
    """Basic exit reasons (SDM Vol. 3, Appendix C, Table C-1)."""

    EXCEPTION_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    INIT_SIGNAL = 3
    SIPI = 4
    IO_SMI = 5
    OTHER_SMI = 6
    INTERRUPT_WINDOW = 7
    NMI_WINDOW = 8
    TASK_SWITCH = 9
    CPUID = 10
    GETSEC = 11
    HLT = 12
    INVD = 13
    INVLPG = 14
    RDPMC = 15
    RDTSC = 16
    RSM = 17
    VMCALL = 18
    VMCLEAR = 19
    VMLAUNCH = 20
    VMPTRLD = 21
    VMPTRST = 22
    VMREAD = 23
    VMRESUME = 24
    VMWRITE = 25
    VMXOFF = 26
    VMXON = 27
    CR_ACCESS = 28
    MOV_DR = 29
    IO_INSTRUCTION = 30
    RDMSR = 31
    WRMSR = 32
    VM_ENTRY_FAILURE_INVALID_GUEST_STATE = 33
    VM_ENTRY_FAILURE_MSR_LOADING = 34
    # 35: not used
    MWAIT = 36
    MONITOR_TRAP_FLAG = 37
    # 38: not used
    MONITOR = 39
    PAUSE = 40
    VM_ENTRY_FAILURE_MACHINE_CHECK = 41
    # 42: not used
    TPR_BELOW_THRESHOLD = 43
    APIC_ACCESS = 44
    VIRTUALIZED_EOI = 45
    ACCESS_GDTR_IDTR = 46
    ACCESS_LDTR_TR = 47
    EPT_VIOLATION = 48
    EPT_MISCONFIG = 49
    INVEPT = 50
    RDTSCP = 51
    VMX_PREEMPTION_TIMER_EXPIRED = 52
    INVVPID = 53
    WBINVD = 54  # SDM: "WBINVD or WBNOINVD"
    XSETBV = 55
    APIC_WRITE = 56
    RDRAND = 57
    INVPCID = 58
    VMFUNC = 59
    ENCLS = 60
    RDSEED = 61
    PML_FULL = 62
    XSAVES = 63
    XRSTORS = 64
    PCONFIG = 65
    SPP_RELATED_EVENT = 66
    UMWAIT = 67
    TPAUSE = 68
    LOADIWKEY = 69
    ENCLV = 70
    # 71: not used
    ENQCMD_PASID_TRANSLATION_FAILURE = 72
    ENQCMDS_PASID_TRANSLATION_FAILURE = 73
    BUS_LOCK = 74
    INSTRUCTION_TIMEOUT = 75
    SEAMCALL = 76
    TDCALL = 77
    RDMSRLIST = 78
    WRMSRLIST = 79
    # Newest additions (Intel ISE / latest SDM revisions).
    URDMSR = 80
    UWRMSR = 81
    RDMSR_IMM = 84
    WRMSRNS_IMM = 85


_DESCRIPTIONS: dict[ExitReason, str] = {
    ExitReason.EXCEPTION_NMI: "Exception or non-maskable interrupt (NMI)",
    ExitReason.EXTERNAL_INTERRUPT: "External interrupt",
    ExitReason.TRIPLE_FAULT: "Triple fault",
    ExitReason.INIT_SIGNAL: "INIT signal",
    ExitReason.SIPI: "Start-up IPI (SIPI)",
    ExitReason.IO_SMI: "I/O system-management interrupt (SMI)",
    ExitReason.OTHER_SMI: "Other SMI",
    ExitReason.INTERRUPT_WINDOW: "Interrupt window",
    ExitReason.NMI_WINDOW: "NMI window",
    ExitReason.TASK_SWITCH: "Task switch",
    ExitReason.CPUID: "CPUID",
    ExitReason.GETSEC: "GETSEC",
    ExitReason.HLT: "HLT",
    ExitReason.INVD: "INVD",
    ExitReason.INVLPG: "INVLPG",
    ExitReason.RDPMC: "RDPMC",
    ExitReason.RDTSC: "RDTSC",
    ExitReason.RSM: "RSM",
    ExitReason.VMCALL: "VMCALL",
    ExitReason.VMCLEAR: "VMCLEAR",
    ExitReason.VMLAUNCH: "VMLAUNCH",
    ExitReason.VMPTRLD: "VMPTRLD",
    ExitReason.VMPTRST: "VMPTRST",
    ExitReason.VMREAD: "VMREAD",
    ExitReason.VMRESUME: "VMRESUME",
    ExitReason.VMWRITE: "VMWRITE",
    ExitReason.VMXOFF: "VMXOFF",
    ExitReason.VMXON: "VMXON",
    ExitReason.CR_ACCESS: "Control-register accesses",
    ExitReason.MOV_DR: "MOV DR",
    ExitReason.IO_INSTRUCTION: "I/O instruction",
    ExitReason.RDMSR: "RDMSR",
    ExitReason.WRMSR: "WRMSR",
    ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE: (
        "VM-entry failure due to invalid guest state"
    ),
    ExitReason.VM_ENTRY_FAILURE_MSR_LOADING: "VM-entry failure due to MSR loading",
    ExitReason.MWAIT: "MWAIT",
    ExitReason.MONITOR_TRAP_FLAG: "Monitor trap flag",
    ExitReason.MONITOR: "MONITOR",
    ExitReason.PAUSE: "PAUSE",
    ExitReason.VM_ENTRY_FAILURE_MACHINE_CHECK: ("VM-entry failure due to machine-check event"),
    ExitReason.TPR_BELOW_THRESHOLD: "TPR below threshold",
    ExitReason.APIC_ACCESS: "APIC access",
    ExitReason.VIRTUALIZED_EOI: "Virtualized EOI",
    ExitReason.ACCESS_GDTR_IDTR: "Access to GDTR or IDTR",
    ExitReason.ACCESS_LDTR_TR: "Access to LDTR or TR",
    ExitReason.EPT_VIOLATION: "EPT violation",
    ExitReason.EPT_MISCONFIG: "EPT misconfiguration",
    ExitReason.INVEPT: "INVEPT",
    ExitReason.RDTSCP: "RDTSCP",
    ExitReason.VMX_PREEMPTION_TIMER_EXPIRED: "VMX-preemption timer expired",
    ExitReason.INVVPID: "INVVPID",
    ExitReason.WBINVD: "WBINVD or WBNOINVD",
    ExitReason.XSETBV: "XSETBV",
    ExitReason.APIC_WRITE: "APIC write",
    ExitReason.RDRAND: "RDRAND",
    ExitReason.INVPCID: "INVPCID",
    ExitReason.VMFUNC: "VMFUNC",
    ExitReason.ENCLS: "ENCLS",
    ExitReason.RDSEED: "RDSEED",
    ExitReason.PML_FULL: "Page-modification log full",
    ExitReason.XSAVES: "XSAVES",
    ExitReason.XRSTORS: "XRSTORS",
    ExitReason.PCONFIG: "PCONFIG",
    ExitReason.SPP_RELATED_EVENT: "SPP-related event",
    ExitReason.UMWAIT: "UMWAIT",
    ExitReason.TPAUSE: "TPAUSE",
    ExitReason.LOADIWKEY: "LOADIWKEY",
    ExitReason.ENCLV: "ENCLV",
    ExitReason.ENQCMD_PASID_TRANSLATION_FAILURE: "ENQCMD PASID translation failure",
    ExitReason.ENQCMDS_PASID_TRANSLATION_FAILURE: "ENQCMDS PASID translation failure",
    ExitReason.BUS_LOCK: "Bus lock",
    ExitReason.INSTRUCTION_TIMEOUT: "Instruction timeout",
    ExitReason.SEAMCALL: "SEAMCALL",
    ExitReason.TDCALL: "TDCALL",
    ExitReason.RDMSRLIST: "RDMSRLIST",
    ExitReason.WRMSRLIST: "WRMSRLIST",
    ExitReason.URDMSR: "URDMSR",
    ExitReason.UWRMSR: "UWRMSR",
    ExitReason.RDMSR_IMM: "RDMSR with an immediate operand",
    ExitReason.WRMSRNS_IMM: "WRMSRNS with an immediate operand",
}


def describe(reason: ExitReason | int) -> str:
    """The SDM's title for a basic exit reason (Table C-1).

    Numbers the SDM does not define give ``"unknown basic exit reason N"``.
    """
    try:
        member = ExitReason(reason)
    except ValueError:
        return f"unknown basic exit reason {int(reason)}"
    return _DESCRIPTIONS[member]


# --- The full 32-bit exit-reason field --------------------------------------

EXIT_REASON_BASIC_MASK = 0xFFFF
"""Bits 15:0 of the exit-reason field: the basic exit reason."""


class ExitReasonFlag(enum.IntFlag):
    """Flag bits of the 32-bit exit-reason field (Table "Format of Exit Reason").

    Bit 16 is always cleared to 0; bits 25:17 and 30 are not currently defined.
    """

    BUS_LOCK_DETECTED = 1 << 26
    """An OS bus-lock was asserted while the exit's instruction ran."""
    ENCLAVE_MODE = 1 << 27
    """The VM exit was incident to enclave mode."""
    PENDING_MTF_VM_EXIT = 1 << 28
    """An SMM VM exit took priority over a pending MTF VM exit."""
    VM_EXIT_FROM_VMX_ROOT_OPERATION = 1 << 29
    """The processor was in VMX root operation (SMM VM exits only)."""
    VM_ENTRY_FAILURE = 1 << 31
    """0 = true VM exit; 1 = VM-entry failure."""


EXIT_REASON_FIELD_DEFINED_MASK = EXIT_REASON_BASIC_MASK | sum(f.value for f in ExitReasonFlag)
"""Every bit of the exit-reason field the SDM defines."""


def decode_exit_reason_field(
    value: int, *, strict: bool = True
) -> tuple[ExitReason | int, ExitReasonFlag]:
    """Split a 32-bit exit-reason field into (basic exit reason, flags).

    The basic reason is an :class:`ExitReason` when the SDM defines the
    number, else the plain int.  Values wider than 32 bits are refused; with
    ``strict`` (the default) so are set bits the SDM leaves undefined
    (16, 25:17, 30).
    """
    if value < 0 or value > 0xFFFF_FFFF:
        raise ValueError(f"exit reason: 0x{value:x} does not fit the 32-bit field")
    undefined = value & ~EXIT_REASON_FIELD_DEFINED_MASK
    if strict and undefined:
        raise ValueError(f"exit reason: undefined bits set (0x{undefined:08x})")
    raw = value & EXIT_REASON_BASIC_MASK
    basic: ExitReason | int
    try:
        basic = ExitReason(raw)
    except ValueError:
        basic = raw
    return basic, ExitReasonFlag(value & ~EXIT_REASON_BASIC_MASK & EXIT_REASON_FIELD_DEFINED_MASK)


def encode_exit_reason_field(basic: ExitReason | int, flags: ExitReasonFlag | int = 0) -> int:
    """Build a 32-bit exit-reason field from a basic reason and flags."""
    if not 0 <= basic <= EXIT_REASON_BASIC_MASK:
        raise ValueError(f"exit reason: basic reason {int(basic)} does not fit bits 15:0")
    flags = int(flags)
    if flags & ~(EXIT_REASON_FIELD_DEFINED_MASK & ~EXIT_REASON_BASIC_MASK):
        raise ValueError(f"exit reason: 0x{flags:x} is not a set of exit-reason flags")
    return int(basic) | flags
