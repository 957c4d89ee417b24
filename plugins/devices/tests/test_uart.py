"""16550A register-level behaviour (PC16550D datasheet), state round trip, hostile input."""

from __future__ import annotations

import socket
import time

from hypothesis import given, settings, strategies as st

from smartvm_devices.char import uart16550 as u
from smartvm_devices.char.backends import BufferBackend, make_backend
from smartvm_devices.char.uart16550 import Uart16550

from devhelpers import Lines, ManualClock

BASE = 0x3F8


def make(clock=None):
    lines = Lines()
    out = bytearray()

    class Line:
        def set_level(self, level):
            lines.set_irq(4, level)
    dev = Uart16550(Line(), out.extend, clock)
    return dev, out, lines


def test_reset_values():
    d, _, _ = make()
    assert d.read(u.IIR, 1) == 0x01
    assert d.read(u.LSR, 1) == u.LSR_THRE | u.LSR_TEMT
    assert d.read(u.IER, 1) == 0
    assert d.read(u.MCR, 1) == 0


def test_transmit_and_divisor_latch():
    d, out, _ = make()
    d.write(u.THR, 1, ord("A"))
    assert bytes(out) == b"A"
    d.write(u.LCR, 1, u.LCR_DLAB | 0x03)
    d.write(u.DLL, 1, 0x01)
    d.write(u.DLM, 1, 0x02)
    assert d.read(u.DLL, 1) == 0x01 and d.read(u.DLM, 1) == 0x02
    d.write(u.THR, 1, ord("B"))  # goes to DLL, not out
    assert bytes(out) == b"A"
    d.write(u.LCR, 1, 0x03)
    assert d.read(u.IER, 1) == 0 and d.dll == ord("B")


def test_thre_interrupt_and_iir_read_clears_it():
    d, _, lines = make()
    d.write(u.MCR, 1, u.MCR_OUT2)
    d.write(u.IER, 1, u.IER_ETBEI)
    assert d.read(u.IIR, 1) == u.IIR_THRE
    assert lines.levels[4] is False  # reading IIR cleared the THRE source
    assert d.read(u.IIR, 1) == u.IIR_NO_INT
    d.write(u.THR, 1, 0x41)
    assert lines.levels[4] is True


def test_out2_gates_irq():
    d, _, lines = make()
    d.write(u.IER, 1, u.IER_ETBEI)
    assert lines.levels.get(4, False) is False
    d.write(u.MCR, 1, u.MCR_OUT2)
    assert lines.levels[4] is True


def test_fifo_trigger_level_and_timeout():
    clock = ManualClock()
    d, _, lines = make(clock)
    d.write(u.MCR, 1, u.MCR_OUT2)
    d.write(u.FCR, 1, u.FCR_FIFO_ENABLE | 0x80)  # trigger 8
    d.write(u.IER, 1, u.IER_ERBFI)
    d.enqueue(b"abc")
    clock.advance(0)
    assert d.read(u.LSR, 1) & u.LSR_DR
    assert d.read(u.IIR, 1) == u.IIR_NO_INT | u.IIR_FIFO_ENABLED  # below the trigger level
    clock.advance(d._char_time_ns() * 4 + 1)
    assert d.read(u.IIR, 1) == u.IIR_CTI | u.IIR_FIFO_ENABLED
    assert lines.levels[4] is True
    d.enqueue(b"defgh")
    clock.advance(0)
    assert d.read(u.IIR, 1) == u.IIR_RDA | u.IIR_FIFO_ENABLED
    assert bytes(d.read(u.RBR, 1) for _ in range(8)) == b"abcdefgh"
    assert not d.read(u.LSR, 1) & u.LSR_DR
    assert d.read(u.IIR, 1) & 0x0F == u.IIR_NO_INT


def test_fifo_holds_16_then_host_queue_waits():
    clock = ManualClock()
    d, _, _ = make(clock)
    d.write(u.FCR, 1, u.FCR_FIFO_ENABLE)
    d.enqueue(bytes(range(40)))
    clock.advance(0)
    assert len(d.rx) == 16 and d.pending_input == 24
    assert not d.read(u.LSR, 1) & u.LSR_OE  # host input waits instead of overrunning
    got = bytes(d.read(u.RBR, 1) for _ in range(40))
    assert got == bytes(range(40))


def test_overrun_in_16450_mode_and_lsr_read_clears():
    d, _, lines = make()
    d.write(u.MCR, 1, u.MCR_OUT2 | u.MCR_LOOP)
    d.write(u.IER, 1, u.IER_ELSI)
    d.write(u.THR, 1, 1)
    d.write(u.THR, 1, 2)  # loopback, no FIFO: overwrites the holding register
    lsr = d.read(u.LSR, 1)
    assert lsr & u.LSR_OE and lsr & u.LSR_DR
    assert not d.read(u.LSR, 1) & u.LSR_OE
    assert d.read(u.RBR, 1) == 2


