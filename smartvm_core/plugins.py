"""The plugin manager: one function builds it, fresh for every machine.

Order of registration (pluggy calls the last registered first):

1. the core's default plugins, :data:`DEFAULT_PLUGINS` (the essential ones,
   :data:`ESSENTIAL_PLUGINS`, cannot be left out);
2. installed plugins, from the entry-point group ``smartvm``;
3. experiment plugins (``[plugins] load``) and plugin objects given by code.

Names in ``disable`` (``-p no:NAME``, ``[plugins] disable``, or the
environment variable ``SMARTVM_DISABLE_PLUGINS=a,b``) are blocked before
anything is registered; a distribution name (``smartvm-exits``) blocks its
entry points. At the end :meth:`pluggy.PluginManager.check_pending` refuses
any hook implementation without a specification, naming the plugin.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import pluggy

from .errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "smartvm"
DISABLE_ENV = "SMARTVM_DISABLE_PLUGINS"

#: (name, module) of the core's own plugins, registered first
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("core", "smartvm_core.builtin"),
    ("report", "smartvm_core.report"),
    ("soft", "smartvm_core.engines.soft.plugin"),
    ("kvm", "smartvm_core.engines.kvm.plugin"),
)
#: default plugins that cannot be disabled
ESSENTIAL_PLUGINS: tuple[str, ...] = ("core",)


class EntryPoint(NamedTuple):
    """One installed entry point of the ``smartvm`` group and the distribution it came from."""

    name: str
    #: ``package.module`` or ``package.module:attribute``
    value: str
    distribution: str
    version: str

    def load(self) -> Any:
        module, _, attr = self.value.partition(":")
        obj = importlib.import_module(module.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
        return obj


def installed_entry_points(group: str = ENTRY_POINT_GROUP) -> list[EntryPoint]:
    """The entry points of ``group`` of every distribution found on ``sys.path``.

    Reads the same files as :mod:`importlib.metadata` (``*.dist-info`` and
    ``*.egg-info`` folders, their ``entry_points.txt``, the ``Name`` and
    ``Version`` of their metadata), in the same order, keeping the first
    distribution of each name, but without importing it: importing
    :mod:`importlib.metadata` (email, zipfile, csv ...) costs more than the
    whole scan, and ``smartvm run`` does it on every start. A ``sys.path``
    entry that is a file (a zip archive or an egg) is left to
    :mod:`importlib.metadata`.
    """
    out: list[EntryPoint] = []
    seen: set[str] = set()
    for entry in sys.path:
        folder = entry or "."
        try:
            children = os.listdir(folder)
        except NotADirectoryError:
            out += _entry_points_of_archive(entry, group, seen)
            continue
        except OSError:
            continue
        infos: dict[str, list[str]] = {}   # importlib.metadata's Lookup: grouped by name, dist-info first
        eggs: dict[str, list[str]] = {}
        for child in children:
            low = child.lower()
            if low.endswith(".dist-info"):
                infos.setdefault(_norm_dist(low.rpartition(".")[0].partition("-")[0]), []).append(child)
            elif low.endswith(".egg-info"):
                eggs.setdefault(_norm_dist(low.rpartition(".")[0].partition("-")[0]), []).append(child)
        for key, child in [(k, c) for k, cs in infos.items() for c in cs] + [(k, c) for k, cs in eggs.items() for c in cs]:
            if key in seen:
                continue
            seen.add(key)
            path = os.path.join(folder, child)
            try:
                with open(os.path.join(path, "entry_points.txt"), encoding="utf-8") as f:
                    pairs = _section_pairs(f.read(), group)
            except (OSError, UnicodeDecodeError):  # no entry points (an egg-info file), or not text
                continue
            if pairs:
                dist, version = _name_and_version(path, key)
                out += [EntryPoint(name, value, dist, version) for name, value in pairs]
    return out


def _section_pairs(text: str, group: str) -> list[tuple[str, str]]:
    """``name = value`` lines of section ``[group]`` of an ``entry_points.txt``."""
    pairs = []
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group:
            name, sep, value = line.partition("=")
            if sep:
                pairs.append((name.strip(), value.strip()))
    return pairs


def _name_and_version(path: str, fallback: str) -> tuple[str, str]:
    """``Name`` and ``Version`` from a distribution's METADATA (PKG-INFO for eggs)."""
    fields: dict[str, str] = {}
    for meta in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(path, meta), encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        break  # the headers end at the first blank line
                    key, sep, value = line.partition(":")
                    if sep and key in ("Name", "Version"):
                        fields.setdefault(key, value.strip())
            break
        except (OSError, UnicodeDecodeError):
            continue
    return fields.get("Name", fallback), fields.get("Version", "")


def _entry_points_of_archive(entry: str, group: str, seen: set[str]) -> list[EntryPoint]:
    from importlib import metadata
    out = []
    for dist in metadata.distributions(path=[entry]):
        key = _norm_dist(dist.metadata["Name"] or "")
        if key in seen:
            continue
        seen.add(key)
        out += [EntryPoint(ep.name, ep.value, dist.metadata["Name"], dist.version)
                for ep in dist.entry_points if ep.group == group]
    return out


def _norm_dist(name: str) -> str:
    """A distribution name as importlib.metadata compares them (PEP 503, with ``_``)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def disabled_from_env() -> list[str]:
    return [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]


class SmartVMPluginManager(pluggy.PluginManager):
    """pluggy's manager for the ``smartvm`` project, which also remembers where installed plugins came from."""

    def __init__(self) -> None:
        super().__init__("smartvm")
        #: plugin name -> (distribution, version), for plugins loaded from entry points
        self.distributions: dict[str, tuple[str, str]] = {}


