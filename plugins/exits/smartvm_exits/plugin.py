"""Entry point of the smartvm-exits plugin (group ``smartvm``, name ``exits``).

Registers the standard exit handlers with ``trylast=True``, so a handler a
third-party plugin registers for the same exit reason runs first and, if it
returns ``True``, the standard one never sees the exit. Everything a
machine needs (CPUID policy, MSR store, hypercall table) is built once per
machine and kept in ``machine.services["exits"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from smartvm_core import hookimpl
from smartvm_core.builder import call_registration
from smartvm_core.config import Key
from smartvm_core.errors import ConfigError
from smartvm_core.vmx import ExitReason, ProcBasedControls, VmcsField

from .cache import CacheHandlers
from .cpuid import FEATURES, XCR0_AVX, XCR0_SSE, XCR0_X87, CpuidHandler, CpuidPolicy
from .cr_access import CrAccessHandler
from .hlt import HltHandler
from .hypercall import (DOORBELL_PORT, STANDARD_SERVICES, HypercallHandlers, HypercallTable,
                        describe_services)
from .msr import Msr, MsrHandlers, MsrStore, architectural_msrs
from .triple_fault import TripleFaultHandler

if TYPE_CHECKING:
    from smartvm_core.engines.base import EngineVcpu
    from smartvm_core.machine import Machine
    from smartvm_core.report import RunReport

PLUGIN = "exits"
SERVICE_KEY = "exits"
STATE_KEY = "exits"


def _port(value: int) -> int:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{value:#x} is not a port number (0-0xffff)")
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


@hookimpl
def register_config_sections(register: Callable[..., None]) -> None:
    register("cpuid", {
        "vendor": Key(str, "GenuineIntel", "vendor string, 12 ASCII characters (CPUID.0)"),
        "family": Key(int, 6, "family (CPUID.1:EAX, extended family above 15)"),
        "model": Key(int, 0x0F, "model (CPUID.1:EAX, extended model for families 6 and 15)"),
        "stepping": Key(int, 11, "stepping (0-15)"),
        "brand": Key(str, "Smart-VM virtual CPU", "brand string (CPUID.80000002H-80000004H), up to 47 characters"),
        "enable": Key(list, [], "features to show on top of the default model: "
                      + ", ".join(sorted(FEATURES))),
        "disable": Key(list, [], "features to hide from the default model"),
        "phys_bits": Key(int, 39, "physical-address width (CPUID.80000008H:EAX[7:0])"),
        "leaves": Key(dict, {}, 'per-leaf overrides: "LEAF" or "LEAF.SUBLEAF" = { eax = .., ebx = .., '
                      'ecx = .., edx = .. } (registers not named keep the policy value)'),
    }, doc="the CPUID the guest sees, the same on every engine")
    register("msr", {
        "unknown": Key(str, "gp", "an MSR nobody defined: gp (#GP, as hardware) or ignore "
                       "(reads 0, writes dropped)", choices=("gp", "ignore")),
    }, doc="the MSR store")
    register("hypercalls", {
        "doorbell_port": Key(int, DOORBELL_PORT, "I/O port whose 32-bit OUT is the hypercall doorbell", _port),
        "vmcall": Key(bool, True, "answer VMCALL exits (engines that hand VMCALL to user space)"),
    }, doc="the hypercall ABI (docs/hypercalls.md)")
    register("triple_fault", {
        "action": Key(str, "stop", "stop: end the run with a report; reset: reset the machine",
                      choices=("stop", "reset")),
        "max_resets": Key(int, 16, "with action = reset, stop at the triple fault after this many resets",
                          _non_negative),
    }, doc="what a triple fault does")


class ExitsState:
    """Everything the plugin keeps for one machine."""

    def __init__(self, machine: "Machine") -> None:
        self.machine = machine
        exp = machine.experiment
        source = exp.source
        hc = exp.section("hypercalls") or {}
        self.doorbell_port = hc.get("doorbell_port", DOORBELL_PORT)
        self.vmcall = hc.get("vmcall", True)
        cpuid_section = exp.section("cpuid") or {}
        self.requested_features = frozenset(f.lower() for f in cpuid_section.get("enable", []))
        self.policy = CpuidPolicy.from_section(cpuid_section, source=source, vcpus=exp.vcpus,
                                               doorbell_port=self.doorbell_port)
        self.hidden_by_engine: list[str] = []
        #: CPUID leaves the engine changed after KVM_SET_CPUID2 (host quirks), for the report
        self.engine_rewrote: list[str] = []
        #: filtered MSRs an MSR bitmap cannot cover
        self.untrappable_msrs: list[int] = []
        self._restricted = False
        if machine.vcpus:
            self.restrict_to_engine(machine.vcpus[0])
        self.cpuid = CpuidHandler(self.policy)
        features = self.policy.features
        xcr0 = XCR0_X87 | (XCR0_SSE if "xsave" in features else 0) | \
            (XCR0_AVX if {"xsave", "avx"} <= features else 0)
        self.cache = CacheHandlers(supported_xcr0=xcr0)
        self.cpuid.xcr0 = self.cache.xcr0
        self.store = MsrStore(architectural_msrs(phys_bits=self.policy.phys_bits, features=features),
                              clock=machine.clock)
        msr_section = exp.section("msr") or {}
        self.unknown_msrs = msr_section.get("unknown", "gp")
        call_registration(machine.hook.register_msrs, self._make_msr_register, machine=machine)
        self.msr = MsrHandlers(self.store)
        self.hlt = HltHandler(machine)
        self.cr = CrAccessHandler(features, self.policy.phys_bits)
        tf = exp.section("triple_fault") or {}
        self.triple_fault = TripleFaultHandler(machine, tf.get("action", "stop"), tf.get("max_resets", 16))
        self.hypercalls = HypercallTable()
        standard = self.hypercalls.make_register(PLUGIN, standard=True)
        for number, name, service in STANDARD_SERVICES:
            standard(number, service, name=name)
        self.hypercall = HypercallHandlers(machine, self.hypercalls, self.doorbell_port)

    def _make_msr_register(self, plugin: str) -> Callable[..., None]:
        def register(msr: Msr, *, replace: bool = False) -> None:
            self.store.define(msr, plugin=plugin, replace=replace)
        return register

    def restrict_to_engine(self, vcpu: "EngineVcpu") -> None:
        """Hide the default features the engine cannot run; refuse explicitly enabled ones."""
        if self._restricted or not hasattr(vcpu, "supported_cpuid"):
            return
        self._restricted = True
        entries = [_entry_tuple(e) for e in vcpu.supported_cpuid()]
        policy, missing = self.policy.restricted_to(entries)
        refused = sorted(set(missing) & self.requested_features)
        if refused:
            engine = self.machine.engine.name if self.machine.engine is not None else "this engine"
            raise ConfigError(self.machine.experiment.source, "cpuid.enable",
                              f"{', '.join(refused)}: not supported by {engine} on this host")
        self.policy = policy
        self.hidden_by_engine = missing
        if hasattr(self, "cpuid"):
            self.cpuid.policy = policy
            self.cpuid._tables.clear()

    def note_engine_rewrites(self, vcpu: "EngineVcpu", entries: list[tuple[int, ...]]) -> None:
        """Record leaves the engine stored differently from what the policy set."""
        get_cpuid = getattr(vcpu, "get_cpuid", None)
        if get_cpuid is None or self.engine_rewrote:
            return
        held = {(e[0], e[1]): e[3:] for e in map(_entry_tuple7, get_cpuid())}
        for e in entries:
            got = held.get((e[0], e[1]))
            if got is not None and tuple(got) != tuple(e[3:]):
                self.engine_rewrote.append(f"{e[0]:#x}.{e[1]}")

    def on_reset(self) -> None:
        self.store.reset()
        self.cache.xcr0.clear()

    # -- state ----------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        return {"msr": self.store.state(),
                "xcr0": {str(k): v for k, v in self.cache.xcr0.items()},
                "triple_fault_resets": self.triple_fault.resets}

    def restore(self, state: dict[str, Any]) -> None:
        self.store.restore(state.get("msr", {}))
        self.cache.xcr0.clear()
        self.cache.xcr0.update({int(k): int(v) for k, v in state.get("xcr0", {}).items()})
        self.triple_fault.resets = int(state.get("triple_fault_resets", 0))


def _entry_tuple(e: Any) -> tuple[int, int, int, int, int, int]:
    """A supported-CPUID entry (tuple, dict or ``kvm_cpuid_entry2``) → (leaf, subleaf, eax, ebx, ecx, edx)."""
    if isinstance(e, dict):
        return (e["function"], e.get("index", 0), e["eax"], e["ebx"], e["ecx"], e["edx"])
    if isinstance(e, tuple):
        if len(e) == 7:  # (function, index, flags, eax, ebx, ecx, edx)
            return (e[0], e[1], e[3], e[4], e[5], e[6])
        return tuple(e)  # type: ignore[return-value]
    return (e.function, e.index, e.eax, e.ebx, e.ecx, e.edx)


def _entry_tuple7(e: Any) -> tuple[int, ...]:
    if isinstance(e, tuple):
        return e
    return (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)


def state_for(machine: "Machine") -> ExitsState:
    """The plugin's per-machine state (built on first use)."""
    st = machine.services.get(SERVICE_KEY)
    if st is None:
        st = machine.services[SERVICE_KEY] = ExitsState(machine)
    return st


