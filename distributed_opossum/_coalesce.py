"""Coalescing: concurrent identical calls share one in-flight call.

The shared call runs as its own task and every caller (the first included)
awaits it through ``asyncio.shield``: one caller being cancelled never cancels
the call the others are waiting for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from ._errors import CircuitTimeoutError

__all__ = ["CoalesceTable"]


class CoalesceTable:
    """In-flight (and, with a TTL, recently settled) calls by key.

    Args:
        ttl: seconds from the start of a call during which identical calls
            share its outcome; ``None`` shares only while it is in flight.
        size: most entries kept (oldest evicted first); ``None`` unlimited.
        reset_on: outcomes (``"error"``, ``"success"``, ``"timeout"``) that
            drop the entry as soon as the call settles.
        now: the clock.
    """

    def __init__(
        self,
        *,
        ttl: float | None,
        size: int | None,
        reset_on: frozenset[str],
        now: Callable[[], float],
    ) -> None:
        self._ttl = ttl
        self._size = size
        self._reset_on = reset_on
        self._now = now
        self._entries: dict[str, tuple[asyncio.Task[Any], float | None]] = {}

    def get(self, key: str) -> asyncio.Task[Any] | None:
        """The shared call for ``key``, if one is live."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        task, expires = entry
        if expires is not None and self._now() >= expires:
            del self._entries[key]
            return None
        return task

    def start(self, key: str, call: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``call`` as the shared call of ``key``."""
        task = asyncio.get_running_loop().create_task(call)
        expires = None if self._ttl is None else self._now() + self._ttl
        self._entries[key] = (task, expires)
        if self._size is not None:
            while len(self._entries) > self._size:
                del self._entries[next(iter(self._entries))]
        task.add_done_callback(lambda done: self._settled(key, done))
        return task

    def _settled(self, key: str, task: asyncio.Task[Any]) -> None:
        entry = self._entries.get(key)
        if entry is None or entry[0] is not task:
            return
        if self._ttl is None or task.cancelled():
            del self._entries[key]
            return
        error = task.exception()
        if error is None:
            outcome = "success"
        else:
            outcome = "timeout" if isinstance(error, CircuitTimeoutError) else "error"
        if outcome in self._reset_on:
            del self._entries[key]

    def clear(self) -> None:
        """Forget every entry (calls in flight go on for their callers)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
