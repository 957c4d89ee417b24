"""Experiment files: every user mistake is refused with the file, the key and the reason."""


import pytest

from scripted_engine import ScriptedPlugin
from smartvm_core.builder import load_experiment, ram_layout
from smartvm_core.config import parse_size
from smartvm_core.errors import ConfigError
from smartvm_core.plugins import get_plugin_manager


@pytest.fixture
def pm():
    return get_plugin_manager(entry_points=False, disable=("soft", "kvm"), plugins=[("scripted", ScriptedPlugin())])


def write(tmp_path, text):
    p = tmp_path / "exp.toml"
    p.write_text(text)
    return p


def test_full_experiment_is_read(pm, tmp_path):
    (tmp_path / "guest.bin").write_bytes(b"\xf4")
    p = write(tmp_path, """
[machine]
engine = "scripted"
memory = "2M"
vcpus = 2
[engine]
irqchip = "user"
[stop]
max_exits = 10
timeout = 1.5
marker = "DONE"
[[device]]
type = "uart"
port = 0x2f8
[[image]]
path = "guest.bin"
format = "flat"
address = 0x7c00
entry = 0x7c00
mode = "real"
[report]
format = "json"
""")
    exp = load_experiment(pm, p)
    assert (exp.engine, exp.memory, exp.vcpus) == ("scripted", 2 << 20, 2)
    assert exp.stop.max_exits == 10 and exp.stop.timeout == 1.5 and exp.stop.marker == "DONE"
    assert exp.devices[0].type == "uart" and exp.devices[0].params == {"port": 0x2F8}
    assert exp.images[0].path == tmp_path / "guest.bin" and exp.images[0].address == 0x7C00
    assert exp.report_format == "json"


@pytest.mark.parametrize("text, key, reason", [
    ("[machin]\nengine='soft'", "machin", "unknown section"),
    ("[machine]\nengnie='soft'", "machine.engnie", "unknown key (allowed: engine, memory, name, vcpus)"),
    ("[machine]\nmemory='lots'", "machine.memory", "'lots' is not a size"),
    ("[machine]\nmemory=1000", "machine.memory", "not a multiple of 4 KiB"),
    ("[machine]\nvcpus=0", "machine.vcpus", "between 1 and 64"),
    ("[machine]\nvcpus='2'", "machine.vcpus", "expected an integer, got str"),
    ("[machine]\nvcpus=true", "machine.vcpus", "expected an integer"),
    ("[engine]\nirqchip='apic'", "engine.irqchip", "not one of: user, kernel"),
    ("[stop]\ntimeout=-1", "stop.timeout", "must not be negative"),
    ("[[image]]\nformat='flat'", "image[0].path", "required key is missing"),
    ("[[image]]\npath='missing.bin'", "image[0].path", "no such file"),
    ("[image]\npath='x'", "image", "use [[image]]"),
    ("[console]\noutput='printer'", "console.output", "use stdout, none or file:PATH"),
    ("[plugins]\ndisable=[1]", "plugins.disable", "expected plugin names"),
])
def test_mistakes_name_file_key_and_reason(pm, tmp_path, text, key, reason):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_experiment(pm, p)
    assert e.value.source == str(p)
    assert e.value.key == key
    assert reason in e.value.reason
    assert str(e.value).startswith(f"{p}: {key}: ")


def test_invalid_toml_and_unreadable_file(pm, tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_experiment(pm, write(tmp_path, "[machine\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_experiment(pm, tmp_path / "absent.toml")
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe[machine]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_experiment(pm, p)


def test_command_line_overrides_win_and_are_named(pm, tmp_path):
    p = write(tmp_path, "[machine]\nengine='scripted'\nmemory='1M'\n")
    exp = load_experiment(pm, p, {"machine": {"memory": "4M"}, "device": [{"type": "pic"}]})
    assert exp.memory == 4 << 20 and exp.engine == "scripted"
    assert [d.type for d in exp.devices] == ["pic"]
    with pytest.raises(ConfigError) as e:
        load_experiment(pm, p, {"machine": {"memory": "huge"}})
    assert e.value.source == "<command line>"


def test_plugin_sections_are_validated_by_their_plugin(tmp_path):
    from smartvm_core import hookimpl
    from smartvm_core.config import Key

    class Mine:
        seen = None

        @hookimpl
        def register_config_sections(self, register):
            register("mine", {"level": Key(int, 1, "how much", choices=(1, 2, 3))})

        @hookimpl
        def configure(self, experiment):
            Mine.seen = experiment.section("mine")

    pm = get_plugin_manager(entry_points=False, disable=("soft", "kvm"), plugins=[("mine", Mine())])
    exp = load_experiment(pm, write(tmp_path, "[mine]\nlevel = 2\n"))
    assert exp.section("mine") == {"level": 2} and Mine.seen == {"level": 2}
    with pytest.raises(ConfigError, match=r"mine.level: 7 is not one of: 1, 2, 3"):
        load_experiment(pm, write(tmp_path, "[mine]\nlevel = 7\n"))


def test_sizes():
    assert parse_size("64M") == 64 << 20
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("4096") == 4096
    assert parse_size(8192) == 8192
    for bad in ("", "1X", "-5", True, 0, 1.5):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_ram_layout_leaves_the_pc_holes():
    assert ram_layout(0x10000) == [("ram", 0, 0x10000)]
    assert ram_layout(64 << 20) == [("ram-low", 0, 0xA0000), ("ram-high", 0x100000, (64 << 20) - 0x100000)]
    big = ram_layout(4 << 30)
    assert big[-1] == ("ram-above-4g", 1 << 32, (4 << 30) - 0xE0000000)
