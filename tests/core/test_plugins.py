"""The plugin manager: defaults, entry points, blocking, validation, listing."""

import pytest

from smartvm_core import hookimpl
from smartvm_core.errors import ConfigError, PluginError
from smartvm_core.plugins import DEFAULT_PLUGINS, ESSENTIAL_PLUGINS, get_plugin_manager, get_plugins


def names(pm):
    return [n for n, p in pm.list_name_plugin() if p is not None]


def test_default_plugins_are_registered_first():
    pm = get_plugin_manager(entry_points=False)
    assert names(pm)[:len(DEFAULT_PLUGINS)] == [n for n, _ in DEFAULT_PLUGINS]


def test_installed_plugins_come_from_entry_points():
    pm = get_plugin_manager()
    got = set(names(pm))
    assert {"exits", "devices", "boot", "v8086", "ept"} <= got
    info = {p["name"]: p for p in get_plugins(pm)}
    assert info["exits"]["distribution"] == "smartvm-exits"
    assert info["core"]["essential"] and info["core"]["distribution"] == "smartvm"
    assert "register_exit_handlers" in info["core"]["hooks"]


def test_disable_by_name_or_distribution_and_environment(monkeypatch):
    assert "exits" not in names(get_plugin_manager(disable=["exits"]))
    assert "devices" not in names(get_plugin_manager(disable=["smartvm-devices"]))
    monkeypatch.setenv("SMARTVM_DISABLE_PLUGINS", "boot, v8086")
    got = names(get_plugin_manager())
    assert "boot" not in got and "v8086" not in got


def test_essential_plugins_cannot_be_disabled():
    for name in ESSENTIAL_PLUGINS:
        with pytest.raises(ConfigError, match="essential"):
            get_plugin_manager(disable=[name])


def test_misspelt_hook_fails_at_start_naming_the_plugin():
    class Typo:
        @hookimpl
        def register_exit_handler(self, register):  # missing "s"
            pass

    with pytest.raises(PluginError, match="typo"):
        get_plugin_manager(entry_points=False, plugins=[("typo", Typo())])


def test_experiment_plugin_from_a_file(tmp_path):
    (tmp_path / "myplug.py").write_text(
        "from smartvm_core import hookimpl\n"
        "@hookimpl\n"
        "def vm_started(machine):\n"
        "    machine.services['myplug'] = True\n")
    pm = get_plugin_manager(entry_points=False, load=["myplug.py"], base_dir=tmp_path)
    assert "experiment:myplug" in names(pm)
    with pytest.raises(ConfigError, match="no such plugin file"):
        get_plugin_manager(entry_points=False, load=["absent.py"], base_dir=tmp_path)
    with pytest.raises(ConfigError, match="cannot import plugin module"):
        get_plugin_manager(entry_points=False, load=["no_such_module_xyz"])


def test_trace_hooks_prints_lifecycle_calls():
    lines = []
    pm = get_plugin_manager(entry_points=False, disable=["soft", "kvm"], trace=lines.append)
    pm.hook.register_config_sections(register=lambda *a, **k: None)
    assert lines and lines[0].startswith("hook register_config_sections(register) -> [")
