"""Loaded images running in a whole machine (builder, engine, loop)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from build import BUILD, build_guest

from smartvm_core.builder import build_machine, load_experiment
from smartvm_core.plugins import get_plugin_manager

import smartvm_boot.plugin as boot_plugin


def run_image(engine: str, image: dict, *, memory: str = "64M", timeout: float = 60, max_exits: int = 0,
              marker: str = "", with_exits: bool = False):
    import smartvm_devices.plugin
    plugins = [("devices", smartvm_devices.plugin), ("boot", boot_plugin)]
    if with_exits:
        import smartvm_exits.plugin
        plugins.insert(0, ("exits", smartvm_exits.plugin))
    pm = get_plugin_manager(entry_points=False, plugins=plugins)
    exp = load_experiment(pm, overrides={"machine": {"engine": engine, "memory": memory},
                                         "stop": {"timeout": timeout, "max_exits": max_exits, "marker": marker},
                                         "console": {"output": "none"}, "image": [image],
                                         # the devices plugin's 16550A at 0x3F8 and isa-debug-exit at 0xF4
                                         "device": [{"type": "uart", "backend": "stdio"},
                                                    {"type": "isa-debug-exit"}]})
    machine = build_machine(pm, exp)
    try:
        t0 = time.monotonic()
        stop = machine.run()
        return stop, machine.console.data(), time.monotonic() - t0, machine.load_results
    finally:
        machine.close()


def engine_usable(name: str) -> str | None:
    """None if the engine can run here, else the probed reason."""
    from smartvm_core.testing import engine_availability
    avail = engine_availability(name)
    return None if avail.usable else avail.reason


ENGINES = ["soft", pytest.param("kvm", marks=pytest.mark.kvm)]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("variant", ["elf", "aout"])
def test_multiboot_kernel_runs(engine, variant, tmp_path):
    reason = engine_usable(engine)
    if reason:
        pytest.skip(f"{engine}: {reason}")
    path = build_guest("boot/multiboot", defines={"AOUT": 1} if variant == "aout" else None)
    env = tmp_path / "env"
    env.write_text("TESTNAME=multiboot\nQEMU_ACCEL=none\n")
    stop, out, _, _ = run_image(engine, {"path": str(path), "cmdline": "smp=1 quiet", "initrd": str(env)})
    text = out.decode()
    assert stop.kind == "exit-code", (stop, text)
    assert stop.exit_code == (0x21 << 1) | 1
    assert text.startswith("multiboot: ok\n")
    assert "cmdline: smp=1 quiet\n" in text and "loader: smartvm\n" in text and "mem_upper: yes\n" in text
    assert "module: TESTNAME=multiboot\nQEMU_ACCEL=none\n" in text
    assert "mmap: 3 entries\n" in text


def test_multiboot_exit_code_comes_from_the_guest():
    reason = engine_usable("soft")
    if reason:
        pytest.skip(reason)
    path = build_guest("boot/multiboot", defines={"EXIT_CODE": 5})
    stop, _, _, _ = run_image("soft", {"path": str(path)})
    assert stop.exit_code == (5 << 1) | 1


# -- Debian's kernel ------------------------------------------------------------------

KERNEL_CACHE = BUILD / "debian-kernel"


def debian_kernel() -> Path:
    """Fetch linux-image-amd64's kernel package with apt-get download and unpack its vmlinuz (cached)."""
    found = sorted(glob.glob(str(KERNEL_CACHE / "boot" / "vmlinuz-*")))
    if found:
        return Path(found[-1])
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get/dpkg-deb are not available to fetch Debian's kernel")
    KERNEL_CACHE.mkdir(parents=True, exist_ok=True)
    deps = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True)
    pkgs = [line.split(":", 1)[1].strip() for line in deps.stdout.splitlines()
            if line.strip().startswith("Depends:") and "linux-image-" in line]
    if deps.returncode or not pkgs:
        pytest.skip(f"apt-cache cannot resolve linux-image-amd64: {deps.stderr.strip() or 'no dependency'}")
    got = subprocess.run(["apt-get", "download", pkgs[0]], cwd=KERNEL_CACHE, capture_output=True, text=True)
    debs = glob.glob(str(KERNEL_CACHE / f"{pkgs[0]}_*.deb"))
    if got.returncode or not debs:
        pytest.skip(f"apt-get download {pkgs[0]} failed: {got.stderr.strip()[-300:]}")
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", debs[0]], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(KERNEL_CACHE), "--wildcards", "./boot/vmlinuz-*"], stdin=tar.stdout,
                   check=True)
    tar.wait()
    os.unlink(debs[0])
    found = sorted(glob.glob(str(KERNEL_CACHE / "boot" / "vmlinuz-*")))
    if not found:
        pytest.skip(f"{pkgs[0]} holds no boot/vmlinuz-*")
    return Path(found[-1])


@pytest.mark.slow
def test_debian_kernel_prints_linux_version():
    reason = engine_usable("soft")
    if reason:
        pytest.skip(reason)
    kernel = debian_kernel()
    stop, out, seconds, results = run_image(
        "soft", {"path": str(kernel), "cmdline": "earlyprintk=serial console=ttyS0"}, memory="256M",
        timeout=float(os.environ.get("SMARTVM_LINUX_TIMEOUT", 900)), marker="Linux version",
        with_exits=True)
    text = out.decode(errors="replace")
    print(f"\nDebian kernel on soft: stopped by {stop.kind} after {seconds:.1f} s; serial:\n{text[-3000:]}")
    assert results[0].loader == "bzimage"
    assert "Linux version" in text, (stop, text[-2000:])
