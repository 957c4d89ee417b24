"""Access tracing: first touch, read, write and fetch per page, to a trace file."""

import json

import pytest
from ept_guests import SCRIPT_GPA, make

from smartvm_core.errors import ConfigError
from smartvm_ept.plugin import get_policy


def test_trace_file_records_first_accesses_per_page(tmp_path):
    trace = tmp_path / "trace.jsonl"
    steps = [(0x20010, 0x1111), (0x20020, 0x2222), (0x6FF0, 0xAB, 0x20)]
    m = make("soft", steps, ept={"trace_file": str(trace)})
    try:
        assert m.run().kind == "halted"
        events = [json.loads(line) for line in trace.read_text().splitlines()]
        assert events == get_policy(m).trace_events and events
        per_page = {}
        for ev in events:
            per_page.setdefault(ev["page"], []).append(ev["access"])
            assert ev["first_touch"] == (len(per_page[ev["page"]]) == 1)
        assert per_page[0x1000] == ["fetch"]                         # the code page: fetched only
        assert per_page[SCRIPT_GPA & ~0xFFF] == ["read"]             # the script page: read only
        assert per_page[0x20000] == ["write"]
        assert per_page[0x6000] == ["write"] and per_page[0x7000] == ["write"]
        assert set(per_page) == {0x0, 0x1000, 0x20000, 0x6000, 0x7000}
        # each access kind appears at most once per page
        assert all(len(v) == len(set(v)) for v in per_page.values())
        # and the guest's writes all landed
        assert m.memory.read_u16(0x20020) == 0x2222 and m.memory.read(0x6FF0, 0x20) == b"\xab" * 0x20
    finally:
        m.close()


def test_trace_only_writes(tmp_path):
    trace = tmp_path / "w.jsonl"
    m = make("soft", [(0x20010, 0x1111)], ept={"trace_file": str(trace), "trace_access": ["write"]})
    try:
        assert m.run().kind == "halted"
        assert [(e["page"], e["access"]) for e in map(json.loads, trace.read_text().splitlines())] == \
            [(0x20000, "write")]
    finally:
        m.close()


def test_bad_trace_access_named():
    with pytest.raises(ConfigError) as e:
        make("soft", [(0x20010, 1)], ept={"trace_file": "x", "trace_access": ["peek"]})
    assert e.value.key == "ept.trace_access"


def test_kvm_refuses_read_and_fetch_tracing(tmp_path):
    from smartvm_core.testing import engine_availability
    avail = engine_availability("kvm")
    if not avail.usable:
        pytest.skip(f"kvm engine unusable here: {avail.reason}")
    with pytest.raises(ConfigError, match="cannot trap"):
        make("kvm", [(0x20010, 1)], ept={"trace_file": str(tmp_path / "t")})
