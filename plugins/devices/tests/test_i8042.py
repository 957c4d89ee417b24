"""i8042: controller commands, keyboard commands, input queue, 0xFE reset, A20 via output port and 0x92."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from smartvm_devices.input import i8042 as k
from smartvm_devices.input.i8042 import I8042

from devhelpers import Lines


class Line:
    def __init__(self, lines, n):
        self.lines, self.n = lines, n

    def set_level(self, v):
        self.lines.set_irq(self.n, v)


def make():
    lines = Lines()
    resets = []
    kbc = I8042(Line(lines, 1), Line(lines, 12), request_reset=lambda: resets.append(1))
    return kbc, lines, resets


def drain(kbc):
    out = []
    while kbc.read_status() & k.STS_OBF:
        out.append(kbc.read_data())
    return out


def test_self_tests_and_command_byte():
    kbc, _, _ = make()
    kbc.write_command(0xAA)
    assert drain(kbc) == [0x55]
    kbc.write_command(0xAB)
    assert drain(kbc) == [0x00]
    kbc.write_command(0x60); kbc.write_data(0x47)
    kbc.write_command(0x20)
    assert drain(kbc) == [0x47]
    assert kbc.read_status() & k.STS_SYS


def test_keyboard_reset_identify_and_irq1():
    kbc, lines, _ = make()
    kbc.write_data(0xFF)
    assert lines.levels[1] is True
    assert drain(kbc) == [0xFA, 0xAA]
    assert lines.levels[1] is False
    kbc.write_data(0xF2)
    assert drain(kbc) == [0xFA, 0xAB, 0x83]
    kbc.write_data(0xED); kbc.write_data(0x07)
    assert drain(kbc) == [0xFA, 0xFA] and kbc.leds == 7
    kbc.write_data(0xF0); kbc.write_data(0x00)
    assert drain(kbc) == [0xFA, 0xFA, 0x41]  # ack, ack, current set (2, translated)
    kbc.write_data(0x12)
    assert drain(kbc) == [0xFE]


def test_input_queue_and_disable():
    kbc, _, _ = make()
    kbc.type_text("hI")
    assert drain(kbc) == [0x23, 0xA3, 0x2A, 0x17, 0x97, 0xAA]
    kbc.write_command(0xAD)
    kbc.enqueue_keys(b"\x1e")
    assert not kbc.read_status() & k.STS_OBF
    kbc.write_command(0xAE)
    assert drain(kbc) == [0x1E]


def test_mouse_path_and_irq12():
    kbc, lines, _ = make()
    kbc.write_command(0x60); kbc.write_data(0x47 | k.CCB_AUX_INT)
    kbc.write_command(0xA8)
    kbc.write_command(0xD4); kbc.write_data(0xF2)
    assert kbc.read_status() & k.STS_AUXB and lines.levels[12]
    assert drain(kbc) == [0xFA, 0x00]


def test_reset_pulse_and_a20():
    kbc, _, resets = make()
    kbc.write_command(0xFE)
    assert resets == [1]
    kbc.write_command(0xD1); kbc.write_data(0x01)  # A20 off, reset line high
    assert not kbc.a20.enabled and resets == [1]
    kbc.write_command(0xD0)
    assert drain(kbc)[0] & k.OUT_A20 == 0
    kbc.port92_write(0x02)
    assert kbc.a20.enabled and kbc.port92_read() == 0x02
    seen = []
    kbc.a20.add_listener(seen.append)
    kbc.port92_write(0x00)
    assert seen == [False]
    kbc.port92_write(0x01)
    assert resets == [1, 1]


def test_state_round_trip():
    kbc, lines, _ = make()
    kbc.write_data(0xF0)
    kbc.enqueue_keys(b"\x01\x02")
    kbc.port92_write(0x02)
    s = kbc.state()
    kbc2 = I8042(Line(lines, 1), Line(lines, 12))
    kbc2.restore(s)
    assert kbc2.state() == s
    assert drain(kbc2) == drain(kbc)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["data", "command", "port92"]), st.booleans(), st.integers(-1, 2),
                          st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFFFFFF)), max_size=80),
       st.binary(max_size=30))
def test_hostile_sequences(ops, keys):
    kbc, _, _ = make()
    kbc.enqueue_keys(keys)
    ports = {w: k._Port(kbc, w) for w in ("data", "command", "port92")}
    for which, is_write, off, size, value in ops:
        if is_write:
            ports[which].write(off, size, value)
        else:
            assert 0 <= ports[which].read(off, size) < 1 << (8 * size)
    kbc.restore(kbc.state())
