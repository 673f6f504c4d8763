"""Events: names, arguments and order as opossum's, handler conventions, and their cost."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from helpers import API_EVENTS, Boom, EventLog, Gate, Recorder, Sleeper, breaker_on, settle

from distributed_opossum import (
    Cause,
    CircuitTimeoutError,
    OpenCircuitError,
    SemaphoreLockedError,
    Stats,
)
from distributed_opossum._events import EventEmitter
from distributed_opossum.testing import FakeClock

# --------------------------------------------------------------------------- call events


async def test_fire_event_gets_the_args_tuple() -> None:
    """``fire(args)``: the positional arguments of the call, keyword arguments left out."""
    breaker = breaker_on(FakeClock())
    log = EventLog().attach(breaker, "fire")
    await breaker.fire(1, "two", key="value")
    assert log.entries == [("fire", ((1, "two"),))]


async def test_success_event_gets_result_and_latency() -> None:
    """``success(result, latency)`` with the latency measured on the breaker's clock."""
    clock = FakeClock()
    breaker = breaker_on(clock, Sleeper(clock, 0.25, result="done"))
    log = EventLog().attach(breaker, "success")
    task = asyncio.ensure_future(breaker.fire())
    await clock.advance(0.25)
    assert await task == "done"
    [(result, latency)] = log.args_of("success")
    assert result == "done"
    assert latency == pytest.approx(0.25)


async def test_failure_event_gets_error_latency_args() -> None:
    """``failure(error, latency, args)`` with the action's own error object."""
    clock = FakeClock()
    error = Boom("down")
    breaker = breaker_on(clock, Sleeper(clock, 0.5, error=error))
    log = EventLog().attach(breaker, "failure")
    task = asyncio.ensure_future(breaker.fire(7, 8))
    await clock.advance(0.5)
    with pytest.raises(Boom):
        await task
    [(got, latency, args)] = log.args_of("failure")
    assert got is error
    assert latency == pytest.approx(0.5)
    assert args == (7, 8)


async def test_timeout_event_precedes_failure() -> None:
    """On expiry: ``timeout(error, latency, args)`` then ``failure`` with the same error."""
    clock = FakeClock()
    breaker = breaker_on(clock, Sleeper(clock, 60.0), timeout=1.0, volume_threshold=5)
    log = EventLog().attach(breaker)
    task = asyncio.ensure_future(breaker.fire("x"))
    await clock.advance(1.0)
    with pytest.raises(CircuitTimeoutError) as caught:
        await task
    assert log.names == ["fire", "timeout", "failure"]
    [(timeout_error, timeout_latency, timeout_args)] = log.args_of("timeout")
    [(failure_error, failure_latency, failure_args)] = log.args_of("failure")
    assert timeout_error is caught.value
    assert failure_error is caught.value
    assert timeout_latency == pytest.approx(1.0)
    assert failure_latency == pytest.approx(1.0)
    assert timeout_args == failure_args == ("x",)


async def test_reject_event_gets_the_open_error() -> None:
    """``reject(error)`` with the ``OpenCircuitError`` that the call raises."""
    breaker = breaker_on(FakeClock())
    breaker.open()
    log = EventLog().attach(breaker)
    with pytest.raises(OpenCircuitError) as caught:
        await breaker.fire()
    assert log.names == ["fire", "reject"]
    assert log.args_of("reject") == [(caught.value,)]


async def test_fallback_event_gets_result_and_error() -> None:
    """``fallback(result, error)`` with the fallback's result and the error it handled."""
    error = Boom("down")
    breaker = breaker_on(FakeClock(), Recorder(error=error))
    breaker.fallback(lambda *args: "plan b")
    log = EventLog().attach(breaker, "fallback")
    assert await breaker.fire() == "plan b"
    assert log.args_of("fallback") == [("plan b", error)]


