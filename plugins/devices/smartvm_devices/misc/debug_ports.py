"""Debug ports: the POST code port, QEMU's isa-debug-exit and the debugcon port.

* POST port (0x80): firmware writes progress codes; the last one and a short
  history are kept (and echoed to the console if asked). Reads float (0xFF),
  as with a POST card that does not drive the bus.
* isa-debug-exit (0xF4, 1, 2 or 4 bytes wide): as QEMU defines it, a write
  of ``v`` ends the run with exit status ``(v << 1) | 1``. Reads give 0.
* debugcon (0xE9, Bochs' "port E9 hack", or 0x402 for SeaBIOS): each byte
  written goes to a character backend; a read returns the readback value
  (0xE9) so software can detect the port. With a ``stamp`` function each
  line starts with its result (the ``timestamps`` parameter: host seconds
  since the device was made and the machine's virtual time), to see where
  firmware spends its time.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import attrs

from ..common import Counters, ones

POST_HISTORY = 256


@attrs.define(frozen=True)
class PostState:
    last: int | None = None
    history: tuple[int, ...] = ()


class PostPort:
    def __init__(self, echo: Callable[[bytes], None] | None = None, name: str = "post") -> None:
        self.name = name
        self.echo = echo
        self.counters = Counters()
        self.last: int | None = None
        self.history: collections.deque[int] = collections.deque(maxlen=POST_HISTORY)

    def read(self, offset: int, size: int) -> int:
        self.counters.reads += 1
        return ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.counters.writes += 1
        if size != 1:
            self.counters.bad_size += 1
        value &= 0xFF  # the POST latch is 8 bits wide
        self.last = value
        self.history.append(value)
        if self.echo is not None:
            self.echo(f"[POST {value:02X}]\n".encode())

    def state(self) -> PostState:
        return PostState(self.last, tuple(self.history))

    def restore(self, state: PostState) -> None:
        self.last = None if state.last is None else state.last & 0xFF
        self.history = collections.deque((v & 0xFF for v in state.history), maxlen=POST_HISTORY)


@attrs.define(frozen=True)
class DebugExitState:
    requested: int | None = None


class IsaDebugExit:
    """Write ``v`` → the machine exits with status ``(v << 1) | 1``."""

    def __init__(self, request_exit: Callable[[int], None], iosize: int = 1, name: str = "isa-debug-exit") -> None:
        self.name = name
        self.request_exit = request_exit
        self.iosize = iosize
        self.counters = Counters()
        self.requested: int | None = None

    def read(self, offset: int, size: int) -> int:
        self.counters.reads += 1
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.counters.writes += 1
        if offset != 0 or size > self.iosize:
            self.counters.bad_size += 1
        # as in QEMU: the value written, at the access's width, whatever the offset
        value &= ones(size)
        code = (value << 1) | 1
        self.requested = code
        self.request_exit(code)

    def state(self) -> DebugExitState:
        return DebugExitState(self.requested)

    def restore(self, state: DebugExitState) -> None:
        self.requested = state.requested


class DebugCon:
    """One byte per write to a backend; reads return ``readback``.

    ``stamp``: called when a line's first byte arrives; its bytes go out first.
    """

    def __init__(self, out: Callable[[bytes], Any], readback: int = 0xE9, name: str = "debugcon",
                 stamp: Callable[[], bytes] | None = None) -> None:
        self.name = name
        self.out = out
        self.readback = readback & 0xFF
        self.counters = Counters()
        #: the backend ``out`` writes to, if any (closed with the device)
        self.backend: Any = None
        self.bytes_out = 0
        self.stamp = stamp
        self._line_start = True

    def close(self) -> None:
        """Release the backend; the machine calls this when it closes."""
        if self.backend is not None:
            self.backend.close()  # a closed backend counts what is still sent to it as dropped

    def read(self, offset: int, size: int) -> int:
        self.counters.reads += 1
        if size != 1:
            self.counters.bad_size += 1
            return self.readback | (ones(size) & ~0xFF)
        return self.readback

    def write(self, offset: int, size: int, value: int) -> None:
        self.counters.writes += 1
        if size != 1:
            self.counters.bad_size += 1  # the low byte lane carries the character
        self.bytes_out += 1
        byte = value & 0xFF
        if self.stamp is not None and self._line_start:
            self.out(self.stamp())
        self._line_start = byte == 0x0A
        self.out(bytes((byte,)))

    def state(self) -> None:
        return None  # nothing a guest can observe is kept
