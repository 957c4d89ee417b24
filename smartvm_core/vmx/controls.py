"""VM-execution, VM-exit and VM-entry controls, and the exit rules built on them.

Sources (Intel SDM Vol. 3; section numbers of recent editions):

* 25.6.1 Table "Definitions of Pin-Based VM-Execution Controls"
* 25.6.2 Tables "Definitions of Primary / Secondary / Tertiary
  Processor-Based VM-Execution Controls"
* 25.7.1 Tables "Definitions of Primary / Secondary VM-Exit Controls"
* 25.8.1 Table "Definitions of VM-Entry Controls"
* 25.6.3 exception bitmap; 25.6.4 I/O bitmaps; 25.6.9 MSR bitmaps;
  25.6.6 guest/host masks and read shadows for CR0 and CR4; 25.6.7 CR3-target
  controls
* 26.1.3 "Instructions That Cause VM Exits Conditionally" and 26.2 "Other
  Causes of VM Exits" (exceptions and the page-fault error-code rule)

Flag names are the SDM control names in upper case.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

__all__ = [
    "EntryControls",
    "ExitControls",
    "PinBasedControls",
    "ProcBasedControls",
    "ProcBasedControls2",
    "ProcBasedControls3",
    "SecondaryExitControls",
    "clts_exits",
    "cr3_load_exits",
    "cr_read_value",
    "cr_write_exits",
    "exception_exits",
    "io_access_exits",
    "io_bitmap_bit",
    "lmsw_exits",
    "msr_access_exits",
    "msr_bitmap_exits",
    "page_fault_exits",
]


class PinBasedControls(enum.IntFlag):
    """Pin-based VM-execution controls (32 bits)."""

    EXTERNAL_INTERRUPT_EXITING = 1 << 0
    NMI_EXITING = 1 << 3
    VIRTUAL_NMIS = 1 << 5
    ACTIVATE_VMX_PREEMPTION_TIMER = 1 << 6
    PROCESS_POSTED_INTERRUPTS = 1 << 7


class ProcBasedControls(enum.IntFlag):
    """Primary processor-based VM-execution controls (32 bits)."""

    INTERRUPT_WINDOW_EXITING = 1 << 2
    USE_TSC_OFFSETTING = 1 << 3
    HLT_EXITING = 1 << 7
    INVLPG_EXITING = 1 << 9
    MWAIT_EXITING = 1 << 10
    RDPMC_EXITING = 1 << 11
    RDTSC_EXITING = 1 << 12
    CR3_LOAD_EXITING = 1 << 15
    CR3_STORE_EXITING = 1 << 16
    ACTIVATE_TERTIARY_CONTROLS = 1 << 17
    CR8_LOAD_EXITING = 1 << 19
    CR8_STORE_EXITING = 1 << 20
    USE_TPR_SHADOW = 1 << 21
    NMI_WINDOW_EXITING = 1 << 22
    MOV_DR_EXITING = 1 << 23
    UNCONDITIONAL_IO_EXITING = 1 << 24
    USE_IO_BITMAPS = 1 << 25
    MONITOR_TRAP_FLAG = 1 << 27
    USE_MSR_BITMAPS = 1 << 28
    MONITOR_EXITING = 1 << 29
    PAUSE_EXITING = 1 << 30
    ACTIVATE_SECONDARY_CONTROLS = 1 << 31


class ProcBasedControls2(enum.IntFlag):
    """Secondary processor-based VM-execution controls (32 bits; bit 29 is
    not defined)."""

    VIRTUALIZE_APIC_ACCESSES = 1 << 0
    ENABLE_EPT = 1 << 1
    DESCRIPTOR_TABLE_EXITING = 1 << 2
    ENABLE_RDTSCP = 1 << 3
    VIRTUALIZE_X2APIC_MODE = 1 << 4
    ENABLE_VPID = 1 << 5
    WBINVD_EXITING = 1 << 6
    UNRESTRICTED_GUEST = 1 << 7
    APIC_REGISTER_VIRTUALIZATION = 1 << 8
    VIRTUAL_INTERRUPT_DELIVERY = 1 << 9
    PAUSE_LOOP_EXITING = 1 << 10
    RDRAND_EXITING = 1 << 11
    ENABLE_INVPCID = 1 << 12
    ENABLE_VM_FUNCTIONS = 1 << 13
    VMCS_SHADOWING = 1 << 14
    ENABLE_ENCLS_EXITING = 1 << 15
    RDSEED_EXITING = 1 << 16
    ENABLE_PML = 1 << 17
    EPT_VIOLATION_VE = 1 << 18
    CONCEAL_VMX_FROM_PT = 1 << 19
    ENABLE_XSAVES_XRSTORS = 1 << 20
    PASID_TRANSLATION = 1 << 21
    MODE_BASED_EXECUTE_CONTROL_FOR_EPT = 1 << 22
    SUB_PAGE_WRITE_PERMISSIONS_FOR_EPT = 1 << 23
    PT_USES_GUEST_PHYSICAL_ADDRESSES = 1 << 24
    USE_TSC_SCALING = 1 << 25
    ENABLE_USER_WAIT_AND_PAUSE = 1 << 26
    ENABLE_PCONFIG = 1 << 27
    ENABLE_ENCLV_EXITING = 1 << 28
    VMM_BUS_LOCK_DETECTION = 1 << 30
    INSTRUCTION_TIMEOUT = 1 << 31


class ProcBasedControls3(enum.IntFlag):
    """Tertiary processor-based VM-execution controls (64-bit field;
    the bits defined so far)."""

    LOADIWKEY_EXITING = 1 << 0
    ENABLE_HLAT = 1 << 1
    EPT_PAGING_WRITE_CONTROL = 1 << 2
    GUEST_PAGING_VERIFICATION = 1 << 3
    IPI_VIRTUALIZATION = 1 << 4
    VIRTUALIZE_IA32_SPEC_CTRL = 1 << 7


class ExitControls(enum.IntFlag):
    """Primary VM-exit controls (32 bits)."""

    SAVE_DEBUG_CONTROLS = 1 << 2
    HOST_ADDRESS_SPACE_SIZE = 1 << 9
    LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 12
    ACKNOWLEDGE_INTERRUPT_ON_EXIT = 1 << 15
    SAVE_IA32_PAT = 1 << 18
    LOAD_IA32_PAT = 1 << 19
    SAVE_IA32_EFER = 1 << 20
    LOAD_IA32_EFER = 1 << 21
    SAVE_VMX_PREEMPTION_TIMER_VALUE = 1 << 22
    CLEAR_IA32_BNDCFGS = 1 << 23
    CONCEAL_VMX_FROM_PT = 1 << 24
    CLEAR_IA32_RTIT_CTL = 1 << 25
    CLEAR_IA32_LBR_CTL = 1 << 26
    CLEAR_UINV = 1 << 27
    LOAD_CET_STATE = 1 << 28
    LOAD_PKRS = 1 << 29
    SAVE_IA32_PERF_GLOBAL_CTL = 1 << 30
    ACTIVATE_SECONDARY_CONTROLS = 1 << 31


class SecondaryExitControls(enum.IntFlag):
    """Secondary VM-exit controls (64-bit field; the FRED bits)."""

    SAVE_IA32_FRED = 1 << 0
    LOAD_IA32_FRED = 1 << 1


class EntryControls(enum.IntFlag):
    """VM-entry controls (32 bits)."""

    LOAD_DEBUG_CONTROLS = 1 << 2
    IA32E_MODE_GUEST = 1 << 9
    ENTRY_TO_SMM = 1 << 10
    DEACTIVATE_DUAL_MONITOR_TREATMENT = 1 << 11
    LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 13
    LOAD_IA32_PAT = 1 << 14
    LOAD_IA32_EFER = 1 << 15
    LOAD_IA32_BNDCFGS = 1 << 16
    CONCEAL_VMX_FROM_PT = 1 << 17
    LOAD_IA32_RTIT_CTL = 1 << 18
    LOAD_UINV = 1 << 19
    LOAD_CET_STATE = 1 << 20
    LOAD_GUEST_IA32_LBR_CTL = 1 << 21
    LOAD_PKRS = 1 << 22
    LOAD_IA32_FRED = 1 << 23


# --- bitmap and mask rules ---------------------------------------------------

_BITMAP_BYTES = 4096


def _check_bitmap(name: str, bitmap: bytes | bytearray | memoryview) -> None:
    if len(bitmap) != _BITMAP_BYTES:
        raise ValueError(f"{name}: a bitmap is {_BITMAP_BYTES} bytes, got {len(bitmap)}")


def _test_bit(bitmap: bytes | bytearray | memoryview, n: int) -> bool:
    return bool(bitmap[n >> 3] >> (n & 7) & 1)


def io_bitmap_bit(
    bitmap_a: bytes | bytearray | memoryview,
    bitmap_b: bytes | bytearray | memoryview,
    port: int,
) -> bool:
    """The I/O-bitmap bit for ``port``: bitmap A covers 0000H-7FFFH, bitmap B
    8000H-FFFFH, one bit per port (SDM 25.6.4)."""
    _check_bitmap("bitmap_a", bitmap_a)
    _check_bitmap("bitmap_b", bitmap_b)
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port: 0x{port:x} is not a 16-bit I/O port")
    if port < 0x8000:
        return _test_bit(bitmap_a, port)
    return _test_bit(bitmap_b, port - 0x8000)


def io_access_exits(
    controls_value: int,
    bitmap_a: bytes | bytearray | memoryview | None,
    bitmap_b: bytes | bytearray | memoryview | None,
    port: int,
    size: int,
) -> bool:
    """Whether an I/O instruction on ``port`` of ``size`` bytes exits (SDM 26.1.3).

    ``controls_value`` is the primary processor-based controls.  Without
    "use I/O bitmaps", the access exits iff "unconditional I/O exiting" is
    set; with it, the access exits iff any bit for ports port .. port+size-1
    is set, or the access wraps past FFFFH.  The bitmaps are only read when
    "use I/O bitmaps" is set.
    """
    if size not in (1, 2, 4):
        raise ValueError(f"size: {size!r} is not 1, 2 or 4")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port: 0x{port:x} is not a 16-bit I/O port")
    if not controls_value & ProcBasedControls.USE_IO_BITMAPS:
        return bool(controls_value & ProcBasedControls.UNCONDITIONAL_IO_EXITING)
    if bitmap_a is None or bitmap_b is None:
        raise ValueError("bitmap_a/bitmap_b: required when 'use I/O bitmaps' is set")
    if port + size - 1 > 0xFFFF:
        return True
    return any(io_bitmap_bit(bitmap_a, bitmap_b, p) for p in range(port, port + size))


_MSR_LOW_END = 0x1FFF
_MSR_HIGH_BASE = 0xC000_0000
_MSR_HIGH_END = 0xC000_1FFF


def msr_bitmap_exits(bitmap: bytes | bytearray | memoryview, msr: int, write: bool) -> bool:
    """Whether RDMSR/WRMSR of ``msr`` exits under the 4-KByte MSR bitmap
    (SDM 25.6.9): read bitmap for low MSRs at bytes 0-1023 (MSRs
    00000000H-00001FFFH), read-high at 1024-2047 (C0000000H-C0001FFFH),
    write-low at 2048-3071, write-high at 3072-4095.  MSRs outside both
    ranges always exit."""
    _check_bitmap("bitmap", bitmap)
    if not 0 <= msr <= 0xFFFF_FFFF:
        raise ValueError(f"msr: 0x{msr:x} is not a 32-bit MSR index")
    if msr <= _MSR_LOW_END:
        base, index = 0, msr
    elif _MSR_HIGH_BASE <= msr <= _MSR_HIGH_END:
        base, index = 1024, msr - _MSR_HIGH_BASE
    else:
        return True
    if write:
        base += 2048
    return _test_bit(bitmap, base * 8 + index)


def msr_access_exits(
    controls_value: int,
    bitmap: bytes | bytearray | memoryview | None,
    msr: int,
    write: bool,
) -> bool:
    """Whether RDMSR/WRMSR exits given the primary processor-based controls:
    always without "use MSR bitmaps", else per :func:`msr_bitmap_exits`."""
    if not controls_value & ProcBasedControls.USE_MSR_BITMAPS:
        return True
    if bitmap is None:
        raise ValueError("bitmap: required when 'use MSR bitmaps' is set")
    return msr_bitmap_exits(bitmap, msr, write)


def page_fault_exits(
    exception_bitmap: int, pfec_mask: int, pfec_match: int, error_code: int
) -> bool:
    """Whether a #PF with ``error_code`` exits (SDM 26.2): when
    (error_code AND mask) = match the exit follows bit 14 of the exception
    bitmap; otherwise it follows the inverse of bit 14."""
    pf_bit = bool(exception_bitmap >> 14 & 1)
    matches = (error_code & pfec_mask) == pfec_match
    return pf_bit == matches


def exception_exits(
    exception_bitmap: int,
    vector: int,
    *,
    error_code: int = 0,
    pfec_mask: int = 0,
    pfec_match: int = 0,
) -> bool:
    """Whether exception ``vector`` exits: its exception-bitmap bit, with the
    page-fault error-code rule for vector 14."""
    if not 0 <= vector <= 31:
        raise ValueError(f"vector: {vector} is not an exception vector (0-31)")
    if vector == 14:
        return page_fault_exits(exception_bitmap, pfec_mask, pfec_match, error_code)
    return bool(exception_bitmap >> vector & 1)


def cr_write_exits(guest_host_mask: int, read_shadow: int, value: int) -> bool:
    """Whether MOV to CR0/CR4 exits: it does unless ``value`` equals the read
    shadow in every bit set in the guest/host mask (SDM 26.1.3)."""
    return bool((value ^ read_shadow) & guest_host_mask)


def cr_read_value(guest_host_mask: int, read_shadow: int, actual: int) -> int:
    """What MOV from CR0/CR4 returns: bits owned by the host (set in the
    mask) come from the read shadow, the rest from the register."""
    return (actual & ~guest_host_mask) | (read_shadow & guest_host_mask)


def clts_exits(cr0_guest_host_mask: int, cr0_read_shadow: int) -> bool:
    """Whether CLTS exits: CR0.TS (bit 3) is set in both the mask and the
    read shadow."""
    return bool(cr0_guest_host_mask & cr0_read_shadow & (1 << 3))


def lmsw_exits(cr0_guest_host_mask: int, cr0_read_shadow: int, source: int) -> bool:
    """Whether LMSW exits: for PE (bit 0), when masked, shadow 0 and source 1;
    for MP/EM/TS (bits 3:1), when masked and source differs from the shadow."""
    pe = cr0_guest_host_mask & 1 and not cr0_read_shadow & 1 and source & 1
    others = (source ^ cr0_read_shadow) & cr0_guest_host_mask & 0xE
    return bool(pe or others)


def cr3_load_exits(
    controls_value: int, cr3_target_count: int, cr3_target_values: Sequence[int], value: int
) -> bool:
    """Whether MOV to CR3 exits: with "CR3-load exiting", unless ``value`` is
    one of the first ``cr3_target_count`` CR3-target values (SDM 26.1.3)."""
    if not controls_value & ProcBasedControls.CR3_LOAD_EXITING:
        return False
    if not 0 <= cr3_target_count <= len(cr3_target_values):
        raise ValueError(
            f"cr3_target_count: {cr3_target_count} exceeds the {len(cr3_target_values)} "
            "CR3-target values given"
        )
    return value not in cr3_target_values[:cr3_target_count]
