"""Dirty tracking reports exactly the pages a guest wrote, on every engine."""

from ept_guests import ROUND, make

from smartvm_ept.plugin import get_policy


def run_rounds(engine, steps):
    harvests = []
    holder = {}
    m = make(engine, steps, ept={"dirty_tracking": True},
             on_round=lambda: harvests.append(get_policy(holder["m"]).harvest()))
    holder["m"] = m
    try:
        stop = m.run()
        assert stop.kind == "halted", stop
        # kvm: KVM_GET_DIRTY_LOG; soft: write-protect on first write
        assert get_policy(m).native_dirty == (engine == "kvm")
        harvests.append(get_policy(m).harvest())
        return m.memory.read(0x6FF0, 0x20), [m.memory.read_u16(a) for a in (0x2010, 0x3FFE, 0x12300)], harvests
    finally:
        m.close()


def test_dirty_pages_exact_per_round(engine):
    steps = [(0x2010, 0x1111), (0x3FFE, 0x2222), (0x12300, 0x3333), (0x80000, 0x4444), ROUND,
             (0x2010, 0x5555), (0x6FF0, 0xAB, 0x20), (0x9F000, 0x6666), ROUND,
             ROUND,
             (0x45678, 0x7777)]
    block, words, harvests = run_rounds(engine, steps)
    assert harvests == [
        [0x2000, 0x3000, 0x12000, 0x80000],
        [0x2000, 0x6000, 0x7000, 0x9F000],
        [],
        [0x45000],
    ]
    # every write reached memory (the tracking is invisible to the guest)
    assert block == b"\xab" * 0x20
    assert words == [0x5555, 0x2222, 0x3333]


def test_host_writes_are_not_guest_writes(engine):
    m = make(engine, [(0x5000, 1)], ept={"dirty_tracking": True})
    try:
        m.memory.write(0x30000, b"host")   # a loader or device writing: not the guest
        m.run()
        assert get_policy(m).harvest() == [0x5000]
        assert get_policy(m).harvest() == []
    finally:
        m.close()
