"""Per-breaker call timeouts with one timer, instead of one timer per call.

Every call of a breaker has the same timeout, so deadlines arrive in the order
calls start: a FIFO of ``[deadline, task, expired_marker]`` entries and a single
timer handle for the earliest one give ``asyncio.wait_for``'s semantics (the
late call is cancelled and the caller gets a timeout on time) for a few hundred
nanoseconds per call instead of several microseconds.

Timer pressure is one wake-up per ``timeout`` at most: when the timer fires it
cancels what is overdue and re-arms for the oldest call still running.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from ._clock import Clock, TimerHandle

__all__ = ["DEADLINE", "EXPIRED", "TASK", "DeadlineQueue"]

# Indices into an entry. A list is the cheapest mutable record CPython has.
DEADLINE = 0
TASK = 1
EXPIRED = 2
"""0 while running; 1 once expired; -1 once expired while another cancel was pending."""


class DeadlineQueue:
    """Deadlines of the running calls of one breaker, earliest first."""

    __slots__ = ("_clock", "entries", "timeout", "timer")

    def __init__(self, timeout: float, clock: Clock) -> None:
        self.timeout = timeout
        self._clock = clock
        self.entries: deque[list[Any]] = deque()
        self.timer: TimerHandle | None = None

    def push(self, task: asyncio.Task[Any], now: float) -> list[Any]:
        """Start the clock for ``task``; keep the entry to :meth:`pop` it later.

        (The breaker's plain call path inlines this method.)
        """
        entry = [now + self.timeout, task, 0]
        self.entries.append(entry)
        if self.timer is None:
            self.arm()
        return entry

    def arm(self) -> None:
        """Start the timer for the oldest entry (called when none is armed)."""
        self.timer = self._clock.call_later(self.timeout, self._expire)

    def pop(self, entry: list[Any]) -> None:
        """The call of ``entry`` finished (in any way)."""
        entry[TASK] = None
        entries = self.entries
        while entries and entries[0][TASK] is None:
            entries.popleft()

    def _expire(self) -> None:
        self.timer = None
        now = self._clock.monotonic()
        entries = self.entries
        while entries:
            entry = entries[0]
            task = entry[TASK]
            if task is None:
                entries.popleft()
                continue
            if entry[DEADLINE] > now:
                self.timer = self._clock.call_later(entry[DEADLINE] - now, self._expire)
                return
            entries.popleft()
            entry[TASK] = None
            if not task.done():
                # A cancel already pending (the caller's, usually) wins: the call
                # still ends now, but with the caller's CancelledError.
                entry[EXPIRED] = -1 if task.cancelling() else 1
                task.cancel()

    def stop_if_idle(self) -> None:
        """Cancel the timer unless a call is still running."""
        if all(entry[TASK] is None for entry in self.entries):
            self.close()

    def close(self) -> None:
        """Stop the timer (calls still running are no longer timed)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)


def timed_out(entry: list[Any], task: asyncio.Task[Any]) -> bool:
    """Did the call of ``entry`` end because of our timeout alone?

    Takes our cancel request back (as ``asyncio.timeout`` does), then answers
    True only if no other cancel request was made: the caller's cancellation
    always propagates as ``CancelledError``.
    """
    marker = entry[EXPIRED]
    if not marker:
        return False
    entry[EXPIRED] = 0
    others = task.uncancel()
    return marker > 0 and others == 0
