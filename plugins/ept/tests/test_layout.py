"""Layout and backing: ROM, MMIO windows, holes, file-backed and shared RAM; config errors."""

import mmap

import pytest
from ept_guests import make

from smartvm_core.errors import ConfigError, GuestMemoryError
from smartvm_core.memory import Backing


class Recorder:
    def __init__(self):
        self.writes = []

    def read(self, offset, size):
        return 0x5A

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


def test_rom_write_ignored_and_counted(engine, tmp_path):
    rom = tmp_path / "option.rom"
    rom.write_bytes(bytes(range(256)) * 16)
    steps = [(0xC0010, 0xBEEF), (0xC0ffe, 0xBEEF), (0xC0800, 0xBEEF), (0x50000, 0x1234)]
    m = make(engine, steps, ept={"regions": [{"kind": "rom", "gpa": 0xC0000, "file": str(rom), "name": "optrom"}]})
    try:
        assert m.run().kind == "halted"
        assert m.memory.read(0xC0000, 4096) == rom.read_bytes()          # unchanged
        assert m.memory.rom_writes_dropped["optrom"] == 3                # each store counted
        assert m.memory.read_u16(0x50000) == 0x1234                      # and the guest went on
    finally:
        m.close()


def test_rom_rep_store_drops_every_store(engine, tmp_path):
    rom = tmp_path / "option.rom"
    rom.write_bytes(b"\x55" * 4096)
    m = make(engine, [(0xC0800, 0x11, 4), (0x50000, 0x1234)],
             ept={"regions": [{"kind": "rom", "gpa": 0xC0000, "file": str(rom), "name": "optrom"}]})
    try:
        assert m.run().kind == "halted"
        assert m.memory.read(0xC0000, 4096) == rom.read_bytes()
        assert m.memory.read_u16(0x50000) == 0x1234
        assert m.memory.rom_writes_dropped["optrom"] == 4
    finally:
        m.close()


def test_mmio_window_and_hole_route_to_the_mmio_bus(engine):
    steps = [(0x70010, 0xAAAA), (0x78008, 0xBBBB), (0x50000, 0x1234)]
    m = make(engine, steps, ept={"regions": [{"kind": "mmio", "gpa": 0x70000, "size": 0x1000},
                                             {"kind": "hole", "gpa": 0x78000, "size": 0x2000}]})
    dev = Recorder()
    m.mmio.register(0x70000, 0x1000, dev, name="rec")
    try:
        assert not m.memory.is_backed(0x70000) and not m.memory.is_backed(0x79fff)
        assert m.memory.is_backed(0x6ffff) and m.memory.is_backed(0x7a000)
        before = m.mmio.unclaimed_writes
        assert m.run().kind == "halted"
        assert dev.writes == [(0x10, 2, 0xAAAA)]
        assert m.mmio.unclaimed_writes == before + 1
        assert m.memory.read_u16(0x50000) == 0x1234
        with pytest.raises(GuestMemoryError):
            m.memory.read(0x78008, 2)
    finally:
        m.close()


def test_file_backed_ram_private_and_shared(engine, tmp_path):
    private, shared = tmp_path / "private.img", tmp_path / "shared.img"
    private.write_bytes(b"P" * 0x2000)
    shared.write_bytes(b"S" * 0x2000)
    steps = [(0x80010, 0x1111), (0x90010, 0x2222)]
    m = make(engine, steps, ept={"regions": [
        {"kind": "ram", "gpa": 0x80000, "file": str(private)},
        {"kind": "ram", "gpa": 0x90000, "file": str(shared), "shared": True}]})
    try:
        assert m.memory.read(0x80000, 4) == b"PPPP" and m.memory.read(0x90000, 4) == b"SSSS"
        assert m.run().kind == "halted"
        assert m.memory.read_u16(0x80010) == 0x1111 and m.memory.read_u16(0x90010) == 0x2222
    finally:
        m.close()
    assert private.read_bytes() == b"P" * 0x2000                      # copy-on-write: file untouched
    assert shared.read_bytes()[0x10:0x12] == (0x2222).to_bytes(2, "little")   # reached the file


@pytest.mark.parametrize("entry, key, reason", [
    ({"kind": "flash", "gpa": 0}, "ept.regions[0].kind", "not one of"),
    ({"kind": "ram", "gpa": 0x1234, "size": 4096}, "ept.regions[0].gpa", "page-aligned"),
    ({"kind": "ram", "gpa": 0x1000, "size": 100}, "ept.regions[0].size", "multiple of 4 KiB"),
    ({"kind": "rom", "gpa": 0xC0000, "size": 4096}, "ept.regions[0].file", "needs its contents"),
    ({"kind": "rom", "gpa": 0xC0000, "file": "/nonexistent/x.rom"}, "ept.regions[0].file", "no such file"),
    ({"kind": "mmio", "gpa": 0xC0000, "size": 4096, "shared": True}, "ept.regions[0].shared", "only ram"),
    ({"kind": "ram", "gpa": 0xC0000, "size": 4096, "colour": 1}, "ept.regions[0].colour", "unknown key"),
])
def test_bad_layout_entries_name_the_key(entry, key, reason):
    with pytest.raises(ConfigError) as e:
        make("soft", [(0x50000, 1)], ept={"regions": [entry]})
    assert e.value.key == key and reason in e.value.reason


