"""Copy-on-write clones and policy state save/restore."""

import pytest
from ept_guests import ROUND, SCRIPT_GPA, make, script

from smartvm_core import persist
from smartvm_core.cpu import Registers
from smartvm_core.errors import GuestMemoryError, SnapshotError
from smartvm_ept.cow import clone_machine
from smartvm_ept.plugin import get_policy

SHARED = {"ram_backing": "shared"}


def restart(m, steps):
    m.memory.write(SCRIPT_GPA, script(*steps))
    m.vcpus[0].set_regs(Registers(rip=0x1000, rflags=2))


def test_clone_writes_never_reach_the_parent(engine):
    parent = make(engine, [(0x20000, 0x1111), (0x30000, 0x2222)], ept=SHARED)
    child = make(engine, [(0x50000, 1)], ept=SHARED)
    try:
        assert parent.run().kind == "halted"
        clone_machine(parent, child)
        assert child.memory.read_u16(0x20000) == 0x1111       # started from the parent's memory
        restart(child, [(0x20000, 0x9999), (0x40000, 0x8888)])
        parent.memory.write_u16(0x30000, 0x7777)               # the parent moves on after the clone
        assert child.run().kind == "halted"
        assert child.memory.read_u16(0x20000) == 0x9999
        assert child.memory.read_u16(0x40000) == 0x8888
        assert child.memory.read_u16(0x30000) == 0x2222         # not the parent's later write
        assert parent.memory.read_u16(0x20000) == 0x1111        # the clone's writes did not leak
        assert parent.memory.read_u16(0x40000) == 0
        # the parent still runs, on its own memory
        restart(parent, [(0x40000, 0x4444)])
        assert parent.run().kind == "halted"
        assert parent.memory.read_u16(0x40000) == 0x4444 and child.memory.read_u16(0x40000) == 0x8888
    finally:
        child.close()
        parent.close()


def test_clone_needs_shared_ram():
    parent = make("soft", [(0x20000, 1)])
    child = make("soft", [(0x20000, 1)])
    try:
        with pytest.raises(GuestMemoryError, match="ram_backing"):
            clone_machine(parent, child)
    finally:
        child.close()
        parent.close()


def test_clone_refuses_other_layouts():
    parent = make("soft", [(0x20000, 1)], ept=SHARED)
    child = make("soft", [(0x20000, 1)], ept={**SHARED, "regions": [{"kind": "hole", "gpa": 0x70000, "size": 4096}]})
    try:
        with pytest.raises(SnapshotError, match="layouts"):
            clone_machine(parent, child)
    finally:
        child.close()
        parent.close()


def test_policy_state_round_trip(engine, tmp_path):
    cfg = {"dirty_tracking": True, "write_protect": [{"gpa": 0x30000, "size": 0x2000}]}
    steps = [(0x30010, 0x1111), (0x20000, 0x2222), ROUND, (0x31000, 0x3333), (0x40000, 0x4444)]
    m = make(engine, steps, ept=cfg)
    try:
        rounds = []
        m.pio.register(0x80, 1, type("P", (), {"read": lambda s, o, n: 0,
                                               "write": lambda s, o, n, v: rounds.append(m.pause(0) or 1)})(),
                       name="p")
        # run to the end; then save (dirty pages pending, one watched page fired, one not yet)
        restart(m, steps[:2])
        assert m.run().kind == "halted"
        state = persist.to_plain(get_policy(m).save())
        assert state["dirty"] == [0x20, 0x30] and state["watched"] == [0x31]
        path = tmp_path / "snap.zip"
        persist.save_snapshot(m, path)
        m2 = make(engine, [(0x50000, 1)], ept=cfg)
        try:
            persist.load_snapshot(m2, path)
            assert persist.to_plain(get_policy(m2).save()) == state     # the round trip
            # and it behaves as restored: the watch on 0x31000 still fires once, dirty log continues
            fired = []
            get_policy(m2).watches[0].callback = lambda a: fired.append(a.gpa)
            restart(m2, steps[3:])
            assert m2.run().kind == "halted"
            assert fired == [0x31000]
            assert get_policy(m2).harvest() == [0x20000, 0x30000, 0x31000, 0x40000]
            assert m2.memory.read_u16(0x30010) == 0x1111 and m2.memory.read_u16(0x31000) == 0x3333
        finally:
            m2.close()
    finally:
        m.close()


def test_restore_refuses_garbage():
    m = make("soft", [(0x20000, 1)], ept={"write_protect": [{"gpa": 0x30000}]})
    try:
        pol = get_policy(m)
        good = pol.save()
        with pytest.raises(SnapshotError):
            pol.restore({**good, "dirty": "nope"})
        with pytest.raises(SnapshotError, match="0x90000"):
            pol.restore({**good, "watched": [0x90]})
        with pytest.raises(SnapshotError):
            pol.restore({"dirty": []})
        pol.restore(good)
        assert pol.save() == good
    finally:
        m.close()
