"""The VM exit as the loop and the handlers see it.

An engine reports every exit in the VMX model's terms: the SDM basic exit
reason, the exit qualification and the VM-exit information fields. For the
frequent exits the engine also fills decoded fast-path fields, so a handler
on the hot path does not decode bits again:

* ``IO_INSTRUCTION``: ``port``, ``size``, ``is_in``, ``count`` and, for OUT,
  ``value`` (or ``data`` for string I/O). For IN the handler puts the answer
  in ``value`` (or fills ``data``); the engine hands it to the guest before
  the next entry.
* ``EPT_VIOLATION``: ``guest_physical_address``, ``size``, ``is_write`` and,
  for writes, ``value``; for reads the handler puts the answer in ``value``.
* ``RDMSR``/``WRMSR``: ``msr`` and, for WRMSR, ``value``; for RDMSR the handler
  puts the answer in ``value``. A handler that sets ``fault = True`` asks the
  engine to raise #GP(0) in the guest instead of completing the access.

One :class:`VmExit` object is reused per vCPU; handlers must copy what they
want to keep. Fields an exit does not use hold their neutral values (those
:meth:`VmExit.reset` sets). Handlers write only the answer fields (``value`` and
``data``; ``fault`` on MSR exits).

Engines may skip :meth:`VmExit.reset` on their hot paths: an engine that
fills the same fast-path fields on every exit of one kind (say, an OUT
after an OUT) marks the object with ``fast_kind`` and resets it only when the
kind changes, because every field outside that kind's set is still neutral.
Any call to :meth:`VmExit.reset` clears the mark.
"""

from __future__ import annotations

from typing import Any

from .vmx import ExitReason, decode_qualification


class VmExit:
    __slots__ = (
        "reason", "qualification", "instruction_length", "instruction_info",
        "guest_linear_address", "guest_physical_address",
        "interruption_info", "interruption_error_code",
        "idt_vectoring_info", "idt_vectoring_error_code",
        "port", "size", "is_in", "is_write", "count", "value", "data", "msr", "fault",
        "detail", "fast_kind",
    )

    def __init__(self) -> None:
        self.reset(ExitReason.EXCEPTION_NMI)

    def reset(self, reason: int, qualification: int = 0) -> "VmExit":
        self.reason = reason
        self.qualification = qualification
        self.instruction_length = 0
        self.instruction_info = 0
        self.guest_linear_address = 0
        self.guest_physical_address = 0
        self.interruption_info = 0
        self.interruption_error_code = 0
        self.idt_vectoring_info = 0
        self.idt_vectoring_error_code = 0
        self.port = 0
        self.size = 0
        self.is_in = False
        self.is_write = False
        self.count = 1
        self.value = 0
        self.data: bytearray | None = None
        self.msr = 0
        self.fault = False
        #: engine-specific extra information for reports (e.g. KVM's raw exit data)
        self.detail: dict[str, Any] | None = None
        #: engine-private: which fast path filled this object since the last reset (0: none)
        self.fast_kind = 0
        return self

    def decoded(self) -> Any:
        """The exit qualification decoded per the SDM (or the raw int)."""
        return decode_qualification(self.reason, self.qualification)

    def describe(self) -> str:
        try:
            name = ExitReason(self.reason).name
        except ValueError:
            name = f"reason {self.reason}"
        parts = [name]
        if self.reason == ExitReason.IO_INSTRUCTION:
            op = "IN" if self.is_in else "OUT"
            parts.append(f"{op} port={self.port:#x} size={self.size}")
            if not self.is_in:
                parts.append(f"value={self.value:#x}")
            if self.count != 1:
                parts.append(f"count={self.count}")
        elif self.reason == ExitReason.EPT_VIOLATION:
            op = "write" if self.is_write else "read"
            parts.append(f"{op} gpa={self.guest_physical_address:#x} size={self.size}")
        elif self.reason in (ExitReason.RDMSR, ExitReason.WRMSR):
            parts.append(f"msr={self.msr:#x}")
        else:
            parts.append(f"qualification={self.qualification:#x}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"<VmExit {self.describe()}>"
