"""Time from process start to SeaBIOS's banner on the serial console: ``smartvm run`` beside QEMU.

Both run Debian's /usr/share/seabios/bios.bin on KVM in fresh processes, in
the same run, interleaved; each time is measured from ``Popen`` to the moment
``SeaBIOS (version`` appears on the process's standard output (the serial
port). Smart-VM runs the installed ``smartvm run`` command on an experiment
with the ``pc`` device set (fw_cfg offers ``etc/sercon-port``, so SeaBIOS
prints its screen on COM1); its JSON run report (written after the banner,
when the stop marker has ended the run) splits each time into start-up
(process start to ``Machine.run``) and the run itself.

QEMU runs ``qemu-system-x86_64 -accel kvm -bios /usr/share/seabios/bios.bin
-nodefaults -serial stdio`` plus ``-display none -machine graphics=off``:
without ``graphics=off`` QEMU does not give SeaBIOS ``etc/sercon-port`` and
nothing at all reaches the serial port, so there would be no banner to time.

Python byte code: an installed Python program runs from cached byte code
(``.pyc``), as QEMU runs from its compiled binary. This environment sets
``PYTHONDONTWRITEBYTECODE``, which would make every ``smartvm`` process
compile all of its modules from source again; so the Smart-VM processes get
``PYTHONPYCACHEPREFIX=bench/build/pycache`` (the source tree stays clean)
and one untimed warm-up run fills that cache. ``--cold`` measures without
it (every run compiles from source). QEMU also gets one untimed warm-up run.

Where the time goes (measured on the build hosts, software nested KVM):
SeaBIOS's debug log (``-device isa-debugcon,iobase=0x402`` on QEMU,
``--device debugcon,port=0x402`` here), timed line by line as it arrives,
shows the guest part the same under both, phase by phase, within a few
milliseconds: about 0.7 s, most of it SeaBIOS's byte-by-byte ``memset`` of
the option-ROM area and its copies of itself, run by KVM's instruction
emulator (this host runs no 16/32-bit guest code natively); SeaBIOS makes
fewer than a thousand exits before the banner (fw_cfg through DMA, PCI
configuration, CMOS, the UART), a few milliseconds of VMM time. What
separates the two is the time before the first guest instruction: QEMU's
start-up against Python's (interpreter, imports, plugin manager, machine).

Usage: ``python bench/seabios.py [--runs N] [--irqchip user|kernel] [--cold]``.
Prints each run, the best and the median of each side, and the ratio of the
medians Smart-VM / QEMU (target <= 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(__file__).resolve().parent / "build"
BIOS = "/usr/share/seabios/bios.bin"
BANNER = b"SeaBIOS (version"


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


def smartvm_command() -> list[str]:
    """The installed ``smartvm`` console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "smartvm"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("smartvm")
    return [found] if found else [sys.executable, "-m", "smartvm_core.cli"]


def time_to_banner(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60.0,
                   wait_exit: bool = False) -> float:
    """Seconds from ``Popen`` to the banner; ``wait_exit``: let the process end by itself afterwards."""
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
                t = time.monotonic() - start
                if wait_exit:
                    proc.stdout.read()
                    proc.wait(timeout=30)
                return t
        raise RuntimeError(f"no banner from {cmd[0]} (output: {seen[-300:]!r})")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def run_seconds(report: Path) -> tuple[float, float]:
    """``(wall time of Machine.run, time in guest)`` from a JSON run report."""
    counters = json.loads(report.read_text())["counters"]
    return (float(str(counters["wall time"]).split()[0]), float(str(counters["time in guest"]).split()[0]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--irqchip", choices=("user", "kernel"), default="user")
    ap.add_argument("--cold", action="store_true", help="no byte-code cache: every run compiles from source")
    args = ap.parse_args()
    if not Path(BIOS).exists():
        print(f"skip: {BIOS} is not installed")
        return 0
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("skip: /dev/kvm is not usable here")
        return 0
    qemu = shutil.which("qemu-system-x86_64")
    env = dict(os.environ)
    if not args.cold:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(BUILD / "pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "seabios.toml"
        experiment(exp, args.irqchip)
        report = Path(tmp) / "report.json"
        # the report is written after the banner (the marker stops the run): it costs the timing nothing
        ours_cmd = [*smartvm_command(), "run", str(exp), "--report", "json", "--report-file", str(report)]
        qemu_cmd = [qemu or "qemu-system-x86_64", "-accel", "kvm", "-bios", BIOS, "-nodefaults",
                    "-serial", "stdio", "-display", "none", "-machine", "graphics=off"]
        time_to_banner(ours_cmd, env)  # warm-up: page cache (and the byte-code cache unless --cold)
        if qemu:
            time_to_banner(qemu_cmd)
        ours, theirs, runs, guest = [], [], [], []
        for i in range(args.runs):
            ours.append(time_to_banner(ours_cmd, env, wait_exit=True))
            wall, in_guest = run_seconds(report)
            runs.append(wall)
            guest.append(in_guest)
            if qemu:
                theirs.append(time_to_banner(qemu_cmd))
            print(f"run {i + 1}: smartvm {ours[-1]:.3f} s (start-up {ours[-1] - wall:.3f} s, Machine.run "
                  f"{wall:.3f} s of which in the guest {in_guest:.3f} s)"
                  + (f"   qemu {theirs[-1]:.3f} s" if qemu else ""))
    m_ours = statistics.median(ours)
    print(f"smartvm run (kvm, pc set, irqchip={args.irqchip}, "
          f"{'no byte-code cache' if args.cold else 'cached byte code'}): "
          f"best {min(ours):.3f} s, median {m_ours:.3f} s to the banner")
    print(f"  of which start-up (process start to Machine.run, by the run report): median "
          f"{statistics.median(o - r for o, r in zip(ours, runs)):.3f} s; Machine.run median "
          f"{statistics.median(runs):.3f} s, in the guest {statistics.median(guest):.3f} s")
    if not theirs:
        print("baseline: qemu-system-x86_64 not found; no ratio")
        return 0
    m_q = statistics.median(theirs)
    print(f"qemu-system-x86_64 -accel kvm -bios {BIOS} -nodefaults -serial stdio "
          f"-display none -machine graphics=off: best {min(theirs):.3f} s, median {m_q:.3f} s")
    print(f"ratio smartvm/qemu of the medians = {m_ours / m_q:.2f} (target <= 1.00); of the best runs "
          f"{min(ours) / min(theirs):.2f}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