class _IgnoreUnknownMsrs:
    """``[msr] unknown = "ignore"``: reads of undefined MSRs give 0, writes are dropped."""

    def __init__(self, store: MsrStore) -> None:
        self.store = store
        self.ignored = 0

    def handle_rdmsr(self, vcpu: "EngineVcpu", exit: Any) -> bool:
        if exit.msr in self.store.msrs:
            return False
        self.ignored += 1
        exit.value = 0
        vcpu.skip_instruction()
        return True

    def handle_wrmsr(self, vcpu: "EngineVcpu", exit: Any) -> bool:
        if exit.msr in self.store.msrs:
            return False
        self.ignored += 1
        vcpu.skip_instruction()
        return True


@hookimpl(trylast=True)
def register_exit_handlers(register: Callable[..., None], machine: "Machine") -> None:
    st = state_for(machine)
    call_registration(machine.hook.register_hypercalls, st.hypercalls.make_register, machine=machine)
    register(ExitReason.CPUID, st.cpuid.handle_cpuid, name="handle_cpuid")
    if st.unknown_msrs == "ignore":
        ignore = _IgnoreUnknownMsrs(st.store)
        register(ExitReason.RDMSR, ignore.handle_rdmsr, name="ignore_unknown_rdmsr")
        register(ExitReason.WRMSR, ignore.handle_wrmsr, name="ignore_unknown_wrmsr")
    register(ExitReason.RDMSR, st.msr.handle_rdmsr, name="handle_rdmsr")
    register(ExitReason.WRMSR, st.msr.handle_wrmsr, name="handle_wrmsr")
    register(ExitReason.HLT, st.hlt.handle_hlt, name="handle_hlt")
    register(ExitReason.CR_ACCESS, st.cr.handle_cr_access, name="handle_cr_access")
    if st.vmcall:
        register(ExitReason.VMCALL, st.hypercall.handle_vmcall, name="handle_vmcall")
    # the doorbell claims only its own port, ahead of the port-I/O bus
    register(ExitReason.IO_INSTRUCTION, st.hypercall.handle_io_instruction, name="hypercall_doorbell",
             ports=[st.hypercall.port])
    register(ExitReason.INVD, st.cache.handle_invd, name="handle_invd")
    register(ExitReason.WBINVD, st.cache.handle_wbinvd, name="handle_wbinvd")
    register(ExitReason.XSETBV, st.cache.handle_xsetbv, name="handle_xsetbv")
    register(ExitReason.TRIPLE_FAULT, st.triple_fault.handle_triple_fault, name="handle_triple_fault")


