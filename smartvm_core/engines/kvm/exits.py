"""The one table from ``KVM_EXIT_*`` to the SDM's basic exit reasons.

:data:`TRANSLATE` is indexed by ``kvm_run.exit_reason``; each entry fills the
vCPU's reused :class:`~smartvm_core.exit.VmExit` from the mmap'd ``kvm_run``
and returns it (or raises a :class:`~smartvm_core.errors.EngineError` for
exits that are errors, with KVM's data in the message).

=========================== ======================================================
KVM exit                    VMX exit (fields filled)
=========================== ======================================================
KVM_EXIT_IO                 IO_INSTRUCTION: port, size, is_in, count, value/data,
                            I/O qualification (string and REP bits when count > 1)
KVM_EXIT_MMIO               EPT_VIOLATION: guest_physical_address, size, is_write,
                            value (writes); qualification read/write bit, plus
                            readable/executable for a write to a read-only slot
KVM_EXIT_HLT                HLT (instruction length 1)
KVM_EXIT_SHUTDOWN           TRIPLE_FAULT
KVM_EXIT_SYSTEM_EVENT       TRIPLE_FAULT (shutdown, reset), error for crash
KVM_EXIT_X86_RDMSR/WRMSR    RDMSR / WRMSR: msr, value (WRMSR)
KVM_EXIT_DEBUG              EXCEPTION_NMI: #DB (hardware exception, DR6 bits as the
                            qualification) or #BP (software exception), RIP in
                            guest_linear_address; MONITOR_TRAP_FLAG when the MTF
                            control is emulated by single-stepping
KVM_EXIT_EXCEPTION          EXCEPTION_NMI with vector and error code
KVM_EXIT_NMI                EXCEPTION_NMI, NMI type
KVM_EXIT_IRQ_WINDOW_OPEN    INTERRUPT_WINDOW
KVM_EXIT_INTR (and EINTR)   EXTERNAL_INTERRUPT, or VMX_PREEMPTION_TIMER_EXPIRED when
                            the vCPU's timer kicked it
KVM_EXIT_FAIL_ENTRY         VM_ENTRY_FAILURE_INVALID_GUEST_STATE (or the basic
                            reason KVM gives), hardware reason in ``detail``
KVM_EXIT_HYPERCALL          VMCALL with nr/args in ``detail``
KVM_EXIT_INTERNAL_ERROR     :class:`KvmInternalError` (emulation failure ...) with
                            suberror, data words, instruction bytes and RIP
anything else               :class:`KvmInternalError` naming the KVM exit
=========================== ======================================================

KVM completes I/O, MMIO, HLT and MSR instructions itself, so RIP already
points past the instruction when the exit is reported; the answer of an IN,
an MMIO read or a RDMSR is written back into ``kvm_run`` by
:meth:`KvmVcpu.run` before the next ``KVM_RUN``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable

from ...errors import EngineError
from ...vmx import ExitReason, InterruptionType, Vector
from . import structs as s

if TYPE_CHECKING:
    from ...exit import VmExit
    from .engine import KvmVcpu

# writeback codes (what run() must copy into kvm_run before the next KVM_RUN)
WB_NONE = 0
WB_IO_IN = 1
WB_IO_IN_STRING = 2
WB_MMIO_READ = 3
WB_RDMSR = 4
WB_WRMSR = 5
WB_SETUP = 6  # first entry: program KVM from the VMCS controls

# kvm_run offsets of the exit union members we read with struct
_UNION = 32
IO_HDR = struct.Struct("<BBHIQ")        # direction, size, port, count, data_offset
MMIO_HDR = struct.Struct("<QQIB")       # phys_addr, data[8] as u64, len, is_write
MSR_HDR = struct.Struct("<B7xIIQ")      # error, reason, index, data
MMIO_DATA_OFFSET = _UNION + 8
MSR_ERROR_OFFSET = _UNION
MSR_DATA_OFFSET = _UNION + 16
U64 = struct.Struct("<Q")
VALUE = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I")}
_IO_SIZE_CODE = {1: 0, 2: 1, 4: 3}
#: I/O qualification bits 3:0 (size code, direction) by access size, OUT and IN (kvm_run's size is a u8)
_Q_OUT = tuple(_IO_SIZE_CODE.get(n, 0) for n in range(256))
_Q_IN = tuple(q | 0x8 for q in _Q_OUT)
_MASK = {n: (1 << (8 * n)) - 1 for n in range(9)}

_IO = int(ExitReason.IO_INSTRUCTION)
_EPT = int(ExitReason.EPT_VIOLATION)
_VALID = 1 << 31
_ERROR_CODE_VALID = 1 << 11


class KvmInternalError(EngineError):
    """KVM stopped the guest with an error (``KVM_EXIT_INTERNAL_ERROR`` or an unknown exit)."""

    def __init__(self, message: str, detail: dict) -> None:
        self.detail = detail
        super().__init__(message)


#: ``VmExit.fast_kind`` marks of the two hot paths (see :mod:`smartvm_core.exit`)
FAST_IO = 1
FAST_MMIO = 2


def _io(v: "KvmVcpu") -> "VmExit":
    e = v.exit
    mm = v.mm
    direction, size, port, count, off = IO_HDR.unpack_from(mm, _UNION)
    if count != 1:
        return _string_io(v, direction, size, port, count, off)
    # Hot path. After an I/O exit of the same kind, every field outside the
    # ones set below is still neutral (reason, count 1, data None ...).
    if e.fast_kind != FAST_IO:
        e.reset(_IO)
        e.fast_kind = FAST_IO
    e.port = port
    e.size = size
    if direction:  # KVM_EXIT_IO_OUT
        e.is_in = False
        e.value = mm[off] if size == 1 else VALUE[size].unpack_from(mm, off)[0]
        e.qualification = _Q_OUT[size] | port << 16
    else:
        e.is_in = True
        e.value = 0
        v.wb_offset = off
        v.writeback = WB_IO_IN
        e.qualification = _Q_IN[size] | port << 16
    return e


def _string_io(v: "KvmVcpu", direction: int, size: int, port: int, count: int, off: int) -> "VmExit":
    """INS/OUTS with a repeat count: the data moves through ``exit.data``."""
    e = v.exit.reset(_IO)  # fast_kind 0: the next I/O exit resets data and count again
    e.port = port
    e.size = size
    e.count = count
    q = _IO_SIZE_CODE.get(size, 0) | 0x30 | port << 16  # string, REP
    if direction == s.KVM_EXIT_IO_OUT:
        e.data = bytearray(v.mm[off:off + size * count])
    else:
        q |= 0x8
        e.is_in = True
        e.data = bytearray(size * count)
        v.wb_offset = off
        v.writeback = WB_IO_IN_STRING
    e.qualification = q
    return e


def _mmio(v: "KvmVcpu") -> "VmExit":
    e = v.exit
    gpa, data, length, is_write = MMIO_HDR.unpack_from(v.mm, _UNION)
    if e.fast_kind != FAST_MMIO:
        e.reset(_EPT)
        e.fast_kind = FAST_MMIO
    e.guest_physical_address = gpa
    e.size = length
    if is_write:
        e.is_write = True
        e.value = data & _MASK.get(length, _MASK[8])
        q = 0x2
        if v.readonly_slots and v.in_readonly_slot(gpa):
            q |= 0x28  # the page is readable and executable, not writable
    else:
        e.is_write = False
        e.value = 0
        v.writeback = WB_MMIO_READ
        q = 0x1
    e.qualification = q
    return e


def _hlt(v: "KvmVcpu") -> "VmExit":
    e = v.exit.reset(ExitReason.HLT)
    e.instruction_length = 1
    return e


def _shutdown(v: "KvmVcpu") -> "VmExit":
    e = v.exit.reset(ExitReason.TRIPLE_FAULT)
    e.detail = {"kvm_exit": "KVM_EXIT_SHUTDOWN"}
    return e


def _msr(v: "KvmVcpu") -> "VmExit":
    _, reason, index, data = MSR_HDR.unpack_from(v.mm, _UNION)
    write = v.kvm_run.exit_reason == s.KVM_EXIT_X86_WRMSR
    e = v.exit.reset(ExitReason.WRMSR if write else ExitReason.RDMSR)
    e.msr = index
    e.value = data if write else 0
    e.is_write = write
    e.detail = {"kvm_msr_reason": reason}
    v.writeback = WB_WRMSR if write else WB_RDMSR
    return e


def _debug(v: "KvmVcpu") -> "VmExit":
    arch = v.kvm_run.debug.arch
    if v.mtf and arch.exception == Vector.DB and arch.dr6 & (1 << 14):
        e = v.exit.reset(ExitReason.MONITOR_TRAP_FLAG)
        e.guest_linear_address = arch.pc
        return e
    e = v.exit.reset(ExitReason.EXCEPTION_NMI)
    vector = arch.exception & 0xFF
    kind = InterruptionType.SOFTWARE_EXCEPTION if vector == Vector.BP else InterruptionType.HARDWARE_EXCEPTION
    e.interruption_info = _VALID | int(kind) << 8 | vector
    if vector == Vector.DB:
        e.qualification = arch.dr6 & 0x600F  # B0-B3, BD, BS (SDM 28.2.1)
    e.guest_linear_address = arch.pc
    e.detail = {"kvm_exit": "KVM_EXIT_DEBUG", "dr6": arch.dr6, "dr7": arch.dr7, "pc": arch.pc}
    return e


def _exception(v: "KvmVcpu") -> "VmExit":
    ex = v.kvm_run.ex
    e = v.exit.reset(ExitReason.EXCEPTION_NMI)
    vector = ex.exception & 0xFF
    info = _VALID | int(InterruptionType.HARDWARE_EXCEPTION) << 8 | vector
    if vector in (Vector.DF, Vector.TS, Vector.NP, Vector.SS, Vector.GP, Vector.PF, Vector.AC):
        info |= _ERROR_CODE_VALID
        e.interruption_error_code = ex.error_code
    e.interruption_info = info
    return e


def _nmi(v: "KvmVcpu") -> "VmExit":
    e = v.exit.reset(ExitReason.EXCEPTION_NMI)
    e.interruption_info = _VALID | int(InterruptionType.NMI) << 8 | Vector.NMI
    return e


def _irq_window(v: "KvmVcpu") -> "VmExit":
    return v.exit.reset(ExitReason.INTERRUPT_WINDOW)


def _intr(v: "KvmVcpu") -> "VmExit":
    return v.interrupted()


def _fail_entry(v: "KvmVcpu") -> "VmExit":
    fe = v.kvm_run.fail_entry
    hw = fe.hardware_entry_failure_reason
    basic = hw & 0xFFFF
    reason = basic if basic in (ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE,
                                ExitReason.VM_ENTRY_FAILURE_MSR_LOADING,
                                ExitReason.VM_ENTRY_FAILURE_MACHINE_CHECK) \
        else ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE
    e = v.exit.reset(reason)
    e.detail = {"kvm_exit": "KVM_EXIT_FAIL_ENTRY", "hardware_entry_failure_reason": hw, "cpu": fe.cpu}
    return e


def _hypercall(v: "KvmVcpu") -> "VmExit":
    hc = v.kvm_run.hypercall
    e = v.exit.reset(ExitReason.VMCALL)
    e.detail = {"kvm_exit": "KVM_EXIT_HYPERCALL", "nr": hc.nr, "args": list(hc.args)}
    return e


def _system_event(v: "KvmVcpu") -> "VmExit":
    ev = v.kvm_run.system_event
    if ev.type in (s.KVM_SYSTEM_EVENT_SHUTDOWN, s.KVM_SYSTEM_EVENT_RESET):
        e = v.exit.reset(ExitReason.TRIPLE_FAULT)
        e.detail = {"kvm_exit": "KVM_EXIT_SYSTEM_EVENT",
                    "type": "shutdown" if ev.type == s.KVM_SYSTEM_EVENT_SHUTDOWN else "reset"}
        return e
    raise KvmInternalError(f"vCPU {v.index}: KVM system event {ev.type} (guest crash)",
                           {"type": ev.type, "data": list(ev.data[:ev.ndata])})


def _internal_error(v: "KvmVcpu") -> "VmExit":
    ie = v.kvm_run.internal
    sub = ie.suberror
    what = s.KVM_INTERNAL_ERROR_NAMES.get(sub, f"suberror {sub}")
    data = [ie.data[i] for i in range(min(ie.ndata, 16))]
    detail = {"kvm_exit": "KVM_EXIT_INTERNAL_ERROR", "suberror": sub, "data": data}
    parts = [f"vCPU {v.index}: KVM internal error, {what}"]
    if sub == s.KVM_INTERNAL_ERROR_EMULATION:
        ef = v.kvm_run.emulation_failure
        if ie.ndata >= 3 and ef.flags & s.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES:
            insn = bytes(ef.insn_bytes[:min(ef.insn_size, 15)])
            detail["instruction_bytes"] = insn.hex()
            parts.append(f"instruction bytes {insn.hex(' ')}")
        parts.append("(KVM's instruction emulator cannot run this instruction on this host; "
                     "on a nested or software KVM, try engine = \"soft\")")
    if data:
        parts.append("data " + " ".join(f"{d:#x}" for d in data))
    parts.append(v.where())
    raise KvmInternalError("; ".join(parts), detail)


def _unknown(v: "KvmVcpu") -> "VmExit":
    code = v.kvm_run.exit_reason
    name = s.KVM_EXIT_NAMES.get(code, f"exit reason {code}")
    detail = {"kvm_exit": name}
    if code == s.KVM_EXIT_UNKNOWN:
        detail["hardware_exit_reason"] = v.kvm_run.hw.hardware_exit_reason
        name += f" (hardware exit reason {v.kvm_run.hw.hardware_exit_reason:#x})"
    raise KvmInternalError(f"vCPU {v.index}: {name} has no VMX equivalent here; {v.where()}", detail)


TRANSLATE: list[Callable[["KvmVcpu"], "VmExit"]] = [_unknown] * 64
"""``kvm_run.exit_reason`` → translator (the one table)."""
for _code, _fn in {
    s.KVM_EXIT_IO: _io,
    s.KVM_EXIT_MMIO: _mmio,
    s.KVM_EXIT_HLT: _hlt,
    s.KVM_EXIT_SHUTDOWN: _shutdown,
    s.KVM_EXIT_X86_RDMSR: _msr,
    s.KVM_EXIT_X86_WRMSR: _msr,
    s.KVM_EXIT_DEBUG: _debug,
    s.KVM_EXIT_EXCEPTION: _exception,
    s.KVM_EXIT_NMI: _nmi,
    s.KVM_EXIT_IRQ_WINDOW_OPEN: _irq_window,
    s.KVM_EXIT_INTR: _intr,
    s.KVM_EXIT_FAIL_ENTRY: _fail_entry,
    s.KVM_EXIT_HYPERCALL: _hypercall,
    s.KVM_EXIT_SYSTEM_EVENT: _system_event,
    s.KVM_EXIT_INTERNAL_ERROR: _internal_error,
}.items():
    TRANSLATE[_code] = _fn

#: KVM exit → the SDM basic exit reason it becomes (for docs and ``smartvm info``)
KVM_TO_VMX: dict[str, str] = {
    "KVM_EXIT_IO": "IO_INSTRUCTION",
    "KVM_EXIT_MMIO": "EPT_VIOLATION",
    "KVM_EXIT_HLT": "HLT",
    "KVM_EXIT_SHUTDOWN": "TRIPLE_FAULT",
    "KVM_EXIT_SYSTEM_EVENT": "TRIPLE_FAULT",
    "KVM_EXIT_X86_RDMSR": "RDMSR",
    "KVM_EXIT_X86_WRMSR": "WRMSR",
    "KVM_EXIT_DEBUG": "EXCEPTION_NMI (#DB/#BP) or MONITOR_TRAP_FLAG",
    "KVM_EXIT_EXCEPTION": "EXCEPTION_NMI",
    "KVM_EXIT_NMI": "EXCEPTION_NMI (NMI)",
    "KVM_EXIT_IRQ_WINDOW_OPEN": "INTERRUPT_WINDOW",
    "KVM_EXIT_INTR": "EXTERNAL_INTERRUPT or VMX_PREEMPTION_TIMER_EXPIRED",
    "KVM_EXIT_FAIL_ENTRY": "VM_ENTRY_FAILURE_INVALID_GUEST_STATE",
    "KVM_EXIT_HYPERCALL": "VMCALL",
    "KVM_EXIT_INTERNAL_ERROR": "error (EngineError with KVM's data)",
}
