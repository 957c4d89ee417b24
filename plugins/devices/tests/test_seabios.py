"""Debian's SeaBIOS with the ``pc`` device set: banner and "No bootable device" on the serial console.

Runs on every engine this host can run (probed), and on kvm with both the
user-space PIC/PIT and the in-kernel irqchip. SeaBIOS must install the ACPI
and SMBIOS tables fw_cfg offers instead of building its own: its debug log
(debugcon on 0x402) shows the loader path ("Moving pm_base to 0x600", no
"Copying ACPI RSDP" of a table it made), and guest memory holds our tables.
"""

from __future__ import annotations

from pathlib import Path

import struct

import pytest

from fwtables import byte_sum, find_rsdp, parse_acpi, parse_smbios, smbios_string

BIOS = Path("/usr/share/seabios/bios.bin")


def _pm():
    from smartvm_core.plugins import get_plugin_manager
    import smartvm_boot.plugin
    import smartvm_devices.plugin
    import smartvm_exits.plugin
    return get_plugin_manager(entry_points=False, plugins=[
        ("devices", smartvm_devices.plugin), ("boot", smartvm_boot.plugin), ("exits", smartvm_exits.plugin)])


def _usable(engine: str) -> str | None:
    from smartvm_core.builder import probe_engines, registered_engines
    avail = probe_engines(registered_engines(_pm())).get(engine)
    if avail is None:
        return f"engine {engine} is not registered"
    return None if avail.usable else avail.reason


def run_seabios(tmp_path: Path, engine: str, irqchip: str = "user"):
    from smartvm_core.builder import build_machine, load_experiment
    from smartvm_core.console import Console
    exp_file = tmp_path / "seabios.toml"
    exp_file.write_text(f'''
[machine]
engine = "{engine}"
memory = "128M"
[engine]
irqchip = "{irqchip}"
[[device]]
type = "pc"
[[device]]
type = "debugcon"
port = 0x402
backend = "buffer"
[[image]]
path = "{BIOS}"
format = "bios"
[stop]
marker = "No bootable device"
timeout = 90
''')
    pm = _pm()
    exp = load_experiment(pm, exp_file)
    console = Console(None)
    machine = build_machine(pm, exp, console=console)
    try:
        reason = machine.run()
        return reason, console.text(), machine.devices["debugcon"].backend.data.decode(errors="replace"), \
            firmware_tables(machine.memory.read)
    finally:
        machine.close()


def firmware_tables(read) -> dict:
    """The ACPI and SMBIOS tables firmware left in the F segment (parsed; None where absent)."""
    out: dict = {"acpi": None, "smbios": None}
    rsdp = find_rsdp(read)
    if rsdp is not None:
        out["acpi"] = parse_acpi(read, rsdp)
    fseg = read(0xF0000, 0x10000)
    for pos in range(0, len(fseg) - 0x1F, 16):
        if fseg[pos:pos + 4] == b"_SM_" and byte_sum(fseg[pos:pos + 0x10]) == 0:
            anchor = fseg[pos:pos + 0x1F]
            length, address = struct.unpack_from("<HI", anchor, 0x16)
            out["smbios"] = parse_smbios(anchor, read(address, length))
            break
    return out


CASES = [
    pytest.param("kvm", "user", id="kvm-user-pic"),
    pytest.param("kvm", "kernel", id="kvm-kernel-irqchip"),
    pytest.param("soft", "user", id="soft"),
]


@pytest.mark.skipif(not BIOS.exists(), reason=f"{BIOS} is not installed (Debian package seabios)")
@pytest.mark.parametrize("engine,irqchip", CASES)
def test_seabios_reaches_no_bootable_device(tmp_path, engine, irqchip):
    why = _usable(engine)
    if why:
        pytest.skip(f"engine {engine} cannot run here: {why}")
    reason, text, log, tables = run_seabios(tmp_path, engine, irqchip)
    assert reason.kind == "marker", (reason, text[-2000:])
    assert "SeaBIOS (version" in text
    assert text.index("SeaBIOS (version") < text.index("No bootable device")
    assert "Booting from Hard Disk..." in text
    # SeaBIOS ran our loader script (it moves the PM block to 0x600 when it sees one) and built no ACPI itself
    assert "Moving pm_base to 0x600" in log, log[-3000:]
    assert "Copying ACPI RSDP" not in log and "ACPI DSDT=" not in log, log[-3000:]
    assert tables["acpi"] is not None and tables["acpi"]["oem"] == b"SMARTV"
    fadt = tables["acpi"]["tables"]["FACP"][1]
    assert struct.unpack_from("<I", fadt, 76)[0] == 0x608  # PM timer where SeaBIOS put PMBASE
    assert ("APIC" in tables["acpi"]["tables"]) is (irqchip == "kernel")
    structs = tables["smbios"]
    assert structs is not None and smbios_string(structs[1], 4) == "Smart-VM"
    assert [s["type"] for s in structs][:4] == [0, 1, 3, 4] and structs[-1]["type"] == 127
