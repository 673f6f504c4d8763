"""``CircuitBreaker``: opossum's breaker for asyncio.

Wires the pure core (state machine, rolling window, backoff) to a clock, the
event emitter, the per-breaker timeout queue and the optional features (cache,
coalescing, capacity, health checks, snapshots). ``async with breaker:`` lives
in ``_guard.py``, the health-check task in ``_health.py`` and the JSON export
and ``state=`` import in ``_persist.py``.

The call path is written for speed: while nothing unusual is configured (no
listeners, cache, coalescing; enabled, closed) ``fire()`` costs two clock
reads, a few counter increments and the one timeout-queue entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from . import _guard, _health, _persist, _registry
from ._backoff import open_period
from ._cache import MemoryCache, call_key, maybe_await
from ._clock import TimerHandle
from ._cluster_view import ClusterView
from ._coalesce import CoalesceTable
from ._deadlines import EXPIRED, DeadlineQueue, timed_out
from ._errors import (
    CircuitTimeoutError,
    OpenCircuitError,
    SemaphoreLockedError,
    ShutdownError,
)
from ._events import EventEmitter, Handler
from ._fallback import check_fallback
from ._logs import log_transition
from ._options import BreakerOptions, parse_options
from ._redis.link import SharedLink
from ._state import Cause, State, StateMachine, Transition, exceeds_threshold
from ._stats import Stats
from ._tasks import running_loop as _running_loop
from ._tasks import task_of as _task_of
from ._window import RollingWindow

__all__ = ["CircuitBreaker"]

P = ParamSpec("P")
R = TypeVar("R")

_CLOSED = State.CLOSED
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
        self._deadlines = (
            DeadlineQueue(opts.timeout, opts.clock) if opts.timeout is not None else None
        )
        self._capacity = opts.capacity if opts.capacity is not None else sys.maxsize
        self._in_flight = 0
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
        self._warm_up_until = now + opts.rolling_count_timeout if opts.allow_warm_up else -1.0
        self._half_open_timer: TimerHandle | None = None
        self._snapshot_timer: TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._guards: dict[asyncio.Task[Any] | None, list[_guard.Guard]] = {}
        self._gate = False
        self._timers_missed = False  # a timer wanted while no event loop ran
        # The loop this breaker's timers and coordinator belong to; the first
        # call on another loop re-arms them there (see _rebind).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_bound = False  # holds something of a loop even on the plain path
        if opts.state is not None:
            _persist.restore(self, opts.state, now)
        self._link = (
            SharedLink(self, opts, opts.distributed) if opts.distributed is not None else None
        )
        if self._link is not None:
            # With a running loop the first sync starts now (an open cluster is
            # learnt before the first call, nearly always); else on first use.
            self._link.attach()
        _registry.track(self)
        with contextlib.suppress(RuntimeError):  # no loop runs: the first call binds one
            self._loop = _running_loop()  # what __init__ armed, it armed on this loop
        self._refresh_gate()

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
            return await self._fire_gated(args, kwargs)  # type: ignore[no-any-return]
        # The plain path: closed, enabled, nobody listening, no cache, coalescing
        # or capacity. It is _execute() inlined, minus what cannot happen here;
        # every nanosecond counts (see BENCHMARKS.md), so no helper calls.
        # A call on another loop than the breaker's goes the gated way once,
        # which re-arms the breaker's timers and coordinator on that loop.
        monotonic = self._monotonic
        window = self._window
        deadlines = self._deadlines
        if deadlines is None:
            if self._loop_bound and _running_loop() is not self._loop:
                return await self._fire_gated(args, kwargs)  # type: ignore[no-any-return]
            now = monotonic()
            (window.head if now < window.bucket_end else window.roll(now)).fires += 1
            try:
                if self._action_is_async:
                    result = await self._action(*args, **kwargs)
                else:
                    result = self._action(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
            except Exception as error:
                if self._failure(error, args, kwargs, now, monotonic(), 0, expired=False):
                    return await self._run_fallback(error, args, kwargs)  # type: ignore[no-any-return]
                raise  # here rather than in a helper: one coroutine hop less per failure
        else:
            loop = _running_loop()
            if loop is not self._loop:
                return await self._fire_gated(args, kwargs)  # type: ignore[no-any-return]
            now = monotonic()
            (window.head if now < window.bucket_end else window.roll(now)).fires += 1
            task = _task_of(loop)
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
                if not timed_out(entry, task):  # type: ignore[arg-type]
                    raise  # the caller's own cancellation: neither success nor failure
                return await self._timed_out(args, kwargs, now, 0)  # type: ignore[no-any-return]
            except Exception as error:
                deadlines.pop(entry)
                if entry[2] and timed_out(entry, task):  # type: ignore[arg-type]
                    # The action turned our cancellation into an error of its own.
                    return await self._timed_out(args, kwargs, now, 0)  # type: ignore[no-any-return]
                if self._failure(error, args, kwargs, now, monotonic(), 0, expired=False):
                    return await self._run_fallback(error, args, kwargs)  # type: ignore[no-any-return]
                raise
            entry[1] = None  # DeadlineQueue.pop, inlined for the usual, in-order case
            if entries and entries[0] is entry:
                entries.popleft()
                if entries and entries[0][1] is None:
                    deadlines.pop(entries[0])
            if entry[2] and timed_out(entry, task):  # type: ignore[arg-type]
                # The action swallowed our cancellation and returned late.
                return await self._timed_out(args, kwargs, now, 0)  # type: ignore[no-any-return]
        end = monotonic()
        (window.head if end < window.bucket_end else window.roll(end)).ok.append(end - now)
        return result  # type: ignore[no-any-return]

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
        """Admission, the timed call, and the outcome."""
        core = self._core
        permit = 0
        if core.state is not _CLOSED:
            permit, retry_after = await self._admit(now)
            if permit < 0:
                return await self._fallback_or_raise(self._reject(now, retry_after), args, kwargs)
        if self._in_flight >= self._capacity:
            self._release(permit)
            locked = self._semaphore_locked(now)
            return await self._failed(locked, args, kwargs, now, now, 0, expired=False, ran=False)
        deadlines = self._deadlines
        entry = task = None
        if deadlines is not None:
            task = _task_of(_running_loop())
            entry = deadlines.push(task, now)  # type: ignore[arg-type]
        self._in_flight += 1
        error: BaseException | None = None
        expired = False
        try:
            result = self._action(*args, **kwargs)
            if self._action_is_async or inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError:
            if entry is None or not timed_out(entry, task):  # type: ignore[arg-type]
                self._release(permit)
                raise  # the caller's own cancellation: neither success nor failure
            expired = True
        except Exception as exc:
            error = exc
        except BaseException:
            self._release(permit)
            raise
        finally:
            self._in_flight -= 1
            if entry is not None:
                deadlines.pop(entry)  # type: ignore[union-attr]
        end = self._monotonic()
        if entry is not None and entry[EXPIRED] and timed_out(entry, task):  # type: ignore[arg-type]
            # The action swallowed our cancellation, or turned it into another error.
            expired = True
        if expired:
            timeout = deadlines.timeout  # type: ignore[union-attr]
            error = CircuitTimeoutError(breaker_name=self.name, timeout=timeout)
        if error is not None:
            return await self._failed(error, args, kwargs, now, end, permit, expired=expired)
        self._succeeded(result, end - now, end, permit)
        if cache_key is not None and self._cache is not None:
            await maybe_await(self._cache.set(cache_key, result, self._options.cache_ttl))
        return result

    async def _timed_out(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], start: float, permit: int
    ) -> Any:
        timeout = self._deadlines.timeout  # type: ignore[union-attr]
        error = CircuitTimeoutError(breaker_name=self.name, timeout=timeout)
        end = self._monotonic()
        return await self._failed(error, args, kwargs, start, end, permit, expired=True)

    def _succeeded(self, result: Any, latency: float, end: float, permit: int) -> None:
        self._window.roll(end).ok.append(latency)
        if permit:
            if self._link is not None:
                self._link.trial_finished(permit, success=True)
            core = self._core
            core.trial_succeeded(end, permit)
            if core.pending:
                self._announce()
        if self._events.call_listened:
            self._events.emit("success", result, latency)

    async def _failed(
        self,
        error: BaseException,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        start: float,
        end: float,
        permit: int,
        *,
        expired: bool,
        ran: bool = True,
    ) -> Any:
        """Record a failure, judge the window, then fall back or raise."""
        if self._failure(error, args, kwargs, start, end, permit, expired=expired, ran=ran):
            return await self._run_fallback(error, args, kwargs)
        if isinstance(error, CircuitTimeoutError):
            raise error from None
        raise error

    def _failure(
        self,
        error: BaseException,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        start: float,
        end: float,
        permit: int,
        *,
        expired: bool,
        ran: bool = True,
    ) -> bool:
        """Record a failure (or a filtered error as a success); True when the fallback runs."""
        error_filter = self._options.error_filter
        if error_filter is not None and error_filter(error, *args, **kwargs):
            self._succeeded(error, end - start, end, permit)
            return False
        self._record_failure(error, start, end, permit, args, expired=expired, ran=ran)
        return self._fallback is not None

    def _record_failure(
        self,
        error: BaseException,
        start: float,
        end: float,
        permit: int,
        args: tuple[Any, ...],
        *,
        expired: bool,
        ran: bool = True,
    ) -> None:
        window = self._window
        latency = end - start
        events = self._events
        core = self._core
        bucket = window.roll(end)
        if expired:
            bucket.timeouts += 1
        bucket.failures += 1
        late = core.started_before_change(start)
        if late:
            # The call began before the latest state change: a fact for the
            # stats, but the window's decision (local, and the cluster's through
            # the reports) belongs to the new state, which it must never flip.
            bucket.late_failures += 1
        if ran and window.percentiles_enabled:
            bucket.record_latency(latency)
        if events.call_listened:
            if expired:
                events.emit("timeout", error, latency, args)
            events.emit("failure", error, latency, args)
        if permit:
            if self._link is not None:
                self._link.trial_finished(permit, success=False)
            core.trial_failed(end, permit)
        elif (
            core.state is _CLOSED
            and not late
            and end >= self._warm_up_until
            and exceeds_threshold(
                *window.totals(end),
                volume_threshold=self._options.volume_threshold,
                error_threshold_percentage=self._options.error_threshold_percentage,
            )
        ):
            core.trip(end, Cause.LOCAL)
        if core.pending:
            self._announce()

    async def _fallback_or_raise(
        self, error: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._fallback is None:
            raise error
        return await self._run_fallback(error, args, kwargs)

    async def _run_fallback(
        self, error: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """``fallback(*args, error, **kwargs)``, counted and announced.

        A fallback that raises keeps ``error`` reachable as its ``__context__``,
        wherever this runs (inside the ``except`` that caught it, or not).
        """
        try:
            result = self._fallback(*args, error, **kwargs)  # type: ignore[misc]
            if inspect.isawaitable(result):
                result = await result
        except Exception as fallback_error:
            if fallback_error is not error and fallback_error.__context__ is None:
                fallback_error.__context__ = error
            raise
        self._window.roll(self._monotonic()).fallbacks += 1
        self._events.emit("fallback", result, error)
        return result

    async def _admit(self, now: float) -> tuple[int, float | None]:
        """Admission off the plain path: ``(permit, retry_after)``; permit < 0 rejects.

        A trial while the cluster's open period is over also needs the
        cluster's lease (one bounded round trip); when Redis cannot be reached
        the local half-open rule applies instead.
        """
        core = self._core
        permit = core.admit(now)
        if core.pending:
            self._announce()
        if permit < 0:
            return permit, core.retry_after(now)
        link = self._link
        if permit > 0 and link is not None and link.needs_lease():
            lease = await link.acquire_trial(permit)
            if lease.granted is False:
                core.release(permit)
                return -1, lease.retry_after
        return permit, None

    def _release(self, permit: int) -> None:
        """Give a trial permit back without an outcome."""
        if permit:
            self._core.release(permit)
            if self._link is not None:
                self._link.trial_released(permit)

    def _reject(self, now: float, retry_after: float | None) -> OpenCircuitError:
        """Count and announce a rejection; returns the error to raise."""
        self._window.roll(now).rejects += 1
        error = OpenCircuitError(breaker_name=self.name, retry_after=retry_after)
        self._events.emit("reject", error)
        return error

    def _semaphore_locked(self, now: float) -> SemaphoreLockedError:
        self._window.roll(now).semaphore_rejections += 1
        error = SemaphoreLockedError(breaker_name=self.name, capacity=self._capacity)
        self._events.emit("semaphore_locked", error, 0.0)
        return error

    # -- async with ------------------------------------------------------------------------------

    # The block's admission and outcome live in _guard.py; assigned rather than
    # wrapped, so a block costs no extra coroutine.
    __aenter__ = _guard.enter
    __aexit__ = _guard.leave

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
        if self._attach():
            await self._link.force_open()  # type: ignore[union-attr]
        self._core.force_open(self._monotonic(), Cause.MANUAL)
        self._announce()

    async def reset(self) -> None:
        """Close the breaker and clear its backoff attempts (also ends a forced open).

        Distributed, this closes every pod's breaker of this name (a pod that
        is still sick trips again on its own); ``RegistryError`` as
        :meth:`force_open`.
        """
        if self._attach():
            await self._link.reset()  # type: ignore[union-attr]
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

    def fallback(self, fn: Callable[..., Any]) -> CircuitBreaker[P, R]:
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
        _health.start(self, fn, interval)

    def clear_cache(self) -> None:
        """Empty the result cache and the coalescing table."""
        if self._cache is not None:
            result = self._cache.flush()
            if inspect.iscoroutine(result):
                self._spawn(result)
        if self._coalesce is not None:
            self._coalesce.clear()

    async def shutdown(self) -> None:
        """Stop timers and background work; later calls raise ``ShutdownError``."""
        if self._shutdown:
            return
        self._shutdown = True
        self._enabled = False
        self._refresh_gate()
        for timer in (self._half_open_timer, self._snapshot_timer):
            if timer is not None:
                timer.cancel()
        self._half_open_timer = self._snapshot_timer = None
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
        link = self._link
        self._gate = (
            self._shutdown
            or self._action is _no_action
            or not self._enabled
            or self._events.call_listened
            or self._cache is not None
            or self._coalesce is not None
            or self._capacity != sys.maxsize
            or self._core.state is not _CLOSED
            or (link is not None and link.coordinator is None and not link.client_closed)
            or self._timers_missed
        )
        self._loop_bound = link is not None or self._snapshot_timer is not None

    def _refresh_snapshots(self) -> None:
        wanted = (
            self._options.enable_snapshots and self._events.has("snapshot") and not self._shutdown
        )
        if wanted and self._snapshot_timer is None:
            self._snapshot_timer = self._schedule(self._window.interval, self._snapshot_tick)
        elif not wanted and self._snapshot_timer is not None:
            self._snapshot_timer.cancel()
            self._snapshot_timer = None

    def _snapshot_tick(self) -> None:
        self._snapshot_timer = None
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

    def _attach(self) -> bool:
        """Start what needs the running loop (timers, the coordinator); True when joined.

        A breaker made, given a snapshot listener or restored open outside an
        event loop could not arm its timers then; its first call does. A
        breaker used on a new loop re-arms there what its old loop held.
        """
        loop = _running_loop()
        if loop is not self._loop:
            self._rebind(loop)
        elif self._timers_missed:
            self._timers_missed = False
            self._refresh_snapshots()
            if self._core.state is State.OPEN and self._half_open_timer is None:
                self._apply_open_deadline(self._monotonic())
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
        self._timers_missed = False
        if self._deadlines is not None:
            self._deadlines.close()  # armed again by the next call, on this loop
        if self._snapshot_timer is not None:
            self._snapshot_timer.cancel()
            self._snapshot_timer = None
        self._refresh_snapshots()
        if self._core.state is State.OPEN:
            self._apply_open_deadline(self._monotonic())
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
                self._apply_open_deadline(now)
        elif state == "forced_open":
            core.force_open(now, cause)
        elif state == "closed" and new_opening and same_gen and core.state is not State.CLOSED:
            core.close(now, cause)  # a cluster close closes every pod
        self._announce()

    def _apply(self, transition: Transition) -> None:
        if self._half_open_timer is not None:
            self._half_open_timer.cancel()
            self._half_open_timer = None
        state = transition.state
        now = self._monotonic()
        if state is State.OPEN:
            self._apply_open_deadline(now)
        elif state is State.CLOSED:
            self._window.clear(now)

    def _apply_open_deadline(self, now: float) -> None:
        """(Re)arm the timer that ends the open period at ``core.open_until``."""
        if self._half_open_timer is not None:
            self._half_open_timer.cancel()
        self._half_open_timer = self._schedule(
            max(0.0, self._core.open_until - now), self._open_period_over
        )

    def _open_period_over(self) -> None:
        self._half_open_timer = None
        self._core.half_open(self._monotonic(), Cause.TIMER)
        self._announce()

    def _schedule(self, delay: float, callback: Callable[[], None]) -> TimerHandle | None:
        """A timer, or None when no event loop runs (admission then notices lazily)."""
        try:
            return self._clock.call_later(delay, callback)
        except RuntimeError:
            self._timers_missed = True  # armed by the first call, through the gate
            return None

    def _spawn(self, coroutine: Any) -> None:
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
        return self._monotonic() < self._warm_up_until

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
        return _persist.to_json(self)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._core.state.value}>"