async def test_semaphore_locked_event_then_failure() -> None:
    """Over capacity: ``semaphore_locked(error, latency)`` then ``failure`` with the same error."""
    gate = Gate()
    breaker = breaker_on(FakeClock(), gate, capacity=1, volume_threshold=5)
    first = asyncio.ensure_future(breaker.fire())
    await settle()
    log = EventLog().attach(breaker)
    with pytest.raises(SemaphoreLockedError) as caught:
        await breaker.fire("y")
    assert log.names == ["fire", "semaphore_locked", "failure"]
    [(error, latency)] = log.args_of("semaphore_locked")
    assert error is caught.value
    assert latency == 0.0
    [(failure_error, _, failure_args)] = log.args_of("failure")
    assert failure_error is caught.value
    assert failure_args == ("y",)
    gate.release()
    assert await first == "ok"


async def test_error_filter_emits_success_not_failure() -> None:
    """A filtered error emits ``success(error, latency)``: no ``failure``, no ``fallback``."""
    error = Boom("benign")
    breaker = breaker_on(
        FakeClock(), Recorder(error=error), error_filter=lambda exc, *a, **kw: True
    )
    breaker.fallback(lambda *args: "unused")
    log = EventLog().attach(breaker)
    with pytest.raises(Boom):
        await breaker.fire()
    assert log.names == ["fire", "success"]
    assert log.args_of("success")[0][0] is error


async def test_disabled_breaker_emits_only_fire() -> None:
    """A disabled breaker emits ``fire`` and nothing else, even for a failing action."""
    breaker = breaker_on(FakeClock(), Recorder(error=Boom()))
    breaker.disable()
    log = EventLog().attach(breaker)
    with pytest.raises(Boom):
        await breaker.fire()
    assert log.names == ["fire"]


async def test_shut_down_breaker_emits_no_fire() -> None:
    """After shutdown a call is refused before any ``fire`` event, as opossum."""
    breaker = breaker_on(FakeClock())
    await breaker.shutdown()
    log = EventLog().attach(breaker)
    with pytest.raises(Exception, match="shut down"):
        await breaker.fire()
    assert log.entries == []


# --------------------------------------------------------------------------- orders


async def test_order_failure_that_opens_with_fallback() -> None:
    """A failure that opens the breaker: fire, failure, open, fallback."""
    breaker = breaker_on(FakeClock(), Recorder(error=Boom()))
    breaker.fallback(lambda *args: "fb")
    log = EventLog().attach(breaker)
    assert await breaker.fire() == "fb"
    assert log.names == ["fire", "failure", "open", "fallback"]
    assert breaker.opened


async def test_order_on_open_breaker_with_fallback() -> None:
    """An open breaker with a fallback: fire, reject, fallback."""
    breaker = breaker_on(FakeClock())
    breaker.fallback(lambda *args: "fb")
    breaker.open()
    log = EventLog().attach(breaker)
    assert await breaker.fire() == "fb"
    assert log.names == ["fire", "reject", "fallback"]
    [(result, error)] = log.args_of("fallback")
    assert result == "fb"
    assert isinstance(error, OpenCircuitError)


async def test_order_on_timeout_with_fallback() -> None:
    """A timeout with a fallback: fire, timeout, failure, fallback."""
    clock = FakeClock()
    breaker = breaker_on(clock, Sleeper(clock, 60.0), timeout=2.0, volume_threshold=5)
    breaker.fallback(lambda *args: "fb")
    log = EventLog().attach(breaker)
    task = asyncio.ensure_future(breaker.fire())
    await clock.advance(2.0)
    assert await task == "fb"
    assert log.names == ["fire", "timeout", "failure", "fallback"]


async def test_order_of_a_plain_success() -> None:
    """A success: fire, success."""
    breaker = breaker_on(FakeClock())
    log = EventLog().attach(breaker)
    await breaker.fire()
    assert log.names == ["fire", "success"]


# --------------------------------------------------------------------------- state events


