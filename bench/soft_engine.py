"""Soft engine speed beside QEMU TCG, in one run.

1. Guest instructions per second on a compute loop (guests/soft/compute.asm,
   a boot sector) on the soft engine and under ``qemu-system-x86_64 -accel tcg``
   (timed to its isa-debug-exit, minus QEMU's start-up measured by a
   zero-iteration run). Target: soft >= 0.7x QEMU TCG.
2. The cost of one OUT exit round trip (OUT, handler, resume) through the
   inline dispatcher (median of interleaved runs). Target: <= 3 us. Beside
   it, the same loop with the OUT not exiting (I/O bitmap), so the cost the
   exit adds is printed too.

Run: ``python bench/soft_engine.py``
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "guests")]

from build import build_guest  # noqa: E402

from smartvm_core.cpu import Registers, Segment, SpecialRegisters  # noqa: E402
from smartvm_core.engines.base import EngineOptions  # noqa: E402
from smartvm_core.engines.soft import SoftEngine  # noqa: E402
from smartvm_core.memory import GuestMemory  # noqa: E402
from smartvm_core.vmx import ExitReason, ProcBasedControls, VmcsField  # noqa: E402

ITER = 300_000_000
INSNS_PER_ITER = 10


def soft_run(image: bytes, *, out_exits: bool = True) -> tuple[float, int]:
    """Run a boot-sector image to its OUT to 0xF4; returns (seconds, exits handled before it).

    ``out_exits=False`` lets only port 0xF4 exit (I/O bitmap): every other OUT runs inside
    unicorn without an exit, the baseline of the round-trip measurement.
    """
    mem = GuestMemory()
    mem.add_ram(0, 0x100000)
    mem.write(0x7C00, image)
    engine = SoftEngine(mem, EngineOptions())
    vcpu = engine.create_vcpu(0)
    s = SpecialRegisters()
    s.cs = Segment.real_mode(0, code=True)
    for n in ("ds", "es", "ss", "fs", "gs"):
        setattr(s, n, Segment.real_mode(0))
    s.cr0 = 0x10
    vcpu.set_sregs(s)
    vcpu.set_regs(Registers(rip=0x7C00, rsp=0x7000))
    if not out_exits:
        f = VmcsField.CPU_BASED_VM_EXEC_CONTROL
        vcpu.vmcs[f] = (vcpu.vmcs[f] | ProcBasedControls.USE_IO_BITMAPS) & ~ProcBasedControls.UNCONDITIONAL_IO_EXITING
        vcpu.bitmaps.trap_port(0xF4)
    outs = 0

    def dispatch(e):
        nonlocal outs
        if e.reason == ExitReason.IO_INSTRUCTION and e.port == 0xF4:
            return False
        outs += 1
        return True

    vcpu.set_inline_dispatcher(dispatch)
    t0 = time.perf_counter()
    vcpu.run()
    dt = time.perf_counter() - t0
    engine.close()
    return dt, outs


def qemu_run(image_path: Path) -> float:
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-nographic", "-nodefaults", "-m", "16",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-drive", f"format=raw,file={image_path}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return time.perf_counter() - t0


def main() -> int:
    import argparse
    import statistics
    ap = argparse.ArgumentParser(description="soft engine vs QEMU TCG")
    ap.add_argument("--iter", type=int, default=ITER, help="loop iterations (10 instructions each)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are compared")
    args = ap.parse_args()
    big = build_guest("soft/compute", defines={"ITER": args.iter}).read_bytes()
    zero = build_guest("soft/compute", defines={"ITER": 1}).read_bytes()
    insns = args.iter * INSNS_PER_ITER
    have_qemu = shutil.which("qemu-system-x86_64") is not None
    soft_times, qemu_work = [], []
    with tempfile.TemporaryDirectory() as d:
        pb, pz = Path(d, "big.img"), Path(d, "zero.img")
        pb.write_bytes(big)
        pz.write_bytes(zero)
        for _ in range(args.rounds):   # interleaved, so load changes hit both sides
            soft_times.append(soft_run(big)[0])
            if have_qemu:
                startup = qemu_run(pz)
                qemu_work.append(max(qemu_run(pb) - startup, 1e-6))
    soft_dt = statistics.median(soft_times)
    soft_ips = insns / soft_dt
    print(f"soft engine : {insns:,} guest instructions, median {soft_dt:.3f} s of {args.rounds} "
          f"= {soft_ips / 1e6:.1f} M insn/s")
    if have_qemu:
        q_dt = statistics.median(qemu_work)
        q_ips = insns / q_dt
        print(f"QEMU TCG    : {insns:,} guest instructions, median {q_dt:.3f} s of {args.rounds} "
              f"(each minus a 1-iteration run's start-up) = {q_ips / 1e6:.1f} M insn/s")
        print(f"ratio soft/QEMU TCG: {soft_ips / q_ips:.2f}x (target >= 0.7x)")
    else:
        print("QEMU TCG    : qemu-system-x86_64 not installed, no baseline")
    count = 200_000
    out_img = build_guest("soft/outloop", defines={"COUNT": count}).read_bytes()
    trips, loops = [], []
    for _ in range(max(args.rounds, 5)):   # interleaved with its baseline
        dt, outs = soft_run(out_img)
        assert outs == count, outs
        trips.append(dt / outs * 1e6)
        dt, _ = soft_run(out_img, out_exits=False)
        loops.append(dt / count * 1e6)
    trip, loop = statistics.median(trips), statistics.median(loops)
    print(f"OUT round trip (OUT, handler, resume) through the inline dispatcher, {count:,} exits a run, "
          f"{len(trips)} runs: median {trip:.2f} us, best {min(trips):.2f} us (target <= 3 us)")
    print(f"  baseline, the same loop with OUT not exiting (I/O bitmap): median {loop:.2f} us an iteration; "
          f"the exit adds {trip - loop:.2f} us ({trip / loop:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
