"""The third-party example plugin, installed as a user would, takes part in a run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guests_build import build_guest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "smartvm-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip-install the example into a scratch directory; put it on PYTHONPATH for subprocesses."""
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        str(EXAMPLE)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"pip could not install the example plugin:\n{r.stderr}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return env


def smartvm(env, *args):
    return subprocess.run([sys.executable, "-m", "smartvm_core.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_smartvm_plugins_lists_it_once_installed(installed):
    plugins = {p["name"]: p for p in json.loads(smartvm(installed, "plugins", "--json").stdout)["plugins"]}
    assert plugins["example"]["distribution"] == "smartvm-example-plugin"
    assert plugins["example"]["hooks"] == ["configure", "register_config_sections", "register_exit_handlers",
                                           "run_report"]
    # and without it installed, it is not there
    assert "example" not in {p["name"] for p in json.loads(smartvm(dict(os.environ), "plugins", "--json")
                                                             .stdout)["plugins"]}


def experiment(tmp_path, extra=""):
    img = build_guest("demo/cpuid_hv")
    exp = tmp_path / "cpuid.toml"
    exp.write_text(f"""
[machine]
engine = "soft"
memory = "1M"
[[device]]
type = "isa-debug"
[[image]]
path = "{img}"
format = "flat"
address = 0x7c00
entry = 0x7c00
mode = "real"
{extra}""")
    return exp


def test_its_handler_runs_before_the_standard_cpuid_policy(installed, tmp_path):
    r = smartvm(installed, "run", str(experiment(tmp_path)), "--report", "json",
                "--report-file", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    hv, vendor = r.stdout.splitlines()
    assert hv == "SmartVMxmple"          # the example plugin answered leaf 0x40000000
    assert vendor == "GenuineIntel"      # it passed leaf 0 on to smartvm-exits
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counters"]["example: hypervisor leaf queries"] == 1


def test_its_section_configures_it(installed, tmp_path):
    r = smartvm(installed, "run", str(experiment(tmp_path, '[example]\nsignature = "MyHypervisor"\n')),
                "--report", "none")
    assert r.stdout.splitlines()[0] == "MyHypervisor"
    r = smartvm(installed, "run", str(experiment(tmp_path, '[example]\nsignature = "short"\n')))
    assert r.returncode == 2 and "example.signature: the signature must be 12 ASCII characters" in r.stderr


def test_p_no_example_leaves_it_out(installed, tmp_path):
    r = smartvm(installed, "run", str(experiment(tmp_path)), "-p", "no:example", "--report", "none")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] != "SmartVMxmple"
