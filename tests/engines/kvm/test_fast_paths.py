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