@hookimpl
def configure_vcpu(vcpu: "EngineVcpu", machine: "Machine") -> None:
    st = state_for(machine)
    st.restrict_to_engine(vcpu)
    set_cpuid = getattr(vcpu, "set_cpuid", None)
    if set_cpuid is not None:  # KVM_SET_CPUID2 from the same policy the CPUID handler answers from
        entries = st.policy.kvm_entries(vcpu.index)
        set_cpuid(entries)
        st.note_engine_rewrites(vcpu, entries)
    _route_msrs(st, vcpu, machine)
    # engines with I/O bitmaps: make sure the doorbell port exits
    controls = vcpu.vmcs[VmcsField.CPU_BASED_VM_EXEC_CONTROL]
    if controls & ProcBasedControls.USE_IO_BITMAPS and not controls & ProcBasedControls.UNCONDITIONAL_IO_EXITING:
        bitmaps = getattr(vcpu, "bitmaps", None)
        if bitmaps is not None:
            bitmaps.trap_port(st.doorbell_port)


def _route_msrs(st: ExitsState, vcpu: "EngineVcpu", machine: "Machine") -> None:
    """Make the store's own MSRs exit on engines that answer MSRs themselves (``kvm``).

    Done through the VMX model: the MSR bitmap with ``USE_MSR_BITMAPS``, which
    the kvm engine turns into KVM's MSR filter. An engine that refuses MSR
    bitmaps (``soft``, which has no RDMSR/WRMSR exits at all) is left alone.
    """
    bitmaps = getattr(vcpu, "bitmaps", None)
    engine = machine.engine
    if bitmaps is None or engine is None:
        return
    field = VmcsField.CPU_BASED_VM_EXEC_CONTROL
    probe = vcpu.vmcs.copy()
    probe[field] = probe[field] | ProcBasedControls.USE_MSR_BITMAPS
    if engine.unsupported_controls(probe):
        return
    for index in st.store.filtered_indexes():
        try:
            bitmaps.trap_msr(index)
        except ValueError:  # outside the two ranges an MSR bitmap covers
            st.untrappable_msrs.append(index)
    vcpu.vmcs[field] = vcpu.vmcs[field] | ProcBasedControls.USE_MSR_BITMAPS


