"""Write-protected ranges with callbacks: once per page, allow, drop, stop; on every engine."""

import pytest
from ept_guests import make

from smartvm_ept.policy import EptAccess, WatchRange
from smartvm_ept.plugin import get_policy


def test_callback_fires_once_per_protected_page(engine):
    fired: list[EptAccess] = []
    steps = [(0x20010, 0x1111), (0x20020, 0x2222), (0x21ffe, 0x3333), (0x22000, 0x4444),
             (0x24000, 0x5555), (0x21800, 0x6666), (0x20010, 0x7777), (0x22f00, 0xCD, 0x200)]
    m = make(engine, steps)
    try:
        policy = get_policy(m)
        policy.watch(WatchRange(0x20000, 0x3000, callback=lambda a: fired.append(a), name="pt"))
        assert m.run().kind == "halted"
        # the first write to each of the three pages, in guest order
        assert [(a.gpa, a.access, a.value, a.size) for a in fired] == [
            (0x20010, "write", 0x1111, 2), (0x21ffe, "write", 0x3333, 2), (0x22000, "write", 0x4444, 2)]
        assert policy.watch_fired == {0x20: 1, 0x21: 1, 0x22: 1}
        assert policy.watched == {}
        # every write went through, also those that fired and the rep stosb over the boundary
        mem = m.memory
        assert [mem.read_u16(a) for a in (0x20010, 0x20020, 0x21ffe, 0x22000, 0x24000, 0x21800)] == \
            [0x7777, 0x2222, 0x3333, 0x4444, 0x5555, 0x6666]
        assert mem.read(0x22f00, 0x200) == b"\xcd" * 0x200
    finally:
        m.close()


@pytest.mark.parametrize("action", ["allow", "drop"])
def test_allow_and_drop_fire_on_every_write(engine, action):
    fired = []
    steps = [(0x30010, 0x1111), (0x30010, 0x2222), (0x30020, 0x3333), (0x31000, 0x4444)]
    m = make(engine, steps, ept={"write_protect": [{"gpa": 0x30000, "size": 0x1000, "action": action}]})
    try:
        policy = get_policy(m)
        policy.watches[0].callback = lambda a: fired.append((a.gpa, a.value))
        assert m.run().kind == "halted"
        assert fired == [(0x30010, 0x1111), (0x30010, 0x2222), (0x30020, 0x3333)]
        assert policy.watched == {0x30: policy.watches[0]}   # still protected
        got = (m.memory.read_u16(0x30010), m.memory.read_u16(0x30020))
        assert got == ((0x2222, 0x3333) if action == "allow" else (0, 0))
        assert m.memory.read_u16(0x31000) == 0x4444
    finally:
        m.close()


def test_stop_action_stops_the_vm(engine):
    m = make(engine, [(0x30010, 0x1111), (0x31000, 0x4444)],
             ept={"write_protect": [{"gpa": 0x30000, "action": "stop"}]})
    try:
        stop = m.run()
        assert stop.kind == "user" and "0x30000" in stop.detail
        assert m.memory.read_u16(0x30010) == 0
        assert m.memory.read_u16(0x31000) == 0   # the VM never got there
    finally:
        m.close()


def test_callback_can_answer_another_action(engine):
    answers = iter(["drop", None])
    m = make(engine, [(0x30010, 0x1111), (0x30010, 0x2222), (0x30010, 0x3333)],
             ept={"write_protect": [{"gpa": 0x30000, "action": "unprotect"}]})
    try:
        get_policy(m).watches[0].callback = lambda a: next(answers)
        assert m.run().kind == "halted"
        # first dropped, second unprotects (and goes through), third is a plain write
        assert m.memory.read_u16(0x30010) == 0x3333
        assert get_policy(m).watch_fired == {0x30: 2}
    finally:
        m.close()


def test_write_protect_and_dirty_tracking_together(engine):
    m = make(engine, [(0x30010, 0x1111), (0x40000, 0x2222)],
             ept={"dirty_tracking": True, "write_protect": [{"gpa": 0x30000, "action": "allow"}]})
    try:
        assert m.run().kind == "halted"
        assert get_policy(m).harvest() == [0x30000, 0x40000]
        assert m.memory.read_u16(0x30010) == 0x1111
    finally:
        m.close()
