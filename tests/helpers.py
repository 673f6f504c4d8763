"""Helpers for the breaker tests: actions the test settles by hand, and event recorders."""

from __future__ import annotations

import asyncio
from typing import Any

from distributed_opossum import CircuitBreaker


class Boom(Exception):
    """The error test actions raise."""


class Pending:
    """An async action whose every call waits until the test settles it.

    ``pending.action`` is the callable to guard (a true coroutine function, so
    the breaker takes its async path); each call appends a future to ``calls``.
    """

    def __init__(self) -> None:
        self.calls: list[asyncio.Future[Any]] = []
        self.args: list[tuple[Any, ...]] = []
        self.cancelled = 0
        self.finished = 0

    async def action(self, *args: Any) -> Any:
        """Wait for the test to settle this call's future."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.calls.append(future)
        self.args.append(args)
        try:
            return await future
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.finished += 1

    def succeed(self, index: int, value: Any = "ok") -> None:
        """Let call ``index`` return ``value``."""
        self.calls[index].set_result(value)

    def fail(self, index: int, error: BaseException | None = None) -> None:
        """Let call ``index`` raise ``error`` (a ``Boom`` by default)."""
        self.calls[index].set_exception(error if error is not None else Boom(f"call {index}"))

    @property
    def started(self) -> int:
        """How many calls reached the action."""
        return len(self.calls)


class Recorder:
    """Collects the events of a breaker as ``(name, args)`` in emission order."""

    def __init__(self, breaker: CircuitBreaker[..., Any], *events: str) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        for event in events:
            breaker.on(event, self._handler(event))

    def _handler(self, event: str) -> Any:
        def handler(*args: Any) -> None:
            self.events.append((event, args))

        return handler

    @property
    def names(self) -> list[str]:
        """The event names, in order."""
        return [name for name, _ in self.events]

    def args_of(self, event: str) -> list[tuple[Any, ...]]:
        """The arguments of every ``event`` emitted, in order."""
        return [args for name, args in self.events if name == event]


def gate(breaker: CircuitBreaker[..., Any]) -> None:
    """Make ``breaker`` take its general call path (a call-event listener does that)."""
    breaker.on("fire", _ignore)


def _ignore(*args: Any) -> None:
    """A listener that does nothing."""


async def settle(rounds: int = 20) -> None:
    """Let the event loop run what is ready."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def succeed() -> str:
    """An action that returns at once."""
    return "ok"


async def fail() -> str:
    """An action that raises at once."""
    raise Boom("failed")
