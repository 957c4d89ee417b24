"""The per-vCPU MSR store, ``handle_rdmsr`` and ``handle_wrmsr``.

Every MSR the guest can use is an :class:`Msr` definition: index, SDM name,
reset value, which bits a write may set, and where the value lives. Values
that are CPU state (EFER, FS/GS base, STAR/LSTAR/CSTAR/SFMASK,
KERNEL_GS_BASE, SYSENTER_*, TSC, PAT) live in the engine, through
``get_sregs``/``set_sregs`` or ``get_msr``/``set_msr``; the rest (MTRRs,
MISC_ENABLE, platform information) live in the store, one value per vCPU.
A write the SDM forbids (a reserved bit, a non-canonical address, an invalid
memory type, LME toggled with paging on) raises #GP(0) in the guest, and so
does any access to an MSR nobody defined.

Plugins add MSRs with the ``register_msrs`` hook. On ``kvm`` the MSRs the
store owns are put in KVM's MSR filter so their accesses reach this store
too; those KVM implements itself (EFER and the rest of the CPU state) stay
in the kernel, which applies the same SDM checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

import attrs

from smartvm_core.cpu import CR0_PG, EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE
from smartvm_core.errors import PluginError

if TYPE_CHECKING:
    from smartvm_core.clock import VirtualClock
    from smartvm_core.engines.base import EngineVcpu
    from smartvm_core.exit import VmExit


class MsrFault(Exception):
    """The access raises #GP(0) in the guest."""


# Architectural MSR indexes (SDM Vol. 4, Table 2-2 "IA-32 Architectural MSRs").
IA32_TSC = 0x10
IA32_PLATFORM_ID = 0x17
IA32_APIC_BASE = 0x1B
IA32_BIOS_SIGN_ID = 0x8B
IA32_MTRRCAP = 0xFE
IA32_SYSENTER_CS = 0x174
IA32_SYSENTER_ESP = 0x175
IA32_SYSENTER_EIP = 0x176
IA32_MISC_ENABLE = 0x1A0
IA32_MTRR_PHYSBASE0 = 0x200
IA32_MTRR_FIX64K_00000 = 0x250
IA32_MTRR_FIX16K_80000 = 0x258
IA32_MTRR_FIX16K_A0000 = 0x259
IA32_MTRR_FIX4K_C0000 = 0x268
IA32_PAT = 0x277
IA32_MTRR_DEF_TYPE = 0x2FF
IA32_EFER = 0xC000_0080
IA32_STAR = 0xC000_0081
IA32_LSTAR = 0xC000_0082
IA32_CSTAR = 0xC000_0083
IA32_FMASK = 0xC000_0084
IA32_FS_BASE = 0xC000_0100
IA32_GS_BASE = 0xC000_0101
IA32_KERNEL_GS_BASE = 0xC000_0102

MTRR_VARIABLE_COUNT = 8
#: IA32_MTRRCAP: VCNT = 8, FIX (bit 8), WC (bit 10), as KVM reports it
MTRRCAP_VALUE = MTRR_VARIABLE_COUNT | 1 << 8 | 1 << 10
#: MISC_ENABLE bits: BTS unavailable (11), PEBS unavailable (12), read-only
MISC_ENABLE_RESET = 1 << 11 | 1 << 12
MISC_ENABLE_RO = 1 << 11 | 1 << 12
MISC_ENABLE_EMON = 1 << 7
#: PAT at reset: WB, WT, UC-, UC repeated (SDM Vol. 3, 13.12.4)
PAT_RESET = 0x0007_0406_0007_0406
_MEMORY_TYPES = frozenset({0, 1, 4, 5, 6})  # UC, WC, WT, WP, WB
_PAT_TYPES = _MEMORY_TYPES | {7}  # UC-
U64 = (1 << 64) - 1


def canonical(value: int, bits: int = 48) -> bool:
    """``value`` sign-extends from bit ``bits - 1`` (SDM Vol. 1, 3.3.7.1)."""
    top = value >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


@attrs.define(frozen=True)
class Msr:
    """One model-specific register.

    :param index: the ECX value of RDMSR/WRMSR.
    :param name: the SDM name (``IA32_EFER``).
    :param reset: value at power-on and reset.
    :param writable: bits a write may set; any other bit set raises #GP
        (``None``: any value).
    :param readonly: every write raises #GP.
    :param check: ``check(vcpu, old, new)`` returns the value to store or
        raises :class:`MsrFault`.
    :param read: ``read(vcpu, stored)`` computes the value the guest reads.
    :param write: ``write(vcpu, value)`` applies a side effect after a store.
    :param engine: the engine keeps the value: ``"sregs.efer"`` style paths
        into ``get_sregs()``, or ``"msr"`` for ``get_msr``/``set_msr``
        (the store keeps it if the engine has none by that index).
    :param filtered: on ``kvm``, route accesses to this store through the
        MSR filter (the default for MSRs the store keeps).
    """

    index: int
    name: str
    reset: int = 0
    writable: int | None = None
    readonly: bool = False
    check: Callable[["EngineVcpu", int, int], int] | None = None
    read: Callable[["EngineVcpu", int], int] | None = None
    write: Callable[["EngineVcpu", int], None] | None = None
    engine: str = ""
    filtered: bool | None = None

    @property
    def in_filter(self) -> bool:
        return (not self.engine) if self.filtered is None else self.filtered


