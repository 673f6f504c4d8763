"""The test doubles: actions the test controls, a fake downstream, and an event log.

One of each, shared by every test (and the benchmarks): the error actions raise
(:class:`Boom`), actions that return at once (:func:`succeed`, :func:`fail`,
:func:`as_told`), that wait for the test (:class:`Pending`, :class:`Gate`), that
take fake time (:class:`Sleeper`), that record their calls (:class:`Recorder`),
the service behind a breaker (:class:`Downstream`), a cache transport
(:class:`CacheTransport`), and what a breaker emitted (:class:`EventLog`); with
a few ways to build and call breakers (:func:`breaker_on`, :func:`on_path`,
:func:`outcome_of`, :func:`cancel`).

Nothing here sleeps for real: actions return at once, wait for the test to
settle them, or sleep on a :class:`FakeClock`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from distributed_opossum import CircuitBreaker, OpenCircuitError
from distributed_opossum.testing import FakeClock, settle

__all__ = [
    "API_EVENTS",
    "Boom",
    "CacheTransport",
    "Downstream",
    "EventLog",
    "Gate",
    "Ignored",
    "Pending",
    "Recorder",
    "Sleeper",
    "as_told",
    "breaker_on",
    "cancel",
    "fail",
    "on_path",
    "outcome_of",
    "settle",
    "succeed",
    "take_general_path",
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
    """The error test actions (and fake downstreams) raise."""


class Ignored(Exception):
    """An error ``error_filter`` says is not a failure."""


async def succeed(*args: Any) -> str:
    """An action that returns at once."""
    return "ok"


async def fail(*args: Any) -> str:
    """An action that raises at once."""
    raise Boom("failed")


async def as_told(ok: bool) -> str:
    """An action that returns ``"ok"`` or raises :class:`Boom`, as its argument says."""
    if ok:
        return "ok"
    raise Boom("told to fail")


async def outcome_of(breaker: CircuitBreaker[..., Any], *args: Any) -> str:
    """One call: ``"ok"``, ``"failed"`` (Boom), ``"ignored"`` (Ignored) or ``"rejected"``."""
    try:
        await breaker.fire(*args)
    except OpenCircuitError:
        return "rejected"
    except Boom:
        return "failed"
    except Ignored:
        return "ignored"
    return "ok"


def breaker_on(clock: FakeClock, action: Any = None, **options: Any) -> CircuitBreaker[..., Any]:
    """A breaker on ``clock`` around ``action`` (a succeeding :class:`Recorder` by default)."""
    return CircuitBreaker(action if action is not None else Recorder(), clock=clock, **options)


async def cancel(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and check that the cancellation reached its caller."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return
    raise AssertionError(f"{task!r} ended without the cancellation reaching its caller")


def on_path(path: str, action: Any, **options: Any) -> CircuitBreaker[..., Any]:
    """A breaker around ``action`` whose calls take the general path when ``path`` is
    ``"gated"`` (the fast path when it is ``"plain"``)."""
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(action, **options)
    if path == "gated":
        take_general_path(breaker)
    return breaker


def take_general_path(breaker: CircuitBreaker[..., Any]) -> None:
    """Make ``breaker`` take its general call path (a call-event listener does that)."""
    breaker.on("fire", _ignore)


def _ignore(*args: Any) -> None:
    """A listener that does nothing."""


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
    """An action that records its calls and returns ``result`` or raises ``error``."""

    def __init__(self, result: Any = "ok", error: BaseException | None = None) -> None:
        self.result = result
        self.error = error
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self._outcome()

    def sync(self, *args: Any, **kwargs: Any) -> Any:
        """The same action as a plain function (for a synchronous fallback, say)."""
        self.calls.append((args, kwargs))
        return self._outcome()

    def _outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class Gate(Recorder):
    """A :class:`Recorder` whose calls wait for :meth:`release` (``reached`` tells one came)."""

    def __init__(self, result: Any = "ok", error: BaseException | None = None) -> None:
        super().__init__(result, error)
        self.cancelled = 0
        self.reached = asyncio.Event()
        self._released = asyncio.Event()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        self.reached.set()
        try:
            await self._released.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self._outcome()

    def release(self) -> None:
        """Let every waiting (and future) call finish."""
        self._released.set()


class Sleeper(Recorder):
    """A :class:`Recorder` whose calls first sleep ``delay`` seconds on a fake clock.

    ``cancelled`` counts the sleeps cancelled (by a timeout, or the caller). A cancelled
    call re-raises the cancellation, unless told to raise ``on_cancel`` instead (an action
    whose clean-up fails) or to swallow it and return ``result`` (``swallow_cancel``).
    """

    def __init__(
        self,
        clock: FakeClock,
        delay: float,
        result: Any = "ok",
        error: BaseException | None = None,
        *,
        on_cancel: BaseException | None = None,
        swallow_cancel: bool = False,
    ) -> None:
        super().__init__(result, error)
        self.clock = clock
        self.delay = delay
        self.on_cancel = on_cancel
        self.swallow_cancel = swallow_cancel
        self.cancelled = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        try:
            await self.clock.sleep(self.delay)
        except asyncio.CancelledError as cancel:
            self.cancelled += 1
            if self.swallow_cancel:
                return self.result
            if self.on_cancel is not None:
                raise self.on_cancel from cancel
            raise
        return self._outcome()


class Downstream:
    """The service behind a breaker: counts calls; succeeds, fails, errs or hangs as told.

    ``mode`` is ``"ok"``, ``"fail"`` (raise :class:`Boom`), ``"ignored"`` (raise
    :class:`Ignored`) or ``"hang"`` (wait until :meth:`release`). With a ``clock``,
    every call first takes ``takes`` seconds of its fake time.
    """

    def __init__(self, mode: str = "ok", *, clock: FakeClock | None = None) -> None:
        self.mode = mode
        self.clock = clock
        self.takes = 0.0
        self.calls = 0
        self.running = 0
        self._release = asyncio.Event()
        self._outcome = "ok"

    async def action(self, *args: Any) -> str:
        """The guarded call."""
        self.calls += 1
        if self.takes:
            assert self.clock is not None, "a Downstream takes fake time on its clock only"
            await self.clock.sleep(self.takes)
        mode = self.mode
        if mode == "fail":
            raise Boom("downstream failed")
        if mode == "ignored":
            raise Ignored("not a failure")
        if mode == "hang":
            self.running += 1
            try:
                await self._release.wait()
            finally:
                self.running -= 1
            if self._outcome == "fail":
                raise Boom("downstream failed after a while")
        return "ok"

    def release(self, outcome: str = "ok") -> None:
        """Let every hanging call finish with ``outcome`` (``"ok"`` or ``"fail"``)."""
        self._outcome = outcome
        self._release.set()


class CacheTransport:
    """A synchronous cache transport (get, set, flush) over a dict, recording its calls."""

    def __init__(self) -> None:
        self.store: dict[Any, Any] = {}
        self.sets: list[tuple[Any, Any, float | None]] = []
        self.gets: list[Any] = []
        self.flushes = 0

    def get(self, key: Any) -> Any:
        """The cached value, or None."""
        self.gets.append(key)
        return self.store.get(key)

    def set(self, key: Any, value: Any, ttl: float | None) -> None:
        """Store ``value`` (the TTL is recorded, not applied)."""
        self.sets.append((key, value, ttl))
        self.store[key] = value

    def flush(self) -> None:
        """Forget everything."""
        self.flushes += 1
        self.store.clear()


class EventLog:
    """Records ``(event, args)`` for every event it listens to, in emission order (and when)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, tuple[Any, ...]]] = []
        self._at: list[float] = []
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
            self._at.append(time.monotonic())

        return record

    @property
    def names(self) -> list[str]:
        """The event names in emission order."""
        return [name for name, _ in self.entries]

    def args_of(self, event: str) -> list[tuple[Any, ...]]:
        """The arguments of every emission of ``event``."""
        return [args for name, args in self.entries if name == event]

    def causes(self, event: str) -> list[str]:
        """The first argument of every ``event`` (its cause), as plain strings."""
        return [str(args[0]) if args else "" for args in self.args_of(event)]

    def count(self, event: str) -> int:
        """How many ``event`` were emitted."""
        return self.names.count(event)

    def times(self, event: str) -> list[float]:
        """When each ``event`` was emitted (``time.monotonic()``)."""
        return [at for (name, _), at in zip(self.entries, self._at, strict=True) if name == event]

    def clear(self) -> None:
        """Forget what was recorded (keep listening)."""
        self.entries.clear()
        self._at.clear()
