"""Experiment files: the TOML schema, its validation, and command-line overrides.

An experiment says which engine, how much memory, how many vCPUs, which
plugins are on or off, the device set, the images to load and when to stop.
Everything is validated before a machine is built: an unknown section or
key, or a bad value, is refused with the file, the key and the reason. See
``docs/experiments.md`` for the full reference.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Callable

import attrs

from .devices import DeviceSpec
from .engines.base import EngineOptions
from .errors import ConfigError
from .images import ImageSpec


@attrs.define(frozen=True)
class Key:
    """One allowed key of a section: its type(s), default, doc, and an optional check.

    ``check(value)`` returns the (possibly converted) value or raises
    ``ValueError`` with the reason.
    """

    type: type | tuple[type, ...]
    default: Any = None
    doc: str = ""
    check: Callable[[Any], Any] | None = None
    choices: tuple[Any, ...] | None = None


@attrs.define(frozen=True)
class Section:
    name: str
    keys: dict[str, Key]
    doc: str = ""
    plugin: str = ""
    #: an array of tables (``[[device]]``) rather than one table
    array: bool = False


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: Any) -> int:
    """``"64M"``, ``"1GiB"``, ``"4096"`` or an int → bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size (use e.g. 64M, 1G, 65536)")
        unit = (m.group(2) or "").lower()[:1]
        n = int(m.group(1)) * _SIZE_UNITS[unit]
    else:
        raise ValueError(f"{value!r} is not a size")
    if n <= 0:
        raise ValueError(f"size must be positive, got {n}")
    return n


def _memory(value: Any) -> int:
    n = parse_size(value)
    if n % 4096:
        raise ValueError(f"{n} bytes is not a multiple of 4 KiB")
    if n > 1 << 40:
        raise ValueError(f"{n} bytes is more than 1 TiB")
    return n


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")
    return value


def _vcpus(value: int) -> int:
    if not 1 <= value <= 64:
        raise ValueError(f"must be between 1 and 64, got {value}")
    return value


def _address(value: int) -> int:
    if not 0 <= value < 1 << 52:
        raise ValueError(f"{value:#x} is not a guest-physical address")
    return value


#: sections the core itself owns
CORE_SECTIONS: tuple[Section, ...] = (
    Section("machine", {
        "engine": Key(str, "auto", "engine name: auto, soft, kvm or one a plugin registers"),
        "memory": Key((int, str), 64 << 20, "guest RAM at guest-physical 0 (e.g. 64M)", _memory),
        "vcpus": Key(int, 1, "number of vCPUs (1-64)", _vcpus),
        "name": Key(str, "", "a label for reports"),
    }, "the machine itself", "core"),
    Section("engine", {
        "irqchip": Key(str, "user", "interrupt controller: user (the devices plugin's 8259A) or "
                       "kernel (the engine's own, kvm only)", choices=("user", "kernel")),
        "options": Key(dict, {}, "engine-specific options, passed through"),
    }, "engine options", "core"),
    Section("plugins", {
        "disable": Key(list, [], "plugin names to leave out (like -p no:NAME)"),
        "load": Key(list, [], "experiment plugins: module names or .py files next to the experiment"),
    }, "which plugins take part", "core"),
    Section("stop", {
        "max_exits": Key(int, 0, "stop after this many VM exits (0: no limit)", lambda v: v if v >= 0 else _positive(v)),
        "timeout": Key((int, float), 0, "stop after this many seconds of wall time (0: no limit)"),
        "marker": Key(str, "", "stop when the console prints this string"),
    }, "stop conditions", "core"),
    Section("console", {
        "output": Key(str, "stdout", "where guest console output goes: stdout, none, or file:PATH"),
    }, "the machine console", "core"),
    Section("report", {
        "format": Key(str, "text", "end-of-run report: text, json or none", choices=("text", "json", "none")),
        "file": Key(str, "", "write the report to this file instead of stderr"),
    }, "the end-of-run report", "core"),
    Section("vmx", {
        "exception_bitmap": Key(list, [], "vectors whose exceptions cause VM exits (ints or names like GP)"),
        "pin_based": Key(list, [], "pin-based controls to set (SDM names)"),
        "proc_based": Key(list, [], "primary processor-based controls to set (SDM names)"),
        "proc_based2": Key(list, [], "secondary processor-based controls to set (SDM names)"),
        "proc_based_clear": Key(list, [], "primary processor-based controls to clear (SDM names)"),
        "io_bitmap_ports": Key(list, [], "ports whose accesses exit (sets USE_IO_BITMAPS)"),
        "msr_bitmap_exits": Key(list, [], "MSRs whose accesses exit (sets USE_MSR_BITMAPS)"),
        "cr0_guest_host_mask": Key(int, 0, "CR0 bits owned by the VMM"),
        "cr0_read_shadow": Key(int, 0, "what the guest reads for owned CR0 bits"),
        "cr4_guest_host_mask": Key(int, 0, "CR4 bits owned by the VMM"),
        "cr4_read_shadow": Key(int, 0, "what the guest reads for owned CR4 bits"),
        "page_fault_error_code_mask": Key(int, 0, "PFEC mask (SDM 26.2)"),
        "page_fault_error_code_match": Key(int, 0, "PFEC match (SDM 26.2)"),
    }, "VMX controls for every vCPU (the soft engine honours all; kvm refuses what it cannot)", "core"),
    Section("device", {
        "type": Key(str, None, "device type or set name (required)"),
        "name": Key(str, "", "instance name"),
    }, "one device of the device set; other keys are the device's parameters", "core", array=True),
    Section("image", {
        "path": Key(str, None, "image file, relative to the experiment file (required)"),
        "format": Key(str, "auto", "auto, flat, bootsector, com, bios, multiboot, elf, bzimage"),
        "address": Key(int, None, "load address (flat, com: segment*16)", _address),
        "entry": Key(int, None, "entry point (flat)", _address),
        "mode": Key(str, None, "CPU mode at entry (flat): real, protected32, long",
                    choices=("real", "protected32", "long")),
        "cmdline": Key(str, "", "kernel command line / .COM command tail"),
        "initrd": Key(str, None, "initial ramdisk (bzImage) or first module"),
        "modules": Key(list, [], "multiboot modules: 'path' or 'path args'"),
        "options": Key(dict, {}, "loader-specific options"),
    }, "one image to load", "core", array=True),
)


