"""A breaker's timers and the event loop they belong to.

Two timers at most: the one that ends an open period (only while open) and
the snapshot timer (only while someone listens to ``snapshot``). Both live on
one event loop; a timer of a loop that has ended never fires, so the first
call on another loop moves the breaker there (:meth:`BreakerTimers.rebind`)
and the breaker arms again what it wants. A timer wanted while no loop runs
(a breaker made at import time, then opened) is remembered as ``missed`` and
armed by the first call.
"""

from __future__ import annotations

from collections.abc import Callable

from ._clock import Clock, TimerHandle

__all__ = ["BreakerTimers"]


class BreakerTimers:
    """The open-period and snapshot timers of one breaker, on one loop.

    Args:
        clock: the breaker's clock (schedules the timers).
        on_open_period_over: called when the open period ends.
        on_snapshot: called every snapshot interval while snapshots are on.
    """

    __slots__ = ("_clock", "_on_open_period_over", "_on_snapshot", "missed", "open", "snapshot")

    def __init__(
        self,
        clock: Clock,
        *,
        on_open_period_over: Callable[[], None],
        on_snapshot: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._on_open_period_over = on_open_period_over
        self._on_snapshot = on_snapshot
        self.missed = False
        """A timer was wanted while no loop ran: the first call arms it."""
        self.open: TimerHandle | None = None
        self.snapshot: TimerHandle | None = None

    def rebind(self) -> None:
        """The breaker moved to another loop: every timer of the old one is dropped."""
        self.missed = False
        self.cancel()

    def arm_open_period(self, delay: float) -> None:
        """(Re)arm the timer that ends the open period ``delay`` seconds from now."""
        if self.open is not None:
            self.open.cancel()
        self.open = self._schedule(max(0.0, delay), self._open_period_over)

    def cancel_open_period(self) -> None:
        """No open period to end (the breaker left ``open``)."""
        if self.open is not None:
            self.open.cancel()
            self.open = None

    def snapshots(self, wanted: bool, interval: float) -> None:
        """Keep the snapshot timer running every ``interval`` seconds while ``wanted``."""
        if wanted and self.snapshot is None:
            self.snapshot = self._schedule(interval, self._snapshot_due)
        elif not wanted and self.snapshot is not None:
            self.snapshot.cancel()
            self.snapshot = None

    def cancel(self) -> None:
        """Stop both timers."""
        for timer in (self.open, self.snapshot):
            if timer is not None:
                timer.cancel()
        self.open = self.snapshot = None

    def _open_period_over(self) -> None:
        self.open = None
        self._on_open_period_over()

    def _snapshot_due(self) -> None:
        self.snapshot = None
        self._on_snapshot()

    def _schedule(self, delay: float, callback: Callable[[], None]) -> TimerHandle | None:
        """A timer, or None when no event loop runs (admission then notices lazily)."""
        try:
            return self._clock.call_later(delay, callback)
        except RuntimeError:
            self.missed = True  # armed by the first call, through the gate
            return None
