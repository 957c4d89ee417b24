"""ctypes mirrors of the KVM API structures (``linux/kvm.h``, ``asm/kvm.h``, x86).

Names are the kernel's, so each structure can be checked against
``Documentation/virt/kvm/api.rst``. Sizes and offsets are verified against the
C headers by ``tests/engines/kvm/test_structs.py`` (compiled with gcc).
Variable-length structures (``kvm_msrs``, ``kvm_cpuid2``, ``kvm_msr_list``)
have a ``make_*`` factory returning a class with room for ``n`` entries.
"""

from __future__ import annotations

from ctypes import (Structure, Union, c_char, c_int64, c_uint8, c_uint16,
                    c_uint32, c_uint64, c_void_p)
from functools import lru_cache

# --- exit reasons (kvm_run.exit_reason) -------------------------------------
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_HYPERV = 27
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_DIRTY_RING_FULL = 31
KVM_EXIT_X86_BUS_LOCK = 33
KVM_EXIT_NOTIFY = 37
KVM_EXIT_MEMORY_FAULT = 39

KVM_EXIT_NAMES = {v: k for k, v in globals().items() if k.startswith("KVM_EXIT_") and isinstance(v, int)}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# kvm_run.internal.suberror
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
KVM_INTERNAL_ERROR_NAMES = {
    1: "emulation failure", 2: "exception while delivering an exception",
    3: "event delivery failed", 4: "unexpected exit reason",
}
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1

# kvm_run.system_event.type
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

# kvm_run.msr.reason
KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2

# --- capabilities (KVM_CHECK_EXTENSION) ---------------------------------------
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT = 11
KVM_CAP_MP_STATE = 14
KVM_CAP_COALESCED_MMIO = 15
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_IRQ_INJECT_STATUS = 26
KVM_CAP_PIT2 = 33
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_INTR_SHADOW = 49
KVM_CAP_DEBUGREGS = 50
KVM_CAP_X86_ROBUST_SINGLESTEP = 51
KVM_CAP_ENABLE_CAP = 54
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SYNC_REGS = 74
KVM_CAP_READONLY_MEM = 81
KVM_CAP_SPLIT_IRQCHIP = 121
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_X86_DISABLE_EXITS = 143
KVM_CAP_GET_MSR_FEATURES = 153
KVM_CAP_COALESCED_PIO = 162
KVM_CAP_EXCEPTION_PAYLOAD = 164
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_CAP_X86_MSR_FILTER = 189
KVM_CAP_DIRTY_LOG_RING = 192
KVM_CAP_SET_GUEST_DEBUG2 = 195
KVM_CAP_XSAVE2 = 208
KVM_CAP_SYS_ATTRIBUTES = 209
KVM_CAP_X86_TRIPLE_FAULT_EVENT = 218

KVM_CAP_NAMES = {v: k[len("KVM_CAP_"):] for k, v in globals().items() if k.startswith("KVM_CAP_")}

# --- flags -------------------------------------------------------------------
#: kvm_run.kvm_valid_regs / kvm_dirty_regs bits (KVM_CAP_SYNC_REGS, x86)
KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_INJECT_DB = 0x00040000
KVM_GUESTDBG_INJECT_BP = 0x00080000
KVM_GUESTDBG_BLOCKIRQ = 0x00100000

KVM_MSR_FILTER_READ = 1 << 0
KVM_MSR_FILTER_WRITE = 1 << 1
KVM_MSR_FILTER_DEFAULT_ALLOW = 0
KVM_MSR_FILTER_DEFAULT_DENY = 1
KVM_MSR_FILTER_MAX_RANGES = 16

KVM_PIT_SPEAKER_DUMMY = 1

KVM_VCPUEVENT_VALID_NMI_PENDING = 0x00000001
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x00000002
KVM_VCPUEVENT_VALID_SHADOW = 0x00000004
KVM_VCPUEVENT_VALID_SMM = 0x00000008
KVM_VCPUEVENT_VALID_PAYLOAD = 0x00000010
KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x00000020

KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4

KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2

KVM_X86_DISABLE_EXITS_MWAIT = 1 << 0
KVM_X86_DISABLE_EXITS_HLT = 1 << 1
KVM_X86_DISABLE_EXITS_PAUSE = 1 << 2

