"""Snapshots: the whole machine as plain data, and back.

A snapshot file is a zip archive: ``machine.json`` (format version, memory
layout, vCPU, device, engine and plugin state) and one ``memory/N.bin`` per
guest RAM/ROM backing. Bytes inside the JSON are base64 in ``{"__bytes__":
...}`` objects. Nothing in a snapshot is executed on load; a file that does
not fit the machine is refused with :class:`SnapshotError` naming the part.
"""

from __future__ import annotations

# base64, json and zipfile are imported by the functions that write and read
# snapshot files, not here: every run imports this module (``Machine.mark_loaded``
# keeps the loaded state for reset), and most never touch a snapshot file.
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .errors import SnapshotError

if TYPE_CHECKING:
    from .machine import Machine

FORMAT = "smartvm-snapshot"
VERSION = 1


def to_plain(value: Any) -> Any:
    """attrs instances, tuples and bytes → JSON-able plain data."""
    if attrs.has(type(value)):
        return {k: to_plain(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        import base64
        return {"__bytes__": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def from_plain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            import base64
            return base64.b64decode(value["__bytes__"])
        return {k: from_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    return value


def _device_state(device: Any) -> Any:
    return device.state() if hasattr(device, "state") else None


def _restore_device(name: str, device: Any, state: Any) -> None:
    if state is None or not hasattr(device, "restore"):
        return
    current = device.state()
    if attrs.has(type(current)) and isinstance(state, dict):
        fields = attrs.fields_dict(type(current))
        kwargs = {}
        for k, v in state.items():
            if k not in fields:
                raise SnapshotError(f"device {name}: snapshot has unknown state field {k!r}")
            old = getattr(current, k)
            kwargs[k] = tuple(v) if isinstance(old, tuple) and isinstance(v, list) else v
        try:
            state = type(current)(**kwargs)
        except (TypeError, ValueError) as e:
            raise SnapshotError(f"device {name}: bad state: {e}") from None
    device.restore(state)


def capture_cpu_and_devices(machine: "Machine") -> dict[str, Any]:
    """In-memory state of vCPUs, devices and clock (used for reset)."""
    return {
        "vcpus": [v.save_state() for v in machine.vcpus],
        "devices": {name: _device_state(d) for name, d in machine.devices.items()},
        "clock_ns": machine.clock.now_ns(),
    }


def restore_cpu_and_devices(machine: "Machine", state: dict[str, Any]) -> None:
    if len(state["vcpus"]) != len(machine.vcpus):
        raise SnapshotError(f"snapshot has {len(state['vcpus'])} vCPUs, the machine has {len(machine.vcpus)}")
    for vcpu, s in zip(machine.vcpus, state["vcpus"]):
        vcpu.restore_state(s)
    for name, s in state["devices"].items():
        device = machine.devices.get(name)
        if device is None:
            raise SnapshotError(f"snapshot has state for device {name!r}, which this machine does not have")
        _restore_device(name, device, s)
    machine.clock.set_now(state["clock_ns"])


def save_snapshot(machine: "Machine", path: Path) -> None:
    """Write the machine (paused or stopped) to ``path``."""
    import json
    import zipfile
    if machine.state == "running":
        raise SnapshotError("pause the machine before taking a snapshot")
    backings: list[Any] = []
    layout = []
    for r in machine.memory.regions:
        if r.backing not in backings:
            backings.append(r.backing)
        layout.append({"name": r.name, "gpa": r.gpa, "size": r.size, "offset": r.offset,
                       "readonly": r.readonly, "kind": r.kind, "backing": backings.index(r.backing)})
    plugin_state: dict[str, Any] = {}
    for part in machine.hook.save_state(machine=machine):
        if part:
            dup = set(part) & set(plugin_state)
            if dup:
                raise SnapshotError(f"two plugins saved state under the same key(s): {sorted(dup)}")
            plugin_state.update(part)
    meta = {
        "format": FORMAT, "version": VERSION,
        "engine": machine.engine.name if machine.engine else None,
        "memory": layout, "backing_sizes": [b.size for b in backings],
        "cpu": to_plain(capture_cpu_and_devices(machine)),
        "engine_state": to_plain(machine.engine.save_state() if machine.engine else {}),
        "plugins": to_plain(plugin_state),
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("machine.json", json.dumps(meta))
        for i, b in enumerate(backings):
            z.writestr(f"memory/{i}.bin", b.mmap[:])


def load_snapshot(machine: "Machine", path: Path) -> None:
    """Restore a snapshot into a machine built from the same experiment."""
    import json
    import zipfile
    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise SnapshotError(f"{path}: not a snapshot file ({e})") from None
    with z:
        try:
            meta = json.loads(z.read("machine.json"))
        except (KeyError, ValueError) as e:
            raise SnapshotError(f"{path}: machine.json missing or unreadable ({e})") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise SnapshotError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r} "
                                f"is not {FORMAT} version {VERSION}")
        regions = machine.memory.regions
        if len(regions) != len(meta["memory"]):
            raise SnapshotError(f"{path}: memory layout has {len(meta['memory'])} regions, machine has {len(regions)}")
        done = set()
        for r, m in zip(regions, meta["memory"]):
            if (r.gpa, r.size) != (m["gpa"], m["size"]):
                raise SnapshotError(f"{path}: memory region {m['name']} at {m['gpa']:#x}+{m['size']:#x} "
                                    f"does not match {r.name} at {r.gpa:#x}+{r.size:#x}")
            if m["backing"] in done:
                continue
            data = z.read(f"memory/{m['backing']}.bin")
            if len(data) != r.backing.size:
                raise SnapshotError(f"{path}: memory/{m['backing']}.bin has {len(data)} bytes, expected {r.backing.size}")
            r.backing.mmap[:] = data
            done.add(m["backing"])
    try:
        restore_cpu_and_devices(machine, from_plain(meta["cpu"]))
        if machine.engine is not None:
            machine.engine.restore_state(from_plain(meta["engine_state"]))
        machine.hook.restore_state(machine=machine, state=from_plain(meta["plugins"]))
    except (KeyError, TypeError, ValueError, IndexError) as e:  # a damaged or foreign snapshot
        raise SnapshotError(f"{path}: state does not fit this machine: {type(e).__name__}: {e}") from e
    if machine.state in ("created",):
        machine.state = "loaded"
