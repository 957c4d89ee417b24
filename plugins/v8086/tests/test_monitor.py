"""The monitor's exception-bitmap fast path against its general path, and faults reaching a stub nobody serves."""

import itertools

import attrs
import pytest

from smartvm_core.arch.modes import real_mode_state
from smartvm_core.cpu import Registers
from smartvm_core.memory import GuestMemory
from smartvm_v8086.layout import rm_stub_address
from smartvm_v8086.monitor import _INT_IP_UNKNOWN, Monitor, MonitorStop
from smartvm_v8086.services import ServiceCall
from smartvm_v8086.state import FLAG_IF, FLAG_VM, ProgramMemory, ProgramState


class Vcpu:
    """The register accessors the monitor uses, over plain values (``one_reg``: as an engine that overrides get_reg)."""

    index = 0

    def __init__(self, regs: Registers, selectors: tuple[int, ...]) -> None:
        self.regs = regs
        self.selectors = selectors
        self.calls: list[str] = []

    def get_regs(self):
        self.calls.append("get_regs")
        return attrs.evolve(self.regs)

    def set_regs(self, regs):
        self.calls.append("set_regs")
        self.regs = attrs.evolve(regs)

    def get_reg(self, name):
        self.calls.append("get_reg")
        return getattr(self.regs, name)

    def set_reg(self, name, value):
        self.calls.append("set_reg")
        setattr(self.regs, name, value)

    def get_segment_selectors(self):
        return self.selectors


class Exit:
    interruption_info = 13 | 3 << 8 | 1 << 11 | 1 << 31
    interruption_error_code = 0


def make_monitor(iopl=0):
    mem = GuestMemory()
    mem.add_ram(0, 0xA0000)
    mem.add_ram(0xF0000, 0x10000, "bios")
    m = Monitor(None, ProgramMemory(mem), iopl=iopl)
    regs, sregs = real_mode_state(0x1000, 0x100, ds=0x1000, sp=0xFFFE)
    m.setup("exception-bitmap", regs, sregs)
    return m, mem


CODES = {"cli": "fa", "sti": "fb", "pushf": "9c", "popf": "9d", "pushfd": "669c", "popfd": "669d"}


@pytest.mark.parametrize("one_reg", [False, True])
@pytest.mark.parametrize("name, vif, stack, flags", [
    (name, vif, stack, flags)
    for name, vif, (stack, flags) in itertools.product(
        CODES, (False, True),
        ((0x0000_0000, 0x0000), (0xFFFF_FFFF, 0x08D5), (0x0024_7ED7, 0x0F00), (0x1234_0200, 0x0001)))])
def test_fast_path_matches_the_emulator(name, vif, stack, flags, one_reg):
    """CLI/STI/PUSHF(D)/POPF(D): registers, stack and virtual IF as the capstone path leaves them."""
    results = []
    for fast in (True, False):
        m, mem = make_monitor()
        m._one_reg = one_reg
        m._fast = fast
        m.vif = vif
        mem.write(0x10100, bytes.fromhex(CODES[name]))
        mem.write(0x1FFF0, stack.to_bytes(4, "little") + b"\x5a\x5a\x5a\x5a")
        rflags = FLAG_VM | FLAG_IF | 0x2 | flags
        vcpu = Vcpu(Registers(rax=0x1111, rsp=0xABCD_FFF0, rip=0x100, rflags=rflags),
                    (0x1000, 0x1000, 0x1000, 0x1000, 0x1000, 0x1000))
        assert m.handle_exception_nmi(vcpu, Exit())
        results.append((attrs.asdict(vcpu.regs), m.vif, mem.read(0x1FFEC, 12), dict(m.emulator.counts)))
        if fast:
            assert "get_regs" not in vcpu.calls if one_reg else "get_reg" not in vcpu.calls
        mem.close()
    assert results[0] == results[1]


def test_fast_path_leaves_other_instructions_and_pending_interrupts_to_the_emulator():
    m, mem = make_monitor()
    m._one_reg = True
    vcpu = Vcpu(Registers(rip=0x100, rsp=0xFFF0, rflags=FLAG_VM | FLAG_IF | 2), (0x1000,) * 6)
    mem.write(0x10100, bytes.fromhex("26fa"))        # ES: CLI (a prefix the fast path does not take)
    assert m._fast_gp(vcpu) is None
    mem.write(0x10100, bytes.fromhex("fb"))
    m.pending.append(0x08)                         # STI with an interrupt waiting: delivery decisions
    assert m._fast_gp(vcpu) is None
    vcpu.regs.rflags &= ~FLAG_VM                    # not the program's
    m.pending.clear()
    assert m._fast_gp(vcpu) is None
    mem.close()


def _call(m, vector, cs, ip):
    state = ProgramState(cs=cs, ss=cs, eip=ip, eflags=FLAG_IF)
    return state, ServiceCall(vector, state, m.memory, None, m, f"INT {vector:02X}h (no service)")


