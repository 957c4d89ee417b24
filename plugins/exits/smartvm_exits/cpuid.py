"""The CPUID policy and ``handle_cpuid``.

One :class:`CpuidPolicy` decides what every vCPU sees, on every engine: on
``soft`` CPUID always exits and :class:`CpuidHandler` answers from the
policy; on ``kvm`` the same table goes to ``KVM_SET_CPUID2`` (see
:meth:`CpuidPolicy.kvm_entries`), so the guest sees the same values.

The default model is deliberately small: the features both engines run
(the x86-64 baseline: FPU ... SSE2, SSE3, CX16, SYSCALL, NX, LM, LAHF/SAHF)
and nothing the VMM cannot virtualize (no local APIC or x2APIC model, no
machine-check MSRs, no VMX, no XSAVE/AVX). ``[cpuid] enable``/``disable``
switch named features (:data:`FEATURES`), ``leaves`` overrides whole
registers of a leaf. Leaf numbers follow the SDM (Vol. 2A, CPUID).

The bits that hardware computes at run time are computed here too, as KVM
does: CPUID.1:ECX.OSXSAVE mirrors CR4.OSXSAVE, CPUID.1:EDX.APIC is clear
while IA32_APIC_BASE.EN is 0, CPUID.1:EBX[31:24] and CPUID.0BH:EDX hold the
vCPU's APIC ID, and CPUID.(0DH,0):EBX is the XSAVE area size for the current
XCR0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import attrs

from smartvm_core.cpu import CR4_OSXSAVE
from smartvm_core.errors import ConfigError

if TYPE_CHECKING:
    from smartvm_core.engines.base import EngineVcpu
    from smartvm_core.exit import VmExit

#: hypervisor leaf signature (CPUID.40000000H:EBX,ECX,EDX)
HYPERVISOR_SIGNATURE = b"SmartVMSmtVM"
HYPERVISOR_BASE = 0x4000_0000
EXTENDED_BASE = 0x8000_0000

EAX, EBX, ECX, EDX = range(4)
_REG_NAMES = ("eax", "ebx", "ecx", "edx")

#: feature name → (leaf, subleaf, register, bit), names as Linux's /proc/cpuinfo spells them
FEATURES: dict[str, tuple[int, int, int, int]] = {
    # CPUID.01H:EDX
    "fpu": (1, 0, EDX, 0), "vme": (1, 0, EDX, 1), "de": (1, 0, EDX, 2), "pse": (1, 0, EDX, 3),
    "tsc": (1, 0, EDX, 4), "msr": (1, 0, EDX, 5), "pae": (1, 0, EDX, 6), "mce": (1, 0, EDX, 7),
    "cx8": (1, 0, EDX, 8), "apic": (1, 0, EDX, 9), "sep": (1, 0, EDX, 11), "mtrr": (1, 0, EDX, 12),
    "pge": (1, 0, EDX, 13), "mca": (1, 0, EDX, 14), "cmov": (1, 0, EDX, 15), "pat": (1, 0, EDX, 16),
    "pse36": (1, 0, EDX, 17), "clflush": (1, 0, EDX, 19), "mmx": (1, 0, EDX, 23),
    "fxsr": (1, 0, EDX, 24), "sse": (1, 0, EDX, 25), "sse2": (1, 0, EDX, 26), "ss": (1, 0, EDX, 27),
    "ht": (1, 0, EDX, 28),
    # CPUID.01H:ECX
    "pni": (1, 0, ECX, 0), "pclmulqdq": (1, 0, ECX, 1), "monitor": (1, 0, ECX, 3),
    "vmx": (1, 0, ECX, 5), "ssse3": (1, 0, ECX, 9), "fma": (1, 0, ECX, 12), "cx16": (1, 0, ECX, 13),
    "pcid": (1, 0, ECX, 17), "sse4_1": (1, 0, ECX, 19), "sse4_2": (1, 0, ECX, 20),
    "x2apic": (1, 0, ECX, 21), "movbe": (1, 0, ECX, 22), "popcnt": (1, 0, ECX, 23),
    "tsc_deadline_timer": (1, 0, ECX, 24), "aes": (1, 0, ECX, 25), "xsave": (1, 0, ECX, 26),
    "avx": (1, 0, ECX, 28), "f16c": (1, 0, ECX, 29), "rdrand": (1, 0, ECX, 30),
    "hypervisor": (1, 0, ECX, 31),
    # CPUID.(07H,0):EBX/ECX/EDX
    "fsgsbase": (7, 0, EBX, 0), "bmi1": (7, 0, EBX, 3), "avx2": (7, 0, EBX, 5),
    "smep": (7, 0, EBX, 7), "bmi2": (7, 0, EBX, 8), "erms": (7, 0, EBX, 9),
    "invpcid": (7, 0, EBX, 10), "rdseed": (7, 0, EBX, 18), "adx": (7, 0, EBX, 19),
    "smap": (7, 0, EBX, 20), "clflushopt": (7, 0, EBX, 23), "sha_ni": (7, 0, EBX, 29),
    "umip": (7, 0, ECX, 2), "pku": (7, 0, ECX, 3),
    # CPUID.80000001H:ECX/EDX
    "lahf_lm": (EXTENDED_BASE | 1, 0, ECX, 0), "abm": (EXTENDED_BASE | 1, 0, ECX, 5),
    "syscall": (EXTENDED_BASE | 1, 0, EDX, 11), "nx": (EXTENDED_BASE | 1, 0, EDX, 20),
    "pdpe1gb": (EXTENDED_BASE | 1, 0, EDX, 26), "rdtscp": (EXTENDED_BASE | 1, 0, EDX, 27),
    "lm": (EXTENDED_BASE | 1, 0, EDX, 29),
    # CPUID.80000007H:EDX
    "constant_tsc": (EXTENDED_BASE | 7, 0, EDX, 8),
}

#: what the default model shows: the x86-64 baseline both engines run
DEFAULT_FEATURES: tuple[str, ...] = (
    "fpu", "vme", "de", "pse", "tsc", "msr", "pae", "cx8", "sep", "mtrr", "pge", "cmov", "pat",
    "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "pni", "cx16", "hypervisor",
    "lahf_lm", "syscall", "nx", "lm",
)

#: features an engine's supported table does not decide
DYNAMIC_FEATURES = frozenset({"hypervisor", "apic"})
#: features that follow machine state, not the policy (CPUID.1:EDX.APIC = IA32_APIC_BASE.EN)
RUNTIME_FEATURES = frozenset({"apic"})
_OSXSAVE_BIT = 1 << 27
_APIC_BIT = 1 << 9
_APIC_BASE_EN = 1 << 11

#: XSAVE state components: bit → (size, offset) in the standard format (SDM Vol. 1, 13.4)
_XSAVE_COMPONENTS = {2: (256, 576)}  # AVX (YMM_Hi128)
XCR0_X87, XCR0_SSE, XCR0_AVX = 1, 2, 4


def _xsave_size(xcr0: int) -> int:
    size = 576  # legacy region + XSAVE header
    for bit, (length, offset) in _XSAVE_COMPONENTS.items():
        if xcr0 & (1 << bit):
            size = max(size, offset + length)
    return size


def _u32(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF_FFFF:
        raise ValueError(f"{where}: {value!r} is not a 32-bit unsigned integer")
    return value


def _leaf_key(text: str) -> tuple[int, int | None]:
    """``"0x7"`` → (7, None); ``"0xd.1"`` → (13, 1): leaf and optional subleaf."""
    leaf_s, dot, sub_s = text.partition(".")
    try:
        leaf = int(leaf_s, 0)
        sub = int(sub_s, 0) if dot else None
    except ValueError:
        raise ValueError(f"leaf {text!r}: use \"LEAF\" or \"LEAF.SUBLEAF\", e.g. \"0x7\" or \"0xd.1\"") from None
    _u32(leaf, f"leaf {text!r}")
    if sub is not None:
        _u32(sub, f"leaf {text!r} subleaf")
    return leaf, sub


@attrs.define
class CpuidPolicy:
    """What CPUID returns: vendor, family/model/stepping, brand, features, overrides."""

    vendor: str = "GenuineIntel"
    family: int = 6
    model: int = 0x0F
    stepping: int = 11
    brand: str = "Smart-VM virtual CPU"
    features: frozenset[str] = frozenset(DEFAULT_FEATURES)
    #: (leaf, subleaf or None) → {register index: value}
    overrides: dict[tuple[int, int | None], dict[int, int]] = attrs.Factory(dict)
    phys_bits: int = 39
    virt_bits: int = 48
    #: information for the hypervisor leaf 40000001H (ABI version, doorbell port)
    hypercall_abi: int = 1
    doorbell_port: int = 0
    vcpus: int = 1

    # -- construction --------------------------------------------------------------
    @classmethod
    def from_section(cls, section: dict[str, Any], *, source: str = "<experiment>",
                     vcpus: int = 1, doorbell_port: int = 0) -> "CpuidPolicy":
        """Build the policy from a validated ``[cpuid]`` section (errors name the key)."""
        s = section or {}
        vendor = s.get("vendor", "GenuineIntel")
        if len(vendor.encode("ascii", "replace")) != 12 or not vendor.isascii():
            raise ConfigError(source, "cpuid.vendor", f"{vendor!r} must be 12 ASCII characters")
        brand = s.get("brand", "Smart-VM virtual CPU")
        if not brand.isascii() or len(brand) > 47:
            raise ConfigError(source, "cpuid.brand", "must be at most 47 ASCII characters")
        family, model, stepping = s.get("family", 6), s.get("model", 0x0F), s.get("stepping", 11)
        if not 1 <= family <= 0xFF + 0xF:
            raise ConfigError(source, "cpuid.family", f"{family} is outside 1..270")
        model_limit = 0xFF if family == 6 or family >= 15 else 0xF
        if not 0 <= model <= model_limit:
            raise ConfigError(source, "cpuid.model", f"{model:#x} does not fit family {family} "
                              f"(0..{model_limit:#x})")
        if not 0 <= stepping <= 0xF:
            raise ConfigError(source, "cpuid.stepping", f"{stepping} is outside 0..15")
        features = set(DEFAULT_FEATURES)
        for key, add in (("disable", False), ("enable", True)):
            for name in s.get(key, []):
                if not isinstance(name, str) or name.lower() not in FEATURES:
                    raise ConfigError(source, f"cpuid.{key}", f"{name!r} is not a known feature "
                                      f"(known: {', '.join(sorted(FEATURES))})")
                if name.lower() in RUNTIME_FEATURES:
                    raise ConfigError(source, f"cpuid.{key}", f"{name!r} follows IA32_APIC_BASE.EN "
                                      "at run time; clear the enable bit in the guest instead")
                (features.add if add else features.discard)(name.lower())
        phys_bits = s.get("phys_bits", 39)
        if not 32 <= phys_bits <= 52:
            raise ConfigError(source, "cpuid.phys_bits", f"{phys_bits} is outside 32..52")
        overrides: dict[tuple[int, int | None], dict[int, int]] = {}
        for text, regs in s.get("leaves", {}).items():
            where = f"cpuid.leaves.{text}"
            try:
                key = _leaf_key(str(text))
                if not isinstance(regs, dict):
                    raise ValueError("expected a table like { eax = 0, ebx = 0x1234 }")
                values = {}
                for reg, value in regs.items():
                    if reg not in _REG_NAMES:
                        raise ValueError(f"{reg!r} is not one of eax, ebx, ecx, edx")
                    values[_REG_NAMES.index(reg)] = _u32(value, reg)
            except ValueError as e:
                raise ConfigError(source, where, str(e)) from None
            overrides[key] = values
        return cls(vendor=vendor, family=family, model=model, stepping=stepping, brand=brand,
                   features=frozenset(features), overrides=overrides, phys_bits=phys_bits,
                   vcpus=vcpus, doorbell_port=doorbell_port)

    def restricted_to(self, supported: Iterable[tuple[int, int, int, int, int, int]]) -> tuple["CpuidPolicy", list[str]]:
        """The policy minus the features an engine cannot run, and their names.

        ``supported`` is the engine's own table, entries ``(leaf, subleaf, eax,
        ebx, ecx, edx)`` (``KVM_GET_SUPPORTED_CPUID``).
        """
        table: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        for leaf, sub, a, b, c, d in supported:
            table[(leaf, sub)] = (a, b, c, d)
            table.setdefault((leaf, -1), (a, b, c, d))
        missing = []
        for name in sorted(self.features - DYNAMIC_FEATURES):
            leaf, sub, reg, bit = FEATURES[name]
            regs = table.get((leaf, sub)) or table.get((leaf, -1))
            if regs is None or not regs[reg] >> bit & 1:
                missing.append(name)
        policy = attrs.evolve(self, features=self.features - frozenset(missing))
        ext = table.get((EXTENDED_BASE | 8, 0))
        if ext is not None and ext[EAX] & 0xFF and ext[EAX] & 0xFF < policy.phys_bits:
            policy = attrs.evolve(policy, phys_bits=ext[EAX] & 0xFF)
        return policy, missing

    # -- the table ---------------------------------------------------------------------
    def _feature_regs(self) -> dict[tuple[int, int], list[int]]:
        regs: dict[tuple[int, int], list[int]] = {}
        for name in self.features:
            leaf, sub, reg, bit = FEATURES[name]
            regs.setdefault((leaf, sub), [0, 0, 0, 0])[reg] |= 1 << bit
        return regs

    @property
    def max_basic_leaf(self) -> int:
        base = 0xD if "xsave" in self.features else 0xB
        extra = [leaf for leaf, _ in self.overrides if leaf < HYPERVISOR_BASE]
        return max([base, *extra])

    def signature(self) -> int:
        """CPUID.01H:EAX: stepping, model, family with their extended fields."""
        family, model = self.family, self.model
        eax = self.stepping | (model & 0xF) << 4 | min(family, 0xF) << 8
        if family >= 0xF:
            eax |= (family - 0xF) << 20
        if family == 6 or family >= 15:
            eax |= (model >> 4) << 16
        return eax

    def table(self, vcpu_index: int = 0) -> dict[tuple[int, int], tuple[int, int, int, int]]:
        """Every leaf and subleaf this policy defines for one vCPU, before run-time bits."""
        f = self._feature_regs()
        get = lambda leaf, sub=0: f.get((leaf, sub), [0, 0, 0, 0])  # noqa: E731
        vendor = self.vendor.encode("ascii")
        v = [int.from_bytes(vendor[i:i + 4], "little") for i in (0, 4, 8)]
        t: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        max_basic = self.max_basic_leaf
        t[(0, 0)] = (max_basic, v[0], v[2], v[1])
        l1 = get(1)
        ebx1 = 8 << 8 | (vcpu_index & 0xFF) << 24  # CLFLUSH line 64 bytes, initial APIC ID
        if "ht" in self.features:
            ebx1 |= min(self.vcpus, 0xFF) << 16
        t[(1, 0)] = (self.signature(), ebx1, l1[ECX], l1[EDX])
        t[(2, 0)] = (0x0000_0001, 0, 0, 0)  # one iteration, no descriptors (use leaf 4)
        t[(4, 0)] = (0, 0, 0, 0)  # no cache parameters reported
        t[(6, 0)] = (0, 0, 0, 0)
        l7 = get(7)
        t[(7, 0)] = (0, l7[EBX], l7[ECX], l7[EDX])
        # 0BH: level 0 (SMT) one thread per core; level 1 (core) ``vcpus`` cores
        core_shift = max(0, (self.vcpus - 1).bit_length())
        t[(0xB, 0)] = (0, 1, 1 << 8 | 0, vcpu_index)
        t[(0xB, 1)] = (core_shift, self.vcpus, 2 << 8 | 1, vcpu_index)
        if "xsave" in self.features:
            supported = XCR0_X87 | XCR0_SSE | (XCR0_AVX if "avx" in self.features else 0)
            t[(0xD, 0)] = (supported, _xsave_size(XCR0_X87), _xsave_size(supported), 0)
            t[(0xD, 1)] = (0, 0, 0, 0)
            if supported & XCR0_AVX:
                t[(0xD, 2)] = (*_XSAVE_COMPONENTS[2], 0, 0)
        sig = HYPERVISOR_SIGNATURE
        t[(HYPERVISOR_BASE, 0)] = (HYPERVISOR_BASE | 1, *(int.from_bytes(sig[i:i + 4], "little") for i in (0, 4, 8)))
        t[(HYPERVISOR_BASE | 1, 0)] = (self.hypercall_abi, self.doorbell_port, 0, 0)
        ext = get(EXTENDED_BASE | 1)
        t[(EXTENDED_BASE, 0)] = (EXTENDED_BASE | 8, 0, 0, 0)
        t[(EXTENDED_BASE | 1, 0)] = (0, 0, ext[ECX], ext[EDX])
        brand = self.brand.encode("ascii").ljust(48, b"\0")
        for i in range(3):
            chunk = brand[16 * i:16 * i + 16]
            t[(EXTENDED_BASE | (2 + i), 0)] = tuple(int.from_bytes(chunk[j:j + 4], "little") for j in (0, 4, 8, 12))  # type: ignore[assignment]
        t[(EXTENDED_BASE | 5, 0)] = (0, 0, 0, 0)
        t[(EXTENDED_BASE | 6, 0)] = (0, 0, 0, 0)
        t[(EXTENDED_BASE | 7, 0)] = (0, 0, 0, get(EXTENDED_BASE | 7)[EDX])
        t[(EXTENDED_BASE | 8, 0)] = (self.virt_bits << 8 | self.phys_bits, 0, 0, 0)
        for (leaf, sub), regs in self.overrides.items():
            targets = [k for k in t if k[0] == leaf and (sub is None or k[1] == sub)] or [(leaf, sub or 0)]
            for key in targets:
                cur = list(t.get(key, (0, 0, 0, 0)))
                for reg, value in regs.items():
                    cur[reg] = value
                t[key] = tuple(cur)  # type: ignore[assignment]
        return t

    @staticmethod
    def indexed_leaves(table: dict[tuple[int, int], Any]) -> frozenset[int]:
        """Leaves whose output depends on ECX (the subleaf)."""
        return frozenset(leaf for leaf, sub in table if sub != 0) | frozenset({4, 7, 0xB, 0xD})

    def kvm_entries(self, vcpu_index: int = 0) -> list[tuple[int, int, int, int, int, int, int]]:
        """``KVM_SET_CPUID2`` entries: ``(function, index, flags, eax, ebx, ecx, edx)``.

        ``flags`` is ``KVM_CPUID_FLAG_SIGNIFCANT_INDEX`` (1) for leaves indexed by ECX.
        """
        t = self.table(vcpu_index)
        indexed = self.indexed_leaves(t)
        return [(leaf, sub, 1 if leaf in indexed else 0, *regs) for (leaf, sub), regs in sorted(t.items())]


class CpuidHandler:
    """Answers CPUID exits from a policy, per vCPU, with the run-time bits."""

    def __init__(self, policy: CpuidPolicy, xcr0: "dict[int, int] | None" = None) -> None:
        self.policy = policy
        self._tables: dict[int, dict[tuple[int, int], tuple[int, int, int, int]]] = {}
        self._indexed: frozenset[int] = frozenset()
        #: vCPU index → XCR0 (kept by :class:`~smartvm_exits.cache.XsetbvHandler`)
        self.xcr0 = xcr0 if xcr0 is not None else {}

    def table_for(self, index: int) -> dict[tuple[int, int], tuple[int, int, int, int]]:
        t = self._tables.get(index)
        if t is None:
            t = self._tables[index] = self.policy.table(index)
            self._indexed = self.policy.indexed_leaves(t)
        return t

    def _find(self, t: dict, leaf: int, subleaf: int) -> "tuple[int, int, int, int] | None":
        return t.get((leaf, subleaf if leaf in self._indexed else 0))

    def lookup(self, index: int, leaf: int, subleaf: int, *, cr4: int = 0,
               apic_base: int = 0xFEE00900, xcr0: int = XCR0_X87) -> tuple[int, int, int, int]:
        """CPUID(leaf, subleaf) as the guest sees it.

        A leaf above the maximum of its range returns the highest basic leaf
        (SDM, Intel behaviour); an undefined leaf within range returns zeros;
        an undefined subleaf of 0BH keeps ECX[7:0] and the x2APIC ID in EDX.
        This is what KVM does with the same table, so both engines agree.
        """
        t = self.table_for(index)
        regs = self._find(t, leaf, subleaf)
        if regs is None:
            if HYPERVISOR_BASE <= leaf <= 0x4FFF_FFFF:
                cls = t.get((leaf & 0xFFFF_FF00, 0))
            elif leaf >= 0xC000_0000:
                cls = t.get((0xC000_0000, 0))
            else:
                cls = t.get((leaf & EXTENDED_BASE, 0))
            if cls is None or leaf > cls[EAX]:
                leaf = t[(0, 0)][EAX]
                regs = self._find(t, leaf, subleaf)
        if regs is None:
            regs = (0, 0, 0, 0)
            if leaf == 0xB and (0xB, 1) in t:
                regs = (0, 0, subleaf & 0xFF, t[(0xB, 1)][EDX])
        if leaf == 1:
            a, b, c, d = regs
            c = c | _OSXSAVE_BIT if cr4 & CR4_OSXSAVE else c & ~_OSXSAVE_BIT
            d = d | _APIC_BIT if apic_base & _APIC_BASE_EN else d & ~_APIC_BIT
            return a, b, c, d
        if leaf == 0xD and subleaf == 0 and (0xD, 0) in t:
            a, _, c, d = regs
            return a, _xsave_size(xcr0), c, d
        return regs

    def handle_cpuid(self, vcpu: "EngineVcpu", exit: "VmExit") -> bool:
        regs = vcpu.get_regs()
        leaf, subleaf = regs.rax & 0xFFFF_FFFF, regs.rcx & 0xFFFF_FFFF
        cr4, apic_base = 0, 0
        if leaf == 1:
            sregs = vcpu.get_sregs()
            cr4, apic_base = sregs.cr4, sregs.apic_base
        a, b, c, d = self.lookup(vcpu.index, leaf, subleaf, cr4=cr4, apic_base=apic_base,
                                 xcr0=self.xcr0.get(vcpu.index, XCR0_X87))
        # CPUID writes the low 32 bits and clears the upper half in 64-bit mode
        regs.rax, regs.rbx, regs.rcx, regs.rdx = a, b, c, d
        vcpu.set_regs(regs)
        vcpu.skip_instruction()
        return True
