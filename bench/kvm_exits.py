"""VM-exit round trips on the kvm engine, beside the bare C KVM_RUN loop and QEMU.

Three exit kinds, each COUNT times, from the same real-mode guest
(guests/kvm/bench_exits.asm):

* ``io``: OUT to port 0x80, the POST-code device on the port bus;
* ``mmio``: a write to 0xD0000, a small device on the MMIO bus;
* ``unclaimed-in``: IN from port 0x2E0, which no device claims.

Each runs through the whole framework (``smartvm_core.testing.make_machine``
with the installed plugins, as ``smartvm run`` builds it: builder, loop,
dispatch table with every plugin's handlers, built-in bus handlers, device)
and, for reference, through the bare Python bindings (``VcpuFd.run`` in a
loop). The baseline is bench/kvm_exits_loop.c, built with gcc into
bench/build/ and run on the same guest image in the same run; the target is
at least 0.7x its exits per second.

For ``unclaimed-in`` the same loop also runs as a BIOS image
(guests/kvm/bench_qemu_bios.asm) under ``qemu-system-x86_64 -accel kvm -M pc
-nodefaults``. Port 0x2E0 belongs to no QEMU device there (``info mtree``
shows it in the bare ``io`` root region), so every IN leaves KVM for QEMU's
user space, as it does for us. Each round runs QEMU twice in fresh processes,
with BASE = 1000 and with BASE + COUNT reads; QEMU's time per exit is
``(t(BASE + COUNT) - median over the rounds of t(BASE)) / COUNT``, so its
start-up (and its first BASE exits) cancel out, a single slow start-up does
not skew a round, and what remains is the same COUNT exits the others make.
The target is less time per exit than QEMU.

The runs of every contender are interleaved, REPEAT rounds (a shared host's
exit cost drifts with its load); each figure is printed as the best and the
median of its rounds. Framework times are the wall time of
``Machine.run()``, start-up of the run included.

usage: python bench/kvm_exits.py [COUNT] [REPEAT]      (defaults 100000, 5)
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

from smartvm_core.engines.kvm.engine import KvmEngine  # noqa: E402

BUILD = Path(__file__).resolve().parent / "build"
MODES = {"io": 0, "mmio": 1, "unclaimed-in": 2}
LOAD = 0x7C00
MEM_KIB = 640
QEMU_BASE = 1000


def build_c_loop() -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SystemExit("gcc is not installed: the C baseline cannot be built")
    BUILD.mkdir(exist_ok=True)
    src = Path(__file__).resolve().parent / "kvm_exits_loop.c"
    out = BUILD / "kvm_exits_loop"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run([gcc, "-O2", "-o", str(out), str(src)], check=True)
    return out


def c_loop(binary: Path, image: Path) -> tuple[int, float]:
    out = subprocess.run([str(binary), str(image), hex(LOAD), str(MEM_KIB)], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), float(out[1])


class BenchMmioDevice:
    """A 4 KiB MMIO register file that counts accesses."""

    name = "bench-mmio"

    def __init__(self) -> None:
        self.accesses = 0

    def read(self, offset: int, size: int) -> int:
        self.accesses += 1
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.accesses += 1


def framework(image: Path) -> tuple[int, float]:
    from smartvm_core.testing import make_machine
    machine = make_machine({
        "machine": {"engine": "kvm", "memory": f"{MEM_KIB}K"},
        "image": [{"path": str(image), "format": "flat", "address": LOAD, "entry": LOAD, "mode": "real"}],
        "device": [{"type": "isa-debug"}],
    })
    try:
        machine.mmio.register(0xD0000, 0x1000, BenchMmioDevice())
        t0 = time.perf_counter()
        stop = machine.run()
        dt = time.perf_counter() - t0
        if stop.kind != "exit-code":
            raise SystemExit(f"framework run stopped with {stop.kind}: {stop.detail}")
        return sum(machine.exit_counts().values()), dt
    finally:
        machine.close()


def bare_bindings(image: Path) -> tuple[int, float]:
    """The Python bindings alone: VcpuFd.run and the least work per exit."""
    import ctypes
    import mmap
    from smartvm_core.arch.modes import real_mode_state
    from smartvm_core.engines.kvm import structs as s
    from smartvm_core.engines.kvm.engine import regs_to_kvm, sregs_to_kvm
    from smartvm_core.engines.kvm.system import Kvm
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.set_tss_addr(0xFFFBD000)
    mem = mmap.mmap(-1, MEM_KIB * 1024)
    mem[LOAD:LOAD + image.stat().st_size] = image.read_bytes()
    anchor = ctypes.c_char.from_buffer(mem)
    vm.set_user_memory_region(0, 0, MEM_KIB * 1024, ctypes.addressof(anchor))
    vcpu = vm.create_vcpu(0)
    regs, sregs = real_mode_state(0, LOAD, sp=0x7000)
    vcpu.set_sregs(sregs_to_kvm(sregs, vcpu.get_sregs()))
    vcpu.set_regs(regs_to_kvm(regs))
    run = vcpu.run_struct
    exits = 0
    t0 = time.perf_counter()
    while True:
        reason = vcpu.run()
        exits += 1
        if reason == s.KVM_EXIT_IO and run.io.direction == s.KVM_EXIT_IO_OUT and run.io.port == 0xF4:
            break
        if reason == s.KVM_EXIT_HLT:
            break
    dt = time.perf_counter() - t0
    del run
    vcpu.close()
    vm.close()
    kvm.close()
    del anchor
    mem.close()
    return exits, dt


def qemu_command(qemu: str, count: int) -> list[str]:
    image = build_guest("kvm/bench_qemu_bios", defines={"COUNT": count})
    return [qemu, "-accel", "kvm", "-M", "pc", "-nodefaults", "-display", "none", "-no-reboot",
            "-bios", str(image), "-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-m", "16"]


def qemu_once(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    if proc.returncode != 1:  # isa-debug-exit: (0 << 1) | 1
        raise RuntimeError(f"qemu exited with {proc.returncode}: {proc.stderr.strip()[:300]}")
    return dt


def summary(per_exit: list[float]) -> tuple[float, float]:
    """(best, median) seconds per exit."""
    return min(per_exit), statistics.median(per_exit)


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    a = KvmEngine.probe()
    if not a.usable:
        print(f"kvm engine unusable here: {a.reason}")
        return 0
    print(f"kvm exits benchmark: {count} exits per kind, {repeat} interleaved rounds; host KVM "
          f"{'hardware-accelerated' if a.accelerated else 'not hardware-accelerated (' + a.reason + ')'}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    c_binary = build_c_loop()
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        print("qemu-system-x86_64 not installed: no QEMU baseline")
    results: dict[str, tuple[float, float]] = {}
    q_result = None
    for kind, mode in MODES.items():
        image = build_guest("kvm/bench_exits", defines={"COUNT": count, "MODE": mode})
        runs: dict[str, list[float]] = {"c": [], "bare": [], "framework": []}
        q_small_t: list[float] = []
        q_big_t: list[float] = []
        with_qemu = kind == "unclaimed-in" and qemu is not None
        if with_qemu:
            q_small, q_big = qemu_command(qemu, QEMU_BASE), qemu_command(qemu, QEMU_BASE + count)
        for _ in range(repeat):
            for name, fn in (("c", lambda: c_loop(c_binary, image)), ("bare", lambda: bare_bindings(image)),
                             ("framework", lambda: framework(image))):
                n, dt = fn()
                runs[name].append(dt / n)
            if with_qemu:
                try:
                    t_small = qemu_once(q_small)
                    t_big = qemu_once(q_big)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"  QEMU baseline failed: {e}")
                    with_qemu = False
                    continue
                q_small_t.append(t_small)
                q_big_t.append(t_big)
        (c_best, c_med), (b_best, b_med), (f_best, f_med) = (summary(runs[k]) for k in ("c", "bare", "framework"))
        results[kind] = (f_best, f_med)
        print(f"\n[{kind}]                          best: us/exit  ratio   median: us/exit  ratio")
        print(f"  C KVM_RUN loop (baseline):       {1e6 * c_best:8.2f}           {1e6 * c_med:8.2f}")
        print(f"  Python bindings, bare loop:      {1e6 * b_best:8.2f}  {c_best / b_best:5.2f}x    "
              f"{1e6 * b_med:8.2f}  {c_med / b_med:5.2f}x")
        print(f"  framework (loop+bus+device):     {1e6 * f_best:8.2f}  {c_best / f_best:5.2f}x    "
              f"{1e6 * f_med:8.2f}  {c_med / f_med:5.2f}x   (exits/s vs C; target >= 0.70x)")
        if with_qemu and q_big_t:
            start = statistics.median(q_small_t)
            q_result = summary([(t - start) / count for t in q_big_t])
            print(f"  (QEMU start-up with {QEMU_BASE} reads: median {start:.3f} s, "
                  f"min {min(q_small_t):.3f} s, max {max(q_small_t):.3f} s)")
    if q_result is not None:
        (q_best, q_med), (f_best, f_med) = q_result, results["unclaimed-in"]
        print("\n[unclaimed-in vs QEMU -accel kvm]   best: us/exit            median: us/exit")
        print(f"  qemu-system-x86_64 -accel kvm:   {1e6 * q_best:8.2f}                {1e6 * q_med:8.2f}")
        print(f"  smartvm kvm framework:           {1e6 * f_best:8.2f}                {1e6 * f_med:8.2f}")
        print(f"  QEMU/smartvm time per exit:      {q_best / f_best:8.2f}x               {q_med / f_med:8.2f}x"
              "   (target > 1.00x: faster than QEMU)")
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