def get_plugin_manager(*, disable: Iterable[str] = (), load: Iterable[str] = (),
                       plugins: Iterable[tuple[str, Any]] = (), entry_points: bool = True,
                       base_dir: Path | None = None, source: str = "<command line>",
                       trace: Callable[[str], None] | None = None) -> SmartVMPluginManager:
    """Build a plugin manager.

    :param disable: plugin names (or distribution names) to leave out.
    :param load: experiment plugins: importable module names or ``.py`` paths
        (relative to ``base_dir``).
    :param plugins: ``(name, object)`` pairs to register last (tests, embedders).
    :param entry_points: scan the ``smartvm`` entry-point group (unit tests pass False).
    :param trace: if given, called with one line per hook call (``--trace-hooks``).
    """
    pm = SmartVMPluginManager()
    pm.add_hookspecs(importlib.import_module("smartvm_core.hookspec"))
    blocked = set()
    names = [*disable, *disabled_from_env()]
    installed = installed_entry_points() if entry_points else []
    dists: dict[str, list[str]] = {}  # to block by distribution name
    for ep in installed:
        dists.setdefault(_norm(ep.distribution), []).append(ep.name)
    for name in names:
        if name in ESSENTIAL_PLUGINS:
            raise ConfigError(source, f"plugin {name!r}", "is essential and cannot be disabled")
        blocked.add(name)
        for ep_name in dists.get(_norm(name), []):
            blocked.add(ep_name)
    for name in blocked:
        pm.set_blocked(name)
    for name, modname in DEFAULT_PLUGINS:
        if name in blocked:
            continue
        pm.register(importlib.import_module(modname), name=name)
    if entry_points:
        for ep in installed:
            if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
                continue  # as pluggy's load_setuptools_entrypoints: first of a name wins
            try:
                plugin = ep.load()
            except Exception as e:  # a broken installed plugin: say which
                raise PluginError(f"installed smartvm plugin {ep.name!r} ({ep.value}, from {ep.distribution} "
                                  f"{ep.version}) failed to load: {type(e).__name__}: {e}") from e
            pm.register(plugin, name=ep.name)
            pm.distributions[ep.name] = (ep.distribution, ep.version)
    for spec in load:
        name, module = _import_experiment_plugin(spec, base_dir or Path.cwd(), source)
        if not pm.is_blocked(name) and pm.get_plugin(name) is None:
            pm.register(module, name=name)
    for name, obj in plugins:
        pm.register(obj, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        name = pm.get_name(e.plugin) or repr(e.plugin)
        hooks = ", ".join(sorted(n for n in dir(e.plugin) if getattr(getattr(e.plugin, n, None), "smartvm_impl", None)
                                 is not None and getattr(getattr(pm.hook, n, None), "spec", None) is None))
        raise PluginError(f"plugin {name}: implements hooks that do not exist: {hooks or e}") from None
    if trace is not None:
        install_trace(pm, trace)
    return pm


def _import_experiment_plugin(spec: str, base_dir: Path, source: str) -> tuple[str, Any]:
    if spec.endswith(".py"):
        from importlib import util as importlib_util
        path = Path(spec) if Path(spec).is_absolute() else base_dir / spec
        if not path.is_file():
            raise ConfigError(source, "plugins.load", f"no such plugin file: {path}")
        name = f"experiment:{path.stem}"
        modspec = importlib_util.spec_from_file_location(f"smartvm_experiment_{path.stem}", path)
        assert modspec is not None and modspec.loader is not None
        module = importlib_util.module_from_spec(modspec)
        try:
            modspec.loader.exec_module(module)
        except Exception as e:
            raise PluginError(f"experiment plugin {path}: {type(e).__name__}: {e}") from e
        return name, module
    try:
        module = importlib.import_module(spec)
    except ImportError as e:
        raise ConfigError(source, "plugins.load", f"cannot import plugin module {spec!r}: {e}") from None
    return spec, module


def install_trace(pm: pluggy.PluginManager, write: Callable[[str], None]) -> Callable[[], None]:
    """Print every hook call with its implementations (there are none per exit)."""

    def before(hook_name: str, impls: list, kwargs: dict) -> None:
        names = ", ".join(i.plugin_name for i in impls)
        write(f"hook {hook_name}({', '.join(sorted(kwargs))}) -> [{names}]")

    def after(outcome: Any, hook_name: str, impls: list, kwargs: dict) -> None:
        exc = outcome.exception
        if exc is not None:
            write(f"hook {hook_name} raised {type(exc).__name__}: {exc}")

    return pm.add_hookcall_monitoring(before, after)


def get_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Each registered plugin: name, distribution, version and the hooks it implements."""
    dist_info = {id(plugin): (dist.project_name, dist.version) for plugin, dist in pm.list_plugin_distinfo()}
    from_entry_points: dict[str, tuple[str, str]] = getattr(pm, "distributions", {})
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = sorted(h.name for h in (pm.get_hookcallers(plugin) or []))
        dist = from_entry_points.get(name) or dist_info.get(id(plugin))
        if dist is not None:
            distribution, version = dist
        elif name in dict(DEFAULT_PLUGINS):
            from . import __version__
            distribution, version = "smartvm", __version__
        else:
            distribution, version = "", ""
        out.append({"name": name, "distribution": distribution, "version": version, "hooks": hooks,
                    "essential": name in ESSENTIAL_PLUGINS})
    return out


def blocked_names(pm: pluggy.PluginManager) -> list[str]:
    return sorted(name for name, plugin in pm.list_name_plugin() if plugin is None)


__all__ = ["DEFAULT_PLUGINS", "ESSENTIAL_PLUGINS", "get_plugin_manager", "get_plugins"]