async def test_state_events_carry_their_cause() -> None:
    """open (local), half_open (timer), close (trial): each with a ``Cause`` argument."""
    clock = FakeClock()
    action = Recorder(error=Boom())
    breaker = breaker_on(clock, action, reset_timeout=10.0)
    log = EventLog().attach(breaker, "open", "half_open", "close")
    with pytest.raises(Boom):
        await breaker.fire()
    assert log.entries == [("open", (Cause.LOCAL,))]
    await clock.advance(10.0)
    assert log.entries[-1] == ("half_open", (Cause.TIMER,))
    action.error = None
    await breaker.fire()
    assert log.entries[-1] == ("close", (Cause.TRIAL,))
    assert log.names == ["open", "half_open", "close"]
    assert all(isinstance(args[0], Cause) for _, args in log.entries)


async def test_failed_trial_reopens_with_cause_trial() -> None:
    """A failing trial call emits ``open(Cause.TRIAL)``."""
    clock = FakeClock()
    breaker = breaker_on(clock, Recorder(error=Boom()), reset_timeout=5.0)
    breaker.open()
    await clock.advance(5.0)
    log = EventLog().attach(breaker, "open", "close", "half_open")
    with pytest.raises(Boom):
        await breaker.fire()
    assert log.entries == [("open", (Cause.TRIAL,))]


async def test_manual_transitions_have_cause_manual() -> None:
    """``open()``, ``close()``, ``force_open()`` and ``reset()`` emit with ``Cause.MANUAL``."""
    breaker = breaker_on(FakeClock())
    log = EventLog().attach(breaker, "open", "close", "half_open")
    breaker.open()
    breaker.close()
    await breaker.force_open()
    await breaker.reset()
    assert log.entries == [
        ("open", (Cause.MANUAL,)),
        ("close", (Cause.MANUAL,)),
        ("open", (Cause.MANUAL,)),
        ("close", (Cause.MANUAL,)),
    ]


async def test_half_open_fires_without_a_call() -> None:
    """``half_open`` is emitted when the open period ends, with no call arriving."""
    clock = FakeClock()
    breaker = breaker_on(clock, reset_timeout=30.0)
    log = EventLog().attach(breaker, "half_open")
    breaker.open()
    await clock.advance(29.9)
    assert log.entries == []
    await clock.advance(0.1)
    assert log.entries == [("half_open", (Cause.TIMER,))]


async def test_open_on_open_breaker_emits_nothing() -> None:
    """``open()`` on an open breaker is a no-op: no second ``open`` event."""
    breaker = breaker_on(FakeClock())
    log = EventLog().attach(breaker, "open")
    breaker.open()
    breaker.open()
    assert log.names == ["open"]


def test_cause_values() -> None:
    """``Cause`` is a string enum naming why a state changed."""
    values = {cause.name: cause.value for cause in Cause}
    assert isinstance(Cause.LOCAL, str)
    for name in ("LOCAL", "MANUAL", "TIMER", "TRIAL", "HEALTH_CHECK"):
        assert values[name] == name.lower()


# --------------------------------------------------------------------------- cache, coalesce


async def test_cache_miss_then_cache_hit() -> None:
    """The first call misses the cache, the identical second one hits it; neither has arguments."""
    breaker = breaker_on(FakeClock(), cache=True)
    log = EventLog().attach(breaker)
    await breaker.fire(1)
    await breaker.fire(1)
    assert log.names == ["fire", "cache_miss", "success", "fire", "cache_hit"]
    assert log.args_of("cache_miss") == [()]
    assert log.args_of("cache_hit") == [()]


async def test_coalesce_miss_then_hit() -> None:
    """The first of two concurrent identical calls misses, the second hits the coalescing table."""
    gate = Gate()
    breaker = breaker_on(FakeClock(), gate, coalesce=True)
    log = EventLog().attach(breaker, "coalesce_cache_hit", "coalesce_cache_miss")
    first = asyncio.ensure_future(breaker.fire(1))
    second = asyncio.ensure_future(breaker.fire(1))
    await settle()
    gate.release()
    assert list(await asyncio.gather(first, second)) == ["ok", "ok"]
    assert log.entries == [("coalesce_cache_miss", ()), ("coalesce_cache_hit", ())]


