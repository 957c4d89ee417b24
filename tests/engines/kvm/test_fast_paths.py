"""The kvm engine's hot paths keep the VmExit contract: fields an exit does not use are neutral.

The I/O and MMIO translators skip ``VmExit.reset`` while consecutive exits are
of the same kind; a change of kind (or a string I/O exit) must reset the
object again, so nothing of an earlier exit leaks into a later one.
"""

from __future__ import annotations

from smartvm_core.exit import VmExit
from smartvm_core.vmx import ExitReason

#: fields each exit kind may fill (everything else must hold its neutral value)
USED = {
    ExitReason.IO_INSTRUCTION: {"qualification", "port", "size", "is_in", "count", "value", "data"},
    ExitReason.EPT_VIOLATION: {"qualification", "guest_physical_address", "size", "is_write", "value", "count"},
    ExitReason.HLT: {"instruction_length"},
}
NEUTRAL = VmExit()
FIELDS = [f for f in VmExit.__slots__ if f not in ("reason", "fast_kind")]


def leaked(e: VmExit) -> dict[str, object]:
    used = USED[ExitReason(e.reason)]
    return {f: getattr(e, f) for f in FIELDS if f not in used and getattr(e, f) != getattr(NEUTRAL, f)}


def test_every_exit_of_a_mixed_sequence_is_clean(rig):
    vcpu = rig.load_real("kvm/exits16")
    reasons = []
    answers = iter([0x1A7, 0xDEADBEEF])
    while True:
        e = vcpu.run()
        reasons.append(ExitReason(e.reason))
        assert leaked(e) == {}, f"exit {len(reasons)} ({e!r}) carries fields of an earlier exit"
        if e.reason == ExitReason.IO_INSTRUCTION:
            if e.data is not None:
                if e.is_in:
                    e.data[:] = b"xyz"[:len(e.data)]
            elif e.is_in:
                e.value = next(answers, ord("x"))
            if e.port == 0x82:
                break
        elif e.reason == ExitReason.EPT_VIOLATION and not e.is_write:
            e.value = 0x5A
    kinds = [r for i, r in enumerate(reasons) if i == 0 or r != reasons[i - 1]]
    assert kinds == [ExitReason.IO_INSTRUCTION, ExitReason.EPT_VIOLATION, ExitReason.HLT,
                     ExitReason.IO_INSTRUCTION]



def _answer(e, answers, feed):
    """The answers test_io_mmio_hlt_sequence gives, keyed by the exit."""
    if e.reason == ExitReason.IO_INSTRUCTION and e.is_in:
        if e.data is not None:
            e.data[:] = bytes(next(feed) for _ in range(len(e.data)))
        elif e.port == 0x91:
            e.value = next(feed)
        else:
            e.value = next(answers)
    elif e.reason == ExitReason.EPT_VIOLATION and not e.is_write:
        e.value = next(answers)


def _record(e) -> tuple:
    return (ExitReason(e.reason), e.qualification, e.port, e.size, e.is_in, e.count, e.value,
            None if e.data is None else bytes(e.data), e.guest_physical_address, e.is_write)


def test_inline_dispatcher_sees_the_exits_run_returns(make_rig):
    """run() with an inline dispatcher hands the handlers the same exits, and their answers reach the guest."""
    def answers():
        return iter([0x1A7, 0xDEADBEEF, 0x87654321, 0x5A]), iter(b"xyz")

    plain = make_rig().load_real("kvm/exits16")
    expected = []
    ans, feed = answers()
    while True:
        e = plain.run()
        expected.append(_record(e))
        if e.reason == ExitReason.IO_INSTRUCTION and e.port == 0x82:
            break
        _answer(e, ans, feed)

    rig = make_rig()
    vcpu = rig.load_real("kvm/exits16")
    got = []
    ans, feed = answers()

    def dispatch(e):
        got.append(_record(e))
        _answer(e, ans, feed)
        return not (e.reason == ExitReason.IO_INSTRUCTION and e.port == 0x82)

    vcpu.set_inline_dispatcher(dispatch)
    assert vcpu.run() is None        # the dispatcher said "back to the loop" at port 0x82
    assert got == expected
    mem = rig.memory
    assert (mem.read_u8(0x600), mem.read_u32(0x604), mem.read(0x610, 3)) == (0xA7, 0xDEADBEEF, b"xyz")
    assert (mem.read_u32(0x608), mem.read_u8(0x60C)) == (0x87654321, 0x5A)


def test_inline_dispatcher_returns_at_a_kick(rig):
    """A kick while run() dispatches inline ends the run with EXTERNAL_INTERRUPT handed to the dispatcher."""
    vcpu = rig.load_real("kvm/exits16")
    reasons = []

    def dispatch(e):
        reasons.append(ExitReason(e.reason))
        if len(reasons) == 1:
            vcpu.kick()          # as another thread would: the next KVM_RUN returns at once
            return True
        return e.reason != ExitReason.EXTERNAL_INTERRUPT

    vcpu.set_inline_dispatcher(dispatch)
    assert vcpu.run() is None
    assert reasons == [ExitReason.IO_INSTRUCTION, ExitReason.EXTERNAL_INTERRUPT]
    vcpu.set_inline_dispatcher(None)
    e = vcpu.run()                  # without a dispatcher run() returns each exit again
    assert (e.reason, e.port, e.is_in) == (ExitReason.IO_INSTRUCTION, 0x81, True)
