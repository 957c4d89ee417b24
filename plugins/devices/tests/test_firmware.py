"""ACPI and SMBIOS through fw_cfg: loader script run on a byte array, tables parsed back."""

from __future__ import annotations

import struct

import pytest

from fwtables import (FlatMemory, LoaderError, byte_sum, eisa, find_rsdp, parse_acpi, parse_aml,
                      parse_smbios, resources, run_loader, smbios_string)
from devhelpers import Rig
from smartvm_devices.firmware import acpi, aml, smbios
from smartvm_devices.firmware.linker import Linker


def pc(vcpus: int = 1, ram: int = 128 << 20, irqchip: str = "user", **fw_params):
    rig = Rig(ram=ram, irqchip=irqchip, vcpus=vcpus)
    from smartvm_core.devices import DeviceSpec
    for spec in rig.registry.expand([DeviceSpec("pc")]):
        params = dict(spec.params)
        if spec.type == "fw_cfg":
            params.update(fw_params)
        rig.add(spec.type, spec.name or spec.type, **params)
    fw = rig.services["fw_cfg"]
    fw.prepare()
    return rig, fw


def guest_files(rig, port: int = 0x510) -> dict[str, bytes]:
    """Every fw_cfg file as a guest reads it: the directory (item 0x19), then select + data port."""
    def read(n: int) -> bytes:
        return bytes(rig.inb(port + 1) for _ in range(n))
    rig.outb(port, 0x19, 2)
    (count,) = struct.unpack(">I", read(4))
    entries = [struct.unpack(">IHH56s", read(64)) for _ in range(count)]
    out = {}
    for size, key, _, raw in entries:
        rig.outb(port, key, 2)
        out[raw.split(b"\0", 1)[0].decode()] = read(size)
    return out


def load(rig) -> tuple[FlatMemory, dict]:
    mem = FlatMemory()
    files = guest_files(rig)
    run_loader(files[acpi.LOADER_FILE], files, mem)
    return mem, parse_acpi(mem.read, find_rsdp(mem.read))


def program_pmbase(rig, base: int) -> None:
    """What SeaBIOS does: PIIX4 PM function 00:01.3, PMBASE (0x40) and PMREGMISC (0x80) enable."""
    cfg = 0x80000000 | (1 << 11) | (3 << 8)
    rig.outb(0xCF8, cfg | 0x40, 4)
    rig.outb(0xCFC, base | 1, 4)
    rig.outb(0xCF8, cfg | 0x80, 4)
    rig.outb(0xCFC, 1, 1)


def test_acpi_tables_after_loader(tmp_path):
    rig, fw = pc(vcpus=1)
    try:
        program_pmbase(rig, 0x600)
        mem, t = load(rig)
    finally:
        rig.close()
    assert t["revision"] == 2 and t["oem"] == acpi.OEM_ID
    rsdp_addr = find_rsdp(mem.read)
    assert 0xE0000 <= rsdp_addr < 0x100000 and rsdp_addr % 16 == 0
    assert t["xsdt"] == t["rsdt"]  # the same tables through both
    assert set(t["tables"]) == {"FACP"}  # no APICs with the user-space PIC: no MADT
    assert t["facs_addr"] % 64 == 0
    _, fadt = t["tables"]["FACP"]
    assert len(fadt) == 244 and fadt[8] == 3
    sci, smi_cmd = struct.unpack_from("<HI", fadt, 46)
    assert sci == 9 and smi_cmd == 0
    evt, _, cnt, _, _, tmr = struct.unpack_from("<6I", fadt, 56)
    assert (evt, cnt, tmr) == (0x600, 0x604, 0x608)
    assert fadt[88:92] == bytes((4, 2, 0, 4))
    gas = fadt[208:220]  # X_PM_TMR_BLK
    assert gas[0] == 1 and gas[1] == 32 and struct.unpack_from("<Q", gas, 4)[0] == 0x608
    assert fadt[116] == 1 and struct.unpack_from("<Q", fadt, 120)[0] == 0xCF9 and fadt[128] == 6
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & acpi.FADT_RESET_REG_SUP and not flags & (1 << 8)  # 24-bit PM timer
    assert struct.unpack_from("<H", fadt, 109)[0] == acpi.BOOT_LEGACY_DEVICES | acpi.BOOT_8042
    assert t["dsdt"][8] == 2


