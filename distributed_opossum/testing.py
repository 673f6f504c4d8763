"""Helpers for testing code that uses breakers: a fake clock that moves only when told.

Example::

    clock = FakeClock()
    breaker = CircuitBreaker(call, reset_timeout=30.0, clock=clock)
    breaker.open()
    await clock.advance(30.0)      # runs the half-open timer at once
    assert breaker.half_open
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

__all__ = ["FakeClock", "FakeTimer"]


class FakeTimer:
    """A timer of :class:`FakeClock`; ``cancel()`` keeps it from running."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run the callback."""
        self.cancelled = True


class FakeClock:
    """A :class:`~distributed_opossum._clock.Clock` whose time only moves in :meth:`advance`.

    Timers and :meth:`sleep` work without a running event loop being involved
    in the timing: :meth:`advance` runs due timers in order, letting the event
    loop run the tasks they wake before moving on.

    Args:
        start: the initial monotonic reading.
        wall_offset: added to the monotonic reading to give :meth:`wall`.
    """

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._sequence = itertools.count()

    def monotonic(self) -> float:
        """The current fake time."""
        return self._now

    def wall(self) -> float:
        """Fake epoch seconds, moving with :meth:`monotonic`."""
        return self._wall_offset + self._now

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        """Run ``callback`` once :meth:`advance` reaches ``now + delay``."""
        timer = FakeTimer(self._now + max(delay, 0.0), callback)
        heapq.heappush(self._timers, (timer.when, next(self._sequence), timer))
        return timer

    async def sleep(self, delay: float) -> None:
        """Suspend until :meth:`advance` moves past ``now + delay``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_later(delay, wake)
        try:
            await future
        finally:
            timer.cancel()

    @property
    def pending(self) -> int:
        """Timers scheduled and not cancelled."""
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running every timer that falls due on the way."""
        if seconds < 0:
            raise ValueError(f"time cannot go backwards ({seconds})")
        target = self._now + seconds
        await settle()
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.callback()
            await settle()
        self._now = target
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let the event loop run what is ready (``rounds`` passes of ``sleep(0)``)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
