"""The machine console: where guest output goes, and the stop marker.

Character devices (UART, debugcon, BIOS teletype) that print for the user
are handed the machine's :class:`Console`. It forwards bytes to the chosen
output (the terminal, a file, or only memory), keeps everything in a
buffer the tests and the report can read, and watches for the experiment's
stop marker.
"""

from __future__ import annotations

import sys
import threading
from typing import BinaryIO, Callable


class Console:
    def __init__(self, output: BinaryIO | None = None, *, keep: int = 1 << 20) -> None:
        #: where bytes go (``None``: memory only)
        self.output = output
        self._keep = keep
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.marker: bytes | None = None
        #: called once with the marker when it first appears
        self.on_marker: Callable[[bytes], None] | None = None
        self._marker_seen = False
        self.bytes_written = 0

    @classmethod
    def stdout(cls) -> "Console":
        return cls(sys.stdout.buffer)

    def write(self, data: bytes) -> None:
        with self._lock:
            self.bytes_written += len(data)
            buf = self._buf
            start = max(0, len(buf) - (len(self.marker) if self.marker else 0))
            buf += data
            if len(buf) > self._keep:
                cut = len(buf) - self._keep
                del buf[:cut]
                start = max(0, start - cut)
            hit = (self.marker is not None and not self._marker_seen
                   and buf.find(self.marker, start) >= 0)
            if hit:
                self._marker_seen = True
        if self.output is not None:
            try:
                self.output.write(data)
                self.output.flush()
            except (OSError, ValueError):
                self.output = None  # the terminal went away; keep running
        if hit and self.on_marker is not None:
            self.on_marker(self.marker)

    def text(self) -> str:
        """Everything written so far (the last ``keep`` bytes), decoded leniently."""
        with self._lock:
            return self._buf.decode("utf-8", "replace")

    def data(self) -> bytes:
        with self._lock:
            return bytes(self._buf)