def test_int6_by_software_returns_but_a_fault_nobody_handles_stops():
    m, mem = make_monitor()
    mem.write(0x10100, bytes.fromhex("cd06 90 0f0b"))   # int 6; nop; ud2
    state, call = _call(m, 6, 0x1000, 0x102)            # returning past the INT 6, to the NOP
    m._no_service(call, _INT_IP_UNKNOWN)
    m._no_service(_call(m, 6, 0x1000, 0x103)[1], 12)    # the INT's address known: software, never a fault
    with pytest.raises(MonitorStop, match=r"#UD \(invalid opcode\) \(vector 6\) at 1000:0103 \[0f 0b: ud2\]"):
        m._no_service(_call(m, 6, 0x1000, 0x103)[1], _INT_IP_UNKNOWN)
    mem.write(0x10100, bytes.fromhex("cd00 f7f1"))      # int 0; div cx: the DIV would fault again
    with pytest.raises(MonitorStop, match=r"#DE \(divide error\)"):
        m._no_service(_call(m, 0, 0x1000, 0x102)[1], _INT_IP_UNKNOWN)
    m._no_service(_call(m, 0x60, 0x1000, 0x102)[1], _INT_IP_UNKNOWN)   # not a fault vector: an IRET
    mem.close()


# -- the real-mode doorbell: its inline fast paths against the general ones -------------------------------------
class RmVcpu(Vcpu):
    """A vCPU on the real-mode route (CR0.PE clear), with the engine-neutral get_regs_selectors_cr0()."""

    def get_cr0(self):
        return 0x10

    def skip_instruction(self):
        """KVM has completed the OUT."""

    def get_sregs(self):
        from smartvm_core.cpu import Segment, SpecialRegisters
        return SpecialRegisters(**{n: Segment.real_mode(v) for n, v in zip(("es", "cs", "ss", "ds", "fs", "gs"),
                                                                             self.selectors)})

    def set_sregs(self, sregs):
        self.calls.append("set_sregs")
        self.selectors = tuple(getattr(sregs, n).selector for n in ("es", "cs", "ss", "ds", "fs", "gs"))

    def get_regs_selectors_cr0(self):
        from smartvm_core.engines.base import EngineVcpu
        self.calls.append("get_regs_selectors_cr0")
        return EngineVcpu.get_regs_selectors_cr0(self)


def make_rm_monitor():
    mem = GuestMemory()
    mem.add_ram(0, 0xA0000)
    mem.add_ram(0xF0000, 0x10000, "bios")
    m = Monitor(None, ProgramMemory(mem))
    m.bios.register(m.services.make_register("bios"))

    def moves(call):                          # a service that edits what the fast path writes back
        s = call.state
        s.eip = (s.eip + 0x10) & 0xFFFF
        s.cs = 0x2000
        s.set_flag(1, True)
        s.set_reg16(5, 0x4321)                # BP
        s.gpr[6] = 0xDEAD_BEEF                # ESI, all 32 bits
    m.services.make_register("test")(0x60, moves)
    m.services.make_register("test")(0x61, lambda call: call.chain(0x62))   # INT 62h: the program's handler
    regs, sregs = real_mode_state(0x1000, 0x100, ds=0x1000, sp=0xFFFE)
    m.setup("real-mode", regs, sregs)
    mem.write(0x62 * 4, (0x3000 << 16 | 0x0040).to_bytes(4, "little"))
    mem.write(0x46C, bytes(4))   # the BDA tick count starts from the host clock: the same in every monitor built
    return m, mem


@pytest.mark.parametrize("vector, ax", [(0x11, 0x0000), (0x11, 0x1234), (0x12, 0xFFFF), (0x15, 0x8800),
                                        (0x60, 0x0000), (0x61, 0x0000), (0x63, 0x0000), (0x1A, 0x0200)])
@pytest.mark.parametrize("ss, sp", [(0x1000, 0xFFF0), (0x1000, 0xFFFA), (0x1000, 0xFFFC), (0x1000, 0xFFFE),
                                    (0x9FFF, 0x0000), (0xFFFF, 0x0010), (0xFFFF, 0xFFFC), (0x0000, 0x0000)])
@pytest.mark.parametrize("a20", [True, False])
def test_rm_doorbell_fast_paths_match_the_general_ones(vector, ax, ss, sp, a20):
    """The inline frame read and the inline service lookup leave what ProgramMemory.read() and serve() leave.

    Hostile stacks too: a frame across the 64-KiB wrap, at the top of RAM, past 1 MiB (with A20 on and off).
    """
    results = []
    for fast in (True, False):
        m, mem = make_rm_monitor()
        m.memory.a20 = a20
        frame = bytes.fromhex("0501 0010 4602")    # IP 0105, CS 1000, FLAGS 0246 (IF set, as the INT saw)
        for i in range(6):
            m.memory.write_far(ss, sp + i, 1, frame[i])
        if fast:
            m.memory.read(0x400, 2)                # the RAM below 640 KiB as the last region used
            m.services.lookup(vector, ax >> 8)     # the (vector, AH) seen before
        stub_cs, stub_ip = rm_stub_address(vector)
        stub_ip += 2                               # past the OUT, as KVM leaves RIP
        regs = Registers(rax=0xFFFF_0000_0000_0000 | ax, rbx=0x1_0000_BBBB, rcx=3, rdx=4, rsi=5, rdi=6,
                         rbp=0x7777, rsp=0xABCD_0000 | sp, r8=8, r15=15, rip=stub_ip, rflags=0x2 | 0x40)
        vcpu = RmVcpu(regs, (0x1000, stub_cs, ss, 0x1000, 0, 0))
        if not fast:
            m.services._found.clear()              # serve() looks the service up
            m.memory._hot = (0, 0, None)           # ProgramMemory.read() finds the region
        assert m.handle_rm_doorbell(vcpu, IoExit())
        results.append((attrs.asdict(vcpu.regs), vcpu.selectors, mem.read(0, 0xA0000), dict(m.service_counts),
                        dict(m.reflected)))
        mem.close()
    assert results[0] == results[1]


class IoExit:
    port = 0xEE
    is_in = False
