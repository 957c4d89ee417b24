"""Architectural exception and interrupt vectors 0-21.

Source: Intel SDM Vol. 3, Section 6.3 "Sources of Interrupts", Table 6-1
"Protected-Mode Exceptions and Interrupts" (mnemonics, types, and which
exceptions push an error code).  Vectors 9 (coprocessor segment overrun, no
longer generated) and 15 are reserved and have no member.
"""

from __future__ import annotations

import enum

__all__ = [
    "EXCEPTION_CLASS",
    "EXCEPTION_NAMES",
    "HAS_ERROR_CODE",
    "ExceptionClass",
    "Vector",
]


class Vector(enum.IntEnum):
    """Exception and NMI vectors by SDM mnemonic (without the ``#``)."""

    DE = 0  # Divide Error
    DB = 1  # Debug Exception
    NMI = 2  # Non-maskable interrupt
    BP = 3  # Breakpoint
    OF = 4  # Overflow
    BR = 5  # BOUND Range Exceeded
    UD = 6  # Invalid Opcode
    NM = 7  # Device Not Available
    DF = 8  # Double Fault
    # 9: Coprocessor Segment Overrun (reserved)
    TS = 10  # Invalid TSS
    NP = 11  # Segment Not Present
    SS = 12  # Stack-Segment Fault
    GP = 13  # General Protection
    PF = 14  # Page Fault
    # 15: reserved
    MF = 16  # x87 FPU Floating-Point Error
    AC = 17  # Alignment Check
    MC = 18  # Machine Check
    XM = 19  # SIMD Floating-Point Exception
    VE = 20  # Virtualization Exception
    CP = 21  # Control Protection Exception

    @property
    def mnemonic(self) -> str:
        """``"#PF"`` style mnemonic (``"NMI"`` for vector 2)."""
        return "NMI" if self is Vector.NMI else f"#{self.name}"


HAS_ERROR_CODE: frozenset[Vector] = frozenset(
    {Vector.DF, Vector.TS, Vector.NP, Vector.SS, Vector.GP, Vector.PF, Vector.AC, Vector.CP}
)
"""Exceptions that deliver an error code (Table 6-1, "Error Code" column)."""


class ExceptionClass(enum.Enum):
    """The "Type" column of SDM Table 6-1."""

    FAULT = "fault"
    TRAP = "trap"
    FAULT_OR_TRAP = "fault/trap"
    ABORT = "abort"
    INTERRUPT = "interrupt"


EXCEPTION_CLASS: dict[Vector, ExceptionClass] = {
    Vector.DE: ExceptionClass.FAULT,
    Vector.DB: ExceptionClass.FAULT_OR_TRAP,
    Vector.NMI: ExceptionClass.INTERRUPT,
    Vector.BP: ExceptionClass.TRAP,
    Vector.OF: ExceptionClass.TRAP,
    Vector.BR: ExceptionClass.FAULT,
    Vector.UD: ExceptionClass.FAULT,
    Vector.NM: ExceptionClass.FAULT,
    Vector.DF: ExceptionClass.ABORT,
    Vector.TS: ExceptionClass.FAULT,
    Vector.NP: ExceptionClass.FAULT,
    Vector.SS: ExceptionClass.FAULT,
    Vector.GP: ExceptionClass.FAULT,
    Vector.PF: ExceptionClass.FAULT,
    Vector.MF: ExceptionClass.FAULT,
    Vector.AC: ExceptionClass.FAULT,
    Vector.MC: ExceptionClass.ABORT,
    Vector.XM: ExceptionClass.FAULT,
    Vector.VE: ExceptionClass.FAULT,
    Vector.CP: ExceptionClass.FAULT,
}
"""Fault / trap / abort classification of each vector (Table 6-1)."""

EXCEPTION_NAMES: dict[Vector, str] = {
    Vector.DE: "Divide Error",
    Vector.DB: "Debug Exception",
    Vector.NMI: "NMI Interrupt",
    Vector.BP: "Breakpoint",
    Vector.OF: "Overflow",
    Vector.BR: "BOUND Range Exceeded",
    Vector.UD: "Invalid Opcode (Undefined Opcode)",
    Vector.NM: "Device Not Available (No Math Coprocessor)",
    Vector.DF: "Double Fault",
    Vector.TS: "Invalid TSS",
    Vector.NP: "Segment Not Present",
    Vector.SS: "Stack-Segment Fault",
    Vector.GP: "General Protection",
    Vector.PF: "Page Fault",
    Vector.MF: "x87 FPU Floating-Point Error (Math Fault)",
    Vector.AC: "Alignment Check",
    Vector.MC: "Machine Check",
    Vector.XM: "SIMD Floating-Point Exception",
    Vector.VE: "Virtualization Exception",
    Vector.CP: "Control Protection Exception",
}
"""The SDM's description of each vector (Table 6-1)."""
