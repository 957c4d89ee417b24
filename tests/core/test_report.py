"""The run report carries each device's counters, in text and in JSON."""

from __future__ import annotations

import json

from scripted_engine import ScriptedPlugin
from smartvm_core import hookimpl
from smartvm_core.report import RunReport, device_counters
from smartvm_core.testing import run_experiment


class _Counts:
    def __init__(self) -> None:
        self.reads = 0
        self.writes = 0

    def as_dict(self) -> dict[str, int]:
        return {"reads": self.reads, "writes": self.writes}


class Latch:
    """A device on port 0x70 that counts its accesses; port 0x71 is a part with its own counts."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counters = _Counts()
        self.parts = {f"{name}-data": Part()}

    def read(self, o, s):
        self.counters.reads += 1
        return 0

    def write(self, o, s, v):
        self.counters.writes += 1


class Part:
    def __init__(self) -> None:
        self.counters = {"writes": 0, "odd": 0}

    def read(self, o, s):
        return 0

    def write(self, o, s, v):
        self.counters["writes"] += 1
        self.counters["odd"] += v & 1


def test_device_counters_are_in_the_run_report():
    class P:
        @hookimpl
        def setup_machine(self, machine):
            latch = Latch("latch")
            machine.devices["latch"] = latch
            machine.devices["quiet"] = Latch("quiet")
            machine.devices["plain"] = object()  # keeps no counters: no row
            machine.pio.register(0x70, 1, latch, "latch")
            machine.pio.register(0x71, 1, latch.parts["latch-data"], "latch-data")

            class Stop:
                def read(self, o, s):
                    return 0

                def write(self, o, s, v):
                    machine.request_exit(v)
            machine.pio.register(0xF4, 1, Stop(), "exit")

    def io(port, value, is_in=False):
        return {"reason": "IO_INSTRUCTION", "port": port, "size": 1, "is_in": is_in, "value": value,
                "instruction_length": 1}

    script = [io(0x70, 1), io(0x70, 2), io(0x70, 0, is_in=True), io(0x71, 3), io(0xF4, 0)]
    r = run_experiment({"machine": {"engine": "scripted", "memory": "1M"}, "engine": {"options": {"script": script}}},
                       plugins=[("scripted", ScriptedPlugin()), ("p", P())], entry_points=False,
                       disable=("soft", "kvm"))
    assert r.report.devices == {"latch": {"reads": 1, "writes": 2}, "latch-data": {"writes": 1, "odd": 1},
                                "quiet": {"reads": 0, "writes": 0}, "quiet-data": {"writes": 0, "odd": 0}}
    data = json.loads(r.report.to_json())
    assert data["devices"]["latch"] == {"reads": 1, "writes": 2}
    text = r.report.to_text().splitlines()
    rows = text[text.index("-- devices --") + 1:]
    assert rows[:4] == ["latch       reads 1, writes 2", "latch-data  writes 1, odd 1",
                        "quiet       no accesses", "quiet-data  no accesses"]


def test_device_counters_accepts_mappings_and_as_dict_and_ignores_the_rest():
    class D:
        counters = {"reads": 3, "note": "text", "bad_size": 1}

    assert device_counters(D()) == {"reads": 3, "bad_size": 1}
    assert device_counters(object()) is None
    report = RunReport()
    report.add_device_counters("x", {"reads": 1})
    report.add_device_counters("x", {"reads": 2, "writes": 1})
    assert report.devices == {"x": {"reads": 3, "writes": 1}}
    assert "-- devices --" not in RunReport().to_text()