def test_pm_block_follows_firmware_programming():
    """The tables are rebuilt when fetched: they show the PMBASE firmware chose, at the size announced."""
    rig, fw = pc()
    try:
        sizes = {n: len(fw.file(n)) for n in (acpi.TABLES_FILE, acpi.RSDP_FILE, acpi.LOADER_FILE)}
        for base in (0xB000, 0x600):
            program_pmbase(rig, base)
            _, t = load(rig)
            assert struct.unpack_from("<I", t["tables"]["FACP"][1], 76)[0] == base + 8
            assert {n: len(fw.file(n)) for n in sizes} == sizes
    finally:
        rig.close()


@pytest.mark.parametrize("vcpus", [1, 3])
def test_madt_with_kernel_irqchip(vcpus):
    rig, fw = pc(vcpus=vcpus, irqchip="kernel")
    try:
        _, t = load(rig)
    finally:
        rig.close()
    _, madt = t["tables"]["APIC"]
    assert madt[8] == 1
    lapic_addr, flags = struct.unpack_from("<II", madt, 36)
    assert lapic_addr == 0xFEE00000 and flags & 1
    entries, pos = [], 44
    while pos < len(madt):
        kind, length = madt[pos], madt[pos + 1]
        assert length >= 2 and pos + length <= len(madt)
        entries.append((kind, madt[pos:pos + length]))
        pos += length
    assert pos == len(madt)
    lapics = [e for k, e in entries if k == 0]
    assert [(e[2], e[3], struct.unpack_from("<I", e, 4)[0]) for e in lapics] == [(i, i, 1) for i in range(vcpus)]
    (ioapic,) = [e for k, e in entries if k == 1]
    assert struct.unpack_from("<II", ioapic, 4) == (0xFEC00000, 0)
    assert ioapic[2] not in range(vcpus)  # its APIC ID does not collide with a CPU's
    overrides = {e[3]: (struct.unpack_from("<I", e, 4)[0], struct.unpack_from("<H", e, 8)[0])
                 for k, e in entries if k == 2}
    assert overrides == {9: (9, 0x000D)}  # SCI: level, active high
    assert [k for k, _ in entries].count(4) == 1
    aml_out: dict = {}
    parse_aml(t["dsdt"], 36, len(t["dsdt"]), "", aml_out)
    assert [pid for _, pid in aml_out["processors"]] == list(range(vcpus))


def test_madt_forced_off_and_on():
    for irqchip, madt, present in (("kernel", "no", False), ("user", "yes", True)):
        rig, fw = pc(irqchip=irqchip, madt=madt)
        try:
            _, t = load(rig)
        finally:
            rig.close()
        assert ("APIC" in t["tables"]) is present


def test_dsdt_describes_the_machines_devices():
    rig, fw = pc()
    try:
        _, t = load(rig)
    finally:
        rig.close()
    out: dict = {}
    dsdt = t["dsdt"]
    parse_aml(dsdt, 36, len(dsdt), "", out)
    by_hid = {}
    for dev in out["devices"]:
        hid = out[dev]["_HID"]
        by_hid[hid[1] if isinstance(hid, tuple) else hid] = out[dev]
    kbd = by_hid[eisa("PNP0303")]
    assert resources(kbd["_CRS"][1]) == [("io", 0x60, 1), ("io", 0x64, 1), ("irq", 1)]
    assert resources(by_hid[eisa("PNP0F13")]["_CRS"][1]) == [("irq", 12)]
    assert resources(by_hid[eisa("PNP0501")]["_CRS"][1]) == [("io", 0x3F8, 8), ("irq", 4)]
    assert resources(by_hid[eisa("PNP0B00")]["_CRS"][1]) == [("io", 0x70, 2), ("irq", 8)]
    assert resources(by_hid["QEMU0002"]["_CRS"][1]) == [("io", 0x510, 12)]
    assert eisa("PNP0A03") in by_hid
    # SeaBIOS finds devices by the bytes 0C 41 D0 xx xx after "_HID"
    assert b"\x08_HID\x0c\x41\xd0\x03\x03" in dsdt
    assert out[""]["\\_S5"] == ("package", bytes((4, 0, 0, 0, 0)))


