"""``CircuitBreaker``: opossum's breaker for asyncio, built from parts.

The parts, each behind a narrow interface:

- the call engine (``_engine.py``): admission, capacity, outcomes, the open
  decision; ``fire()``, ``async with`` and the cluster link all go through it;
- the timeout queue (``_deadlines.py``): one timer for every call's timeout;
- the timers (``_timers.py``): the open period's end and the snapshots;
- the guards (``_guard.py``): ``async with breaker:`` blocks;
- the cluster link (``_redis/link.py``), reached through a :class:`BreakerPort`;
- persistence (``_persist.py``) and health checks (``_health.py``), pure of
  the breaker: they get values and callables, never the breaker.

This class wires them, owns the loop they belong to, and applies state
changes (timers, the window on close, the link's votes, events and logs).

The call path is written for speed: while nothing unusual is configured (no
listeners, cache, coalescing; enabled, closed) ``fire()`` costs two clock
reads, a few counter increments and the one timeout-queue entry; an open
breaker rejects without a second coroutine.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar, overload

from . import _health, _persist, _registry
from ._backoff import open_period
from ._cache import MemoryCache, call_key, maybe_await
from ._cluster_view import ClusterView
from ._coalesce import CoalesceTable
from ._deadlines import DeadlineQueue, timed_out
from ._engine import CallEngine
from ._errors import OpenCircuitError, ShutdownError
from ._events import EventEmitter, Handler
from ._fallback import await_fallback, call_fallback, check_fallback
from ._guard import Guards
from ._logs import log_transition
from ._options import BreakerOptions, parse_options
from ._redis.link import BreakerPort, SharedLink
from ._state import Cause, State, StateMachine, Transition
from ._stats import Stats
from ._tasks import running_loop as _running_loop
from ._tasks import task_of as _task_of
from ._timers import BreakerTimers
from ._window import RollingWindow

__all__ = ["CircuitBreaker"]

P = ParamSpec("P")
R = TypeVar("R")

_CLOSED = State.CLOSED
_OPEN = State.OPEN
_OWN_EVIDENCE = frozenset({Cause.LOCAL, Cause.TRIAL})
"""Openings this pod decided from its own calls: its trip, or its failed trial. Each
is its vote (a failed cluster trial re-opens the cluster anyway; a failed local
trial, made while Redis was away, must count once Redis is back)."""
_STATE_EVENTS = {
    State.OPEN: "open",
    State.FORCED_OPEN: "open",
    State.HALF_OPEN: "half_open",
    State.CLOSED: "close",
}


def _no_action(*args: Any, **kwargs: Any) -> Any:
    """The action of a breaker made without one (never called: the gate stops fire())."""
    raise AssertionError("unreachable: a breaker without an action is always gated")


class CircuitBreaker(Generic[P, R]):
    """A circuit breaker around one async (or sync) callable.

    Args:
        action: the callable the breaker guards; ``fire(*args, **kwargs)`` calls
            ``action(*args, **kwargs)`` and awaits the result when awaitable.
            Without one, the breaker guards ``async with`` blocks only (then
            ``name`` is required).
        **options: opossum's options in snake_case with durations in seconds
            (``timeout``, ``error_threshold_percentage``, ``reset_timeout``, ...;
            see the README). Unknown names raise ``TypeError``; bad values raise
            ``ValueError``/``TypeError`` naming the option.

    Example::

        breaker = CircuitBreaker(call_service, name="payments", timeout=3.0)
        result = await breaker.fire(order_id)
    """

    @overload
    def __init__(self, action: Callable[P, Awaitable[R]], **options: Any) -> None: ...

    @overload
    def __init__(self, action: Callable[P, R], **options: Any) -> None: ...

    @overload
    def __init__(self: CircuitBreaker[..., None], action: None = None, **options: Any) -> None: ...

    def __init__(self, action: Callable[P, Any] | None = None, **options: Any) -> None:
        if action is not None and not callable(action):
            raise TypeError(f"action must be callable, got {action!r}")
        opts = parse_options(action, options)
        self._options = opts
        # Without one, the breaker only guards ``async with`` blocks; the gate
        # keeps fire() off the plain path, and _fire_gated() says why.
        self._action: Callable[..., Any] = action if action is not None else _no_action
        self._action_is_async = inspect.iscoroutinefunction(action)
        self._clock = opts.clock
        self._monotonic = opts.clock.monotonic
        now = self._monotonic()
        self._window = RollingWindow(
            opts.rolling_count_timeout,
            opts.rolling_count_buckets,
            now,
            percentiles_enabled=opts.rolling_percentiles_enabled,
        )
        self._core = StateMachine(
            half_open_max_calls=opts.half_open_max_calls,
            trial_lease=opts.trial_lease,
            period=self._open_period,
        )
        self._events = EventEmitter(f"breaker {opts.name!r}", on_change=self._listeners_changed)
        self._engine = CallEngine(
            opts,
            window=self._window,
            core=self._core,
            events=self._events,
            monotonic=self._monotonic,
            on_transitions=self._announce,
            warm_up_until=now + opts.rolling_count_timeout if opts.allow_warm_up else -1.0,
        )
        self._deadlines = (
            DeadlineQueue(opts.timeout, opts.clock) if opts.timeout is not None else None
        )
        self._timers = BreakerTimers(
            opts.clock,
            on_open_period_over=self._open_period_over,
            on_snapshot=self._snapshot_tick,
        )
        self._guards = Guards(
            self, self._engine, self._deadlines, start=self._start_block, admit=self._admit
        )
        self._fallback: Callable[..., Any] | None = None
        self._cache: Any = None
        if opts.cache:
            self._cache = opts.cache_transport or MemoryCache(opts.cache_size, self._monotonic)
        self._coalesce = (
            CoalesceTable(
                ttl=opts.coalesce_ttl,
                size=opts.coalesce_size,
                reset_on=opts.coalesce_reset_on,
                now=self._monotonic,
            )
            if opts.coalesce
            else None
        )
        self._key: Callable[..., Any] | None = opts.cache_get_key
        self._enabled = opts.enabled
        self._shutdown = False
        self._background: set[asyncio.Task[None]] = set()
        # _gate: anything but the plain closed path; _rejecting: an open breaker
        # whose rejections need no more than a count (see _refresh_gate).
        self._gate = False
        self._rejecting = False
        # The loop this breaker's timers and coordinator belong to; the first
        # call on another loop re-arms them there (see _rebind).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_bound = False  # holds something of a loop even on the plain path
        if opts.state is not None:
            self._restore(_persist.parse_state(opts.state, opts, self._clock.wall()), now)
        self._link = (
            SharedLink(self._port(), opts, opts.distributed)
            if opts.distributed is not None
            else None
        )
        if self._link is not None:
            self._engine.trials = self._link
            # With a running loop the first sync starts now (an open cluster is
            # learnt before the first call, nearly always); else on first use.
            self._link.attach()
        _registry.track(self)
        with contextlib.suppress(RuntimeError):  # no loop runs: the first call binds one
            self._loop = _running_loop()  # what __init__ armed, it armed on this loop
        self._refresh_gate()

    def _port(self) -> BreakerPort:
        """What the cluster link may read of this breaker and call on it."""
        core = self._core
        return BreakerPort(
            window=self._window,
            monotonic=self._monotonic,
            local_state=lambda: core.state,
            follow=self._follow_shared,
            emit=self._events.emit,
            coordinator_changed=self._refresh_gate,
        )

    # -- calling ---------------------------------------------------------------------------------

    async def fire(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the action under the breaker.

        Returns:
            The action's result, a cached or coalesced result, or the fallback's result.

        Raises:
            OpenCircuitError: the breaker is open and there is no fallback.
            CircuitTimeoutError: the action took longer than ``timeout`` (it was cancelled).
            SemaphoreLockedError: ``capacity`` calls are in flight.
            ShutdownError: the breaker was shut down.
            Exception: whatever the action (or the fallback) raised.
        """
        if self._gate:
            if self._rejecting:
                # Open: reject with a count and no second coroutine (an outage
                # makes this the hot path). The period's end, and the first
                # call on another loop, go the gated way.
                now = self._monotonic()
                open_until = self._core.open_until
                if now < open_until and _task_of(self._loop) is not None:
                    fallback = self._fallback
                    if fallback is None:
                        # Raised unnamed: a local naming it would make a reference
                        # cycle through the traceback, left to the garbage collector.
                        raise self._engine.reject(now, open_until - now, args)
                    error = self._engine.reject(now, open_until - now, args)
                    fell_back: R = call_fallback(fallback, error, args, kwargs)
                    if hasattr(fell_back, "__await__"):
                        fell_back = await await_fallback(fell_back, error)
                    self._fallback_done(fell_back, error)
                    return fell_back
            gated: R = await self._fire_gated(args, kwargs)
            return gated
        # The plain path: closed, enabled, nobody listening, no cache, coalescing
        # or capacity. The engine's admission and success, inlined for the one
        # case where both are a counter; every failure goes to the engine.
        # A call on another loop than the breaker's goes the gated way once,
        # which re-arms the breaker's timers and coordinator on that loop.
        # The loop checks ask for the breaker's loop's current task, not for the
        # running loop (a getpid system call each time on 3.11): a loop has a
        # current task only while it runs, and a breaker is used from one loop
        # at a time (see the README's Lifecycle).
        monotonic = self._monotonic
        window = self._window
        deadlines = self._deadlines
        if deadlines is None:
            if self._loop_bound and _task_of(self._loop) is None:
                gated = await self._fire_gated(args, kwargs)
                return gated
            now = monotonic()
            (window.head if now < window.bucket_end else window.roll(now)).fires += 1
            try:
                if self._action_is_async:
                    result: R = await self._action(*args, **kwargs)
                else:
                    result = self._action(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
            except Exception as error:
                if self._engine.failed(error, now, monotonic(), 0, args, kwargs) and (
                    self._fallback is not None
                ):
                    fell_back = await self._run_fallback(error, args, kwargs)
                    return fell_back
                # Re-raised here rather than in a helper (one coroutine hop less), and
                # unnamed (no reference cycle through the traceback: see above).
                del error
                raise
        else:
            task = _task_of(self._loop)
            if task is None:
                gated = await self._fire_gated(args, kwargs)
                return gated
            now = monotonic()
            (window.head if now < window.bucket_end else window.roll(now)).fires += 1
            entry = [now + deadlines.timeout, task, 0]  # DeadlineQueue.push, inlined
            entries = deadlines.entries
            entries.append(entry)
            if deadlines.timer is None:
                deadlines.arm()
            try:
                if self._action_is_async:
                    result = await self._action(*args, **kwargs)
                else:
                    result = self._action(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
            except asyncio.CancelledError:
                deadlines.pop(entry)
                if not timed_out(entry, task):
                    raise  # the caller's own cancellation: neither success nor failure
                fell_back = await self._timed_out(args, kwargs, now, 0)
                return fell_back
            except Exception as error:
                entry[1] = None  # DeadlineQueue.pop, inlined for the usual, in-order case
                if entries and entries[0] is entry:
                    entries.popleft()
                    if entries and entries[0][1] is None:
                        deadlines.pop(entries[0])
                if entry[2] and timed_out(entry, task):
                    # The action turned our cancellation into an error of its own.
                    fell_back = await self._timed_out(args, kwargs, now, 0)
                    return fell_back
                if self._engine.failed(error, now, monotonic(), 0, args, kwargs) and (
                    self._fallback is not None
                ):
                    fell_back = await self._run_fallback(error, args, kwargs)
                    return fell_back
                del error
                raise
            entry[1] = None  # DeadlineQueue.pop, inlined for the usual, in-order case
            if entries and entries[0] is entry:
                entries.popleft()
                if entries and entries[0][1] is None:
                    deadlines.pop(entries[0])
            if entry[2] and timed_out(entry, task):
                # The action swallowed our cancellation and returned late.
                fell_back = await self._timed_out(args, kwargs, now, 0)
                return fell_back
        end = monotonic()
        (window.head if end < window.bucket_end else window.roll(end)).ok.append(end - now)
        return result

    async def _fire_gated(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``fire()`` when anything beyond the plain closed path is configured."""
        if self._shutdown:
            raise ShutdownError(breaker_name=self.name)
        action = self._action
        if action is _no_action:
            raise TypeError(
                f"breaker {self.name!r} has no action to fire: guard a block with "
                "'async with breaker:', or pass an action to CircuitBreaker()"
            )
        self._attach()
        key: Any = None
        if self._enabled and (self._cache is not None or self._coalesce is not None):
            # Before the call is counted: a key that cannot be made is the caller's error.
            key = self._key(*args, **kwargs) if self._key is not None else call_key(args, kwargs)
        now = self._monotonic()
        self._window.roll(now).fires += 1
        self._events.emit("fire", args)
        if not self._enabled:
            result = action(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result
        if self._cache is not None:
            cached = await maybe_await(self._cache.get(key))
            bucket = self._window.roll(self._monotonic())
            if cached is not None:
                bucket.cache_hits += 1
                self._events.emit("cache_hit")
                return cached
            bucket.cache_misses += 1
            self._events.emit("cache_miss")
        if self._coalesce is not None:
            shared = self._coalesce.get(key)
            bucket = self._window.roll(self._monotonic())
            if shared is not None:
                bucket.coalesce_cache_hits += 1
                self._events.emit("coalesce_cache_hit")
            else:
                bucket.coalesce_cache_misses += 1
                self._events.emit("coalesce_cache_miss")
                shared = self._coalesce.start(key, self._execute(args, kwargs, now, key))
            return await asyncio.shield(shared)
        return await self._execute(args, kwargs, now, key)

    async def _execute(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], now: float, cache_key: Any
    ) -> Any:
        """Admission, the timed call, and the outcome (the engine's, all of them)."""
        engine = self._engine
        try:
            permit = await self._admit(now)
        except OpenCircuitError as rejected:
            if self._fallback is None:
                raise
            return await self._run_fallback(rejected, args, kwargs)
        if not engine.take_slot():
            if self._fallback is None:
                raise engine.locked(now, permit, args)
            return await self._run_fallback(engine.locked(now, permit, args), args, kwargs)
        deadlines = self._deadlines
        entry = task = None
        if deadlines is not None:
            task = _task_of(_running_loop())
            if task is not None:
                entry = deadlines.push(task, now)
        error: Exception | None = None
        try:
            result = self._action(*args, **kwargs)
            if self._action_is_async or inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError:
            engine.free_slot()
            if deadlines is not None and entry is not None and task is not None:
                deadlines.pop(entry)
                if timed_out(entry, task):
                    return await self._timed_out(args, kwargs, now, permit)
            engine.released(permit)
            raise  # the caller's own cancellation: neither success nor failure
        except Exception as exc:
            error = exc
        except BaseException:
            engine.free_slot()
            engine.released(permit)
            raise
        engine.free_slot()
        if deadlines is not None and entry is not None and task is not None:
            deadlines.pop(entry)
            if entry[2] and timed_out(entry, task):
                # The action swallowed our cancellation, or turned it into another error.
                return await self._timed_out(args, kwargs, now, permit)
        end = self._monotonic()
        if error is not None:
            if engine.failed(error, now, end, permit, args, kwargs) and self._fallback is not None:
                return await self._run_fallback(error, args, kwargs)
            try:
                raise error
            finally:
                error = None  # no reference cycle through the traceback
        engine.succeeded(result, now, end, permit)
        if cache_key is not None and self._cache is not None:
            await maybe_await(self._cache.set(cache_key, result, self._options.cache_ttl))
        return result

    async def _admit(self, now: float) -> int:
        """The admission of a call starting at ``now``: its trial permit (0: none).

        Raises ``OpenCircuitError`` (counted and announced) when not admitted.
        A trial while the cluster's open period is over also needs the
        cluster's lease (one bounded round trip); when Redis cannot be used the
        local half-open rule applies instead.
        """
        engine = self._engine
        permit = engine.admit(now)
        if permit < 0:
            raise engine.reject(now, engine.retry_after(now))
        link = self._link
        if permit > 0 and link is not None and link.needs_lease():
            lease = await link.acquire_trial(permit)
            if lease.granted is False:
                engine.core.release(permit)
                raise engine.reject(now, lease.retry_after)
        return permit

    async def _timed_out(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], start: float, permit: int
    ) -> Any:
        """The call ran out of time: a failure, then the fallback or the error."""
        error = self._engine.timed_out()
        failed = self._engine.failed(
            error, start, self._monotonic(), permit, args, kwargs, expired=True
        )
        if failed and self._fallback is not None:
            return await self._run_fallback(error, args, kwargs)
        try:
            raise error from None
        finally:
            del error  # no reference cycle through the traceback

    async def _run_fallback(
        self, error: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """``fallback(*args, error, **kwargs)``, counted and announced."""
        assert self._fallback is not None  # every caller checked it
        result = call_fallback(self._fallback, error, args, kwargs)
        if hasattr(result, "__await__"):  # inspect.isawaitable, minus old generator coroutines
            result = await await_fallback(result, error)
        self._fallback_done(result, error)
        return result

    def _fallback_done(self, result: Any, error: BaseException) -> None:
        now = self._monotonic()
        window = self._window
        (window.head if now < window.bucket_end else window.roll(now)).fallbacks += 1
        if self._events.call_listened:
            self._events.emit("fallback", result, error)

    # -- async with ------------------------------------------------------------------------------

    async def __aenter__(self) -> CircuitBreaker[P, R]:
        """Admit the block (or raise ``OpenCircuitError``); the timeout applies to it."""
        return await self._guards.enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        """Record the block's outcome; its exception propagates (a timeout as
        ``CircuitTimeoutError``)."""
        return await self._guards.leave(exc)

    def _start_block(self) -> float:
        """A block starts: the time, or -1 when disabled (the block runs unguarded)."""
        if self._shutdown:
            raise ShutdownError(breaker_name=self.name)
        self._attach()
        now = self._monotonic()
        self._window.roll(now).fires += 1
        self._events.emit("fire", ())
        return now if self._enabled else -1.0

    # -- state control ---------------------------------------------------------------------------

    def open(self) -> None:
        """Open this breaker (locally), as if its window had tripped; a no-op when open."""
        self._core.trip(self._monotonic(), Cause.MANUAL)
        self._announce()

    def close(self) -> None:
        """Close this breaker (locally) and forget its backoff attempts.

        Distributed, this closes the local part only: while the cluster's
        breaker is open, this one follows it again at once.
        """
        self._core.close(self._monotonic(), Cause.MANUAL)
        self._announce()
        if self._link is not None and self._link.shared != "closed":
            self._link.reapply()

    async def force_open(self) -> None:
        """Hold the breaker open, with no trial calls, until :meth:`reset`.

        Distributed, this holds every pod's breaker of this name open. When
        Redis cannot be reached it raises ``RegistryError`` within 5 s and
        changes nothing, locally included.
        """
        link = self._link
        if self._attach() and link is not None:
            await link.force_open()
        self._core.force_open(self._monotonic(), Cause.MANUAL)
        self._announce()

    async def reset(self) -> None:
        """Close the breaker and clear its backoff attempts (also ends a forced open).

        Distributed, this closes every pod's breaker of this name (a pod that
        is still sick trips again on its own); ``RegistryError`` as
        :meth:`force_open`.
        """
        link = self._link
        if self._attach() and link is not None:
            await link.reset()
        self._core.close(self._monotonic(), Cause.MANUAL)
        self._announce()

    def disable(self) -> None:
        """Let every call straight through (still counted as ``fire``)."""
        self._enabled = False
        self._refresh_gate()

    def enable(self) -> None:
        """Undo :meth:`disable`."""
        self._enabled = True
        self._refresh_gate()

    def fallback(self, fn: Callable[..., R | Awaitable[R]]) -> CircuitBreaker[P, R]:
        """Use ``fn(*args, error, **kwargs)`` (sync or async) when a call fails or is rejected.

        Raises:
            TypeError: ``fn`` is not callable, or cannot take the action's
                required positional arguments followed by the error.
        """
        check_fallback(fn, None if self._action is _no_action else self._action)
        self._fallback = fn
        return self

    def health_check(self, fn: Callable[[], Any], interval: float = 5.0) -> None:
        """Run ``fn`` now and every ``interval`` seconds; when it raises, open the breaker.

        Needs a running event loop. The check stops at :meth:`shutdown`.
        """
        seconds = _health.check_arguments(fn, interval)
        if self._shutdown:
            raise ShutdownError(breaker_name=self.name)
        self._spawn(_health.run(fn, seconds, failed=self._health_failed, sleep=self._clock.sleep))

    def _health_failed(self, error: Exception) -> None:
        self._events.emit("health_check_failed", error)
        self._core.trip(self._monotonic(), Cause.HEALTH_CHECK)
        self._announce()

    def clear_cache(self) -> None:
        """Empty the result cache and the coalescing table."""
        if self._cache is not None:
            result = self._cache.flush()
            if inspect.iscoroutine(result):
                self._spawn(result)
        if self._coalesce is not None:
            self._coalesce.clear()

    async def shutdown(self) -> None:
        """Stop timers and background work; later calls raise ``ShutdownError``.

        Returns once this breaker's part is closed: the last breaker on a Redis
        client waits for the client's coordinator to close its connection.
        """
        if self._shutdown:
            return
        self._shutdown = True
        self._enabled = False
        self._refresh_gate()
        self._timers.cancel()
        if self._deadlines is not None:
            self._deadlines.stop_if_idle()  # calls still running keep their timeout
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._cache is not None:
            await maybe_await(self._cache.flush())
        if self._coalesce is not None:
            self._coalesce.clear()
        if self._link is not None:
            await self._link.detach()
        self._events.emit("shutdown")

    # -- events ----------------------------------------------------------------------------------

    def on(self, event: str, handler: Handler) -> None:
        """Call ``handler`` (sync or async) with the event's arguments on every ``event``."""
        self._events.on(event, handler)

    def off(self, event: str, handler: Handler) -> None:
        """Stop calling ``handler`` on ``event``."""
        self._events.off(event, handler)

    def _listeners_changed(self) -> None:
        self._refresh_snapshots()  # first: it may find no loop to arm a timer on
        self._refresh_gate()

    def _refresh_gate(self) -> None:
        """Which path ``fire()`` takes: the plain one, a bare rejection, or the gated one."""
        link = self._link
        simple = (
            not self._shutdown
            and self._action is not _no_action
            and self._enabled
            and self._cache is None
            and self._coalesce is None
            and not self._timers.missed
            and (link is None or link.coordinator is not None or link.client_closed)
        )
        state = self._core.state
        self._gate = not (
            simple
            and state is _CLOSED
            and not self._events.call_listened
            and self._engine.capacity == self._engine.SLOTS_UNLIMITED
        )
        self._rejecting = simple and state is _OPEN
        self._loop_bound = link is not None or self._timers.snapshot is not None

    def _refresh_snapshots(self) -> None:
        wanted = (
            self._options.enable_snapshots and self._events.has("snapshot") and not self._shutdown
        )
        self._timers.snapshots(wanted, self._window.interval)

    def _snapshot_tick(self) -> None:
        self._events.emit("snapshot", self.stats)
        self._refresh_snapshots()

    # -- transitions -----------------------------------------------------------------------------

    def _open_period(self, attempts: int) -> float:
        opts = self._options
        return open_period(
            attempts,
            reset_timeout=opts.reset_timeout,
            multiplier=opts.reset_timeout_multiplier,
            max_reset_timeout=opts.max_reset_timeout,
            jitter=opts.reset_timeout_jitter,
            uniform=random.uniform,
        )

    def _announce(self) -> None:
        """Apply the side effects of the core's pending transitions and emit their events."""
        core = self._core
        while core.pending:
            transition = core.pending.pop(0)
            self._apply(transition)
            self._refresh_gate()
            link = self._link
            if link is not None:
                if transition.state is State.OPEN and transition.cause in _OWN_EVIDENCE:
                    link.vote()
                elif transition.state is State.CLOSED:
                    link.closed_locally()
            log_transition(self.name, transition)
            self._events.emit(_STATE_EVENTS[transition.state], transition.cause)

    def _apply(self, transition: Transition) -> None:
        state = transition.state
        now = self._monotonic()
        if state is State.OPEN:
            self._timers.arm_open_period(self._core.open_until - now)
        else:
            self._timers.cancel_open_period()
            if state is State.CLOSED:
                self._window.clear(now)

    def _open_period_over(self) -> None:
        self._core.half_open(self._monotonic(), Cause.TIMER)
        self._announce()

    def _attach(self) -> bool:
        """Start what needs the running loop (timers, the coordinator); True when joined.

        A breaker made, given a snapshot listener or restored open outside an
        event loop could not arm its timers then; its first call does. A
        breaker used on a new loop re-arms there what its old loop held.
        """
        loop = _running_loop()
        if loop is not self._loop:
            self._rebind(loop)
        elif self._timers.missed:
            self._timers.missed = False
            self._refresh_snapshots()
            if self._core.state is State.OPEN and self._timers.open is None:
                self._timers.arm_open_period(self._core.open_until - self._monotonic())
            self._refresh_gate()
        link = self._link
        if link is None:
            return False
        if link.coordinator is None and link.attach(loop):
            self._refresh_gate()
        return link.coordinator is not None

    def _rebind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Move every timer and the coordinator to ``loop``.

        A timer of a loop that has ended never fires: a timeout that is never
        armed again, an open period that never ends with ``half_open``,
        snapshots that stop. Nothing of the old loop is kept: a breaker is
        used from one loop at a time (one after another is fine).
        """
        self._loop = loop
        self._timers.rebind()
        if self._deadlines is not None:
            self._deadlines.close()  # armed again by the next call, on this loop
        self._refresh_snapshots()
        if self._core.state is State.OPEN:
            self._timers.arm_open_period(self._core.open_until - self._monotonic())
        if self._link is not None:
            self._link.attach(loop)
        self._refresh_gate()

    def _follow_shared(
        self,
        state: str,
        *,
        deadline: float,
        attempts: int,
        new_opening: bool,
        same_gen: bool,
        cause: Cause,
    ) -> None:
        """Mirror the cluster's state (called by the link, never on the call path)."""
        core = self._core
        now = self._monotonic()
        if state in ("open", "half_open"):
            if state == "half_open":
                deadline = min(deadline, now)
            was_open = core.state is State.OPEN
            core.follow_open(now, deadline, attempts, cause, new_opening=new_opening)
            if was_open and core.state is State.OPEN and not core.pending:
                self._timers.arm_open_period(core.open_until - now)
        elif state == "forced_open":
            core.force_open(now, cause)
        elif state == "closed" and new_opening and same_gen and core.state is not State.CLOSED:
            core.close(now, cause)  # a cluster close closes every pod
        self._announce()

    def _restore(self, restored: _persist.RestoredState, now: float) -> None:
        """Take a ``state=`` import as this breaker's state."""
        if restored.enabled is not None:
            self._enabled = restored.enabled
        self._core.restore(
            restored.state, now=now, attempts=restored.attempts, remaining=restored.remaining
        )
        if restored.state is State.OPEN:
            self._timers.arm_open_period(self._core.open_until - now)
        if restored.shutdown:
            self._shutdown = True
            self._enabled = False

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- properties ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The breaker's name (shared state is per name)."""
        return self._options.name

    @property
    def group(self) -> str:
        """The breaker's group (defaults to its name)."""
        return self._options.group

    @property
    def state(self) -> State:
        """The current state (an open period that ended reads as half-open)."""
        core = self._core
        if core.state is State.OPEN and not self._shutdown and self._monotonic() >= core.open_until:
            core.half_open(self._monotonic(), Cause.TIMER)
            self._announce()
        return core.state

    @property
    def opened(self) -> bool:
        """True while open (forced open included)."""
        return self.state in (State.OPEN, State.FORCED_OPEN)

    @property
    def closed(self) -> bool:
        """True while closed."""
        return self.state is State.CLOSED

    @property
    def half_open(self) -> bool:
        """True while trial calls are admitted."""
        return self.state is State.HALF_OPEN

    @property
    def is_shutdown(self) -> bool:
        """True once :meth:`shutdown` ran."""
        return self._shutdown

    @property
    def enabled(self) -> bool:
        """False after :meth:`disable` or :meth:`shutdown`."""
        return self._enabled

    @property
    def warm_up(self) -> bool:
        """True during the first window when ``allow_warm_up`` is set (no opening then)."""
        return self._monotonic() < self._engine.warm_up_until

    @property
    def volume_threshold(self) -> int:
        """Completed calls needed in the window before the failure rate is judged."""
        return self._options.volume_threshold

    @property
    def attempts(self) -> int:
        """Consecutive openings without a close (drives the backoff)."""
        return self._core.attempts

    @property
    def retry_after(self) -> float | None:
        """Seconds until a trial may be admitted (0 when closed, None when forced open)."""
        return self._core.retry_after(self._monotonic())

    @property
    def options(self) -> BreakerOptions:
        """The validated, frozen options."""
        return self._options

    @property
    def cluster(self) -> ClusterView | None:
        """The cluster's breaker of this name as this pod last heard of it (None when local).

        No Redis round trip: the state, backoff and pooled window come with
        the pod's reports and broadcasts.
        """
        return None if self._link is None else self._link.view()

    @property
    def stats(self) -> Stats:
        """Counters and latencies summed over the rolling window."""
        return self._window.snapshot(self._monotonic())

    def to_json(self) -> dict[str, Any]:
        """``{"state": {...}, "status": {...}}``, JSON-serialisable; ``state`` re-imports."""
        state = self.state
        opened_at = self._core.opened_at
        return {
            "state": _persist.export_state(
                name=self.name,
                enabled=self._enabled,
                state=state,
                warm_up=self.warm_up,
                shutdown=self._shutdown,
                opened_at=(
                    None
                    if opened_at is None
                    else self._clock.wall() - (self._monotonic() - opened_at)
                ),
                attempts=self._core.attempts,
            ),
            "status": self.stats.to_dict(),
        }

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._core.state.value}>"
