"""Where a breaker gets its time from, and how it schedules timers.

Logic never reads the clock directly: the pure core takes ``now`` as an
argument, and the breaker asks its :class:`Clock`. Production code uses
:class:`SystemClock` (the event loop's timers, ``time.monotonic``); tests use
:class:`distributed_opossum.testing.FakeClock`, which only moves when told to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "TimerHandle"]


@runtime_checkable
class TimerHandle(Protocol):
    """A scheduled callback that can be cancelled."""

    def cancel(self) -> None:
        """Prevent the callback from running (no-op once it ran)."""


@runtime_checkable
class Clock(Protocol):
    """Time source and timer factory of a breaker."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences matter."""

    def wall(self) -> float:
        """Seconds since the Unix epoch (for ``to_json()``'s ``opened_at``)."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        """Run ``callback`` after ``delay`` seconds (needs a running loop for real clocks)."""

    async def sleep(self, delay: float) -> None:
        """Suspend the calling task for ``delay`` seconds."""


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and the running event loop."""

    __slots__ = ()

    # Plain function attributes: the hot path calls ``clock.monotonic()`` and
    # a bound builtin is the cheapest callable Python has.
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        """Schedule on the running loop (``RuntimeError`` when none runs)."""
        return asyncio.get_running_loop().call_later(delay, callback)

    async def sleep(self, delay: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(delay)


SYSTEM_CLOCK = SystemClock()
