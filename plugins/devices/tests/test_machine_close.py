"""A machine and its devices: closing releases backends (no descriptor or thread outlives it); counters reach the run report."""

from __future__ import annotations

import os
import socket
import time

import pytest

from smartvm_core.testing import make_machine, require_engine


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _pm_plugins():
    import smartvm_devices.plugin
    return [("devices", smartvm_devices.plugin)]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to count descriptors")
def test_socket_pty_and_file_backends_are_closed_with_the_machine(tmp_path):
    require_engine("soft")
    log = tmp_path / "debugcon.txt"
    before = _open_fds()
    m = make_machine({
        "machine": {"engine": "soft", "memory": "1M"},
        "device": [{"type": "uart", "backend": "socket:127.0.0.1:0"},
                   {"type": "uart", "port": 0x2F8, "irq": 3, "backend": f"unix:{tmp_path / 'com2.sock'}"},
                   {"type": "uart", "port": 0x3E8, "irq": 5, "backend": "pty"},
                   {"type": "debugcon", "backend": f"file:{log}"}],
    }, plugins=_pm_plugins(), entry_points=False)
    try:
        tcp, unix, pty, con = (m.devices[n].backend for n in ("uart", "uart1", "uart2", "debugcon"))
        # a client connected to each socket: its accepted descriptor lives in this process too
        clients = [socket.create_connection(tcp.address, timeout=5), socket.socket(socket.AF_UNIX)]
        clients[1].connect(unix.address)
        deadline = time.monotonic() + 5
        while (tcp._client is None or unix._client is None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert tcp._client is not None and unix._client is not None
        m.devices["debugcon"].write(0, 1, ord("x"))
        opened = _open_fds() - before - {c.fileno() for c in clients}
        # listener + client for each socket, pty master and slave, the file (and the engine's own)
        assert len(opened) >= 2 + 2 + 2 + 1
        threads = [tcp._thread, unix._thread, pty._thread]
    except BaseException:
        m.close()
        raise
    m.close()
    try:
        assert _open_fds() - {c.fileno() for c in clients} == before
        assert not any(t.is_alive() for t in threads)
        assert not os.path.exists(unix.address)   # the Unix socket's path is removed
        assert log.read_bytes() == b"x"
        for c in clients:  # the peers see the line hang up
            c.settimeout(5)
            assert c.recv(1) == b""
    finally:
        for c in clients:
            c.close()


def test_a_closed_uart_drops_output_instead_of_writing_to_a_reused_descriptor():
    from smartvm_devices.char import uart16550 as u
    from smartvm_devices.char.backends import make_backend

    b = make_backend("pty", None)
    d = u.Uart16550(_Irq(), b.write, name="uart")
    d.backend = b
    d.close()
    d.close()  # twice is harmless
    d.write(u.THR, 1, ord("a"))   # the descriptor is gone: counted as dropped, written nowhere
    b.write(b"late")
    assert b.dropped == 5


class _Irq:
    def set_level(self, level: bool) -> None:
        pass


def test_pc_set_counters_reach_the_run_report():
    from smartvm_core.report import build_run_report
    require_engine("soft")
    m = make_machine({"machine": {"engine": "soft", "memory": "2M"},
                      "device": [{"type": "pc"}, {"type": "uart", "port": 0x2F8, "irq": 3, "backend": "buffer"}]},
                     plugins=_pm_plugins(), entry_points=False)
    try:
        m.pio.write(0x61, 1, 0x01)            # PIT counter 2 gate, through port 0x61
        m.pio.read(0x61, 1)
        m.pio.write(0x70, 1, 0x0F)            # CMOS index
        m.pio.read(0x71, 1)
        m.pio.write(0x2F8, 1, ord("k"))       # a byte out of COM2
        report = build_run_report(m)
    finally:
        m.close()
    d = report.devices
    assert d["pit-port61"]["reads"] == 1 and d["pit-port61"]["writes"] == 1
    assert d["rtc"]["reads"] == 1 and d["rtc"]["writes"] == 1
    assert d["uart1"]["writes"] == 1 and d["uart1"]["tx_bytes"] == 1
    assert {"pic", "pit", "pci", "pci-acpi-pm", "fw_cfg", "i8042", "uart", "vga-text"} <= set(d)
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in report.to_text().split("-- devices --")[1]
            .strip().splitlines()}
    assert rows["pit-port61"] == "reads 1, writes 1" and rows["post"] == "no accesses"
