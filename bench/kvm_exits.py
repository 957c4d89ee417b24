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
user space, as it does for us. The target is less time per exit than QEMU.

Every contender is timed the same way: the guest frames its loop with two
writes to port 0x402, ``'S'`` before the first exit and ``'E'`` after the
last, and the time between those two marker exits, as the VMM sees them,
covers the same COUNT + 1 exits (the loop's and the ``'E'`` exit) on every
side. The C loop and both Python loops read a clock when they handle the
markers; QEMU gets an ``isa-debugcon`` at 0x402 writing to a pipe, and the
benchmark reads the clock as each marker byte arrives. Start-up, the first
exits of a fresh vCPU and shut-down stay out of every figure alike.

The runs of every contender are interleaved, REPEAT rounds (a shared host's
exit cost drifts with its load); each figure is printed as the best and the
median of its rounds.

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
#: the port the guests write their 'S' and 'E' markers to
MARK_PORT = 0x402


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
    """(exits, seconds) between the guest's markers."""
    out = subprocess.run([str(binary), str(image), hex(LOAD), str(MEM_KIB)], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), float(out[1])


class MarkerDevice:
    """Port 0x402: notes the time of the guest's 'S' and 'E' marker writes."""

    name = "bench-marker"

    def __init__(self) -> None:
        self.times: dict[int, float] = {}

    def read(self, offset: int, size: int) -> int:
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        self.times[value & 0xFF] = time.perf_counter()

    def interval(self, what: str) -> float:
        try:
            return self.times[ord("E")] - self.times[ord("S")]
        except KeyError:
            raise SystemExit(f"{what}: the guest wrote no 'S'/'E' markers to port {MARK_PORT:#x}") from None


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


def framework(image: Path, count: int) -> tuple[int, float]:
    """(exits, seconds) between the guest's markers, through the whole framework."""
    from smartvm_core.testing import make_machine
    machine = make_machine({
        "machine": {"engine": "kvm", "memory": f"{MEM_KIB}K"},
        "image": [{"path": str(image), "format": "flat", "address": LOAD, "entry": LOAD, "mode": "real"}],
        "device": [{"type": "isa-debug"}],
    })
    try:
        machine.mmio.register(0xD0000, 0x1000, BenchMmioDevice())
        marker = MarkerDevice()
        machine.pio.register(MARK_PORT, 1, marker)
        stop = machine.run()
        if stop.kind != "exit-code":
            raise SystemExit(f"framework run stopped with {stop.kind}: {stop.detail}")
        return count + 1, marker.interval("framework")
    finally:
        machine.close()


def bare_bindings(image: Path, count: int) -> tuple[int, float]:
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
    mm = vcpu.run_mmap
    marks = {}
    while True:
        reason = vcpu.run()
        if reason == s.KVM_EXIT_IO and run.io.direction == s.KVM_EXIT_IO_OUT:
            if run.io.port == MARK_PORT:
                marks[mm[run.io.data_offset]] = time.perf_counter()
            elif run.io.port == 0xF4:
                break
        if reason == s.KVM_EXIT_HLT:
            break
    del run
    vcpu.close()
    vm.close()
    kvm.close()
    del anchor
    mem.close()
    if ord("S") not in marks or ord("E") not in marks:
        raise SystemExit(f"bare bindings: the guest wrote no 'S'/'E' markers to port {MARK_PORT:#x}")
    return count + 1, marks[ord("E")] - marks[ord("S")]


def qemu_command(qemu: str, count: int) -> list[str]:
    image = build_guest("kvm/bench_qemu_bios", defines={"COUNT": count})
    return [qemu, "-accel", "kvm", "-M", "pc", "-nodefaults", "-display", "none", "-no-reboot",
            "-bios", str(image), "-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-m", "16",
            "-chardev", "stdio,id=mark", "-device", f"isa-debugcon,iobase={MARK_PORT:#x},chardev=mark"]


def qemu_once(cmd: list[str], count: int) -> tuple[int, float]:
    """(exits, seconds) between the guest's markers, as their bytes arrive on QEMU's debugcon pipe."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marks: dict[bytes, float] = {}
    try:
        fd = proc.stdout.fileno()
        while len(marks) < 2:
            byte = os.read(fd, 1)   # unbuffered: the clock is read as each marker arrives
            if not byte:
                break
            marks[byte] = time.perf_counter()
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 1:  # isa-debug-exit: (0 << 1) | 1
        raise RuntimeError(f"qemu exited with {proc.returncode}: {err.decode(errors='replace').strip()[:300]}")
    if b"S" not in marks or b"E" not in marks:
        raise RuntimeError(f"qemu: no 'S'/'E' markers arrived from the debugcon at {MARK_PORT:#x}")
    return count + 1, marks[b"E"] - marks[b"S"]


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
        q_runs: list[float] = []
        with_qemu = kind == "unclaimed-in" and qemu is not None
        if with_qemu:
            q_cmd = qemu_command(qemu, count)
        for _ in range(repeat):
            for name, fn in (("c", lambda: c_loop(c_binary, image)), ("bare", lambda: bare_bindings(image, count)),
                             ("framework", lambda: framework(image, count))):
                n, dt = fn()
                runs[name].append(dt / n)
            if with_qemu:
                try:
                    n, dt = qemu_once(q_cmd, count)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"  QEMU baseline failed: {e}")
                    with_qemu = False
                    continue
                q_runs.append(dt / n)
        (c_best, c_med), (b_best, b_med), (f_best, f_med) = (summary(runs[k]) for k in ("c", "bare", "framework"))
        results[kind] = (f_best, f_med)
        print(f"\n[{kind}]                          best: us/exit  ratio   median: us/exit  ratio")
        print(f"  C KVM_RUN loop (baseline):       {1e6 * c_best:8.2f}           {1e6 * c_med:8.2f}")
        print(f"  Python bindings, bare loop:      {1e6 * b_best:8.2f}  {c_best / b_best:5.2f}x    "
              f"{1e6 * b_med:8.2f}  {c_med / b_med:5.2f}x")
        print(f"  framework (loop+bus+device):     {1e6 * f_best:8.2f}  {c_best / f_best:5.2f}x    "
              f"{1e6 * f_med:8.2f}  {c_med / f_med:5.2f}x   (exits/s vs C; target >= 0.70x)")
        if with_qemu and q_runs:
            q_result = summary(q_runs)
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