# --------------------------------------------------------------------------- health check, shutdown


async def test_health_check_failed_event_then_open() -> None:
    """A failing health check emits ``health_check_failed(error)`` then ``open``."""
    clock = FakeClock()
    breaker = breaker_on(clock)
    log = EventLog().attach(breaker, "health_check_failed", "open")
    error = Boom("unhealthy")

    async def check() -> None:
        raise error

    breaker.health_check(check, 5.0)
    await settle()
    assert log.entries == [("health_check_failed", (error,)), ("open", (Cause.HEALTH_CHECK,))]
    await breaker.shutdown()


async def test_shutdown_event_once() -> None:
    """``shutdown`` is emitted once, with no arguments, however often shutdown() is called."""
    breaker = breaker_on(FakeClock())
    log = EventLog().attach(breaker, "shutdown")
    await breaker.shutdown()
    await breaker.shutdown()
    assert log.entries == [("shutdown", ())]


# --------------------------------------------------------------------------- snapshots


async def test_snapshot_every_bucket_interval_while_listened() -> None:
    """``snapshot(stats)`` each bucket interval; no timer before or after anyone listens."""
    clock = FakeClock()
    breaker = breaker_on(clock, timeout=None, rolling_count_timeout=10.0, rolling_count_buckets=10)
    assert clock.pending == 0
    snapshots: list[Stats] = []
    breaker.on("snapshot", snapshots.append)
    assert clock.pending == 1
    await breaker.fire()
    await clock.advance(1.0)
    assert len(snapshots) == 1
    assert isinstance(snapshots[0], Stats)
    assert snapshots[0].fires == 1
    await clock.advance(2.0)
    assert len(snapshots) == 3
    breaker.off("snapshot", snapshots.append)
    assert clock.pending == 0
    await clock.advance(5.0)
    assert len(snapshots) == 3


async def test_snapshot_interval_follows_the_bucket_length() -> None:
    """With 4 buckets over 2 s, snapshots come every 0.5 s."""
    clock = FakeClock()
    breaker = breaker_on(clock, timeout=None, rolling_count_timeout=2.0, rolling_count_buckets=4)
    snapshots: list[Stats] = []
    breaker.on("snapshot", snapshots.append)
    await clock.advance(0.49)
    assert snapshots == []
    await clock.advance(0.01)
    assert len(snapshots) == 1
    await clock.advance(1.5)
    assert len(snapshots) == 4
    await breaker.shutdown()


def test_no_snapshot_timer_without_listeners() -> None:
    """No snapshot listener, no snapshot timer (other listeners do not start one)."""
    clock = FakeClock()
    breaker = breaker_on(clock, timeout=None)
    breaker.on("open", lambda cause: None)
    breaker.on("fire", lambda args: None)
    assert clock.pending == 0


async def test_snapshots_disabled_by_option() -> None:
    """With ``enable_snapshots=False`` a snapshot listener gets nothing and no timer runs."""
    clock = FakeClock()
    breaker = breaker_on(clock, timeout=None, enable_snapshots=False)
    snapshots: list[Stats] = []
    breaker.on("snapshot", snapshots.append)
    assert clock.pending == 0
    await clock.advance(10.0)
    assert snapshots == []


async def test_shutdown_stops_snapshots() -> None:
    """``shutdown()`` stops the snapshot timer."""
    clock = FakeClock()
    breaker = breaker_on(clock, timeout=None)
    snapshots: list[Stats] = []
    breaker.on("snapshot", snapshots.append)
    await breaker.shutdown()
    assert clock.pending == 0
    breaker.on("snapshot", lambda stats: None)
    assert clock.pending == 0
    await clock.advance(10.0)
    assert snapshots == []


# --------------------------------------------------------------------------- handler conventions


async def test_async_handlers_run() -> None:
    """An async handler runs to completion with the event's arguments."""
    breaker = breaker_on(FakeClock())
    seen: list[tuple[Any, float]] = []

    async def on_success(result: Any, latency: float) -> None:
        await asyncio.sleep(0)
        seen.append((result, latency))

    breaker.on("success", on_success)
    await breaker.fire()
    await settle()
    assert seen == [("ok", 0.0)]