def test_rls_has_priority_over_rda():
    d, _, _ = make()
    d.write(u.MCR, 1, u.MCR_LOOP)
    d.write(u.IER, 1, u.IER_ELSI | u.IER_ERBFI | u.IER_ETBEI)
    d.write(u.THR, 1, 1)
    d.write(u.THR, 1, 2)
    assert d.read(u.IIR, 1) == u.IIR_RLS
    d.read(u.LSR, 1)
    assert d.read(u.IIR, 1) == u.IIR_RDA


def test_loopback_modem_lines_and_deltas():
    d, out, _ = make()
    d.write(u.MCR, 1, u.MCR_LOOP)
    msr = d.read(u.MSR, 1)
    assert msr & 0xF0 == 0  # all outputs low -> all inputs low
    d.write(u.MCR, 1, u.MCR_LOOP | u.MCR_RTS | u.MCR_DTR | u.MCR_OUT1 | u.MCR_OUT2)
    msr = d.read(u.MSR, 1)
    assert msr & 0xF0 == u.MSR_CTS | u.MSR_DSR | u.MSR_RI | u.MSR_DCD
    assert msr & u.MSR_DCTS and msr & u.MSR_DDSR and msr & u.MSR_DDCD
    assert d.read(u.MSR, 1) & u.MSR_DELTAS == 0  # reading MSR clears the deltas
    d.write(u.MCR, 1, u.MCR_LOOP | u.MCR_RTS | u.MCR_DTR | u.MCR_OUT2)
    assert d.read(u.MSR, 1) & u.MSR_TERI
    d.write(u.THR, 1, 0x55)
    assert out == b"" and d.read(u.RBR, 1) == 0x55


def test_scratch_and_wide_access():
    d, _, _ = make()
    d.write(u.SCR, 1, 0xA5)
    assert d.read(u.SCR, 1) == 0xA5
    assert d.read(u.SCR, 2) == 0xFFA5
    assert d.counters.bad_size == 1


def test_state_round_trip():
    clock = ManualClock()
    d, _, _ = make(clock)
    d.write(u.FCR, 1, u.FCR_FIFO_ENABLE | 0x40)
    d.write(u.LCR, 1, 0x1B)
    d.write(u.SCR, 1, 0x77)
    d.write(u.IER, 1, 0x05)
    d.enqueue(b"xyz")
    clock.advance(0)
    s = d.state()
    d2, _, lines2 = make(clock)
    d2.restore(s)
    assert d2.state() == s
    assert d2.read(u.RBR, 1) == ord("x")
    assert lines2.events  # the line was driven after restore


def test_buffer_backend_feeds_input():
    b = BufferBackend()
    d, _, _ = make()
    d._out = b.write
    b.attach(d.enqueue)
    d.write(u.THR, 1, ord("o"))
    b.send(b"k")
    assert bytes(b.data) == b"o" and d.read(u.RBR, 1) == ord("k")


def test_socket_backend_round_trip(tmp_path):
    backend = make_backend("socket:127.0.0.1:0", None)
    try:
        d, _, _ = make()
        d._out = backend.write
        got = []
        backend.attach(got.append)
        c = socket.create_connection(backend.address, timeout=5)
        c.sendall(b"hi")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b"".join(got) == b"hi"
        while backend._client is None and time.monotonic() < deadline:
            time.sleep(0.01)
        backend.write(b"yo")
        assert c.recv(2) == b"yo"
        c.close()
    finally:
        backend.close()


def test_socket_backend_refuses_non_loopback():
    import pytest
    from smartvm_core.errors import SmartVMError
    with pytest.raises(SmartVMError, match="loopback"):
        make_backend("socket:0.0.0.0:4555", None)
    with pytest.raises(SmartVMError, match="not a backend"):
        make_backend("tcp:1", None)


def test_file_backend(tmp_path):
    p = tmp_path / "out.txt"
    b = make_backend(f"file:{p}", None)
    b.write(b"abc")
    b.close()
    assert p.read_bytes() == b"abc"


def test_pty_backend():
    import os
    b = make_backend("pty", None)
    try:
        got = []
        b.attach(got.append)
        fd = os.open(b.path, os.O_RDWR | os.O_NOCTTY)
        os.write(fd, b"q")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b"".join(got) == b"q"
        b.write(b"z")
        assert os.read(fd, 1) == b"z"
        os.close(fd)
    finally:
        b.close()


ACCESS = st.tuples(st.booleans(), st.integers(-2, 10), st.sampled_from([1, 2, 4, 8, 3]), st.integers(0, 2**64 - 1))


@settings(max_examples=200, deadline=None)
@given(st.lists(ACCESS, max_size=60), st.binary(max_size=40))
def test_hostile_accesses_never_raise(ops, data):
    clock = ManualClock()
    d, _, _ = make(clock)
    d.enqueue(data)
    for is_write, off, size, value in ops:
        if is_write:
            d.write(off, size, value)
        else:
            v = d.read(off, size)
            assert 0 <= v < (1 << (8 * size))
        clock.advance(50_000)
    d.restore(d.state())
