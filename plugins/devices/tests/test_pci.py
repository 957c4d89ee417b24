"""PCI host: mechanism #1, the i440FX/PIIX functions, BAR sizing and mapping, PAM shadow RAM, PMBASE."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from smartvm_devices.pci.host import PciFunction

from devhelpers import Rig


def cfg_addr(dev, fn, reg, bus=0):
    return 0x80000000 | bus << 16 | dev << 11 | fn << 8 | (reg & 0xFC)


def cfg_read(rig, dev, fn, reg, size=4):
    rig.pio.write(0xCF8, 4, cfg_addr(dev, fn, reg))
    return rig.pio.read(0xCFC + (reg & 3), size)


def cfg_write(rig, dev, fn, reg, value, size=4):
    rig.pio.write(0xCF8, 4, cfg_addr(dev, fn, reg))
    rig.pio.write(0xCFC + (reg & 3), size, value)


class Regs:
    name = "regs"

    def __init__(self):
        self.mem = bytearray(256)

    def read(self, off, size):
        return int.from_bytes(self.mem[off:off + size], "little")

    def write(self, off, size, value):
        self.mem[off:off + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")


def test_ids_seabios_expects(rig):
    rig.add("pci")
    assert cfg_read(rig, 0, 0, 0) == 0x12378086
    assert cfg_read(rig, 1, 0, 0) == 0x70008086
    assert cfg_read(rig, 1, 3, 0) == 0x71138086
    assert cfg_read(rig, 1, 0, 0x0E, 1) & 0x80  # multi-function
    assert cfg_read(rig, 5, 0, 0) == 0xFFFFFFFF  # nobody there
    assert cfg_read(rig, 0, 0, 0x0A, 2) == 0x0600
    rig.pio.write(0xCF8, 4, 0x12345678)
    assert rig.pio.read(0xCF8, 4) == 0x12345678 & 0x80FFFFFC


def test_config_address_needs_enable_and_dword(rig):
    rig.add("pci")
    rig.pio.write(0xCF8, 4, cfg_addr(0, 0, 0) & 0x7FFFFFFF)
    assert rig.pio.read(0xCFC, 4) == 0xFFFFFFFF
    rig.pio.write(0xCF8, 2, 0xFFFF)  # not a dword: not CONFIG_ADDRESS
    assert rig.pio.read(0xCF8, 4) == cfg_addr(0, 0, 0) & 0x7FFFFFFF


def test_bar_sizing_and_mapping(rig):
    host = rig.add("pci")
    fn = PciFunction(0x1234, 0x5678, 0xFF0000, name="test")
    regs, iob = Regs(), Regs()
    fn.add_bar(0, 0x1000, "mem32", regs)
    fn.add_bar(1, 0x10, "io", iob)
    host.add_function(fn, 3)
    cfg_write(rig, 3, 0, 0x10, 0xFFFFFFFF)
    assert cfg_read(rig, 3, 0, 0x10) == 0xFFFFF000
    cfg_write(rig, 3, 0, 0x14, 0xFFFFFFFF)
    assert cfg_read(rig, 3, 0, 0x14) == 0xFFFFFFF1
    cfg_write(rig, 3, 0, 0x10, 0xFEB00000)
    cfg_write(rig, 3, 0, 0x14, 0xC000)
    assert rig.mmio.find(0xFEB00000) is None  # decoding off
    cfg_write(rig, 3, 0, 0x04, 0x0003, 2)
    rig.mmio.write(0xFEB00010, 4, 0xCAFE)
    assert regs.read(0x10, 4) == 0xCAFE
    rig.pio.write(0xC004, 1, 0x5A)
    assert iob.mem[4] == 0x5A
    cfg_write(rig, 3, 0, 0x10, 0xFEC00000)
    assert rig.mmio.find(0xFEB00000) is None and rig.mmio.find(0xFEC00000) is not None
    cfg_write(rig, 3, 0, 0x04, 0, 2)
    assert rig.mmio.find(0xFEC00000) is None and rig.pio.find(0xC000) is None


def test_bar_over_another_device_is_refused_not_fatal(rig):
    host = rig.add("pci")
    rig.add("uart", backend="buffer")
    fn = PciFunction(0x1234, 0x5678, 0xFF0000, name="test")
    fn.add_bar(0, 0x10, "io", Regs())
    host.add_function(fn, 3)
    cfg_write(rig, 3, 0, 0x10, 0x3F0)
    cfg_write(rig, 3, 0, 0x04, 1, 2)
    assert host.counters.bar_conflicts == 1


def test_pmbase_maps_pm_timer(rig):
    rig.add("pci")
    cfg_write(rig, 1, 3, 0x40, 0x601)
    cfg_write(rig, 1, 3, 0x80, 0x01, 1)
    a = rig.pio.read(0x608, 4)
    rig.clock.advance(1_000_000)
    assert rig.pio.read(0x608, 4) - a in (3579, 3580)
    cfg_write(rig, 1, 3, 0x80, 0x00, 1)
    assert rig.pio.find(0x608) is None


def test_pam_shadow_ram_over_rom(rig):
    rig.add("pci")
    rom = bytes([0xEA]) * 0x20000
    region = rig.memory.add_rom(0xE0000, rom, "bios-alias")
    assert region is not None
    cfg_write(rig, 0, 0, 0x59, 0x30, 1)  # 0xF0000-0xFFFFF read/write RAM
    assert rig.memory.read(0xF0000, 2) == b"\0\0"
    assert rig.memory.read(0xE0000, 1) == b"\xEA"  # below: still the ROM
    assert rig.memory.guest_write(0xF0000, b"\x12")
    cfg_write(rig, 0, 0, 0x59, 0x10, 1)  # read-only RAM
    assert not rig.memory.guest_write(0xF0000, b"\x34")
    assert rig.memory.read(0xF0000, 1) == b"\x12"
    cfg_write(rig, 0, 0, 0x59, 0x00, 1)  # back to the PCI side: the ROM again
    assert rig.memory.read(0xF0000, 1) == b"\xEA"
    cfg_write(rig, 0, 0, 0x5F, 0x30, 1)  # PAM6 high nibble: 0xEC000-0xEFFFF
    assert rig.memory.read(0xEC000, 1) == b"\0" and rig.memory.read(0xE8000, 1) == b"\xEA"


def test_reset_control_register(rig):
    rig.add("pci")
    rig.pio.write(0xCF9, 1, 0x02)
    assert rig.resets == 0
    rig.pio.write(0xCF9, 1, 0x06)
    assert rig.resets == 1


def test_state_round_trip(rig):
    host = rig.add("pci")
    cfg_write(rig, 1, 0, 0x60, 0x0B, 1)
    cfg_write(rig, 1, 3, 0x40, 0x601)
    cfg_write(rig, 1, 3, 0x80, 0x01, 1)
    s = host.state()
    rig2 = Rig()
    try:
        host2 = rig2.add("pci")
        host2.restore(s)
        assert host2.state() == s
        assert rig2.pio.find(0x608) is not None
    finally:
        rig2.close()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7), st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFFFFFF),
                          st.integers(0, 0xFFFFFFFF)), max_size=60))
def test_hostile_sequences(ops):
    rig = Rig(ram=1 << 20)
    try:
        host = rig.add("pci")
        rig.memory.add_rom(0xE0000, bytes(0x20000), "bios-alias")
        for is_write, off, size, value, addr in ops:
            if off < 4 and is_write and addr & 1:
                host.write(0, 4, addr)  # steer to a random config address
            elif is_write:
                host.write(off, size, value)
            else:
                assert 0 <= host.read(off, size) < 1 << (8 * size)
        host.restore(host.state())
    finally:
        rig.close()