@attrs.define
class StopConditions:
    max_exits: int = 0
    timeout: float = 0.0
    marker: str = ""


@attrs.define
class Experiment:
    """A validated experiment: what the builder turns into a machine."""

    source: str = "<command line>"
    engine: str = "auto"
    memory: int = 64 << 20
    vcpus: int = 1
    name: str = ""
    engine_options: EngineOptions = attrs.Factory(EngineOptions)
    disable: list[str] = attrs.Factory(list)
    load: list[str] = attrs.Factory(list)
    devices: list[DeviceSpec] = attrs.Factory(list)
    images: list[ImageSpec] = attrs.Factory(list)
    stop: StopConditions = attrs.Factory(StopConditions)
    console_output: str = "stdout"
    report_format: str = "text"
    report_file: str = ""
    #: validated contents of every section, core and plugin (``sections["cpuid"]``)
    sections: dict[str, Any] = attrs.Factory(dict)
    #: values of plugin command-line options (``add_cli_options``)
    cli: dict[str, Any] = attrs.Factory(dict)
    base_dir: Path = attrs.Factory(Path.cwd)

    def section(self, name: str) -> dict[str, Any]:
        return self.sections.get(name, {})


def load_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise ConfigError(str(path), "", f"cannot read: {e.strerror or e}") from None
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), "", f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), "", f"not valid TOML: {e}") from None


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", float: "a number", list: "a list", dict: "a table", bool: "true/false"}
    if isinstance(t, tuple):
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def check_key(source: str, where: str, key: Key, value: Any) -> Any:
    types = key.type if isinstance(key.type, tuple) else (key.type,)
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(source, where, f"expected {_type_name(key.type)}, got {value!r}")
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if int not in types else value
    if not isinstance(value, types):
        raise ConfigError(source, where, f"expected {_type_name(key.type)}, got {type(value).__name__} {value!r}")
    if key.choices is not None and value not in key.choices:
        raise ConfigError(source, where, f"{value!r} is not one of: {', '.join(map(str, key.choices))}")
    if key.check is not None:
        try:
            value = key.check(value)
        except ValueError as e:
            raise ConfigError(source, where, str(e)) from None
    return value


def validate_table(source: str, section: Section, table: Any, *, prefix: str = "",
                   extra_ok: bool = False) -> dict[str, Any]:
    where = prefix or section.name
    if not isinstance(table, dict):
        raise ConfigError(source, where, f"expected a table, got {type(table).__name__}")
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = section.keys.get(k)
        if key is None:
            if extra_ok:
                out[k] = v
                continue
            allowed = ", ".join(sorted(section.keys))
            raise ConfigError(source, f"{where}.{k}", f"unknown key (allowed: {allowed})")
        out[k] = check_key(source, f"{where}.{k}", key, v)
    for k, key in section.keys.items():
        if k not in out:
            if key.default is None and k in ("type", "path"):
                raise ConfigError(source, f"{where}.{k}", "required key is missing")
            out[k] = key.default if not isinstance(key.default, (list, dict)) else type(key.default)(key.default)
    return out


