"""The bus's per-address lookup cache never answers with a stale mapping."""

from smartvm_core.bus import CACHE_LIMIT, UNCLAIMED_LOG, Bus


class Reg:
    def __init__(self, name):
        self.name = name
        self.log = []

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        return 0x10 + offset

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))


def test_unregister_and_register_replace_cached_answers():
    bus = Bus("pio", 0x10000)
    assert bus.read(0x2E0, 1) == 0xFF            # unclaimed, and now cached as such
    a = Reg("a")
    rng = bus.register(0x2E0, 4, a)
    assert bus.read(0x2E1, 1) == 0x11            # the new device, not the cached "unclaimed"
    bus.unregister(rng)
    assert bus.read(0x2E1, 1) == 0xFF            # gone again
    b = Reg("b")
    bus.register(0x2E0, 2, b)
    bus.write(0x2E1, 1, 7)
    assert a.log == [("r", 1, 1)] and b.log == [("w", 1, 1, 7)]
    assert (bus.unclaimed_reads, bus.unclaimed_writes) == (2, 0)


def test_cached_address_still_checks_the_access_size():
    bus = Bus("pio", 0x10000)
    d = Reg("d")
    bus.register(0x60, 1, d)
    assert bus.read(0x60, 1) == 0x10
    assert bus.read(0x60, 2) == 0xFFFF           # straddles the end of the range: unclaimed
    assert bus.unclaimed_reads == 1 and bus.unclaimed_log[-1] == ("read", 0x60, 2)


def test_cache_and_log_stay_bounded_under_a_guest_scan():
    bus = Bus("mmio", 1 << 52)
    bus.register(0x1000, 0x1000, Reg("d"))
    for addr in range(0x100000, 0x100000 + 3 * CACHE_LIMIT):
        bus.read(addr, 4)
    assert len(bus.cache) <= CACHE_LIMIT
    assert len(bus.unclaimed_log) == UNCLAIMED_LOG
    assert bus.unclaimed_log[-1] == ("read", 0x100000 + 3 * CACHE_LIMIT - 1, 4)
    assert bus.read(0x1004, 4) == 0x14           # the device is still found after the flushes
