"""The machine's virtual clock and its timers.

Virtual time runs with the host's monotonic clock while the machine runs and
stands still while it is paused, so a snapshot restored later does not see
time jump. Device models (PIT, RTC, PM timer) read :meth:`VirtualClock.now_ns`
and arm one-shot timers; the loop makes the boot vCPU return from the guest
when the earliest timer is due (the VMX-preemption timer) and runs it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Callable

TimerCallback = Callable[[int], None]


class Timer:
    """A handle on an armed timer; :meth:`cancel` disarms it."""

    __slots__ = ("deadline", "callback", "cancelled")

    def __init__(self, deadline: int, callback: TimerCallback) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    def __init__(self) -> None:
        self._offset = time.monotonic_ns()
        self._paused_at: int | None = None
        self._heap: list[tuple[int, int, Timer]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        #: called (from any thread) when a timer earlier than all others is armed
        self.on_new_deadline: Callable[[], None] | None = None
        #: host monotonic time of the earliest armed timer (``None``: no timer);
        #: a plain attribute so the loop can read it for free on every exit
        self.earliest_host_ns: int | None = None

    def _refresh(self) -> None:
        # caller holds the lock
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        self.earliest_host_ns = heap[0][0] + self._offset if heap else None

    # -- time -------------------------------------------------------------
    def now_ns(self) -> int:
        """Virtual nanoseconds since the machine was created."""
        if self._paused_at is not None:
            return self._paused_at - self._offset
        return time.monotonic_ns() - self._offset

    def to_host_ns(self, virtual_ns: int) -> int:
        """The host monotonic time at which virtual time reaches ``virtual_ns``."""
        return virtual_ns + self._offset

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.monotonic_ns()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._offset += time.monotonic_ns() - self._paused_at
            self._paused_at = None
            with self._lock:
                self._refresh()

    def set_now(self, virtual_ns: int) -> None:
        """Make :meth:`now_ns` read ``virtual_ns`` (restore from a snapshot)."""
        base = self._paused_at if self._paused_at is not None else time.monotonic_ns()
        self._offset = base - virtual_ns
        with self._lock:
            self._refresh()

    # -- timers -------------------------------------------------------------
    def add_timer(self, deadline_ns: int, callback: TimerCallback) -> Timer:
        """Call ``callback(now_ns)`` once virtual time reaches ``deadline_ns``."""
        timer = Timer(deadline_ns, callback)
        with self._lock:
            earliest = not self._heap or deadline_ns < self._heap[0][0]
            heapq.heappush(self._heap, (deadline_ns, next(self._seq), timer))
            self._refresh()
        if earliest and self.on_new_deadline is not None:
            self.on_new_deadline()
        return timer

    def next_deadline(self) -> int | None:
        """Virtual time of the earliest armed timer, or ``None``."""
        with self._lock:
            self._refresh()
            return self._heap[0][0] if self._heap else None

    def next_host_deadline(self) -> int | None:
        d = self.next_deadline()
        return None if d is None else d + self._offset

    def run_due(self) -> int:
        """Run every timer whose deadline has passed; returns how many ran."""
        ran = 0
        while True:
            now = self.now_ns()
            with self._lock:
                heap = self._heap
                if not heap or heap[0][0] > now:
                    self._refresh()
                    return ran
                _, _, timer = heapq.heappop(heap)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback(now)
                ran += 1