KVM_NR_INTERRUPTS = 256
KVM_MAX_CPUID_ENTRIES = 256


# --- kvm_run ---------------------------------------------------------------------
class kvm_run_hw(Structure):
    _fields_ = [("hardware_exit_reason", c_uint64)]


class kvm_run_fail_entry(Structure):
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class kvm_run_ex(Structure):
    _fields_ = [("exception", c_uint32), ("error_code", c_uint32)]


class kvm_run_io(Structure):
    _fields_ = [("direction", c_uint8), ("size", c_uint8), ("port", c_uint16),
                ("count", c_uint32), ("data_offset", c_uint64)]


class kvm_debug_exit_arch(Structure):
    _fields_ = [("exception", c_uint32), ("pad", c_uint32), ("pc", c_uint64),
                ("dr6", c_uint64), ("dr7", c_uint64)]


class kvm_run_debug(Structure):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class kvm_run_mmio(Structure):
    _fields_ = [("phys_addr", c_uint64), ("data", c_uint8 * 8), ("len", c_uint32),
                ("is_write", c_uint8)]


class kvm_run_hypercall(Structure):
    _fields_ = [("nr", c_uint64), ("args", c_uint64 * 6), ("ret", c_uint64), ("flags", c_uint64)]


class kvm_run_tpr_access(Structure):
    _fields_ = [("rip", c_uint64), ("is_write", c_uint32), ("pad", c_uint32)]


class kvm_run_internal(Structure):
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class kvm_run_emulation_failure(Structure):
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("flags", c_uint64),
                ("insn_size", c_uint8), ("insn_bytes", c_uint8 * 15)]


class kvm_run_system_event(Structure):
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class kvm_run_msr(Structure):
    _fields_ = [("error", c_uint8), ("pad", c_uint8 * 7), ("reason", c_uint32),
                ("index", c_uint32), ("data", c_uint64)]


class kvm_run_exit_union(Union):
    _fields_ = [("hw", kvm_run_hw), ("fail_entry", kvm_run_fail_entry), ("ex", kvm_run_ex),
                ("io", kvm_run_io), ("debug", kvm_run_debug), ("mmio", kvm_run_mmio),
                ("hypercall", kvm_run_hypercall), ("tpr_access", kvm_run_tpr_access),
                ("internal", kvm_run_internal), ("emulation_failure", kvm_run_emulation_failure),
                ("system_event", kvm_run_system_event), ("msr", kvm_run_msr),
                ("padding", c_char * 256)]


class kvm_regs(Structure):
    _fields_ = [(n, c_uint64) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                                       "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
                                       "rip", "rflags")]


class kvm_segment(Structure):
    _fields_ = [("base", c_uint64), ("limit", c_uint32), ("selector", c_uint16),
                ("type", c_uint8), ("present", c_uint8), ("dpl", c_uint8), ("db", c_uint8),
                ("s", c_uint8), ("l", c_uint8), ("g", c_uint8), ("avl", c_uint8),
                ("unusable", c_uint8), ("padding", c_uint8)]


class kvm_dtable(Structure):
    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


class kvm_sregs(Structure):
    _fields_ = [("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
                ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
                ("tr", kvm_segment), ("ldt", kvm_segment),
                ("gdt", kvm_dtable), ("idt", kvm_dtable),
                ("cr0", c_uint64), ("cr2", c_uint64), ("cr3", c_uint64), ("cr4", c_uint64),
                ("cr8", c_uint64), ("efer", c_uint64), ("apic_base", c_uint64),
                ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64))]


class kvm_fpu(Structure):
    _fields_ = [("fpr", (c_uint8 * 16) * 8), ("fcw", c_uint16), ("fsw", c_uint16),
                ("ftwx", c_uint8), ("pad1", c_uint8), ("last_opcode", c_uint16),
                ("last_ip", c_uint64), ("last_dp", c_uint64), ("xmm", (c_uint8 * 16) * 16),
                ("mxcsr", c_uint32), ("pad2", c_uint32)]


class kvm_xsave(Structure):
    _fields_ = [("region", c_uint32 * 1024)]