def build_experiment(raw: dict[str, Any], sections: dict[str, Section], *, source: str,
                     base_dir: Path) -> Experiment:
    """Validate a parsed TOML document against the declared sections."""
    validated: dict[str, Any] = {}
    for name, table in raw.items():
        section = sections.get(name)
        if section is None:
            allowed = ", ".join(sorted(sections))
            raise ConfigError(source, name, f"unknown section (known: {allowed})")
        if section.array:
            if not isinstance(table, list):
                raise ConfigError(source, name, f"use [[{name}]] (an array of tables)")
            validated[name] = [validate_table(source, section, t, prefix=f"{name}[{i}]",
                                              extra_ok=(name == "device")) for i, t in enumerate(table)]
        else:
            validated[name] = validate_table(source, section, table)
    for name, section in sections.items():
        if name not in validated:
            validated[name] = [] if section.array else validate_table(source, section, {})
    return experiment_from_sections(validated, source=source, base_dir=base_dir)


def experiment_from_sections(v: dict[str, Any], *, source: str, base_dir: Path) -> Experiment:
    m, eng, plug, stop = v["machine"], v["engine"], v["plugins"], v["stop"]
    for key in ("disable", "load"):
        for item in plug[key]:
            if not isinstance(item, str):
                raise ConfigError(source, f"plugins.{key}", f"expected plugin names (strings), got {item!r}")
    devices = []
    for i, d in enumerate(v["device"]):
        params = {k: val for k, val in d.items() if k not in ("type", "name")}
        devices.append(DeviceSpec(d["type"], params, d["name"] or None, f"{source}: device[{i}]"))
    images = []
    for i, im in enumerate(v["image"]):
        path = Path(im["path"])
        if not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            raise ConfigError(source, f"image[{i}].path", f"no such file: {path}")
        initrd = None
        if im["initrd"]:
            initrd = Path(im["initrd"]) if Path(im["initrd"]).is_absolute() else base_dir / im["initrd"]
            if not initrd.is_file():
                raise ConfigError(source, f"image[{i}].initrd", f"no such file: {initrd}")
        modules = []
        for j, mod in enumerate(im["modules"]):
            if not isinstance(mod, str) or not mod.strip():
                raise ConfigError(source, f"image[{i}].modules[{j}]", "expected 'path' or 'path args'")
            mpath, _, margs = mod.strip().partition(" ")
            mp = Path(mpath) if Path(mpath).is_absolute() else base_dir / mpath
            if not mp.is_file():
                raise ConfigError(source, f"image[{i}].modules[{j}]", f"no such file: {mp}")
            modules.append(f"{mp} {margs}".strip())
        images.append(ImageSpec(path=path, format=im["format"], address=im["address"], entry=im["entry"],
                                mode=im["mode"], cmdline=im["cmdline"], initrd=initrd, modules=modules,
                                options=dict(im["options"])))
    output = v["console"]["output"]
    if output not in ("stdout", "none") and not output.startswith("file:"):
        raise ConfigError(source, "console.output", f"{output!r}: use stdout, none or file:PATH")
    timeout = stop["timeout"]
    if timeout < 0:
        raise ConfigError(source, "stop.timeout", f"must not be negative, got {timeout}")
    return Experiment(
        source=source, engine=m["engine"], memory=m["memory"], vcpus=m["vcpus"], name=m["name"],
        engine_options=EngineOptions(vcpus=m["vcpus"], irqchip=eng["irqchip"], extra=dict(eng["options"])),
        disable=list(plug["disable"]), load=list(plug["load"]), devices=devices, images=images,
        stop=StopConditions(stop["max_exits"], float(timeout), stop["marker"]),
        console_output=output, report_format=v["report"]["format"], report_file=v["report"]["file"],
        sections=v, base_dir=base_dir)


def read_plugin_lists(path: Path) -> tuple[list[str], list[str]]:
    """Peek at ``[plugins]`` before the plugin manager exists (it decides who validates the rest)."""
    raw = load_toml(path)
    plug = raw.get("plugins", {})
    source = str(path)
    if not isinstance(plug, dict):
        raise ConfigError(source, "plugins", "expected a table")
    out = []
    for key in ("disable", "load"):
        val = plug.get(key, [])
        if not isinstance(val, list) or not all(isinstance(x, str) for x in val):
            raise ConfigError(source, f"plugins.{key}", "expected a list of plugin names")
        out.append(list(val))
    return out[0], out[1]
