"""Time from process start to SeaBIOS's banner on the serial console: Smart-VM beside QEMU.

Both run Debian's /usr/share/seabios/bios.bin on KVM in fresh processes,
in the same run, and each time is measured from ``Popen`` to the moment
``SeaBIOS (version`` appears on the process's standard output (the serial
port). Smart-VM uses the ``pc`` device set (fw_cfg offers ``etc/sercon-port``,
so SeaBIOS prints its screen on COM1).

QEMU runs ``qemu-system-x86_64 -accel kvm -bios /usr/share/seabios/bios.bin
-nodefaults -serial stdio`` plus ``-display none -machine graphics=off``:
without ``graphics=off`` QEMU does not give SeaBIOS ``etc/sercon-port`` and
nothing at all reaches the serial port, so there would be no banner to time.

Usage: ``python bench/seabios.py [--runs N] [--irqchip user|kernel]``.
Prints each run, the medians, and the ratio Smart-VM / QEMU (target <= 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIOS = "/usr/share/seabios/bios.bin"
BANNER = b"SeaBIOS (version"

CHILD = r'''
import sys
from pathlib import Path
from smartvm_core.plugins import get_plugin_manager
from smartvm_core.builder import build_machine, load_experiment
from smartvm_core.console import Console
import smartvm_boot.plugin, smartvm_devices.plugin, smartvm_exits.plugin
pm = get_plugin_manager(entry_points=False, plugins=[("devices", smartvm_devices.plugin),
                        ("boot", smartvm_boot.plugin), ("exits", smartvm_exits.plugin)])
exp = load_experiment(pm, Path(sys.argv[1]))
m = build_machine(pm, exp, console=Console(sys.stdout.buffer))
m.run()
'''


def experiment(path: Path, irqchip: str) -> None:
    path.write_text(f'''
[machine]
engine = "kvm"
memory = "128M"
[engine]
irqchip = "{irqchip}"
[[device]]
type = "pc"
[[image]]
path = "{BIOS}"
format = "bios"
[stop]
marker = "SeaBIOS (version"
timeout = 60
''')


def time_to_banner(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60.0) -> float:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env=env)
    assert proc.stdout is not None
    seen = b""
    try:
        while time.monotonic() - start < timeout:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            if BANNER in seen:
                return time.monotonic() - start
        raise RuntimeError(f"no banner from {cmd[0]} (output: {seen[-300:]!r})")
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--irqchip", choices=("user", "kernel"), default="user")
    args = ap.parse_args()
    if not Path(BIOS).exists():
        print(f"skip: {BIOS} is not installed")
        return 0
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("skip: /dev/kvm is not usable here")
        return 0
    qemu = shutil.which("qemu-system-x86_64")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("", "plugins/exits", "plugins/devices",
                                                                   "plugins/boot"))
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "seabios.toml"
        experiment(exp, args.irqchip)
        ours_cmd = [sys.executable, "-c", CHILD, str(exp)]
        qemu_cmd = [qemu or "qemu-system-x86_64", "-accel", "kvm", "-bios", BIOS, "-nodefaults",
                    "-serial", "stdio", "-display", "none", "-machine", "graphics=off"]
        ours, theirs = [], []
        for i in range(args.runs):
            ours.append(time_to_banner(ours_cmd, env))
            if qemu:
                theirs.append(time_to_banner(qemu_cmd))
            print(f"run {i + 1}: smartvm {ours[-1]:.3f} s" + (f"   qemu {theirs[-1]:.3f} s" if qemu else ""))
    m_ours = statistics.median(ours)
    print(f"smartvm (kvm, pc set, irqchip={args.irqchip}): median {m_ours:.3f} s to the banner")
    if not theirs:
        print("baseline: qemu-system-x86_64 not found; no ratio")
        return 0
    m_q = statistics.median(theirs)
    print(f"qemu-system-x86_64 -accel kvm -bios {BIOS} -nodefaults -serial stdio "
          f"-display none -machine graphics=off: median {m_q:.3f} s")
    print(f"ratio smartvm/qemu = {m_ours / m_q:.2f} (target <= 1.00)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
