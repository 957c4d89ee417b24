"""8259A pair: ICW/OCW programming, edge/level with ELCR, rotation, special mask, AEOI, cascade, poll."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from smartvm_devices.intc.i8259 import I8259Pair


def ports(pic):
    m, s, e = pic.port("master"), pic.port("slave"), pic.port("elcr")

    def out(port, v):
        {0x20: (m, 0), 0x21: (m, 1), 0xA0: (s, 0), 0xA1: (s, 1), 0x4D0: (e, 0), 0x4D1: (e, 1)}[port][0].write(
            {0x20: 0, 0x21: 1, 0xA0: 0, 0xA1: 1, 0x4D0: 0, 0x4D1: 1}[port], 1, v)

    def inp(port):
        dev, off = {0x20: (m, 0), 0x21: (m, 1), 0xA0: (s, 0), 0xA1: (s, 1), 0x4D0: (e, 0), 0x4D1: (e, 1)}[port]
        return dev.read(off, 1)
    return out, inp


def init(pic, icw4_master=0x01, icw4_slave=0x01, ltim=0):
    out, inp = ports(pic)
    out(0x20, 0x11 | ltim); out(0x21, 0x08); out(0x21, 0x04); out(0x21, icw4_master)
    out(0xA0, 0x11 | ltim); out(0xA1, 0x70); out(0xA1, 0x02); out(0xA1, icw4_slave)
    return out, inp


def test_init_and_vectors():
    pic = I8259Pair()
    out, inp = init(pic)
    assert pic.vector_bases == (0x08, 0x70)
    assert inp(0x21) == 0 and inp(0xA1) == 0
    out(0x21, 0xFE)
    assert inp(0x21) == 0xFE
    pic.set_irq(1, True)
    assert not pic.pending()  # masked
    pic.set_irq(0, True)
    assert pic.pending() and pic.acknowledge() == 0x08
    assert not pic.pending()


def test_edge_needs_new_edge_and_eoi():
    pic = I8259Pair()
    out, inp = init(pic)
    pic.set_irq(3, True)
    assert pic.acknowledge() == 0x0B
    pic.set_irq(3, True)  # still high: no new edge
    out(0x20, 0x0B)  # OCW3 read ISR
    assert inp(0x20) == 0x08
    out(0x20, 0x20)  # non-specific EOI
    assert inp(0x20) == 0 and not pic.pending()
    pic.set_irq(3, False); pic.set_irq(3, True)
    assert pic.pending()


def test_priority_nesting_and_spurious():
    pic = I8259Pair()
    out, _ = init(pic)
    pic.set_irq(5, True)
    assert pic.acknowledge() == 0x0D
    pic.set_irq(6, True)
    assert not pic.pending()  # lower priority than the one in service
    pic.set_irq(1, True)
    assert pic.pending() and pic.acknowledge() == 0x09
    assert pic.acknowledge() == 0x0F  # nothing requested above in-service: spurious IR7
    assert pic.counters.spurious == 1


def test_level_mode_via_elcr():
    pic = I8259Pair()
    out, inp = init(pic)
    out(0x4D1, 0xFF)
    assert inp(0x4D1) == 0xDE  # IRQ8 and IRQ13 stay edge on the PIIX
    pic.set_irq(11, True)
    assert pic.acknowledge() == 0x73
    out(0xA0, 0x20); out(0x20, 0x20)
    assert pic.pending()  # still asserted: level requests again
    pic.set_irq(11, False)
    assert not pic.pending()


def test_ltim_level_mode():
    pic = I8259Pair()
    init(pic, ltim=0x08)
    pic.set_irq(4, True)
    pic.set_irq(4, False)
    assert not pic.pending()  # the request went away before INTA


def test_cascade_and_slave_eoi():
    pic = I8259Pair()
    out, inp = init(pic)
    pic.set_irq(14, True)
    assert pic.pending()
    assert pic.acknowledge() == 0x76
    out(0x20, 0x0B); out(0xA0, 0x0B)
    assert inp(0x20) == 0x04 and inp(0xA0) == 0x40


def test_auto_eoi_and_rotation():
    pic = I8259Pair()
    out, inp = init(pic, icw4_master=0x03)
    out(0x20, 0x80)  # rotate in AEOI mode
    pic.set_irq(0, True); pic.set_irq(1, True)
    assert pic.acknowledge() == 0x08
    out(0x20, 0x0B)
    assert inp(0x20) == 0  # AEOI: nothing in service
    # IR0 is now the lowest priority: IR1 before a new IR0
    pic.set_irq(0, False); pic.set_irq(0, True)
    assert pic.acknowledge() == 0x09
    assert pic.acknowledge() == 0x08


def test_specific_rotate_and_set_priority():
    pic = I8259Pair()
    out, _ = init(pic)
    out(0x20, 0xC4)  # set priority: IR4 lowest -> IR5 highest
    for ir in (2 - 2, 6):
        pic.set_irq(ir, True)
    assert pic.acknowledge() == 0x0E  # IR6 outranks IR0 now
    out(0x20, 0xE6)  # rotate on specific EOI of IR6: IR6 becomes lowest
    assert pic.master.lowest_priority == 6 and pic.master.isr == 0


def test_special_mask_mode_lets_lower_priority_in():
    pic = I8259Pair()
    out, _ = init(pic)
    pic.set_irq(2 + 1, True)
    assert pic.acknowledge() == 0x0B
    out(0x21, 0x08)  # mask IR3, in service
    out(0x20, 0x68)  # set special mask
    pic.set_irq(5, True)
    assert pic.pending() and pic.acknowledge() == 0x0D


def test_poll_command():
    pic = I8259Pair()
    out, inp = init(pic)
    pic.set_irq(6, True)
    out(0x20, 0x0C)  # poll
    assert inp(0x20) == 0x86
    out(0x20, 0x0C)
    assert inp(0x20) == 0x00


def test_sfnm_lets_slave_nest():
    pic = I8259Pair()
    init(pic, icw4_master=0x11)
    pic.set_irq(12, True)
    assert pic.acknowledge() == 0x74
    pic.set_irq(9, True)  # higher priority on the slave while IR2 is in service
    assert pic.pending() and pic.acknowledge() == 0x71


def test_state_round_trip():
    pic = I8259Pair()
    out, _ = init(pic)
    out(0x21, 0x5A)
    pic.set_irq(7, True)
    pic.set_irq(9, True)
    s = pic.state()
    p2 = I8259Pair()
    p2.restore(s)
    assert p2.state() == s
    assert p2.acknowledge() == 0x71


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["r", "w", "irq", "ack"]), st.integers(0, 0xFFFF),
                          st.sampled_from([1, 2, 4]))))
def test_hostile_sequences(ops):
    pic = I8259Pair()
    devs = [pic.port("master"), pic.port("slave"), pic.port("elcr"), pic.port("master")]
    for which, kind, value, size in ops:
        if kind == "r":
            assert 0 <= devs[which].read(value & 3, size) < 1 << (8 * size)
        elif kind == "w":
            devs[which].write(value & 3, size, value)
        elif kind == "irq":
            pic.set_irq(value % 20, bool(value & 0x100))
        else:
            if pic.pending():
                assert 0 <= pic.acknowledge() < 256
    pic.restore(pic.state())
