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


def test_installed_entry_points_match_importlib_metadata():
    from importlib import metadata

    from smartvm_core.plugins import ENTRY_POINT_GROUP, installed_entry_points
    ours = [(e.name, e.value, e.distribution, e.version) for e in installed_entry_points()]
    theirs = [(e.name, e.value, e.dist.metadata["Name"], e.dist.version)
              for e in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    assert ours == theirs and ours


def test_entry_points_are_read_from_dist_info_and_egg_info(tmp_path, monkeypatch):
    from smartvm_core.plugins import installed_entry_points
    d = tmp_path / "my_plugin-1.2.dist-info"
    d.mkdir()
    (d / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.2\n\nName: not a header\n")
    (d / "entry_points.txt").write_text("# comment\n[console_scripts]\nx = a:b\n\n[smartvm]\nmine = my_plugin.hooks:Plugin\n")
    e = tmp_path / "old_plugin.egg-info"
    e.mkdir()
    (e / "PKG-INFO").write_text("Name: old-plugin\nVersion: 0.3\n")
    (e / "entry_points.txt").write_text("[smartvm]\nold = old_plugin\n")
    (tmp_path / "my_plugin-0.9.dist-info").mkdir()  # a second copy of the same name: the first wins
    monkeypatch.setattr("sys.path", [str(tmp_path)])
    got = [(x.name, x.value, x.distribution, x.version) for x in installed_entry_points()]
    assert got == [("mine", "my_plugin.hooks:Plugin", "my-plugin", "1.2"), ("old", "old_plugin", "old-plugin", "0.3")]


def test_a_broken_installed_plugin_is_named(tmp_path, monkeypatch):
    import sys
    d = tmp_path / "broken-1.0.dist-info"
    d.mkdir()
    (d / "METADATA").write_text("Name: broken\nVersion: 1.0\n")
    (d / "entry_points.txt").write_text("[smartvm]\nbroken = no_such_module_for_smartvm_xyz\n")
    monkeypatch.setattr("sys.path", [*sys.path, str(tmp_path)])
    with pytest.raises(PluginError, match="'broken'.*from broken 1.0.*failed to load"):
        get_plugin_manager()


def test_engines_registered_by_reference_load_when_first_used():
    import subprocess
    import sys
    # a fresh interpreter: which modules does naming the engines import?
    code = ("import sys\n"
            "from smartvm_core.plugins import get_plugin_manager\n"
            "from smartvm_core.builder import registered_engines\n"
            "engines = registered_engines(get_plugin_manager(entry_points=False))\n"
            "assert {'soft', 'kvm'} <= set(engines) and 'kvm' in engines\n"
            "print('unicorn' in sys.modules, 'smartvm_core.engines.soft.engine' in sys.modules)\n"
            "cls = engines['kvm']\n"
            "print('unicorn' in sys.modules, cls.name, cls.__module__)\n"
            "cls = engines['soft']\n"
            "print('unicorn' in sys.modules, cls.name)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:3] == ["False False", "False kvm smartvm_core.engines.kvm.engine", "True soft"]


def test_engine_references_are_checked():
    from smartvm_core.builder import EngineTable
    from smartvm_core.engines.base import Engine

    class Mine(Engine):  # abstract methods are not called here
        name = "mine"

    t = EngineTable()
    with pytest.raises(PluginError, match="p: register_engines wants"):
        t.add("p", "no-colon", name="x")
    with pytest.raises(PluginError, match="wants an Engine subclass"):
        t.add("p", int)
    with pytest.raises(PluginError, match="is named 'mine', not 'other'"):
        t.add("p", Mine, name="other")
    t.add("p", Mine)
    with pytest.raises(PluginError, match="already registered"):
        t.add("q", "x:Y", name="mine")
    t.add("p", "smartvm_core.engines.kvm.engine:KvmEngine", name="wrong")
    with pytest.raises(PluginError, match="is named 'kvm'"):
        t["wrong"]
    t.add("p", "smartvm_core.no_such_module:X", name="gone")
    with pytest.raises(PluginError, match="cannot load"):
        t["gone"]
    from smartvm_core.builder import probe_engines
    avail = probe_engines(t)  # an engine that cannot load is reported, not raised
    assert not avail["gone"].usable and "cannot load" in avail["gone"].reason
    assert t["mine"] is Mine and list(t) == ["mine", "wrong", "gone"]


def test_a_damaged_distribution_on_the_path_does_not_stop_the_scan(tmp_path, monkeypatch):
    """A dist-info whose files are not text is skipped, as a missing one is; the others are still read."""
    import sys
    from smartvm_core.plugins import installed_entry_points
    bad = tmp_path / "broken-1.0.dist-info"
    bad.mkdir()
    (bad / "entry_points.txt").write_bytes(b"[smartvm]\nx = \xff\xfe\n")
    good = tmp_path / "fine-2.0.dist-info"
    good.mkdir()
    (good / "entry_points.txt").write_text("[smartvm]\nfine = fine_pkg.plugin\n")
    (good / "METADATA").write_bytes(b"Name: fine\nVersion: 2.0\n\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    eps = installed_entry_points()
    assert [(e.name, e.value, e.distribution, e.version) for e in eps] == [("fine", "fine_pkg.plugin", "fine", "2.0")]