def _memory_type_bytes(count: int, allowed: frozenset[int]) -> Callable[["EngineVcpu", int, int], int]:
    def check(vcpu: "EngineVcpu", old: int, value: int) -> int:
        for i in range(count):
            if (value >> (8 * i)) & 0xFF not in allowed:
                raise MsrFault(f"byte {i} is not a valid memory type")
        if value >> (8 * count):
            raise MsrFault("reserved bits set")
        return value
    return check


def _canonical_check(vcpu: "EngineVcpu", old: int, value: int) -> int:
    if not canonical(value):
        raise MsrFault(f"{value:#x} is not canonical")
    return value


def _canonicalize(vcpu: "EngineVcpu", old: int, value: int) -> int:
    # SYSENTER_ESP/EIP: the CPU keeps the canonical form (as KVM does)
    value &= (1 << 48) - 1
    return value | (U64 ^ ((1 << 48) - 1)) if value >> 47 else value


def architectural_msrs(*, phys_bits: int = 39, features: Iterable[str] = ()) -> list[Msr]:
    """The architectural MSRs every vCPU has, shaped by the CPUID policy."""
    features = frozenset(features)
    phys_mask = (1 << phys_bits) - 1
    efer_ok = (EFER_SCE if "syscall" in features else 0) | (EFER_LME | EFER_LMA if "lm" in features else 0) \
        | (EFER_NXE if "nx" in features else 0)

    def efer_check(vcpu: "EngineVcpu", old: int, value: int) -> int:
        if value & ~efer_ok:
            raise MsrFault("reserved EFER bit set")
        if vcpu.get_sregs().cr0 & CR0_PG and (old ^ value) & EFER_LME:
            raise MsrFault("EFER.LME changed while paging is enabled")
        return (value & ~EFER_LMA) | (old & EFER_LMA)  # LMA is read-only

    def apic_base_check(vcpu: "EngineVcpu", old: int, value: int) -> int:
        reserved = 0x2FF | 1 << 10 | (U64 & ~phys_mask)  # x2APIC enable needs the x2apic feature
        if "x2apic" in features:
            reserved &= ~(1 << 10)
        if value & reserved:
            raise MsrFault("reserved APIC base bit set")
        return value

    def misc_enable_check(vcpu: "EngineVcpu", old: int, value: int) -> int:
        if (old ^ value) & MISC_ENABLE_RO:
            raise MsrFault("MISC_ENABLE read-only bit changed")
        return (value & ~MISC_ENABLE_EMON) | (old & MISC_ENABLE_EMON)

    def def_type_check(vcpu: "EngineVcpu", old: int, value: int) -> int:
        if value & ~0xCFF or value & 0xFF not in _MEMORY_TYPES:
            raise MsrFault("invalid MTRR default type")
        return value

    def physbase_check(vcpu: "EngineVcpu", old: int, value: int) -> int:
        if value & 0xF00 or value & ~phys_mask or value & 0xFF not in _MEMORY_TYPES:
            raise MsrFault("invalid MTRR PHYSBASE")
        return value

    def physmask_check(vcpu: "EngineVcpu", old: int, value: int) -> int:
        if value & 0x7FF or value & ~phys_mask:
            raise MsrFault("invalid MTRR PHYSMASK")
        return value

    msrs = [
        Msr(IA32_TSC, "IA32_TSC", engine="msr"),
        Msr(IA32_PLATFORM_ID, "IA32_PLATFORM_ID", readonly=True),
        Msr(IA32_APIC_BASE, "IA32_APIC_BASE", 0xFEE00900, check=apic_base_check, engine="sregs.apic_base"),
        # a write asks for a microcode update: accepted and ignored; reads give revision 0
        Msr(IA32_BIOS_SIGN_ID, "IA32_BIOS_SIGN_ID", check=lambda v, o, n: 0),
        Msr(IA32_MTRRCAP, "IA32_MTRRCAP", MTRRCAP_VALUE, readonly=True),
        Msr(IA32_SYSENTER_CS, "IA32_SYSENTER_CS", writable=0xFFFF_FFFF, engine="msr"),
        Msr(IA32_SYSENTER_ESP, "IA32_SYSENTER_ESP", check=_canonicalize, engine="msr"),
        Msr(IA32_SYSENTER_EIP, "IA32_SYSENTER_EIP", check=_canonicalize, engine="msr"),
        Msr(IA32_MISC_ENABLE, "IA32_MISC_ENABLE", MISC_ENABLE_RESET, check=misc_enable_check),
        Msr(IA32_MTRR_FIX64K_00000, "IA32_MTRR_FIX64K_00000", check=_memory_type_bytes(8, _MEMORY_TYPES)),
        Msr(IA32_MTRR_FIX16K_80000, "IA32_MTRR_FIX16K_80000", check=_memory_type_bytes(8, _MEMORY_TYPES)),
        Msr(IA32_MTRR_FIX16K_A0000, "IA32_MTRR_FIX16K_A0000", check=_memory_type_bytes(8, _MEMORY_TYPES)),
        *(Msr(IA32_MTRR_FIX4K_C0000 + i, f"IA32_MTRR_FIX4K_{0xC0000 + i * 0x8000:05X}",
              check=_memory_type_bytes(8, _MEMORY_TYPES)) for i in range(8)),
        Msr(IA32_PAT, "IA32_PAT", PAT_RESET, check=_memory_type_bytes(8, _PAT_TYPES), engine="msr"),
        Msr(IA32_MTRR_DEF_TYPE, "IA32_MTRR_DEF_TYPE", check=def_type_check),
        Msr(IA32_EFER, "IA32_EFER", check=efer_check, engine="sregs.efer"),
        Msr(IA32_STAR, "IA32_STAR", engine="msr"),
        Msr(IA32_LSTAR, "IA32_LSTAR", check=_canonical_check, engine="msr"),
        Msr(IA32_CSTAR, "IA32_CSTAR", check=_canonical_check, engine="msr"),
        Msr(IA32_FMASK, "IA32_FMASK", writable=0xFFFF_FFFF, engine="msr"),
        Msr(IA32_FS_BASE, "IA32_FS_BASE", check=_canonical_check, engine="sregs.fs.base"),
        Msr(IA32_GS_BASE, "IA32_GS_BASE", check=_canonical_check, engine="sregs.gs.base"),
        Msr(IA32_KERNEL_GS_BASE, "IA32_KERNEL_GS_BASE", check=_canonical_check, engine="msr"),
    ]
    for n in range(MTRR_VARIABLE_COUNT):
        msrs.append(Msr(IA32_MTRR_PHYSBASE0 + 2 * n, f"IA32_MTRR_PHYSBASE{n}", check=physbase_check))
        msrs.append(Msr(IA32_MTRR_PHYSBASE0 + 2 * n + 1, f"IA32_MTRR_PHYSMASK{n}", check=physmask_check))
    return msrs