async def test_handlers_with_fewer_parameters_get_a_prefix() -> None:
    """A handler gets as many leading arguments as it has positional parameters."""
    breaker = breaker_on(FakeClock(), Recorder(error=Boom("x")), volume_threshold=10)
    got: dict[str, tuple[Any, ...]] = {}

    def none() -> None:
        got["none"] = ()

    def one(error: BaseException) -> None:
        got["one"] = (error,)

    def two(error: BaseException, latency: float) -> None:
        got["two"] = (error, latency)

    def every(*args: Any) -> None:
        got["every"] = args

    def defaulted(error: BaseException, latency: float = -1.0, args: Any = None) -> None:
        got["defaulted"] = (error, latency, args)

    for handler in (none, one, two, every, defaulted):
        breaker.on("failure", handler)
    with pytest.raises(Boom) as caught:
        await breaker.fire(5)
    error = caught.value
    assert got == {
        "none": (),
        "one": (error,),
        "two": (error, 0.0),
        "every": (error, 0.0, (5,)),
        "defaulted": (error, 0.0, (5,)),
    }


async def test_bound_method_handler_gets_a_prefix() -> None:
    """A bound method's ``self`` does not count as a parameter; ``off`` removes it again."""
    breaker = breaker_on(FakeClock())

    class Listener:
        def __init__(self) -> None:
            self.results: list[Any] = []

        def on_success(self, result: Any) -> None:
            self.results.append(result)

    listener = Listener()
    breaker.on("success", listener.on_success)
    await breaker.fire()
    assert listener.results == ["ok"]
    breaker.off("success", listener.on_success)
    await breaker.fire()
    assert listener.results == ["ok"]


async def test_handlers_get_positional_arguments_only() -> None:
    """Handlers are called with positional arguments, never keywords."""
    breaker = breaker_on(FakeClock())
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def handler(*args: Any, **kwargs: Any) -> None:
        calls.append((args, kwargs))

    for event in ("fire", "success"):
        breaker.on(event, handler)
    await breaker.fire(1, flag=True)
    assert [kwargs for _, kwargs in calls] == [{}, {}]
    assert calls[0][0] == ((1,),)


async def test_raising_handler_does_not_break_the_call(caplog: pytest.LogCaptureFixture) -> None:
    """A raising handler is logged; the call returns and later handlers still run."""
    breaker = breaker_on(FakeClock(), Recorder(result=3))
    later: list[Any] = []

    def bad(result: Any) -> None:
        raise RuntimeError("handler bug")

    breaker.on("success", bad)
    breaker.on("success", later.append)
    with caplog.at_level(logging.ERROR, logger="distributed_opossum"):
        assert await breaker.fire() == 3
    assert later == [3]
    assert "handler bug" in caplog.text
    assert breaker.stats.successes == 1


