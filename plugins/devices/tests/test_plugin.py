"""Device types, parameters, sets, conflicts and the in-kernel irqchip through the registry."""

from __future__ import annotations

import pytest

from smartvm_core.devices import DeviceSpec
from smartvm_core.errors import BusConflict, ConfigError, SmartVMError

from devhelpers import Rig


def test_every_type_documents_its_params(rig):
    for dtype in rig.registry.types.values():
        assert dtype.doc
        for name, p in dtype.params.items():
            assert p.doc, f"{dtype.name}.{name} has no doc"
    assert set(rig.registry.sets) == {"isa-debug", "pc"}


def test_pc_set_builds_and_wires_the_pic(rig):
    rig.add_set("pc")
    assert rig.irq.controller is rig.services["pic"]
    for key in ("pit", "cmos", "i8042", "pci", "fw_cfg", "a20", "acpi_pm", "vga"):
        assert key in rig.services
    # a UART interrupt reaches the CPU through the PIC
    pic = rig.services["pic"]
    for port, v in ((0x20, 0x11), (0x21, 0x08), (0x21, 0x04), (0x21, 0x01), (0x21, 0x00)):
        rig.outb(port, v)
    rig.outb(0x3FC, 0x08)  # OUT2
    rig.outb(0x3F9, 0x02)  # ETBEI
    assert rig.irq.pending() and rig.irq.acknowledge() == 0x0C
    assert pic.counters.acknowledged == 1


def test_pc_set_cmos_memory_matches_ram():
    rig = Rig(ram=64 << 20)
    try:
        rig.add_set("pc")
        cmos = rig.services["cmos"]
        assert cmos.read_register(0x34) | cmos.read_register(0x35) << 8 == (48 << 20) >> 16
        fw = rig.services["fw_cfg"]
        assert fw.file("etc/sercon-port") == (0x3F8).to_bytes(8, "little")
        assert len(fw.file("etc/e820")) == 2 * 20
    finally:
        rig.close()


def test_kernel_irqchip_leaves_out_pic_and_pit():
    rig = Rig(irqchip="kernel")
    try:
        rig.add_set("pc")
        assert "pic" not in rig.devices and "pit" not in rig.devices
        assert rig.pio.find(0x20) is None and rig.pio.find(0x40) is None and rig.pio.find(0x61) is None
        assert rig.pio.find(0x70) is not None
    finally:
        rig.close()


def test_isa_debug_set_exit_code(rig):
    rig.add_set("isa-debug")
    rig.outb(0xF4, 3)
    assert rig.exits == [7]


def test_port_conflict_names_both(rig):
    rig.add("uart", backend="buffer")
    with pytest.raises(BusConflict, match="uart2.*uart"):
        rig.add("uart", "uart2", backend="buffer", irq=3)


def test_irq_conflict_refused(rig):
    rig.add("uart", backend="buffer")
    with pytest.raises(SmartVMError, match="IRQ 4 is already used by device 'uart'"):
        rig.add("uart", "uart2", port=0x2F8, backend="buffer")


def test_second_pic_refused(rig):
    rig.add("pic")
    with pytest.raises(SmartVMError):
        rig.add("pic", "pic2")


def test_bad_params_refused(rig):
    with pytest.raises(ConfigError, match="iosize"):
        rig.registry.check_params(DeviceSpec("isa-debug-exit", {"iosize": 3}))
    with pytest.raises(ConfigError, match="unknown parameter"):
        rig.registry.check_params(DeviceSpec("uart", {"baud": 9600}))
    with pytest.raises(SmartVMError, match="not a backend"):
        rig.add("uart", backend="carrier-pigeon")
    with pytest.raises(SmartVMError, match="base"):
        rig.add("rtc", base="yesterday")


def test_uart_buffer_backend_via_type(rig):
    uart = rig.add("uart", backend="buffer")
    rig.outb(0x3F8, ord("x"))
    uart.backend.send(b"y")
    rig.clock.advance(0)  # host input moves into the FIFO on the vCPU thread, from a timer
    assert bytes(uart.backend.data) == b"x" and rig.inb(0x3F8) == ord("y")


def test_rtc_fixed_base(rig):
    rtc = rig.add("rtc", base="2001-02-03T04:05:06")
    assert rtc.read_register(9) == 0x01 and rtc.read_register(8) == 0x02 and rtc.read_register(4) == 0x04


def test_fw_cfg_files_param(rig, tmp_path):
    p = tmp_path / "blob"
    p.write_bytes(b"123")
    fw = rig.add("fw_cfg", files=f"opt/blob={p}")
    assert fw.file("opt/blob") == b"123"
    with pytest.raises(SmartVMError, match="NAME=PATH"):
        rig.add("fw_cfg", "fw2", port=0x520, files="nonsense")