def test_second_uart_is_described():
    rig = Rig(ram=64 << 20)
    try:
        rig.add("uart", "com1")
        rig.add("uart", "com2", port=0x2F8, irq=3)
        fw = rig.add("fw_cfg")
        fw.prepare()
        _, t = load(rig)
    finally:
        rig.close()
    out: dict = {}
    parse_aml(t["dsdt"], 36, len(t["dsdt"]), "", out)
    coms = sorted((out[d]["_UID"], resources(out[d]["_CRS"][1])) for d in out["devices"]
                  if out[d]["_HID"] == ("dword", eisa("PNP0501")))
    assert coms == [(1, [("io", 0x3F8, 8), ("irq", 4)]), (2, [("io", 0x2F8, 8), ("irq", 3)])]
    assert "FACP" in t["tables"]  # no PM block: the FADT has no PM registers
    assert struct.unpack_from("<I", t["tables"]["FACP"][1], 76)[0] == 0


@pytest.mark.parametrize("vcpus,ram", [(1, 128 << 20), (4, 5 << 30)])
def test_smbios(vcpus, ram):
    rig, fw = pc(vcpus=vcpus, ram=ram)
    try:
        structs = parse_smbios(fw.file(smbios.ANCHOR_FILE), fw.file(smbios.TABLES_FILE))
        e820 = fw.file("etc/e820")
        ranges = [struct.unpack_from("<QQ", e820, o) for o in range(0, len(e820), 20)]
    finally:
        rig.close()
    kinds = [s["type"] for s in structs]
    assert kinds == [0, 1, 3] + [4] * vcpus + [16, 17] + [19] * len(ranges) + [32, 127]
    assert len({s["handle"] for s in structs}) == len(structs)
    lengths = {0: 0x18, 1: 0x1B, 3: 0x16, 4: 0x2A, 16: 0x17, 17: 0x28, 19: 0x1F, 32: 0x0B, 127: 4}
    assert all(s["length"] == lengths[s["type"]] for s in structs)
    assert smbios_string(structs[1], 4) == "Smart-VM"
    cpus = [s for s in structs if s["type"] == 4]
    assert [smbios_string(s, 4) for s in cpus] == [f"CPU {i}" for i in range(vcpus)]
    assert all(s["data"][0x18] == 0x41 for s in cpus)
    (array,) = [s for s in structs if s["type"] == 16]
    (dimm,) = [s for s in structs if s["type"] == 17]
    assert struct.unpack_from("<H", dimm["data"], 4)[0] == array["handle"]
    size = struct.unpack_from("<H", dimm["data"], 0x0C)[0]
    mib = size if size != 0x7FFF else struct.unpack_from("<I", dimm["data"], 0x1C)[0]
    total = sum(n for _, n in ranges)  # the rig's RAM size (the 384 KiB ISA hole is not RAM)
    assert mib == -(-total // (1 << 20))
    assert struct.unpack_from("<I", array["data"], 7)[0] == -(-total // 1024)
    mapped = []
    for s in (s for s in structs if s["type"] == 19):
        start, end = struct.unpack_from("<II", s["data"], 4)
        if start == 0xFFFFFFFF:
            start, end = struct.unpack_from("<QQ", s["data"], 0x0F)
        else:
            start, end = start << 10, ((end + 1) << 10) - 1
        mapped.append((start, end - start + 1))
    assert mapped == ranges


def test_loader_script_layout():
    ld = Linker()
    ld.allocate("a", 64, 1)
    ld.add_pointer("a", 8, 4, "a")
    ld.add_checksum("a", 9, 0, 36)
    script = ld.script()
    assert len(script) == 3 * 128
    assert struct.unpack_from("<I", script, 0)[0] == 1 and script[4:5] == b"a" and script[5:60] == bytes(55)
    assert struct.unpack_from("<IB", script, 60) == (64, 1)
    assert struct.unpack_from("<I", script, 128)[0] == 2 and struct.unpack_from("<IB", script, 128 + 116) == (8, 4)
    assert struct.unpack_from("<I4xIII", script[256:], 0)[0] == 3
    assert struct.unpack_from("<III", script, 256 + 60) == (9, 0, 36)
    for bad in (lambda: ld.allocate("a", 3, 1), lambda: ld.allocate("a", 4, 3), lambda: ld.add_pointer("a", 0, 3, "a"),
                lambda: ld.add_checksum("a", 40, 0, 36), lambda: ld.allocate("x" * 56, 4, 1)):
        with pytest.raises(ValueError):
            bad()


def test_loader_interpreter_is_strict():
    with pytest.raises(LoaderError):
        run_loader(b"\x09" + bytes(127), {}, FlatMemory())
    ld = Linker()
    ld.allocate("f", 16, 1)
    ld.add_pointer("f", 6, 4, "f")
    with pytest.raises(LoaderError):
        run_loader(ld.script(), {"f": bytes(8)}, FlatMemory())


def test_aml_encodings():
    assert aml.pkg_length(0) == b"\x01" and aml.pkg_length(62) == b"\x3f"
    assert aml.pkg_length(63) == bytes((0x41, 0x04))  # 65 = 0x41: low nibble 1, next byte 4
    assert aml.pkg_length(4093) == bytes((0x4F, 0xFF))  # 4095 still fits two bytes
    assert aml.pkg_length(4094)[0] >> 6 == 2
    assert aml.eisa_id("PNP0303") == 0x0303D041 == eisa("PNP0303")
    assert aml.integer(0) == b"\0" and aml.integer(1) == b"\1" and aml.integer(0x100) == b"\x0b\x00\x01"
    assert aml.name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    for bad in (lambda: aml.name_seg("1ABC"), lambda: aml.name_seg("ABCDE"), lambda: aml.eisa_id("pnp0303"),
                lambda: aml.io_port(0x10000, 1), lambda: aml.irq_no_flags(16)):
        with pytest.raises(ValueError):
            bad()
    big = aml.scope("\\_SB", aml.buffer(bytes(5000)))
    out: dict = {}
    with pytest.raises(AssertionError):  # a buffer name with no Name() is not a term the walker takes
        parse_aml(big, 0, len(big), "", out)
    big = aml.scope("\\_SB", aml.name("BUF_", aml.buffer(bytes(5000))))
    parse_aml(big, 0, len(big), "", out)
    assert out["\\_SB"]["BUF"] == ("buffer", bytes(5000))


def test_fw_cfg_refresh_keeps_announced_size():
    from smartvm_devices.fw_cfg import FwCfg
    fw = FwCfg(None)
    data = {"v": b"abcd"}
    key = fw.add_file("x", b"0000", refresh=lambda: data["v"])
    fw.select(key)
    assert bytes(fw.read_data() for _ in range(4)) == b"abcd"
    data["v"] = b"toolong"
    fw.select(key)
    assert bytes(fw.read_data() for _ in range(4)) == b"abcd" and fw.counters.unknown == 1
    calls = []
    fw.add_preparer(lambda f: calls.append(f.add_file("late", b"1")))
    fw.select(0)  # the first guest access runs the preparer
    assert calls and fw.file("late") == b"1" and byte_sum(b"") == 0
