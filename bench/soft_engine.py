"""Soft engine speed beside QEMU TCG, in one run.

1. Guest instructions per second on a compute loop (guests/soft/compute.asm,
   a boot sector) on the soft engine and under ``qemu-system-x86_64 -accel tcg``
   (timed to its isa-debug-exit, minus QEMU's start-up measured by a
   zero-iteration run). Target: soft >= 0.7x QEMU TCG.
2. The cost of one OUT exit round trip (OUT, handler, resume) through the
   inline dispatcher. Target: <= 3 us.

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
from smartvm_core.vmx import ExitReason  # noqa: E402

ITER = 30_000_000
INSNS_PER_ITER = 10


def soft_run(image: bytes) -> tuple[float, int]:
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
    big = build_guest("soft/compute", defines={"ITER": ITER}).read_bytes()
    zero = build_guest("soft/compute", defines={"ITER": 1}).read_bytes()
    insns = ITER * INSNS_PER_ITER
    soft_dt, _ = soft_run(big)
    soft_ips = insns / soft_dt
    print(f"soft engine : {insns:,} guest instructions in {soft_dt:.3f} s = {soft_ips / 1e6:.1f} M insn/s")
    if shutil.which("qemu-system-x86_64"):
        with tempfile.TemporaryDirectory() as d:
            pb, pz = Path(d, "big.img"), Path(d, "zero.img")
            pb.write_bytes(big)
            pz.write_bytes(zero)
            startup = min(qemu_run(pz) for _ in range(3))
            total = min(qemu_run(pb) for _ in range(2))
        q_ips = insns / max(total - startup, 1e-6)
        print(f"QEMU TCG    : {insns:,} guest instructions in {total - startup:.3f} s "
              f"(start-up {startup:.3f} s subtracted) = {q_ips / 1e6:.1f} M insn/s")
        print(f"ratio soft/QEMU TCG: {soft_ips / q_ips:.2f}x (target >= 0.7x)")
    else:
        print("QEMU TCG    : qemu-system-x86_64 not installed, no baseline")
    count = 200_000
    out_img = build_guest("soft/outloop", defines={"COUNT": count}).read_bytes()
    dt, outs = soft_run(out_img)
    print(f"OUT round trip through the inline dispatcher: {dt / outs * 1e6:.2f} us "
          f"({outs:,} exits, target <= 3 us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
