"""Control bits (SDM Vol. 3 25.6-25.8 tables) and the exit rules of 26.1.3 /
26.2: I/O bitmaps, MSR bitmaps, exception bitmap with the #PF error-code
rule, CR guest/host masks and CR3 targets."""

from __future__ import annotations

import enum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartvm_core.vmx import (
    EntryControls,
    ExitControls,
    PinBasedControls,
    ProcBasedControls,
    ProcBasedControls2,
    ProcBasedControls3,
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

# (flag class, {name: bit}) written out from the SDM tables.
SDM_BITS: list[tuple[type[enum.IntFlag], dict[str, int]]] = [
    (
        PinBasedControls,
        {
            "EXTERNAL_INTERRUPT_EXITING": 0,
            "NMI_EXITING": 3,
            "VIRTUAL_NMIS": 5,
            "ACTIVATE_VMX_PREEMPTION_TIMER": 6,
            "PROCESS_POSTED_INTERRUPTS": 7,
        },
    ),
    (
        ProcBasedControls,
        {
            "INTERRUPT_WINDOW_EXITING": 2,
            "USE_TSC_OFFSETTING": 3,
            "HLT_EXITING": 7,
            "INVLPG_EXITING": 9,
            "MWAIT_EXITING": 10,
            "RDPMC_EXITING": 11,
            "RDTSC_EXITING": 12,
            "CR3_LOAD_EXITING": 15,
            "CR3_STORE_EXITING": 16,
            "ACTIVATE_TERTIARY_CONTROLS": 17,
            "CR8_LOAD_EXITING": 19,
            "CR8_STORE_EXITING": 20,
            "USE_TPR_SHADOW": 21,
            "NMI_WINDOW_EXITING": 22,
            "MOV_DR_EXITING": 23,
            "UNCONDITIONAL_IO_EXITING": 24,
            "USE_IO_BITMAPS": 25,
            "MONITOR_TRAP_FLAG": 27,
            "USE_MSR_BITMAPS": 28,
            "MONITOR_EXITING": 29,
            "PAUSE_EXITING": 30,
            "ACTIVATE_SECONDARY_CONTROLS": 31,
        },
    ),
    (
        ProcBasedControls2,
        {
            "VIRTUALIZE_APIC_ACCESSES": 0,
            "ENABLE_EPT": 1,
            "DESCRIPTOR_TABLE_EXITING": 2,
            "ENABLE_RDTSCP": 3,
            "VIRTUALIZE_X2APIC_MODE": 4,
            "ENABLE_VPID": 5,
            "WBINVD_EXITING": 6,
            "UNRESTRICTED_GUEST": 7,
            "APIC_REGISTER_VIRTUALIZATION": 8,
            "VIRTUAL_INTERRUPT_DELIVERY": 9,
            "PAUSE_LOOP_EXITING": 10,
            "RDRAND_EXITING": 11,
            "ENABLE_INVPCID": 12,
            "ENABLE_VM_FUNCTIONS": 13,
            "VMCS_SHADOWING": 14,
            "ENABLE_ENCLS_EXITING": 15,
            "RDSEED_EXITING": 16,
            "ENABLE_PML": 17,
            "EPT_VIOLATION_VE": 18,
            "CONCEAL_VMX_FROM_PT": 19,
            "ENABLE_XSAVES_XRSTORS": 20,
            "PASID_TRANSLATION": 21,
            "MODE_BASED_EXECUTE_CONTROL_FOR_EPT": 22,
            "SUB_PAGE_WRITE_PERMISSIONS_FOR_EPT": 23,
            "PT_USES_GUEST_PHYSICAL_ADDRESSES": 24,
            "USE_TSC_SCALING": 25,
            "ENABLE_USER_WAIT_AND_PAUSE": 26,
            "ENABLE_PCONFIG": 27,
            "ENABLE_ENCLV_EXITING": 28,
            "VMM_BUS_LOCK_DETECTION": 30,
            "INSTRUCTION_TIMEOUT": 31,
        },
    ),
    (
        ProcBasedControls3,
        {
            "LOADIWKEY_EXITING": 0,
            "ENABLE_HLAT": 1,
            "EPT_PAGING_WRITE_CONTROL": 2,
            "GUEST_PAGING_VERIFICATION": 3,
            "IPI_VIRTUALIZATION": 4,
            "VIRTUALIZE_IA32_SPEC_CTRL": 7,
        },
    ),
    (
        ExitControls,
        {
            "SAVE_DEBUG_CONTROLS": 2,
            "HOST_ADDRESS_SPACE_SIZE": 9,
            "LOAD_IA32_PERF_GLOBAL_CTRL": 12,
            "ACKNOWLEDGE_INTERRUPT_ON_EXIT": 15,
            "SAVE_IA32_PAT": 18,
            "LOAD_IA32_PAT": 19,
            "SAVE_IA32_EFER": 20,
            "LOAD_IA32_EFER": 21,
            "SAVE_VMX_PREEMPTION_TIMER_VALUE": 22,
            "CLEAR_IA32_BNDCFGS": 23,
            "CONCEAL_VMX_FROM_PT": 24,
            "CLEAR_IA32_RTIT_CTL": 25,
            "CLEAR_IA32_LBR_CTL": 26,
            "CLEAR_UINV": 27,
            "LOAD_CET_STATE": 28,
            "LOAD_PKRS": 29,
            "SAVE_IA32_PERF_GLOBAL_CTL": 30,
            "ACTIVATE_SECONDARY_CONTROLS": 31,
        },
    ),
    (
        EntryControls,
        {
            "LOAD_DEBUG_CONTROLS": 2,
            "IA32E_MODE_GUEST": 9,
            "ENTRY_TO_SMM": 10,
            "DEACTIVATE_DUAL_MONITOR_TREATMENT": 11,
            "LOAD_IA32_PERF_GLOBAL_CTRL": 13,
            "LOAD_IA32_PAT": 14,
            "LOAD_IA32_EFER": 15,
            "LOAD_IA32_BNDCFGS": 16,
            "CONCEAL_VMX_FROM_PT": 17,
            "LOAD_IA32_RTIT_CTL": 18,
            "LOAD_UINV": 19,
            "LOAD_CET_STATE": 20,
            "LOAD_GUEST_IA32_LBR_CTL": 21,
            "LOAD_PKRS": 22,
            "LOAD_IA32_FRED": 23,
        },
    ),
]


@pytest.mark.parametrize(("cls", "table"), SDM_BITS, ids=[c.__name__ for c, _ in SDM_BITS])
def test_control_bit_positions(cls: type[enum.IntFlag], table: dict[str, int]) -> None:
    assert {m.name: m.value.bit_length() - 1 for m in cls} == table
    for name, bit in table.items():
        assert cls[name] == 1 << bit


# --- I/O bitmaps -------------------------------------------------------------

EMPTY = bytes(4096)


def bitmap_with(*bits: int) -> bytes:
    data = bytearray(4096)
    for n in bits:
        data[n // 8] |= 1 << (n % 8)
    return bytes(data)


def io_bitmaps(*ports: int) -> tuple[bytes, bytes]:
    return (
        bitmap_with(*(p for p in ports if p < 0x8000)),
        bitmap_with(*(p - 0x8000 for p in ports if p >= 0x8000)),
    )


def test_io_bitmap_bit_layout() -> None:
    a = bytearray(4096)
    b = bytearray(4096)
    a[0] = 0x01  # port 0000H
    a[0xFFF] = 0x80  # port 7FFFH
    b[0] = 0x01  # port 8000H
    b[0xFFF] = 0x80  # port FFFFH
    a[0x3F8 // 8] = 1 << (0x3F8 % 8)
    for port in (0x0000, 0x7FFF, 0x8000, 0xFFFF, 0x3F8):
        assert io_bitmap_bit(a, b, port), hex(port)
    for port in (0x0001, 0x7FFE, 0x8001, 0xFFFE, 0x3F9):
        assert not io_bitmap_bit(a, b, port), hex(port)


def test_io_bitmap_boundary_between_a_and_b() -> None:
    a, b = io_bitmaps(0x8000)
    assert not io_bitmap_bit(a, b, 0x7FFF)
    assert io_bitmap_bit(a, b, 0x8000)
    a, b = io_bitmaps(0x7FFF)
    assert io_bitmap_bit(a, b, 0x7FFF)
    assert not io_bitmap_bit(a, b, 0x8000)


def test_io_bitmap_refusals() -> None:
    with pytest.raises(ValueError, match="bitmap_a"):
        io_bitmap_bit(bytes(4095), EMPTY, 0)
    with pytest.raises(ValueError, match="bitmap_b"):
        io_bitmap_bit(EMPTY, bytes(4097), 0)
    with pytest.raises(ValueError, match="port"):
        io_bitmap_bit(EMPTY, EMPTY, 0x10000)


USE = int(ProcBasedControls.USE_IO_BITMAPS)
UNCOND = int(ProcBasedControls.UNCONDITIONAL_IO_EXITING)


def test_io_exits_without_bitmaps() -> None:
    assert not io_access_exits(0, None, None, 0x3F8, 1)
    assert io_access_exits(UNCOND, None, None, 0x3F8, 1)


def test_io_bitmaps_override_unconditional_exiting() -> None:
    assert not io_access_exits(USE | UNCOND, EMPTY, EMPTY, 0x3F8, 1)
    a, b = io_bitmaps(0x3F8)
    assert io_access_exits(USE, a, b, 0x3F8, 1)
    with pytest.raises(ValueError, match="bitmap"):
        io_access_exits(USE, None, None, 0x3F8, 1)


@pytest.mark.parametrize(
    ("set_ports", "port", "size", "exits"),
    [
        ((0x3FB,), 0x3F8, 4, True),  # last byte of a dword access
        ((0x3FC,), 0x3F8, 4, False),  # just past it
        ((0x8000,), 0x7FFF, 2, True),  # access straddles A and B
        ((0x8000,), 0x7FFF, 1, False),
        ((0x7FFF,), 0x7FFE, 2, True),
        ((0x7FFF,), 0x8000, 4, False),
        ((), 0xFFFF, 1, False),
        ((), 0xFFFF, 2, True),  # wraps to 0000H
        ((), 0xFFFE, 2, False),
        ((), 0xFFFD, 4, True),  # wraps
        ((), 0xFFFC, 4, False),
        ((0x0000,), 0xFFFC, 4, False),  # ends at FFFFH, port 0 not touched
    ],
)
def test_io_bitmap_exits(set_ports: tuple[int, ...], port: int, size: int, exits: bool) -> None:
    a, b = io_bitmaps(*set_ports)
    assert io_access_exits(USE, a, b, port, size) is exits


def test_io_exits_refuse_bad_size_or_port() -> None:
    with pytest.raises(ValueError, match="size"):
        io_access_exits(USE, EMPTY, EMPTY, 0, 3)
    with pytest.raises(ValueError, match="port"):
        io_access_exits(USE, EMPTY, EMPTY, -1, 1)


@given(
    ports=st.sets(st.integers(0, 0xFFFF), max_size=8),
    port=st.integers(0, 0xFFFF),
    size=st.sampled_from([1, 2, 4]),
)
def test_io_exits_matches_port_model(ports: set[int], port: int, size: int) -> None:
    a, b = io_bitmaps(*ports)
    touched = set(range(port, port + size))
    expected = port + size - 1 > 0xFFFF or bool(touched & ports)
    assert io_access_exits(USE, a, b, port, size) is expected


# --- MSR bitmaps -------------------------------------------------------------


@pytest.mark.parametrize(
    ("msr", "read_bit", "write_bit"),
    [
        (0x0000_0000, 0, 2048 * 8),
        (0x0000_0010, 0x10, 2048 * 8 + 0x10),
        (0x0000_1FFF, 1023 * 8 + 7, 3071 * 8 + 7),
        (0xC000_0000, 1024 * 8, 3072 * 8),
        (0xC000_0080, 1024 * 8 + 0x80, 3072 * 8 + 0x80),
        (0xC000_1FFF, 2047 * 8 + 7, 4095 * 8 + 7),
    ],
)
def test_msr_bitmap_offsets(msr: int, read_bit: int, write_bit: int) -> None:
    assert not msr_bitmap_exits(EMPTY, msr, write=False)
    assert not msr_bitmap_exits(EMPTY, msr, write=True)
    reads = bitmap_with(read_bit)
    assert msr_bitmap_exits(reads, msr, write=False)
    assert not msr_bitmap_exits(reads, msr, write=True)
    writes = bitmap_with(write_bit)
    assert msr_bitmap_exits(writes, msr, write=True)
    assert not msr_bitmap_exits(writes, msr, write=False)


@pytest.mark.parametrize("msr", [0x2000, 0x4000_0000, 0xBFFF_FFFF, 0xC000_2000, 0xFFFF_FFFF])
def test_msrs_outside_ranges_always_exit(msr: int) -> None:
    assert msr_bitmap_exits(EMPTY, msr, write=False)
    assert msr_bitmap_exits(EMPTY, msr, write=True)


def test_msr_refusals_and_control() -> None:
    with pytest.raises(ValueError, match="bitmap"):
        msr_bitmap_exits(bytes(100), 0, False)
    with pytest.raises(ValueError, match="msr"):
        msr_bitmap_exits(EMPTY, 1 << 32, False)
    assert msr_access_exits(0, None, 0x10, False)
    assert not msr_access_exits(ProcBasedControls.USE_MSR_BITMAPS, EMPTY, 0x10, False)


@given(
    msr=st.one_of(st.integers(0, 0x1FFF), st.integers(0xC000_0000, 0xC000_1FFF)),
    other=st.one_of(st.integers(0, 0x1FFF), st.integers(0xC000_0000, 0xC000_1FFF)),
    write=st.booleans(),
)
def test_msr_single_bit_property(msr: int, other: int, write: bool) -> None:
    base = (1024 if msr >= 0xC000_0000 else 0) + (2048 if write else 0)
    bitmap = bitmap_with(base * 8 + (msr & 0x1FFF))
    assert msr_bitmap_exits(bitmap, msr, write)
    assert not msr_bitmap_exits(bitmap, msr, not write)
    if other != msr:
        assert not msr_bitmap_exits(bitmap, other, write)


# --- exceptions --------------------------------------------------------------

PF_BIT = 1 << 14


@pytest.mark.parametrize(
    ("bitmap", "mask", "match", "error_code", "exits"),
    [
        # SDM 26.2: equal & bit 14 = 1 -> exit; equal & bit 14 = 0 -> no exit;
        # not equal & bit 14 = 1 -> no exit; not equal & bit 14 = 0 -> exit.
        (PF_BIT, 0x2, 0x2, 0x2, True),
        (0, 0x2, 0x2, 0x2, False),
        (PF_BIT, 0x2, 0x2, 0x0, False),
        (0, 0x2, 0x2, 0x0, True),
        # mask = match = 0: every error code matches, so bit 14 alone decides.
        (PF_BIT, 0, 0, 0xFFFF_FFFF, True),
        (0, 0, 0, 0x7, False),
        # mask = 0, match != 0: nothing matches, so the sense of bit 14 inverts.
        (PF_BIT, 0, 1, 0x1, False),
        (0, 0, 1, 0x1, True),
        # only user-mode (bit 2) write (bit 1) faults
        (PF_BIT, 0x6, 0x6, 0x7, True),
        (PF_BIT, 0x6, 0x6, 0x3, False),
    ],
)
def test_page_fault_mask_match_truth_table(
    bitmap: int, mask: int, match: int, error_code: int, exits: bool
) -> None:
    assert page_fault_exits(bitmap, mask, match, error_code) is exits
    assert (
        exception_exits(bitmap, 14, error_code=error_code, pfec_mask=mask, pfec_match=match)
        is exits
    )


def test_exception_bitmap_other_vectors() -> None:
    bitmap = (1 << 6) | (1 << 13)
    assert exception_exits(bitmap, 6)
    assert exception_exits(bitmap, 13)
    assert not exception_exits(bitmap, 3)
    with pytest.raises(ValueError, match="vector"):
        exception_exits(bitmap, 32)


# --- control registers -------------------------------------------------------


def test_cr_guest_host_mask_rules() -> None:
    mask = 0x8000_0021  # host owns PG, NE, PE
    shadow = 0x0000_0001
    assert not cr_write_exits(mask, shadow, 0x0000_0003)  # MP is guest-owned
    assert cr_write_exits(mask, shadow, 0x8000_0001)  # sets PG
    assert cr_write_exits(mask, shadow, 0x0)  # clears PE
    assert cr_read_value(mask, shadow, actual=0x8000_0033) == 0x0000_0013
    assert not cr_write_exits(0, 0, 0xFFFF_FFFF)


def test_clts_and_lmsw_rules() -> None:
    ts = 1 << 3
    assert clts_exits(ts, ts)
    assert not clts_exits(ts, 0)
    assert not clts_exits(0, ts)
    # PE: exits only when setting a host-owned PE whose shadow is 0.
    assert lmsw_exits(0x1, 0x0, 0x1)
    assert not lmsw_exits(0x1, 0x1, 0x0)  # LMSW cannot clear PE
    assert not lmsw_exits(0x0, 0x0, 0x1)
    # MP/EM/TS: exits when a host-owned bit differs from the shadow.
    assert lmsw_exits(0x8, 0x0, 0x8)
    assert lmsw_exits(0x8, 0x8, 0x0)
    assert not lmsw_exits(0x8, 0x8, 0x8)
    assert not lmsw_exits(0x2, 0x0, 0x4)


def test_cr3_targets() -> None:
    load = int(ProcBasedControls.CR3_LOAD_EXITING)
    targets = [0x1000, 0x2000, 0x3000, 0x4000]
    assert not cr3_load_exits(0, 0, targets, 0x5000)
    assert cr3_load_exits(load, 0, targets, 0x1000)
    assert not cr3_load_exits(load, 2, targets, 0x2000)
    assert cr3_load_exits(load, 2, targets, 0x3000)  # beyond the count
    with pytest.raises(ValueError, match="cr3_target_count"):
        cr3_load_exits(load, 5, targets, 0)