@hookimpl
def vm_reset(machine: "Machine") -> None:
    st = machine.services.get(SERVICE_KEY)
    if st is not None:
        st.on_reset()


@hookimpl
def save_state(machine: "Machine") -> dict[str, Any] | None:
    st = machine.services.get(SERVICE_KEY)
    return None if st is None else {STATE_KEY: st.save()}


@hookimpl
def restore_state(machine: "Machine", state: dict[str, Any]) -> None:
    if STATE_KEY in state:
        state_for(machine).restore(state[STATE_KEY])


@hookimpl
def run_report(machine: "Machine", report: "RunReport") -> None:
    st = machine.services.get(SERVICE_KEY)
    if st is None:
        return
    lines = [f"CPUID: {st.policy.vendor} family {st.policy.family} model {st.policy.model:#x} "
             f"stepping {st.policy.stepping}, {len(st.policy.features)} features"]
    if st.hidden_by_engine:
        lines.append(f"  hidden because the engine cannot run them: {', '.join(st.hidden_by_engine)}")
    if st.engine_rewrote:
        lines.append(f"  the engine changed CPUID leaves after KVM_SET_CPUID2: {', '.join(st.engine_rewrote)}")
    if st.untrappable_msrs:
        lines.append("  MSRs outside the MSR-bitmap ranges, answered by the engine: "
                     + ", ".join(f"{i:#x}" for i in st.untrappable_msrs))
    if st.hypercalls.calls or st.hypercalls.unknown:
        names = {n: e.name for n, e in st.hypercalls.services.items()}
        calls = ", ".join(f"{names.get(n, hex(n))} {c}" for n, c in sorted(st.hypercalls.calls.items()))
        lines.append(f"hypercalls: {calls or 'none'}; unknown numbers: {st.hypercalls.unknown}")
    if st.msr.faults:
        lines.append("MSR accesses answered with #GP (last): "
                     + ", ".join(f"vCPU{v} {k} {i:#x}" for v, k, i in st.msr.faults))
    if st.cr.counts:
        lines.append("control-register exits: " + ", ".join(f"{k} {v}" for k, v in sorted(st.cr.counts.items())))
    if st.cache.invd or st.cache.wbinvd:
        lines.append(f"INVD {st.cache.invd}, WBINVD {st.cache.wbinvd}")
    if st.triple_fault.resets:
        lines.append(f"resets after a triple fault: {st.triple_fault.resets}")
    report.add_section("exits", lines)
    report.add_counter("hypercalls", sum(st.hypercalls.calls.values()))


def hypercall_services(machine: "Machine") -> list[str]:
    """The services of a machine, one line each (for ``smartvm plugins`` style listings)."""
    return describe_services(state_for(machine).hypercalls)
