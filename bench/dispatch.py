"""Per-exit cost of the core's dispatch path, beside a bare Python function call.

The loop (smartvm_core.loop.run_vcpu) runs on a minimal engine whose run()
hands back a prepared IO_INSTRUCTION exit; one handler takes it. The engine's
own run() cost is measured alone and subtracted, so what remains is what the
core adds per exit: the stop/pause/interrupt checks, the table lookup, the
handler call, the statistics. Baseline: calling the same handler directly.

    python bench/dispatch.py [--exits N]

Target (issue 2): at most 1 microsecond of dispatch overhead per exit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smartvm_core.config import Experiment  # noqa: E402
from smartvm_core.exit import VmExit  # noqa: E402
from smartvm_core.loop import ExitStats, run_vcpu  # noqa: E402
from smartvm_core.machine import Machine  # noqa: E402
from smartvm_core.vmx import ExitReason  # noqa: E402


class Hooks:
    """The loop never calls hooks per exit; this proves it by raising if one is called while it runs.

    Outside the loop (building and closing the machine) every hook answers nothing.
    """

    in_loop = False

    def __getattr__(self, name):
        if Hooks.in_loop:
            raise AssertionError(f"hook {name} called on the exit path")
        return lambda **kwargs: []


class BenchVcpu:
    index = 0

    def __init__(self, n: int, machine: Machine) -> None:
        self.left = n
        self.machine = machine
        self.exit = VmExit().reset(ExitReason.IO_INSTRUCTION)
        self.exit.port, self.exit.size, self.exit.value = 0x80, 1, 0x55
        self.timer_deadline_ns = None

    def run(self):
        self.left -= 1
        if self.left == 0:
            self.machine.control.stop_requested = True
        return self.exit

    def set_timer_deadline(self, ns):
        self.timer_deadline_ns = ns


def handle_io_instruction(vcpu, exit):
    return True


def measure(n: int) -> dict[str, float]:
    machine = Machine(Experiment(), Hooks())
    machine.dispatch.make_register("bench")(ExitReason.IO_INSTRUCTION, handle_io_instruction)
    machine.dispatch.freeze()

    # 1. the engine's own run() alone
    vcpu = BenchVcpu(n, machine)
    run = vcpu.run
    t = time.perf_counter_ns()
    for _ in range(n):
        run()
    engine_ns = (time.perf_counter_ns() - t) / n

    # 2. the whole loop: run() + dispatch
    machine.control.stop_requested = False
    vcpu = BenchVcpu(n, machine)
    stats = ExitStats()
    Hooks.in_loop = True
    t = time.perf_counter_ns()
    try:
        run_vcpu(machine, vcpu, stats, boot=True)
    finally:
        Hooks.in_loop = False
    loop_ns = (time.perf_counter_ns() - t) / n
    assert stats.total == n, stats.total

    # 3. baseline: a bare call of the same handler
    ex = vcpu.exit
    h = handle_io_instruction
    t = time.perf_counter_ns()
    for _ in range(n):
        h(vcpu, ex)
    call_ns = (time.perf_counter_ns() - t) / n
    machine.close()
    return {"engine": engine_ns, "loop": loop_ns, "dispatch": loop_ns - engine_ns, "call": call_ns}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exits", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    best = min((measure(args.exits) for _ in range(args.repeat)), key=lambda r: r["dispatch"])
    print(f"exits per run:                 {args.exits}")
    print(f"loop per exit (engine+core):   {best['loop']:8.1f} ns")
    print(f"engine run() alone:            {best['engine']:8.1f} ns")
    print(f"dispatch overhead per exit:    {best['dispatch']:8.1f} ns   (target <= 1000 ns)")
    print(f"baseline: bare handler call:   {best['call']:8.1f} ns")
    print(f"ratio dispatch / bare call:    {best['dispatch'] / best['call']:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
