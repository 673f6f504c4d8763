"""Event names and the emitter: handlers sync or async, free when nobody listens.

A handler receives the event's arguments positionally, cut to what its
signature accepts (``def on_open(): ...`` works as well as
``def on_open(cause): ...``). A handler that raises, or an async handler whose
task fails, is logged and never disturbs the breaker or the call.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from ._logs import logger

__all__ = ["CALL_EVENTS", "EVENTS", "EventEmitter"]


CALL_EVENTS = frozenset(
    {
        "fire",
        "success",
        "failure",
        "timeout",
        "reject",
        "fallback",
        "cache_hit",
        "cache_miss",
        "coalesce_cache_hit",
        "coalesce_cache_miss",
        "semaphore_locked",
    }
)
"""Events of the call path: while none has a listener, calls skip emitting altogether."""

EVENTS = CALL_EVENTS | {
    "open",
    "close",
    "half_open",
    "health_check_failed",
    "shutdown",
    "snapshot",
    "registry_down",
    "registry_up",
}

Handler = Callable[..., Any]


def _arity(handler: Handler) -> int | None:
    """How many positional arguments ``handler`` takes (``None``: any number)."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        return None
    count = 0
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return None
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            count += 1
    return count


class EventEmitter:
    """Named events with ordered handlers.

    Attributes:
        call_listened: True while any :data:`CALL_EVENTS` event has a handler.
    """

    __slots__ = ("_handlers", "_on_change", "_owner", "_tasks", "call_listened")

    def __init__(self, owner: str, on_change: Callable[[], None] | None = None) -> None:
        self._owner = owner
        self._handlers: dict[str, list[tuple[Handler, int | None]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_change = on_change
        self.call_listened = False

    def on(self, event: str, handler: Handler) -> None:
        """Call ``handler`` on every ``event`` (in registration order)."""
        self._check_name(event)
        if not callable(handler):
            raise TypeError(f"handler for {event!r} must be callable, got {handler!r}")
        self._handlers.setdefault(event, []).append((handler, _arity(handler)))
        self._changed()

    def off(self, event: str, handler: Handler) -> None:
        """Remove one registration of ``handler`` for ``event`` (no-op if absent)."""
        self._check_name(event)
        handlers = self._handlers.get(event, [])
        for index, (registered, _) in enumerate(handlers):
            if registered == handler:
                del handlers[index]
                break
        if not handlers:
            self._handlers.pop(event, None)
        self._changed()

    def has(self, event: str) -> bool:
        """Whether ``event`` has at least one handler."""
        return event in self._handlers

    def emit(self, event: str, *args: Any) -> None:
        """Call every handler of ``event``; async handlers run as tasks."""
        handlers = self._handlers.get(event)
        if not handlers:
            return
        for handler, arity in tuple(handlers):
            try:
                result = handler(*args) if arity is None else handler(*args[:arity])
            except Exception:
                logger.exception("%s: handler %r of event %r raised", self._owner, handler, event)
                continue
            if inspect.isawaitable(result):
                self._schedule(event, handler, result)

    def _schedule(self, event: str, handler: Handler, awaitable: Awaitable[Any]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            logger.warning(
                "%s: async handler %r of %r dropped: no running event loop",
                self._owner,
                handler,
                event,
            )
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            return
        task = loop.create_task(_run(awaitable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def report(done: asyncio.Task[Any]) -> None:
            if not done.cancelled() and done.exception() is not None:
                logger.error(
                    "%s: async handler %r of event %r failed",
                    self._owner,
                    handler,
                    event,
                    exc_info=done.exception(),
                )

        task.add_done_callback(report)

    def _changed(self) -> None:
        self.call_listened = any(name in self._handlers for name in CALL_EVENTS)
        if self._on_change is not None:
            self._on_change()

    @staticmethod
    def _check_name(event: str) -> None:
        if event not in EVENTS:
            close = difflib.get_close_matches(str(event), sorted(EVENTS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown event {event!r}{hint}")


async def _run(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
