"""The smartvm command, run as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path


from guests_build import build_guest

ROOT = Path(__file__).resolve().parents[2]


def smartvm(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "smartvm_core.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_help_and_unknown_command():
    assert smartvm().returncode == 2
    r = smartvm("frobnicate")
    assert r.returncode == 2 and "unknown command" in r.stderr


def test_plugins_lists_the_five_builtin_distributions():
    r = smartvm("plugins", "--json")
    assert r.returncode == 0, r.stderr
    dists = {p["distribution"] for p in json.loads(r.stdout)["plugins"]}
    assert {"smartvm", "smartvm-exits", "smartvm-devices", "smartvm-boot", "smartvm-v8086", "smartvm-ept"} <= dists


def test_plugins_leaves_one_out():
    r = smartvm("plugins", "-p", "no:v8086")
    assert r.returncode == 0
    assert "v8086: smartvm-v8086" not in r.stdout and "disabled: v8086" in r.stdout


def test_info_says_which_engines_are_usable():
    r = smartvm("info", "--json")
    data = json.loads(r.stdout)
    assert data["engines"]["soft"]["usable"]
    assert data["auto"] in data["engines"]
    assert "kvm" in data["engines"]
    text = smartvm("info").stdout
    assert "engine 'auto' picks:" in text and "[soft]" in text


def test_bad_experiment_is_one_line_with_file_and_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[machine]\nvcpus = 0\n")
    r = smartvm("run", str(p))
    assert r.returncode == 2
    assert r.stderr.strip() == f"smartvm: error: {p}: machine.vcpus: must be between 1 and 64, got 0"
    assert "Traceback" not in r.stderr


def test_missing_image_and_bad_flag(tmp_path):
    r = smartvm("run", str(tmp_path / "nothing.bin"))
    assert r.returncode == 2 and "no such file" in r.stderr
    img = tmp_path / "x.bin"
    img.write_bytes(b"\xf4")
    r = smartvm("run", str(img), "--mem", "lots", "--format", "flat")
    assert r.returncode == 2 and "<command line>: machine.memory" in r.stderr


def test_demo_runs_and_reports(tmp_path):
    build_guest("demo/hello")
    r = smartvm("run", str(ROOT / "examples" / "hello.toml"), "--engine", "soft", "--report", "json",
                "--report-file", str(tmp_path / "report.json"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Hello from Smart-VM!\n"  # (text mode folds the guest's CR LF)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stop"]["kind"] == "halted"
    assert report["exits"]["IO_INSTRUCTION"]["count"] > 20


def test_image_and_flags_without_a_file(tmp_path):
    build_guest("demo/hello")
    img = ROOT / "guests" / "build" / "demo__hello.bin"
    # a flat image needs its address and mode from an experiment; with only flags the
    # marker stops the run as soon as the greeting is out
    exp = tmp_path / "e.toml"
    exp.write_text(f"[[image]]\npath = '{img}'\nformat = 'flat'\naddress = 0x7c00\nentry = 0x7c00\nmode = 'real'\n")
    r = smartvm("run", str(exp), "--engine", "soft", "--device", "isa-debug", "--marker", "Smart-VM",
                "--report", "none")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hello from Smart-VM") and r.stderr == ""


def test_unknown_engine_and_unusable_flag(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text("[machine]\nengine = 'warp'\n[[device]]\ntype='isa-debug'\n")
    build_guest("demo/hello")
    r = smartvm("run", str(exp))
    assert r.returncode == 2 and "machine.engine: unknown engine 'warp'" in r.stderr


def test_kernel_and_append_as_qemu_users_expect():
    kernel = build_guest("boot/multiboot")
    r = smartvm("run", "--kernel", str(kernel), "--append", "console=ttyS0 answer=42", "--device", "isa-debug",
                "--engine", "soft", "--report", "none")
    assert "multiboot: ok" in r.stdout, r.stderr
    assert "cmdline: console=ttyS0 answer=42" in r.stdout
    assert r.returncode not in (1, 2, 124), r.stderr   # the kernel's own isa-debug-exit status
