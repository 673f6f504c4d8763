"""Health checks: a background task that opens the breaker while a probe fails."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._cache import maybe_await
from ._errors import ShutdownError
from ._state import Cause

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker

__all__ = ["start"]


def start(breaker: CircuitBreaker[Any, Any], fn: Callable[[], Any], interval: float) -> None:
    """Validate the arguments and start the check as one of the breaker's background tasks."""
    if not callable(fn):
        raise TypeError(f"health_check fn must be callable, got {fn!r}")
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise TypeError(f"health_check interval must be seconds, got {interval!r}")
    if not interval > 0:
        raise ValueError(f"health_check interval must be > 0, got {interval}")
    if breaker._shutdown:
        raise ShutdownError(breaker_name=breaker.name)
    loop = asyncio.get_running_loop()
    task = loop.create_task(_loop(breaker, fn, float(interval)))
    breaker._background.add(task)
    task.add_done_callback(breaker._background.discard)


async def _loop(breaker: CircuitBreaker[Any, Any], fn: Callable[[], Any], interval: float) -> None:
    while True:
        try:
            await maybe_await(fn())
        except Exception as error:
            breaker._events.emit("health_check_failed", error)
            breaker._core.trip(breaker._monotonic(), Cause.HEALTH_CHECK)
            breaker._announce()
        await breaker._clock.sleep(interval)
