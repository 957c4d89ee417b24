"""Milliseconds per dirty-log harvest of a 256 MiB guest that dirties a known set of pages.

The guest (guests/ept/dirty32.asm) writes one dword to each of PAGES pages
spread over its RAM, then signals the host (OUT 0x80); the host harvests
through the smartvm-ept policy (``get_policy(m).harvest()``) and checks the
harvest is exactly the pages written. Per engine it prints the mean and
best milliseconds per harvest, and beside it the baseline: the engine-level
primitive alone (``kvm``: ``KVM_GET_DIRTY_LOG`` on every RAM slot through
``Engine.dirty_log``; ``soft``: a pure-Python set-to-sorted-list of the same
pages, the floor of any harvest there), with the ratio. No assertions.

    PYTHONPATH=... python bench/dirty_log.py [--pages 512] [--rounds 6] [--engines soft,kvm]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "guests", ROOT / "plugins" / "ept", ROOT / "plugins" / "exits", ROOT / "plugins" / "boot"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

MEMORY = 256 << 20
BASE = 0x200000


def run_engine(engine: str, pages: int, rounds: int) -> dict | None:
    import smartvm_boot.plugin
    import smartvm_ept.plugin
    import smartvm_exits.plugin
    from build import build_guest
    from smartvm_core.testing import make_machine
    from smartvm_ept.plugin import get_policy

    stride = ((MEMORY - BASE - 0x10000) // pages) & ~0xFFF
    image = build_guest("ept/dirty32", defines={"PAGES": pages, "STRIDE": stride, "BASE": BASE, "ROUNDS": rounds})
    expected = [BASE + i * stride for i in range(pages)]
    m = make_machine({"machine": {"engine": engine, "memory": MEMORY},
                      "image": [{"path": str(image), "format": "flat", "address": 0x10000, "entry": 0x10000,
                                 "mode": "protected32"}],
                      "ept": {"dirty_tracking": True}, "stop": {"timeout": 600}},
                     plugins=[("exits", smartvm_exits.plugin), ("boot", smartvm_boot.plugin),
                              ("ept", smartvm_ept.plugin)], entry_points=False)
    policy = get_policy(m)
    times, baseline, wrong = [], [], 0
    ram = [r for r in m.memory.regions if r.kind == "ram" and not r.readonly]

    class Port:
        def read(self, offset, size):
            return 0xFF

        def write(self, offset, size, value):
            nonlocal wrong
            t0 = time.perf_counter()
            got = policy.harvest()
            times.append((time.perf_counter() - t0) * 1e3)
            # the loader's stack and the page-table area may also be written; count only mismatches
            if [g for g in got if g >= BASE] != expected:
                wrong += 1
            t0 = time.perf_counter()
            if policy.native_dirty:
                for r in ram:
                    m.engine.dirty_log(r)
            else:
                sorted(set(expected))
            baseline.append((time.perf_counter() - t0) * 1e3)

    m.pio.register(0x80, 1, Port(), name="harvest")
    try:
        t0 = time.perf_counter()
        stop = m.run()
        wall = time.perf_counter() - t0
        mode = "KVM_GET_DIRTY_LOG" if policy.native_dirty else "write-protect on first write"
    finally:
        m.close()
    return {"engine": engine, "mode": mode, "stop": stop.kind, "times": times, "baseline": baseline,
            "wrong": wrong, "wall": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--engines", default="soft,kvm")
    args = ap.parse_args()
    from smartvm_core.engines.kvm.engine import KvmEngine
    from smartvm_core.engines.soft import SoftEngine
    probes = {"soft": SoftEngine.probe, "kvm": KvmEngine.probe}
    print(f"dirty-log harvest, 256 MiB guest, {args.pages} pages dirtied per round, {args.rounds} rounds")
    for engine in args.engines.split(","):
        avail = probes[engine]()
        if not avail.usable:
            print(f"{engine:5s} skipped: {avail.reason}")
            continue
        r = run_engine(engine, args.pages, args.rounds)
        t, b = r["times"], r["baseline"]
        if not t:
            print(f"{engine:5s} no harvest happened (stop: {r['stop']})")
            continue
        steady = t[1:] or t   # the first round on soft also splits unicorn's memory regions
        print(f"{engine:5s} [{r['mode']}] ms/harvest: first {t[0]:.3f}, steady mean {statistics.mean(steady):.3f}, "
              f"best {min(t):.3f}; baseline {statistics.mean(b):.3f} ms; ratio {statistics.mean(steady) / max(statistics.mean(b), 1e-9):.1f}x; "
              f"exact harvests {len(t) - r['wrong']}/{len(t)}; run {r['wall']:.1f} s (stop: {r['stop']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
