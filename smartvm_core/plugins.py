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
from pathlib import Path
from typing import Any, Callable, Iterable

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


def _entry_point_names_by_dist() -> dict[str, list[str]]:
    from importlib import metadata  # heavy (zipfile, email ...): only when entry points are scanned
    out: dict[str, list[str]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else ""
        out.setdefault(_norm(dist), []).append(ep.name)
    return out


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def disabled_from_env() -> list[str]:
    return [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]


def get_plugin_manager(*, disable: Iterable[str] = (), load: Iterable[str] = (),
                       plugins: Iterable[tuple[str, Any]] = (), entry_points: bool = True,
                       base_dir: Path | None = None, source: str = "<command line>",
                       trace: Callable[[str], None] | None = None) -> pluggy.PluginManager:
    """Build a plugin manager.

    :param disable: plugin names (or distribution names) to leave out.
    :param load: experiment plugins: importable module names or ``.py`` paths
        (relative to ``base_dir``).
    :param plugins: ``(name, object)`` pairs to register last (tests, embedders).
    :param entry_points: scan the ``smartvm`` entry-point group (unit tests pass False).
    :param trace: if given, called with one line per hook call (``--trace-hooks``).
    """
    pm = pluggy.PluginManager("smartvm")
    pm.add_hookspecs(importlib.import_module("smartvm_core.hookspec"))
    blocked = set()
    names = [*disable, *disabled_from_env()]
    # the distribution scan is only needed to block by distribution name
    dists = _entry_point_names_by_dist() if entry_points and names else {}
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
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as e:  # a broken installed plugin: say which
            raise PluginError(f"an installed smartvm plugin failed to load: {type(e).__name__}: {e}") from e
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
    dist_info = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = sorted(h.name for h in (pm.get_hookcallers(plugin) or []))
        dist = dist_info.get(id(plugin))
        if dist is not None:
            distribution, version = dist.project_name, dist.version
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
