"""Helpers of the public-API tests: event recording and actions the test controls.

Nothing here sleeps for real: actions either return at once, wait for the test
to release them (:class:`Gate`), or sleep on a :class:`FakeClock`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from distributed_opossum import CircuitBreaker
from distributed_opossum.testing import FakeClock, settle

__all__ = [
    "API_EVENTS",
    "Boom",
    "EventLog",
    "Gate",
    "Recorder",
    "Sleeper",
    "settle",
]

API_EVENTS: tuple[str, ...] = (
    "fire",
    "success",
    "failure",
    "timeout",
    "reject",
    "open",
    "close",
    "half_open",
    "fallback",
    "cache_hit",
    "cache_miss",
    "coalesce_cache_hit",
    "coalesce_cache_miss",
    "semaphore_locked",
    "health_check_failed",
    "shutdown",
    "snapshot",
    "registry_down",
    "registry_up",
)
"""Every event name of API.md."""


class Boom(Exception):
    """The action's own error."""


class EventLog:
    """Records ``(event, args)`` for every event it listens to, in emission order."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, tuple[Any, ...]]] = []
        self._handlers: list[tuple[CircuitBreaker[Any, Any], str, Callable[..., None]]] = []

    def attach(self, breaker: CircuitBreaker[Any, Any], *events: str) -> EventLog:
        """Listen to ``events`` (when none are given: every event of API.md but ``snapshot``)."""
        for event in events or tuple(e for e in API_EVENTS if e != "snapshot"):
            handler = self._handler(event)
            breaker.on(event, handler)
            self._handlers.append((breaker, event, handler))
        return self

    def detach(self) -> None:
        """Remove every handler this log registered."""
        for breaker, event, handler in self._handlers:
            breaker.off(event, handler)
        self._handlers.clear()

    def _handler(self, event: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            self.entries.append((event, args))

        return record

    @property
    def names(self) -> list[str]:
        """The event names in emission order."""
        return [name for name, _ in self.entries]

    def args_of(self, event: str) -> list[tuple[Any, ...]]:
        """The arguments of every emission of ``event``."""
        return [args for name, args in self.entries if name == event]

    def clear(self) -> None:
        """Forget what was recorded (keep listening)."""
        self.entries.clear()


class Recorder:
    """An action that records its calls and returns ``result`` or raises ``error``."""

    def __init__(self, result: Any = "ok", error: BaseException | None = None) -> None:
        self.result = result
        self.error = error
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        return self.result


class Gate:
    """An action whose calls wait for :meth:`release`, then return ``result`` or raise ``error``."""

    def __init__(self, result: Any = "ok", error: BaseException | None = None) -> None:
        self.result = result
        self.error = error
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.cancelled = 0
        self._released = asyncio.Event()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        try:
            await self._released.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return self.result

    def release(self) -> None:
        """Let every waiting (and future) call finish."""
        self._released.set()


class Sleeper:
    """An action that sleeps ``delay`` seconds on a fake clock, then returns or raises."""

    def __init__(
        self,
        clock: FakeClock,
        delay: float,
        result: Any = "ok",
        error: BaseException | None = None,
    ) -> None:
        self.clock = clock
        self.delay = delay
        self.result = result
        self.error = error
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        await self.clock.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.result
