import pytest
from hypothesis import given, settings, strategies as st

from smartvm_core.errors import GuestMemoryError
from smartvm_core.memory import GuestMemory


@pytest.fixture
def mem():
    m = GuestMemory()
    m.add_ram(0, 0xA0000, "low")
    m.add_ram(0x100000, 0x100000, "high")
    yield m
    m.close()


def test_read_write_round_trip_and_integers(mem):
    mem.write(0x1000, b"hello")
    assert mem.read(0x1000, 5) == b"hello"
    mem.write_u32(0x2000, 0xDEADBEEF)
    assert mem.read_u16(0x2000) == 0xBEEF and mem.read_u8(0x2003) == 0xDE
    mem.write_u64(0x100000, 1 << 63)
    assert mem.read_u64(0x100000) == 1 << 63


def test_access_into_a_hole_names_the_address(mem):
    with pytest.raises(GuestMemoryError, match="0xa0000"):
        mem.read(0xA0000, 1)
    with pytest.raises(GuestMemoryError, match="no memory"):
        mem.write(0x9FFFF, b"ab")   # the second byte falls into the hole
    with pytest.raises(GuestMemoryError):
        mem.view(0x1FFFFF, 2)
    with pytest.raises(GuestMemoryError):
        mem.read(-1, 1)


def test_adjacent_regions_can_be_spanned():
    m = GuestMemory()
    m.add_ram(0, 0x1000, "a")
    m.add_ram(0x1000, 0x1000, "b")
    m.write(0xFFE, b"wxyz")
    assert m.read(0xFFE, 4) == b"wxyz"
    m.close()


def test_overlapping_or_unaligned_regions_are_refused(mem):
    with pytest.raises(GuestMemoryError, match="overlaps 'low'"):
        mem.add_ram(0x9F000, 0x2000, "clash")
    with pytest.raises(GuestMemoryError, match="page aligned"):
        mem.add_ram(0x300100, 0x1000, "odd")


def test_rom_is_read_only_to_the_guest_but_not_to_loaders(mem):
    rom = mem.add_rom(0xFFFF0000, b"\xea" * 0x10000, "bios")
    assert rom.readonly and rom.kind == "rom"
    assert mem.guest_write(0xFFFF0000, b"\x90") is False
    assert mem.read_u8(0xFFFF0000) == 0xEA
    assert mem.rom_writes_dropped == {"bios": 1}
    mem.write(0xFFFF0000, b"\x90")   # a loader may patch it
    assert mem.read_u8(0xFFFF0000) == 0x90


def test_alias_shares_the_backing(mem):
    rom = mem.add_rom(0xFFFE0000, bytes(range(256)) * 512, "bios")
    alias = mem.add_alias(0xE0000, rom, 0, 0x20000, "bios-low")
    assert alias.readonly
    mem.write(0xFFFE0010, b"\x42")
    assert mem.read_u8(0xE0010) == 0x42


def test_listeners_see_layout_changes(mem):
    seen = []
    undo = mem.add_listener(lambda what, r: seen.append((what, r.name)))
    r = mem.add_ram(0x400000, 0x1000, "extra")
    mem.remove_region(r)
    undo()
    mem.add_ram(0x400000, 0x1000, "quiet")
    assert seen == [("add", "extra"), ("remove", "extra")]


@settings(max_examples=200, deadline=None)
@given(gpa=st.integers(-10, 0x300000), size=st.integers(-4, 0x3000))
def test_hostile_addresses_never_touch_host_memory(gpa, size):
    m = GuestMemory()
    m.add_ram(0, 0x10000, "a")
    m.add_ram(0x200000, 0x10000, "b")
    try:
        for op in (lambda: m.read(gpa, size), lambda: m.view(gpa, size),
                   lambda: m.write(gpa, b"\x00" * max(size, 0))):
            try:
                op()
            except GuestMemoryError:
                pass
    finally:
        m.close()