class kvm_xcr(Structure):
    _fields_ = [("xcr", c_uint32), ("reserved", c_uint32), ("value", c_uint64)]


class kvm_xcrs(Structure):
    _fields_ = [("nr_xcrs", c_uint32), ("flags", c_uint32), ("xcrs", kvm_xcr * 16),
                ("padding", c_uint64 * 16)]


class kvm_msr_entry(Structure):
    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class kvm_msrs(Structure):
    """Header only; use :func:`make_kvm_msrs` for a structure with entries."""

    _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32)]


class kvm_msr_list(Structure):
    _fields_ = [("nmsrs", c_uint32)]


class kvm_cpuid_entry2(Structure):
    _fields_ = [("function", c_uint32), ("index", c_uint32), ("flags", c_uint32),
                ("eax", c_uint32), ("ebx", c_uint32), ("ecx", c_uint32), ("edx", c_uint32),
                ("padding", c_uint32 * 3)]


class kvm_cpuid2(Structure):
    """Header only; use :func:`make_kvm_cpuid2` for a structure with entries."""

    _fields_ = [("nent", c_uint32), ("padding", c_uint32)]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0


@lru_cache(maxsize=None)
def make_kvm_msrs(n: int) -> type:
    """``struct kvm_msrs`` with room for ``n`` entries."""
    return type(f"kvm_msrs_{n}", (Structure,), {
        "_fields_": [("nmsrs", c_uint32), ("pad", c_uint32), ("entries", kvm_msr_entry * n)]})


@lru_cache(maxsize=None)
def make_kvm_msr_list(n: int) -> type:
    """``struct kvm_msr_list`` with room for ``n`` indices."""
    return type(f"kvm_msr_list_{n}", (Structure,), {
        "_fields_": [("nmsrs", c_uint32), ("indices", c_uint32 * n)]})


@lru_cache(maxsize=None)
def make_kvm_cpuid2(n: int) -> type:
    """``struct kvm_cpuid2`` with room for ``n`` entries."""
    return type(f"kvm_cpuid2_{n}", (Structure,), {
        "_fields_": [("nent", c_uint32), ("padding", c_uint32), ("entries", kvm_cpuid_entry2 * n)]})


class kvm_lapic_state(Structure):
    _fields_ = [("regs", c_char * 1024)]


class kvm_vcpu_events_exception(Structure):
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("has_error_code", c_uint8),
                ("pending", c_uint8), ("error_code", c_uint32)]


class kvm_vcpu_events_interrupt(Structure):
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("soft", c_uint8), ("shadow", c_uint8)]


class kvm_vcpu_events_nmi(Structure):
    _fields_ = [("injected", c_uint8), ("pending", c_uint8), ("masked", c_uint8), ("pad", c_uint8)]


class kvm_vcpu_events_smi(Structure):
    _fields_ = [("smm", c_uint8), ("pending", c_uint8), ("smm_inside_nmi", c_uint8),
                ("latched_init", c_uint8)]


class kvm_vcpu_events_triple_fault(Structure):
    _fields_ = [("pending", c_uint8)]


class kvm_vcpu_events(Structure):
    _fields_ = [("exception", kvm_vcpu_events_exception),
                ("interrupt", kvm_vcpu_events_interrupt),
                ("nmi", kvm_vcpu_events_nmi),
                ("sipi_vector", c_uint32),
                ("flags", c_uint32),
                ("smi", kvm_vcpu_events_smi),
                ("triple_fault", kvm_vcpu_events_triple_fault),
                ("reserved", c_uint8 * 26),
                ("exception_has_payload", c_uint8),
                ("exception_payload", c_uint64)]


class kvm_mp_state(Structure):
    _fields_ = [("mp_state", c_uint32)]


class kvm_debugregs(Structure):
    _fields_ = [("db", c_uint64 * 4), ("dr6", c_uint64), ("dr7", c_uint64),
                ("flags", c_uint64), ("reserved", c_uint64 * 9)]


class kvm_guest_debug_arch(Structure):
    _fields_ = [("debugreg", c_uint64 * 8)]


class kvm_guest_debug(Structure):
    _fields_ = [("control", c_uint32), ("pad", c_uint32), ("arch", kvm_guest_debug_arch)]


