"""The virtual-8086 monitor: emulated sensitive instructions per second on each route and engine.

* ``soft`` on every route: guests/v8086/sensitive_loop.com runs COUNT
  iterations of CLI, STI, PUSHF, POPF (4 x COUNT traps in virtual-8086 mode,
  none on the real-mode route, where they run natively) and
  guests/v8086/int_loop.com makes COUNT INT 11h round trips through the
  monitor. Target: at least 100,000 emulated instructions per second through
  the exception bitmap. Figures are the best of three runs.
* ``kvm`` on the routes this host's KVM supports (here: real mode only):
  int_loop.com again, beside its baseline, bench/kvm_exits_loop.c (the bare
  C KVM_RUN loop, built with gcc into bench/build/) running
  guests/v8086/int_loop_flat.asm, the same INT 11h round trips through an
  IVT entry at an ``OUT 0xEE, AL; IRET`` stub: one doorbell exit each.
  Target: the monitor's cost per INT n at most 1.3x the C loop's. The C loop
  and the monitor run interleaved, ROUNDS rounds (a shared host's exit cost
  drifts with its load); each figure is printed as the best and the median
  of its rounds, with the VM exits per INT and the monitor's handler time
  per exit (the loop's own accounting), and the load average.

On kvm both sides are timed between the guest's two marker exits ('S' and
'E' written to port 0x402 around the loop: the C loop reads the clock when it
handles them, the monitor's machine through a small marker plugin), so
start-up and a fresh vCPU's first exits are left out the same way on both.
On soft, start-up is cancelled by timing COUNT and 2 x COUNT iterations and
taking the difference. The script prints; it asserts nothing.

usage: python bench/v8086.py [COUNT] [--kvm-only] [--rounds N]      (defaults 4000, 7)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "guests")] + [str(ROOT / "plugins" / p) for p in
                                                    ("exits", "devices", "boot", "v8086", "ept")]

from build import build_guest  # noqa: E402

from smartvm_core import hookimpl  # noqa: E402
from smartvm_core.testing import make_machine  # noqa: E402
from smartvm_core.vmx import ExitReason  # noqa: E402

BUILD = Path(__file__).resolve().parent / "build"
REPEAT = 3
ROUNDS = 7


def plugins():
    import smartvm_boot.plugin as boot
    import smartvm_exits.plugin as exits
    import smartvm_v8086.plugin as v8086
    return [("boot", boot), ("exits", exits), ("v8086", v8086)]


def run_program(name: str, count: int, engine: str, route: str) -> tuple[float, int, int, int]:
    """Wall seconds of Machine.run, the instructions the monitor emulated, VM exits and handler ns."""
    image = build_guest(f"v8086/{name}", defines={"COUNT": count})
    m = make_machine({"machine": {"engine": engine, "memory": "1M"},
                      "image": [{"path": str(image), "format": "com"}],
                      "v8086": {"route": route}}, entry_points=False, plugins=plugins())
    try:
        t0 = time.perf_counter()
        stop = m.run()
        dt = time.perf_counter() - t0
        if stop.kind != "exit-code" or stop.exit_code != 0:
            raise SystemExit(f"{name} on {engine}/{route} stopped with {stop.kind}: {stop.detail}")
        stats = m.stats[0]
        return dt, sum(m.services["v8086"].emulator.counts.values()), stats.total, sum(stats.times)
    finally:
        m.close()


def per_item(name: str, count: int, engine: str, route: str) -> tuple[float, int]:
    """Seconds per loop iteration (best of REPEAT, start-up cancelled) and emulated instructions per iteration."""
    best = None
    per_iter = 0
    for _ in range(REPEAT):
        t1, e1, _, _ = run_program(name, count, engine, route)
        t2, e2, _, _ = run_program(name, 2 * count, engine, route)
        d = (t2 - t1) / count
        per_iter = (e2 - e1) // count
        best = d if best is None else min(best, d)
    return max(best or 0.0, 1e-9), per_iter


class Markers:
    """A plugin that times the guest's 'S' and 'E' writes to port 0x402 (the loop's two ends).

    Each contender on kvm, the monitor and the C loop, is timed between these two exits, so
    start-up, the first exits of a fresh vCPU and the program's exit are left out on both sides.
    """

    def __init__(self) -> None:
        self.at: dict[int, int] = {}
        self.stats_at: dict[int, tuple[int, int]] = {}
        self.machine = None

    @hookimpl
    def register_exit_handlers(self, register, machine):  # type: ignore[no-untyped-def]
        self.machine = machine

        def marker(vcpu, exit):  # type: ignore[no-untyped-def]
            if not exit.is_in:
                self.at[exit.value & 0xFF] = time.perf_counter_ns()
                stats = machine.stats[0]
                self.stats_at[exit.value & 0xFF] = (stats.total, sum(stats.times))
            vcpu.skip_instruction()
            return True

        register(ExitReason.IO_INSTRUCTION, marker, name="bench-marker", ports=[0x402])


def kvm_round(count: int, route: str) -> tuple[float, float, float]:
    """One kvm measurement between the loop's markers: seconds per INT, VM exits per INT, handler seconds per exit."""
    image = build_guest("v8086/int_loop", defines={"COUNT": count})
    markers = Markers()
    m = make_machine({"machine": {"engine": "kvm", "memory": "1M"},
                      "image": [{"path": str(image), "format": "com"}],
                      "v8086": {"route": route}}, entry_points=False, plugins=[*plugins(), ("bench", markers)])
    try:
        stop = m.run()
        if stop.kind != "exit-code" or stop.exit_code != 0:
            raise SystemExit(f"int_loop on kvm/{route} stopped with {stop.kind}: {stop.detail}")
        if set(markers.at) != {ord("S"), ord("E")}:
            raise SystemExit(f"int_loop on kvm/{route}: the markers did not both arrive ({markers.at})")
    finally:
        m.close()
    (x1, h1), (x2, h2) = markers.stats_at[ord("S")], markers.stats_at[ord("E")]
    exits = max(x2 - x1 - 1, 1)   # the E marker's own exit is counted at E
    return (markers.at[ord("E")] - markers.at[ord("S")]) * 1e-9 / count, exits / count, (h2 - h1) / exits * 1e-9


