"""opossum's result cache: a key per call, a pluggable transport, TTL and size.

A transport is any object with ``get(key)``, ``set(key, value, ttl)`` and
``flush()``; each may be sync or async. ``get`` returns ``None`` for a miss,
so a ``None`` result is never served from the cache.
"""

from __future__ import annotations

import datetime
import enum
import inspect
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

__all__ = ["MemoryCache", "call_key", "maybe_await"]

_PLAIN = (str, int, float, bool, type(None))
_TIMES = (datetime.datetime, datetime.date, datetime.time, datetime.timedelta)


def call_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The default cache key: the call's arguments, by value.

    Only values whose identity is their value make a key: ``None``, bools,
    numbers, strings, bytes, enum members, UUIDs, decimals, dates and times,
    and tuples, lists, dicts and sets of them. Anything else (an object whose
    ``repr`` holds its address, so that a new object at a dead one's address
    would get the dead one's result) is a ``TypeError`` pointing to
    ``cache_get_key``. Every container and non-JSON value is tagged with its
    type, so ``(1, 2)`` and ``[1, 2]``, or ``1`` and ``1.0``, never meet.
    """
    frozen = [_freeze(value, f"argument {i}") for i, value in enumerate(args)]
    named = {key: _freeze(value, f"keyword {key!r}") for key, value in kwargs.items()}
    return json.dumps([frozen, named], sort_keys=True, separators=(",", ":"))


def _freeze(value: Any, where: str) -> Any:
    """``value`` as JSON data that is equal exactly when the values are."""
    if isinstance(value, _PLAIN) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, bytes | bytearray):
        return ["b", bytes(value).hex()]
    if isinstance(value, tuple | list):
        return ["t" if isinstance(value, tuple) else "l", [_freeze(v, where) for v in value]]
    if isinstance(value, dict):
        items = [[_freeze(k, where), _freeze(v, where)] for k, v in value.items()]
        return ["d", sorted(items, key=json.dumps)]
    if isinstance(value, set | frozenset):
        return ["s", sorted((_freeze(v, where) for v in value), key=json.dumps)]
    if isinstance(value, enum.Enum):
        kind = type(value)
        return ["e", f"{kind.__module__}.{kind.__qualname__}", value.name]
    if isinstance(value, uuid.UUID | Decimal):
        return [type(value).__name__, str(value)]
    if isinstance(value, _TIMES):
        return [type(value).__name__, str(value)]
    raise TypeError(
        f"cache key: {where} is a {type(value).__qualname__}, which has no stable value "
        "identity (the default key takes None, bools, numbers, strings, bytes, enums, "
        "UUIDs, decimals, dates and times, and tuples, lists, dicts and sets of them); "
        "pass cache_get_key=... to key calls by what identifies them, e.g. "
        "cache_get_key=lambda self, *a: (self.tenant_id, *a)"
    )


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