class kvm_translation(Structure):
    _fields_ = [("linear_address", c_uint64), ("physical_address", c_uint64),
                ("valid", c_uint8), ("writeable", c_uint8), ("usermode", c_uint8),
                ("pad", c_uint8 * 5)]


class kvm_interrupt(Structure):
    _fields_ = [("irq", c_uint32)]


# --- kvm_run ---------------------------------------------------------------------
class kvm_sync_regs(Structure):
    """x86 ``struct kvm_sync_regs``: the registers ``KVM_CAP_SYNC_REGS`` shares through ``kvm_run.s``."""

    _fields_ = [("regs", kvm_regs), ("sregs", kvm_sregs), ("events", kvm_vcpu_events)]


class kvm_run_sync_union(Union):
    _fields_ = [("regs", kvm_sync_regs), ("padding", c_char * 2048)]


class kvm_run(Structure):
    """The shared page of a vCPU (``mmap`` of the vCPU fd, ``KVM_GET_VCPU_MMAP_SIZE`` bytes)."""

    _anonymous_ = ("u",)
    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("u", kvm_run_exit_union),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", kvm_run_sync_union),
    ]


# --- VM structures -----------------------------------------------------------------
class kvm_userspace_memory_region(Structure):
    _fields_ = [("slot", c_uint32), ("flags", c_uint32), ("guest_phys_addr", c_uint64),
                ("memory_size", c_uint64), ("userspace_addr", c_uint64)]


class kvm_dirty_log(Structure):
    _fields_ = [("slot", c_uint32), ("padding1", c_uint32), ("dirty_bitmap", c_void_p)]


class kvm_irq_level(Structure):
    _fields_ = [("irq", c_uint32), ("level", c_uint32)]  # irq shares its slot with status (s32)


class kvm_pit_config(Structure):
    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


class kvm_pit_channel_state(Structure):
    _fields_ = [("count", c_uint32), ("latched_count", c_uint16), ("count_latched", c_uint8),
                ("status_latched", c_uint8), ("status", c_uint8), ("read_state", c_uint8),
                ("write_state", c_uint8), ("write_latch", c_uint8), ("rw_mode", c_uint8),
                ("mode", c_uint8), ("bcd", c_uint8), ("gate", c_uint8),
                ("count_load_time", c_int64)]


class kvm_pit_state2(Structure):
    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", c_uint32),
                ("reserved", c_uint32 * 9)]


class kvm_irqchip(Structure):
    _fields_ = [("chip_id", c_uint32), ("pad", c_uint32), ("chip", c_char * 512)]


class kvm_clock_data(Structure):
    _fields_ = [("clock", c_uint64), ("flags", c_uint32), ("pad0", c_uint32),
                ("realtime", c_uint64), ("host_tsc", c_uint64), ("pad", c_uint32 * 4)]


class kvm_enable_cap(Structure):
    _fields_ = [("cap", c_uint32), ("flags", c_uint32), ("args", c_uint64 * 4),
                ("pad", c_uint8 * 64)]


class kvm_msr_filter_range(Structure):
    _fields_ = [("flags", c_uint32), ("nmsrs", c_uint32), ("base", c_uint32),
                ("bitmap", c_void_p)]


class kvm_msr_filter(Structure):
    _fields_ = [("flags", c_uint32), ("ranges", kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES)]


STRUCTS = (
    kvm_run, kvm_sync_regs, kvm_regs, kvm_segment, kvm_dtable, kvm_sregs, kvm_fpu, kvm_xsave, kvm_xcr, kvm_xcrs,
    kvm_msr_entry, kvm_msrs, kvm_msr_list, kvm_cpuid_entry2, kvm_cpuid2, kvm_lapic_state,
    kvm_vcpu_events, kvm_mp_state, kvm_debugregs, kvm_guest_debug, kvm_translation, kvm_interrupt,
    kvm_userspace_memory_region, kvm_dirty_log, kvm_irq_level, kvm_pit_config,
    kvm_pit_channel_state, kvm_pit_state2, kvm_irqchip, kvm_clock_data, kvm_enable_cap,
    kvm_msr_filter_range, kvm_msr_filter,
)
"""The fixed-size structures (checked against the C headers in the tests)."""

