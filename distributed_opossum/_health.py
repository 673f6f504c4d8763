"""Health checks: a probe run now and every interval; each failure is reported.

The check knows nothing of the breaker: it gets the probe, the interval, what
to call when the probe fails (the breaker emits ``health_check_failed`` and
opens) and how to sleep (the breaker's clock, so tests use a fake one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ._cache import maybe_await

__all__ = ["check_arguments", "run"]


def check_arguments(fn: object, interval: object) -> float:
    """``interval`` as seconds, or a TypeError/ValueError naming what is wrong."""
    if not callable(fn):
        raise TypeError(f"health_check fn must be callable, got {fn!r}")
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise TypeError(f"health_check interval must be seconds, got {interval!r}")
    if not interval > 0:
        raise ValueError(f"health_check interval must be > 0, got {interval}")
    return float(interval)


async def run(
    fn: Callable[[], Any],
    interval: float,
    *,
    failed: Callable[[Exception], None],
    sleep: Callable[[float], Awaitable[None]],
) -> None:
    """Run ``fn`` (sync or async) now and every ``interval`` seconds, until cancelled."""
    while True:
        try:
            await maybe_await(fn())
        except Exception as error:
            failed(error)
        await sleep(interval)
