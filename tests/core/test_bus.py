import pytest

from smartvm_core.bus import Bus
from smartvm_core.errors import BusConflict


class Reg:
    def __init__(self, name):
        self.name = name
        self.log = []

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        return offset

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))


def test_devices_see_offsets_from_their_base():
    bus = Bus("pio", 0x10000)
    a, b = Reg("uart"), Reg("pic")
    bus.register(0x3F8, 8, a)
    bus.register(0x20, 2, b)
    assert bus.read(0x3FD, 1) == 5
    bus.write(0x21, 1, 0xFF)
    assert a.log == [("r", 5, 1)]
    assert b.log == [("w", 1, 1, 0xFF)]


def test_overlap_is_refused_naming_both_devices_and_ranges():
    bus = Bus("pio", 0x10000)
    bus.register(0x3F8, 8, Reg("uart0"))
    with pytest.raises(BusConflict) as e:
        bus.register(0x3FC, 2, Reg("uart-clash"))
    msg = str(e.value)
    assert "uart-clash at [0x3fc, 0x3fd]" in msg and "uart0 at [0x3f8, 0x3ff]" in msg
    with pytest.raises(BusConflict):
        bus.register(0x3F0, 9, Reg("below"))  # runs into 0x3F8
    bus.register(0x3F0, 8, Reg("adjacent"))   # touching is fine
    bus.register(0x400, 1, Reg("after"))


def test_range_outside_the_bus_is_refused():
    bus = Bus("pio", 0x10000)
    with pytest.raises(BusConflict, match="outside the bus"):
        bus.register(0xFFFF, 2, Reg("wrap"))
    with pytest.raises(BusConflict):
        bus.register(0x10, 0, Reg("empty"))


def test_unclaimed_and_straddling_accesses_go_to_the_bus_policy():
    bus = Bus("mmio", 1 << 32)
    dev = Reg("dev")
    bus.register(0x1000, 4, dev)
    assert bus.read(0x2000, 4) == 0xFFFFFFFF
    assert bus.read(0x1002, 4) == 0xFFFFFFFF      # straddles the end of the range
    bus.write(0x1003, 2, 1)
    bus.write(0x0FFF, 1, 1)
    assert dev.log == []
    assert (bus.unclaimed_reads, bus.unclaimed_writes) == (2, 2)
    assert bus.unclaimed_log[-1] == ("write", 0x0FFF, 1)
    assert bus.read(0x1000, 8) == (1 << 64) - 1


def test_unregister_frees_the_range():
    bus = Bus("pio", 0x10000)
    r = bus.register(0x60, 1, Reg("kbd"))
    bus.unregister(r)
    bus.register(0x60, 1, Reg("kbd2"))
    assert bus.find(0x60).name == "kbd2"
    assert bus.find(0x61) is None
