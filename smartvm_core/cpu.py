"""Architectural vCPU state in engine-neutral form.

The field names follow the Intel SDM and match the kernel's ``kvm_regs`` /
``kvm_sregs`` so that both engines convert with a plain field copy. All
values are plain ints; state objects round-trip through :func:`attrs.asdict`.
"""

from __future__ import annotations

import attrs

GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
"""General-purpose registers in the SDM's encoding order (ModRM/exit qualification GPR field)."""

# CR0 / CR4 / EFER / RFLAGS bits used across the code base.
CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_EM = 1 << 2
CR0_TS = 1 << 3
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31
CR4_VME = 1 << 0
CR4_PVI = 1 << 1
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_PGE = 1 << 7
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
CR4_OSXSAVE = 1 << 18
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11
RFLAGS_CF = 1 << 0
RFLAGS_FIXED = 1 << 1
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_DF = 1 << 10
RFLAGS_IOPL = 3 << 12
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16
RFLAGS_VM = 1 << 17
RFLAGS_AC = 1 << 18
RFLAGS_VIF = 1 << 19
RFLAGS_VIP = 1 << 20
RFLAGS_ID = 1 << 21


@attrs.define
class Registers:
    """General-purpose registers, RIP and RFLAGS (``KVM_GET_REGS``)."""

    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0
    rflags: int = RFLAGS_FIXED


@attrs.define
class Segment:
    """A segment register with its hidden part (``kvm_segment``).

    ``type``, ``s``, ``dpl``, ``present``, ``avl``, ``l``, ``db``, ``g`` are the
    descriptor's access-rights bits as in the SDM (VMCS guest access rights).
    """

    selector: int = 0
    base: int = 0
    limit: int = 0xFFFF
    type: int = 3  # read/write data, accessed
    present: int = 1
    dpl: int = 0
    db: int = 0
    s: int = 1
    l: int = 0  # noqa: E741 - SDM name
    g: int = 0
    avl: int = 0
    unusable: int = 0

    @classmethod
    def real_mode(cls, selector: int, *, code: bool = False) -> "Segment":
        return cls(selector=selector, base=selector << 4, limit=0xFFFF, type=0xB if code else 3)

    @property
    def access_rights(self) -> int:
        """The VMCS access-rights encoding (SDM Vol. 3, 25.4.1)."""
        return (self.type | self.s << 4 | self.dpl << 5 | self.present << 7 | self.avl << 12
                | self.l << 13 | self.db << 14 | self.g << 15 | self.unusable << 16)


@attrs.define
class DescriptorTable:
    """GDTR or IDTR."""

    base: int = 0
    limit: int = 0xFFFF


@attrs.define
class SpecialRegisters:
    """Segment, control and descriptor-table registers (``KVM_GET_SREGS``)."""

    cs: Segment = attrs.Factory(lambda: Segment(selector=0xF000, base=0xFFFF0000, type=0xB))
    ds: Segment = attrs.Factory(Segment)
    es: Segment = attrs.Factory(Segment)
    fs: Segment = attrs.Factory(Segment)
    gs: Segment = attrs.Factory(Segment)
    ss: Segment = attrs.Factory(Segment)
    tr: Segment = attrs.Factory(lambda: Segment(type=0xB, s=0))
    ldt: Segment = attrs.Factory(lambda: Segment(type=2, s=0))
    gdt: DescriptorTable = attrs.Factory(DescriptorTable)
    idt: DescriptorTable = attrs.Factory(DescriptorTable)
    cr0: int = CR0_ET | CR0_NW | CR0_CD
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    apic_base: int = 0xFEE00900

    SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


def cpu_mode(sregs: SpecialRegisters, rflags: int) -> str:
    """Name the CPU mode: ``real``, ``v8086``, ``protected16``, ``protected32``, ``compat`` or ``long``."""
    if not sregs.cr0 & CR0_PE:
        return "real"
    if sregs.efer & EFER_LMA:
        return "long" if sregs.cs.l else "compat"
    if rflags & RFLAGS_VM:
        return "v8086"
    return "protected32" if sregs.cs.db else "protected16"


def state_to_plain(obj: object) -> dict:
    return attrs.asdict(obj)


def registers_from_plain(d: dict) -> Registers:
    return Registers(**d)


def sregs_from_plain(d: dict) -> SpecialRegisters:
    kw = dict(d)
    for name in SpecialRegisters.SEGMENTS:
        kw[name] = Segment(**kw[name])
    kw["gdt"] = DescriptorTable(**kw["gdt"])
    kw["idt"] = DescriptorTable(**kw["idt"])
    return SpecialRegisters(**kw)
