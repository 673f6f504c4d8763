"""``async with breaker:``: admit a block, time it, record its outcome.

The block gets the same admission, capacity, timeout and outcome rules as a
``fire()`` call (all of them the call engine's), but the action is the
caller's own code: there is no fallback, and the outcome arrives through
``__aexit__``. One breaker may guard many blocks at once, in many tasks, and
blocks may nest: each task has its own stack of open blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from ._deadlines import EXPIRED, DeadlineQueue, timed_out
from ._engine import CallEngine
from ._tasks import running_loop as _running_loop
from ._tasks import task_of as _task_of

__all__ = ["Guard", "Guards"]

Owner = TypeVar("Owner")


class Guard:
    """Bookkeeping of one ``async with breaker:`` block."""

    __slots__ = ("active", "entry", "permit", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.permit = 0
        self.active = False
        self.entry: list[Any] | None = None


class Guards(Generic[Owner]):
    """The open blocks of one breaker.

    Args:
        owner: what ``async with`` gives the block (the breaker).
        engine: the breaker's call engine.
        deadlines: the breaker's timeout queue (None: no timeout).
        start: counts and announces the block's fire; its time, or a negative
            number when the breaker is disabled (the block then runs unguarded).
            Raises ``ShutdownError`` after shutdown.
        admit: the admission of a block starting at the given time: the trial
            permit (0 for none); raises ``OpenCircuitError`` when not admitted.
    """

    __slots__ = ("_admit", "_deadlines", "_engine", "_owner", "_stacks", "_start")

    def __init__(
        self,
        owner: Owner,
        engine: CallEngine,
        deadlines: DeadlineQueue | None,
        *,
        start: Callable[[], float],
        admit: Callable[[float], Awaitable[int]],
    ) -> None:
        self._owner = owner
        self._engine = engine
        self._deadlines = deadlines
        self._start = start
        self._admit = admit
        self._stacks: dict[asyncio.Task[Any] | None, list[Guard]] = {}

    async def enter(self) -> Owner:
        """Admit the block (or raise); the breaker's timeout applies to it from now on."""
        now = self._start()
        task = _task_of(_running_loop())
        guard = Guard(now)
        if now >= 0.0:
            engine = self._engine
            permit = await self._admit(now)
            if not engine.take_slot():
                raise engine.locked(now, permit, ())
            guard.permit = permit
            guard.active = True
            deadlines = self._deadlines
            if deadlines is not None and task is not None:
                guard.entry = deadlines.push(task, now)
        self._stacks.setdefault(task, []).append(guard)
        return self._owner

    async def leave(self, exc: BaseException | None) -> bool:
        """Record the block's outcome; its exception propagates (an expired block's as a
        ``CircuitTimeoutError``). Never suppresses anything: returns False."""
        task = _task_of(_running_loop())
        stack = self._stacks[task]
        guard = stack.pop()
        if not stack:
            del self._stacks[task]
        if not guard.active:
            return False
        engine = self._engine
        engine.free_slot()
        expired = False
        entry, deadlines = guard.entry, self._deadlines
        if entry is not None and deadlines is not None and task is not None:
            deadlines.pop(entry)
            expired = bool(entry[EXPIRED]) and timed_out(entry, task)
        end = engine.monotonic()
        if not expired and exc is not None and not isinstance(exc, Exception):
            engine.released(guard.permit)  # the caller's cancellation, or an exit
            return False
        if expired:
            error = engine.timed_out()
            engine.failed(error, guard.start, end, guard.permit, (), {}, expired=True)
            try:
                raise error from None
            finally:
                del error  # no reference cycle through the traceback
        if exc is None:
            engine.succeeded(None, guard.start, end, guard.permit)
        else:
            engine.failed(exc, guard.start, end, guard.permit, (), {})
        return False
