"""Bounded waits in real time: until a condition holds, or while it keeps holding.

Every wait has a deadline and fails with what it waited for; the polls are
short, so a test waits no longer than the condition takes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["eventually", "eventually_async", "stays"]


async def eventually_async(
    predicate: Callable[[], Awaitable[bool]],
    *,
    within: float = 1.0,
    interval: float = 0.01,
    what: str = "condition",
) -> float:
    """Poll ``predicate`` (awaited: a Redis read) until it holds; fail after ``within`` s.

    Returns how long it took.
    """
    start = time.monotonic()
    deadline = start + within
    while not await predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not hold within {within:.3f} s")
        await asyncio.sleep(interval)
    return time.monotonic() - start


async def eventually(
    predicate: Callable[[], bool],
    *,
    within: float = 1.0,
    interval: float = 0.002,
    what: str = "condition",
) -> float:
    """Like :func:`eventually_async` for a plain predicate, polled every 2 ms."""

    async def holds() -> bool:
        return predicate()

    return await eventually_async(holds, within=within, interval=interval, what=what)


async def stays(
    predicate: Callable[[], bool], *, duration: float, interval: float = 0.01, what: str = ""
) -> None:
    """Assert ``predicate`` holds at every poll for ``duration`` seconds."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert predicate(), f"{what or 'condition'} stopped holding"
        await asyncio.sleep(interval)
    assert predicate(), f"{what or 'condition'} stopped holding"
