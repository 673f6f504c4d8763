"""``async with breaker:``: admit a block, time it, record its outcome.

The block gets the same admission, capacity, timeout and outcome rules as a
``fire()`` call, but the action is the caller's own code, so there is no
fallback and the outcome arrives through ``__aexit__``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._deadlines import EXPIRED, timed_out
from ._errors import CircuitTimeoutError, ShutdownError
from ._state import State
from ._tasks import running_loop as _running_loop
from ._tasks import task_of as _task_of

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker

__all__ = ["Guard", "enter", "leave"]

B = TypeVar("B", bound="CircuitBreaker[Any, Any]")

_CLOSED = State.CLOSED


class Guard:
    """Bookkeeping of one ``async with breaker:`` block."""

    __slots__ = ("active", "entry", "permit", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.permit = 0
        self.active = False
        self.entry: list[Any] | None = None


async def enter(breaker: B) -> B:
    """Admit the block (or raise ``OpenCircuitError``); the breaker's timeout applies to it."""
    if breaker._shutdown:
        raise ShutdownError(breaker_name=breaker.name)
    breaker._attach()
    now = breaker._monotonic()
    breaker._window.roll(now).fires += 1
    breaker._events.emit("fire", ())
    task = _task_of(_running_loop())
    guard = Guard(now)
    if breaker._enabled:
        core = breaker._core
        permit, retry_after = await breaker._admit(now) if core.state is not _CLOSED else (0, None)
        if permit < 0:
            raise breaker._reject(now, retry_after)
        if breaker._in_flight >= breaker._capacity:
            breaker._release(permit)
            error = breaker._semaphore_locked(now)
            breaker._record_failure(error, now, now, 0, (), expired=False, ran=False)
            raise error
        guard.permit = permit
        guard.active = True
        breaker._in_flight += 1
        if breaker._deadlines is not None and task is not None:
            guard.entry = breaker._deadlines.push(task, now)
    breaker._guards.setdefault(task, []).append(guard)
    return breaker


async def leave(
    breaker: CircuitBreaker[Any, Any],
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    traceback: TracebackType | None,
) -> bool:
    """Record the block's outcome; its exception propagates (a timeout as a
    ``CircuitTimeoutError``)."""
    task = _task_of(_running_loop())
    stack = breaker._guards[task]
    guard = stack.pop()
    if not stack:
        del breaker._guards[task]
    if not guard.active:
        return False
    breaker._in_flight -= 1
    entry = guard.entry
    if entry is not None:
        breaker._deadlines.pop(entry)  # type: ignore[union-attr]
    end = breaker._monotonic()
    expired = entry is not None and bool(entry[EXPIRED]) and timed_out(entry, task)  # type: ignore[arg-type]
    if not expired and isinstance(exc, asyncio.CancelledError):
        breaker._release(guard.permit)
        return False
    if not expired and exc is not None and not isinstance(exc, Exception):
        breaker._release(guard.permit)
        return False
    if expired:
        error: BaseException = CircuitTimeoutError(
            breaker_name=breaker.name,
            timeout=breaker._deadlines.timeout,  # type: ignore[union-attr]
        )
    elif exc is None:
        breaker._succeeded(None, end - guard.start, end, guard.permit)
        return False
    else:
        error = exc
    error_filter = breaker._options.error_filter
    if not expired and error_filter is not None and error_filter(error):
        breaker._succeeded(error, end - guard.start, end, guard.permit)
        return False
    breaker._record_failure(error, guard.start, end, guard.permit, (), expired=expired)
    if expired:
        raise error from None
    return False
