"""Entry point of the smartvm-ept plugin (group ``smartvm``, name ``ept``).

Reads the ``[ept]`` section: the guest-physical layout (applied in
``setup_memory``, before the engine exists), then dirty tracking, access
tracing and write-protected ranges (``setup_machine``, once the engine
exists). One ``EPT_VIOLATION`` handler, priority 100, runs before the core's
MMIO/ROM handler (-100). The machine's :class:`~smartvm_ept.policy.EptPolicy`
is ``machine.services["ept"]`` (:func:`get_policy`), for experiments that
add write-protect callbacks or harvest the dirty log from Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from smartvm_core import hookimpl
from smartvm_core.config import Key
from smartvm_core.engines.base import EPT_WRITE
from smartvm_core.errors import ConfigError
from smartvm_core.memory import PAGE_SIZE
from smartvm_core.vmx import ExitReason

from .layout import apply_layout, parse_entries, share_ram
from .policy import ACCESS_BITS, ACTIONS, EptPolicy, WatchRange

if TYPE_CHECKING:
    from smartvm_core.machine import Machine
    from smartvm_core.report import RunReport

SERVICE_KEY = "ept"
STATE_KEY = "ept"


def _access_list(value: list[Any]) -> list[str]:
    for v in value:
        if v not in ACCESS_BITS:
            raise ValueError(f"{v!r} is not one of: {', '.join(ACCESS_BITS)}")
    return list(value)


@hookimpl
def register_config_sections(register: Callable[..., None]) -> None:
    register("ept", {
        "regions": Key(list, [], "layout entries: tables with kind (ram, rom, mmio, hole), gpa, size, "
                       "and for ram/rom file (and file_offset), for ram shared, and name"),
        "ram_backing": Key(str, "anonymous", "the machine RAM's backing: anonymous, or shared (memfd: "
                           "can be cloned copy-on-write and handed to another process)",
                           choices=("anonymous", "shared")),
        "dirty_tracking": Key(bool, False, "log the pages the guest writes (KVM dirty log on kvm, "
                              "write-protect on first write on soft); harvest with get_policy(m).harvest()"),
        "trace_file": Key(str, "", "record the first read, write and fetch of every RAM page to this "
                          "file (JSON lines); empty: no tracing"),
        "trace_access": Key(list, ["read", "write", "fetch"], "which accesses tracing records",
                            _access_list),
        "write_protect": Key(list, [], "write-protected ranges: tables with gpa, size, action "
                             "(unprotect, allow, drop, stop) and name"),
    }, doc="guest-physical memory policies (smartvm-ept)")


def get_policy(machine: "Machine") -> EptPolicy:
    """The machine's EPT policies (created by this plugin while the machine is built)."""
    policy = machine.services.get(SERVICE_KEY)
    if policy is None:
        raise LookupError("the smartvm-ept plugin did not take part in building this machine")
    return policy