class MsrStore:
    """MSR definitions for the machine, and the values the store keeps, per vCPU."""

    def __init__(self, msrs: Iterable[Msr] = (), *, clock: "VirtualClock | None" = None) -> None:
        self.msrs: dict[int, Msr] = {}
        self.owner: dict[int, str] = {}
        self.values: dict[int, dict[int, int]] = {}
        self._clock = clock
        #: vCPU index → TSC offset, when the engine keeps no TSC (TSC counts virtual ns)
        self.tsc_offset: dict[int, int] = {}
        for m in msrs:
            self.define(m, plugin="exits")

    def define(self, msr: Msr, *, plugin: str = "?", replace: bool = False) -> None:
        """Add an MSR; a second definition of an index is refused unless ``replace``."""
        if not isinstance(msr, Msr):
            raise PluginError(f"plugin {plugin}: register_msrs expects an Msr, got {msr!r}")
        if not 0 <= msr.index <= 0xFFFF_FFFF:
            raise PluginError(f"plugin {plugin}: MSR index {msr.index:#x} does not fit 32 bits")
        old = self.owner.get(msr.index)
        if old is not None and not replace:
            raise PluginError(f"plugin {plugin}: MSR {msr.index:#x} ({msr.name}) is already defined "
                              f"by {old} as {self.msrs[msr.index].name}; pass replace=True to take it over")
        self.msrs[msr.index] = msr
        self.owner[msr.index] = plugin

    def filtered_indexes(self) -> list[int]:
        """MSRs whose accesses must reach this store on engines that handle MSRs themselves."""
        return sorted(i for i, m in self.msrs.items() if m.in_filter)

    def reset(self, vcpu_index: int | None = None) -> None:
        """Forget stored values (of one vCPU, or all): reads give reset values again."""
        if vcpu_index is None:
            self.values.clear()
            self.tsc_offset.clear()
        else:
            self.values.pop(vcpu_index, None)
            self.tsc_offset.pop(vcpu_index, None)

    # -- access ---------------------------------------------------------------------
    def _engine_read(self, vcpu: "EngineVcpu", msr: Msr) -> int | None:
        path = msr.engine
        if path.startswith("sregs."):
            obj: Any = vcpu.get_sregs()
            for part in path.split(".")[1:]:
                obj = getattr(obj, part)
            return int(obj)
        if path == "msr":
            try:
                return vcpu.get_msr(msr.index)
            except KeyError:
                return None
        return None

    def _engine_write(self, vcpu: "EngineVcpu", msr: Msr, value: int) -> bool:
        path = msr.engine
        if path.startswith("sregs."):
            sregs = vcpu.get_sregs()
            parts = path.split(".")[1:]
            obj: Any = sregs
            for part in parts[:-1]:
                obj = getattr(obj, part)
            setattr(obj, parts[-1], value)
            vcpu.set_sregs(sregs)
            return True
        if path == "msr":
            try:
                vcpu.set_msr(msr.index, value)
                return True
            except KeyError:
                return False
        return False

    def _stored(self, vcpu: "EngineVcpu", msr: Msr) -> int:
        if msr.index == IA32_TSC and msr.engine == "msr":
            clock_ns = self._clock.now_ns() if self._clock is not None else 0
            return (clock_ns + self.tsc_offset.get(vcpu.index, 0)) & U64
        return self.values.get(vcpu.index, {}).get(msr.index, msr.reset)

    def read(self, vcpu: "EngineVcpu", index: int) -> int:
        """RDMSR: the value, or :class:`MsrFault` for an MSR nobody defined."""
        msr = self.msrs.get(index)
        if msr is None:
            raise MsrFault(f"MSR {index:#x} is not implemented")
        value = self._engine_read(vcpu, msr) if msr.engine else None
        if value is None:
            value = self._stored(vcpu, msr)
        if msr.read is not None:
            value = msr.read(vcpu, value)
        return value & U64

    def write(self, vcpu: "EngineVcpu", index: int, value: int) -> None:
        """WRMSR: store ``value`` or raise :class:`MsrFault` (#GP)."""
        msr = self.msrs.get(index)
        if msr is None:
            raise MsrFault(f"MSR {index:#x} is not implemented")
        value &= U64
        if msr.readonly:
            raise MsrFault(f"{msr.name} is read-only")
        if msr.writable is not None and value & ~msr.writable:
            raise MsrFault(f"{msr.name}: reserved bits {value & ~msr.writable:#x} set")
        if msr.check is not None:
            old = self.read(vcpu, index)
            value = msr.check(vcpu, old, value)
        if not (msr.engine and self._engine_write(vcpu, msr, value)):
            if msr.index == IA32_TSC and msr.engine == "msr":
                clock_ns = self._clock.now_ns() if self._clock is not None else 0
                self.tsc_offset[vcpu.index] = value - clock_ns
            else:
                self.values.setdefault(vcpu.index, {})[msr.index] = value
        if msr.write is not None:
            msr.write(vcpu, value)

    # -- state ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Stored values as plain data (the engine saves the MSRs it keeps)."""
        return {
            "values": {str(v): {f"{i:#x}": val for i, val in regs.items()} for v, regs in self.values.items()},
            "tsc_offset": {str(v): off for v, off in self.tsc_offset.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        values: dict[int, dict[int, int]] = {}
        for v, regs in state.get("values", {}).items():
            values[int(v)] = {}
            for i, val in regs.items():
                index = int(i, 16)
                if index not in self.msrs:
                    from smartvm_core.errors import SnapshotError
                    raise SnapshotError(f"exits.msr: snapshot holds MSR {i}, which this machine does not define")
                values[int(v)][index] = int(val) & U64
        self.values = values
        self.tsc_offset = {int(v): int(off) for v, off in state.get("tsc_offset", {}).items()}


class MsrHandlers:
    """``handle_rdmsr`` and ``handle_wrmsr`` over one :class:`MsrStore`."""

    def __init__(self, store: MsrStore) -> None:
        self.store = store
        #: (vCPU, "rdmsr"/"wrmsr", index) of the last accesses that raised #GP, for reports
        self.faults: list[tuple[int, str, int]] = []

    def _fault(self, vcpu: "EngineVcpu", exit: "VmExit", kind: str) -> bool:
        exit.fault = True  # the engine raises #GP(0) instead of completing the access
        if len(self.faults) >= 16:
            del self.faults[0]
        self.faults.append((vcpu.index, kind, exit.msr))
        return True

    def handle_rdmsr(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        try:
            exit.value = self.store.read(vcpu, exit.msr)
        except MsrFault:
            return self._fault(vcpu, exit, "rdmsr")
        vcpu.skip_instruction()
        return True

    def handle_wrmsr(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        try:
            self.store.write(vcpu, exit.msr, exit.value)
        except MsrFault:
            return self._fault(vcpu, exit, "wrmsr")
        vcpu.skip_instruction()
        return True
