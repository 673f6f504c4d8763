"""opossum's result cache: a key per call, a pluggable transport, TTL and size.

A transport is any object with ``get(key)``, ``set(key, value, ttl)`` and
``flush()``; each may be sync or async. ``get`` returns ``None`` for a miss,
so a ``None`` result is never served from the cache.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

__all__ = ["MemoryCache", "call_key", "maybe_await"]


def call_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The default cache key: the call's arguments as canonical JSON (``repr`` for the rest)."""
    return json.dumps([args, kwargs], sort_keys=True, default=repr, separators=(",", ":"))


async def maybe_await(value: Any) -> Any:
    """``await value`` if it is awaitable, else ``value`` (sync or async transports)."""
    if inspect.isawaitable(value):
        return await value
    return value


class MemoryCache:
    """The default transport: a dict with per-entry expiry and FIFO eviction.

    Args:
        size: most entries kept (``None``: unlimited); the oldest goes first.
        now: the clock to judge expiry by.
    """

    def __init__(self, size: int | None, now: Callable[[], float]) -> None:
        self._size = size
        self._now = now
        self._entries: dict[Any, tuple[Any, float | None]] = {}

    def get(self, key: Any) -> Any:
        """The value stored under ``key``, or ``None`` (missing or expired)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and self._now() >= expires:
            del self._entries[key]
            return None
        return value

    def set(self, key: Any, value: Any, ttl: float | None) -> None:
        """Store ``value`` for ``ttl`` seconds (``None``: until evicted or flushed)."""
        self._entries.pop(key, None)  # re-inserting moves it to the young end
        self._entries[key] = (value, None if ttl is None else self._now() + ttl)
        if self._size is not None:
            while len(self._entries) > self._size:
                del self._entries[next(iter(self._entries))]

    def flush(self) -> None:
        """Forget everything."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