def _watch_ranges(source: str, raw: list[Any]) -> list[WatchRange]:
    out = []
    for i, item in enumerate(raw):
        where = f"ept.write_protect[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(source, where, f"expected a table, got {type(item).__name__}")
        unknown = set(item) - {"gpa", "size", "action", "name"}
        if unknown:
            raise ConfigError(source, f"{where}.{sorted(unknown)[0]}", "unknown key (allowed: action, gpa, name, size)")
        gpa, size = item.get("gpa"), item.get("size", PAGE_SIZE)
        for key, v in (("gpa", gpa), ("size", size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v % PAGE_SIZE or (key == "size" and not v):
                raise ConfigError(source, f"{where}.{key}", f"{v!r} is not a page-aligned {key}")
        action = item.get("action", "unprotect")
        if action not in ACTIONS:
            raise ConfigError(source, f"{where}.action", f"{action!r} is not one of: {', '.join(ACTIONS)}")
        out.append(WatchRange(gpa, size, action, None, str(item.get("name", ""))))
    return out


@hookimpl
def setup_memory(machine: "Machine") -> None:
    exp = machine.experiment
    cfg = exp.section("ept")
    entries = parse_entries(exp.source, cfg.get("regions", []), exp.base_dir)
    watches = _watch_ranges(exp.source, cfg.get("write_protect", []))
    if cfg.get("ram_backing") == "shared":
        share_ram(machine.memory)
    apply_layout(machine.memory, entries)
    for w in watches:
        for p in range(w.gpa, w.gpa + w.size, PAGE_SIZE):
            r = machine.memory.region_at(p)
            if r is None or r.kind != "ram":
                raise ConfigError(exp.source, "ept.write_protect",
                                  f"page {p:#x} of range {w.gpa:#x}+{w.size:#x} is not guest RAM")
    policy = EptPolicy(machine)
    policy.pending_watches = watches
    machine.services[SERVICE_KEY] = policy


@hookimpl
def setup_machine(machine: "Machine") -> None:
    policy = machine.services.get(SERVICE_KEY)
    if policy is None:
        return
    exp = machine.experiment
    cfg = exp.section("ept")
    policy.attach()
    protector = policy.protector
    engine = machine.engine
    if cfg.get("trace_file"):
        bits = 0
        for k in cfg["trace_access"]:
            bits |= ACCESS_BITS[k]
        if (protector.native_bits & bits) != bits:
            raise ConfigError(exp.source, "ept.trace_access",
                              f"engine {engine.name} cannot trap {', '.join(cfg['trace_access'])} per page "
                              "(only the soft engine restricts reads and fetches)")
        path = Path(cfg["trace_file"])
        if not path.is_absolute():
            path = exp.base_dir / path
        try:
            policy.start_tracing(cfg["trace_access"], path)
        except OSError as e:
            raise ConfigError(exp.source, "ept.trace_file", f"cannot write {path}: {e.strerror}") from None
    for w in policy.pending_watches:
        if not protector.supports(EPT_WRITE):
            raise ConfigError(exp.source, "ept.write_protect", f"engine {engine.name} cannot write-protect pages")
        policy.watch(w)
    if cfg.get("dirty_tracking"):
        try:
            policy.start_dirty_tracking()
        except NotImplementedError as e:
            raise ConfigError(exp.source, "ept.dirty_tracking", str(e)) from None


@hookimpl
def register_exit_handlers(register: Callable[..., None], machine: "Machine") -> None:
    policy = machine.services.get(SERVICE_KEY)
    if policy is not None:
        register(ExitReason.EPT_VIOLATION, policy.handle_ept_violation, name="ept-policies", priority=100)


@hookimpl
def vm_stopped(machine: "Machine") -> None:
    policy = machine.services.get(SERVICE_KEY)
    if policy is not None:
        policy.flush_trace()


@hookimpl
def save_state(machine: "Machine") -> dict[str, Any] | None:
    policy = machine.services.get(SERVICE_KEY)
    return None if policy is None else {STATE_KEY: policy.save()}


@hookimpl
def restore_state(machine: "Machine", state: dict[str, Any]) -> None:
    policy = machine.services.get(SERVICE_KEY)
    if policy is not None and STATE_KEY in state:
        policy.restore(state[STATE_KEY])


@hookimpl
def run_report(machine: "Machine", report: "RunReport") -> None:
    policy = machine.services.get(SERVICE_KEY)
    if policy is None:
        return
    lines = [f"EPT violations handled by policies: {policy.violations}"]
    if policy.dirty_enabled:
        mode = "engine dirty log" if policy.native_dirty else "write-protect on first write"
        lines.append(f"dirty tracking: {mode}, {policy.harvests} harvests, {len(policy.dirty)} pages pending")
    if policy.trace_bits:
        lines.append(f"access trace: {len(policy.trace_events)} events, {len(policy.seen)} pages touched")
    if policy.watches:
        lines.append(f"write-protect: {sum(policy.watch_fired.values())} callbacks on "
                     f"{len(policy.watch_fired)} pages, {len(policy.watched)} pages still protected")
    dropped = machine.memory.rom_writes_dropped
    if dropped:
        lines.append("ROM writes ignored: " + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())))
    report.add_section("ept", lines)