def build_c_loop() -> Path | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    BUILD.mkdir(exist_ok=True)
    src = Path(__file__).resolve().parent / "kvm_exits_loop.c"
    out = BUILD / "kvm_exits_loop"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run([gcc, "-O2", "-o", str(out), str(src)], check=True)
    return out


def c_loop_round(binary: Path, count: int) -> float:
    """One C-loop measurement: seconds per INT round trip, timed between the guest's 'S' and 'E' markers."""
    image = build_guest("v8086/int_loop_flat", defines={"COUNT": count})
    out = subprocess.run([str(binary), str(image), hex(0x7C00), "640"], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[1]) / count


def summary(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def main() -> None:
    args = sys.argv[1:]
    kvm_only = "--kvm-only" in args
    rounds = ROUNDS
    if "--rounds" in args:
        rounds = int(args[args.index("--rounds") + 1])
        del args[args.index("--rounds"):args.index("--rounds") + 2]
    args = [a for a in args if a != "--kvm-only"]
    count = int(args[0]) if args else 4000
    from smartvm_core.engines.kvm.engine import KvmEngine
    from smartvm_core.engines.soft.engine import SoftEngine
    print(f"v8086 monitor benchmark, COUNT={count}; soft: best of {REPEAT}; kvm: {rounds} interleaved rounds")
    if kvm_only:
        pass
    elif SoftEngine.probe().usable:
        for route in ("exception-bitmap", "stub", "real-mode"):
            d, n = per_item("sensitive_loop", count, "soft", route)
            if n:
                rate = n / d
                note = "  (target >= 100,000/s: {:.2f}x of target)".format(rate / 100_000) \
                    if route == "exception-bitmap" else ""
                print(f"soft/{route:<17} CLI+STI+PUSHF+POPF: {rate:>10,.0f} emulated instructions/s "
                      f"({d / n * 1e6:.1f} us each){note}")
            else:
                print(f"soft/{route:<17} CLI+STI+PUSHF+POPF: run natively (no traps): {1 / d:,.0f} iterations/s")
            d, _ = per_item("int_loop", count, "soft", route)
            print(f"soft/{route:<17} INT 11h round trip:  {1 / d:>10,.0f} per second ({d * 1e6:.1f} us each)")
    else:
        print("soft: unusable here:", SoftEngine.probe().reason)
    avail = KvmEngine.probe()
    if not avail.usable:
        print("kvm: unusable here:", avail.reason)
        return
    routes = ["real-mode"] + (["stub"] if KvmEngine.host_supports_v8086() else [])
    binary = build_c_loop()
    if binary is None:
        print("baseline: gcc is not installed, the C loop cannot be built")
    base: list[float] = []
    results: dict[str, list[tuple[float, float, float]]] = {r: [] for r in routes}
    for _ in range(rounds):
        if binary is not None:
            base.append(c_loop_round(binary, count))
        for route in routes:
            results[route].append(kvm_round(count, route))
    print(f"{'INT 11h round trip':<40} best: us each   median: us each")
    if base:
        b_best, b_med = summary(base)
        print(f"  {'bare C KVM_RUN loop (baseline)':<38} {b_best * 1e6:8.2f}         {b_med * 1e6:8.2f}")
    for route in routes:
        per_int = [r[0] for r in results[route]]
        best, med = summary(per_int)
        line = f"  {'kvm/' + route:<38} {best * 1e6:8.2f}         {med * 1e6:8.2f}"
        if base:
            line += f"   ratio to the C loop: best {best / b_best:.2f}x, median {med / b_med:.2f}x (target <= 1.3x)"
        print(line)
        exits = statistics.median(r[1] for r in results[route])
        handler = statistics.median(r[2] for r in results[route])
        print(f"  {'':<38} {exits:.2f} VM exits per INT, handlers {handler * 1e6:.2f} us per exit (median)")
    if "stub" not in routes:
        print("kvm/stub: not run: this host's KVM cannot run virtual-8086 mode (EFLAGS.VM does not stick)")
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