def test_overlapping_entries_refused():
    with pytest.raises(ConfigError, match="overlaps"):
        make("soft", [(0x50000, 1)], ept={"regions": [{"kind": "hole", "gpa": 0x70000, "size": 0x2000},
                                                       {"kind": "mmio", "gpa": 0x71000, "size": 0x1000}]})


def test_write_protect_outside_ram_refused():
    with pytest.raises(ConfigError, match="not guest RAM"):
        make("soft", [(0x50000, 1)], ept={"write_protect": [{"gpa": 0xB0000}]})


def test_guest_memory_api_bounds(engine):
    m = make(engine, [(0x50000, 1)], ept={"regions": [{"kind": "hole", "gpa": 0x70000, "size": 0x1000}]})
    try:
        mem = m.memory
        for gpa, size in ((0x9FFFE, 4), (0x70000, 1), (0x6FFFF, 2), (-1, 1), (1 << 52, 8), (0xA0000, 1)):
            with pytest.raises(GuestMemoryError) as e:
                mem.read(gpa, size)
            assert "guest-physical access" in str(e.value)
            with pytest.raises(GuestMemoryError):
                mem.write(gpa, b"x" * size)
        with pytest.raises(GuestMemoryError):
            mem.view(0x6F000, 0x2000)
        assert mem.read(0x6FFFE, 2) == b"\0\0"
    finally:
        m.close()


def test_backing_from_file_errors_and_short_files(tmp_path):
    with pytest.raises(GuestMemoryError, match="nofile"):
        Backing.from_file(tmp_path / "nofile")
    short = tmp_path / "short.img"
    short.write_bytes(b"abc")
    b = Backing.from_file(short, 0x3000)
    try:
        assert b.size == 0x3000 and b.mmap[:4] == b"abc\0"
        b.mmap[0x2FFF] = 7                 # past the file's end: fine, and private
    finally:
        b.close()
    assert short.read_bytes() == b"abc"


def test_cow_clone_of_a_backing():
    parent = Backing.memfd(0x4000, name="p")
    try:
        parent.mmap[0:5] = b"hello"
        addr = parent.host_address
        clone = parent.cow_clone()
        try:
            assert parent.host_address == addr and clone.mmap[0:5] == b"hello"
            clone.mmap[0:5] = b"CLONE"
            parent.mmap[0x1000:0x1005] = b"later"
            assert parent.mmap[0:5] == b"hello"          # clone's writes never reach the parent
            assert clone.mmap[0x1000:0x1005] == b"\0" * 5  # nor the parent's later writes the clone
            second = parent.cow_clone()
            try:
                assert second.mmap[0x1000:0x1005] == b"later" and second.mmap[0:5] == b"hello"
            finally:
                second.close()
        finally:
            clone.close()
    finally:
        parent.close()
    anon = Backing(0x1000)
    with pytest.raises(GuestMemoryError, match="anonymous"):
        anon.cow_clone()
    anon.close()
    assert mmap.PAGESIZE == 4096


def test_experiment_file_with_ept_tables(tmp_path):
    from ept_guests import writer_image

    import smartvm_boot.plugin
    import smartvm_ept.plugin
    import smartvm_exits.plugin
    from smartvm_core.builder import build_machine, load_experiment
    from smartvm_core.console import Console
    from smartvm_core.plugins import get_plugin_manager
    (tmp_path / "option.rom").write_bytes(b"\x90" * 4096)
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text(f"""
[machine]
engine = "soft"
memory = "1M"

[ept]
dirty_tracking = true

[[ept.regions]]
kind = "rom"
gpa = 0xC0000
file = "option.rom"

[[ept.write_protect]]
gpa = 0x30000
action = "drop"

[[image]]
path = "{writer_image()}"
format = "flat"
address = 0x1000
entry = 0x1000
mode = "real"
""")
    pm = get_plugin_manager(plugins=[("exits", smartvm_exits.plugin), ("boot", smartvm_boot.plugin),
                                     ("ept", smartvm_ept.plugin)], entry_points=False)
    m = build_machine(pm, load_experiment(pm, exp_file), console=Console(None))
    try:
        assert m.memory.region_at(0xC0000).kind == "rom"
        assert smartvm_ept.plugin.get_policy(m).watched and smartvm_ept.plugin.get_policy(m).dirty_enabled
    finally:
        m.close()
    exp_file.write_text(exp_file.read_text().replace("0xC0000", "0xC0001"))
    pm = get_plugin_manager(plugins=[("ept", smartvm_ept.plugin)], entry_points=False)
    with pytest.raises(ConfigError) as e:
        build_machine(pm, load_experiment(pm, exp_file), console=Console(None))
    assert str(exp_file) in str(e.value) and "ept.regions[0].gpa" in str(e.value)