async def test_raising_async_handler_does_not_break_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing async handler is logged and does not disturb the call or the breaker."""
    breaker = breaker_on(FakeClock(), Recorder(result=4))

    async def bad(result: Any) -> None:
        raise RuntimeError("async handler bug")

    breaker.on("success", bad)
    with caplog.at_level(logging.ERROR, logger="distributed_opossum"):
        assert await breaker.fire() == 4
        await settle()
    assert "async handler bug" in caplog.text
    assert breaker.closed


async def test_raising_state_handler_does_not_stop_the_transition() -> None:
    """A raising ``open`` handler does not keep the breaker from opening."""
    breaker = breaker_on(FakeClock(), Recorder(error=Boom()))

    def bad(cause: Cause) -> None:
        raise RuntimeError("open handler bug")

    breaker.on("open", bad)
    with pytest.raises(Boom):
        await breaker.fire()
    assert breaker.opened


def test_on_unknown_event_is_a_value_error() -> None:
    """``on`` with an unknown event name raises ``ValueError`` naming it."""
    breaker = breaker_on(FakeClock())
    with pytest.raises(ValueError, match="cacheHit"):
        breaker.on("cacheHit", lambda: None)
    with pytest.raises(ValueError, match="banana"):
        breaker.on("banana", lambda: None)


def test_on_with_a_non_callable_handler_is_a_type_error() -> None:
    """``on`` refuses a handler that cannot be called."""
    with pytest.raises(TypeError):
        breaker_on(FakeClock()).on("success", "print")  # type: ignore[arg-type]


def test_off_unknown_event_is_a_value_error() -> None:
    """``off`` with an unknown event name raises ``ValueError`` too."""
    with pytest.raises(ValueError, match="nope"):
        breaker_on(FakeClock()).off("nope", lambda: None)


@pytest.mark.parametrize("event", API_EVENTS)
def test_every_api_event_can_be_listened_to(event: str) -> None:
    """``on`` accepts every event name of API.md and returns None."""
    breaker = breaker_on(FakeClock(), timeout=None)
    assert breaker.on(event, lambda *args: None) is None  # type: ignore[func-returns-value]


async def test_off_removes_the_handler() -> None:
    """After ``off`` the handler is no longer called; other handlers still are."""
    breaker = breaker_on(FakeClock())
    removed: list[Any] = []
    kept: list[Any] = []
    breaker.on("success", removed.append)
    breaker.on("success", kept.append)
    await breaker.fire()
    breaker.off("success", removed.append)
    await breaker.fire()
    assert removed == ["ok"]
    assert kept == ["ok", "ok"]


def test_off_of_an_unregistered_handler_is_harmless() -> None:
    """``off`` of a handler never registered changes nothing and returns None."""
    breaker = breaker_on(FakeClock())
    assert breaker.off("success", lambda: None) is None  # type: ignore[func-returns-value]


async def test_handlers_run_in_registration_order() -> None:
    """Handlers of one event run in the order they were added."""
    breaker = breaker_on(FakeClock())
    order: list[str] = []
    breaker.on("fire", lambda: order.append("a"))
    breaker.on("fire", lambda: order.append("b"))
    await breaker.fire()
    assert order == ["a", "b"]


# --------------------------------------------------------------------------- cost


def test_handler_added_and_removed_keeps_the_fast_path() -> None:
    """A call-event handler added then removed leaves the plain breaker on its fast path."""
    breaker = breaker_on(FakeClock())
    assert breaker._gate is False

    def handler(*args: Any) -> None:
        return None

    breaker.on("success", handler)
    assert breaker._gate is True
    breaker.off("success", handler)
    assert breaker._gate is False


def test_state_listeners_keep_the_fast_path() -> None:
    """Listening only to state events does not slow the call path."""
    breaker = breaker_on(FakeClock())
    for event in ("open", "close", "half_open", "shutdown", "snapshot", "health_check_failed"):
        breaker.on(event, lambda *args: None)
    assert breaker._gate is False


def count_emits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch the emitter so every ``emit`` call is recorded in the returned list."""
    emitted: list[str] = []
    original = EventEmitter.emit

    def counting(self: EventEmitter, event: str, *args: Any) -> None:
        emitted.append(event)
        original(self, event, *args)

    monkeypatch.setattr(EventEmitter, "emit", counting)
    return emitted


async def test_no_listeners_means_no_emit_on_success(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nobody listening, successful calls on a closed breaker do no event work."""
    emitted = count_emits(monkeypatch)
    breaker = breaker_on(FakeClock())
    for _ in range(3):
        await breaker.fire()
    assert emitted == []
    assert breaker.stats.fires == 3


async def test_no_listeners_means_no_emit_on_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nobody listening, a failing call that does not open the breaker does no event work."""
    emitted = count_emits(monkeypatch)
    breaker = breaker_on(FakeClock(), Recorder(error=Boom()), volume_threshold=100)
    with pytest.raises(Boom):
        await breaker.fire()
    assert emitted == []
    assert breaker.stats.failures == 1
