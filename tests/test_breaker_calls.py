"""Calls through ``CircuitBreaker``: the open decision, half-open trials, timeouts,
cancellation, capacity, error_filter, disabled and shut-down breakers.

Time is a ``FakeClock`` that moves only in ``await clock.advance(s)``; a few tests
use the real clock for a few tens of milliseconds to prove real timers fire on time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Any

import pytest
from helpers import (
    Boom,
    CacheTransport,
    EventLog,
    Pending,
    Recorder,
    Sleeper,
    as_told,
    cancel,
    fail,
    on_path,
    settle,
    succeed,
)

from distributed_opossum import (
    Cause,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitTimeoutError,
    OpenCircuitError,
    SemaphoreLockedError,
    ShutdownError,
    State,
)
from distributed_opossum._latency import bin_of, value_of
from distributed_opossum.testing import FakeClock

PATHS = pytest.mark.parametrize("path", ["plain", "gated"])


async def half_open_on(
    clock: FakeClock, pending: Pending, **options: Any
) -> CircuitBreaker[..., Any]:
    """A breaker around ``pending`` (reset_timeout 5 s, no timeout unless told), opened, and
    half-open once its open period passed on ``clock``."""
    breaker = CircuitBreaker(
        pending.action, clock=clock, **{"reset_timeout": 5.0, "timeout": None, **options}
    )
    breaker.open()
    await clock.advance(5.0)
    return breaker


def current_cancelling() -> int:
    """The running task's count of pending cancellation requests."""
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling()


def _block_loop(seconds: float) -> None:
    """Hold the event loop (so that timers due meanwhile run in one iteration)."""
    time.sleep(seconds)


# -- the open decision ---------------------------------------------------------------------------


@PATHS
async def test_opens_only_when_failure_rate_is_strictly_above_threshold(
    clock: FakeClock, path: str
) -> None:
    """5 successes + 5 failures (50 %) stay closed at threshold 50; one more failure opens."""
    breaker = on_path(path, as_told, clock=clock, error_threshold_percentage=50, timeout=None)
    for _ in range(5):
        await breaker.fire(True)
    for _ in range(5):
        with pytest.raises(Boom):
            await breaker.fire(False)
    assert breaker.closed
    with pytest.raises(Boom):
        await breaker.fire(False)
    assert breaker.opened
    assert breaker.state is State.OPEN
    stats = breaker.stats
    assert (stats.successes, stats.failures, stats.fires) == (5, 6, 11)


@PATHS
async def test_first_failure_opens_without_volume_threshold(clock: FakeClock, path: str) -> None:
    """With volume_threshold 0, one failure out of one call is 100 % and opens."""
    breaker = on_path(path, fail, clock=clock)
    with pytest.raises(Boom):
        await breaker.fire()
    assert breaker.opened


async def test_volume_threshold_counts_completed_calls_not_cache_hits(clock: FakeClock) -> None:
    """Cache hits add fires but neither volume nor successes: rate = failures/(s + f)."""

    async def action(key: str) -> str:
        if key == "good":
            return "value"
        raise Boom(key)

    breaker = CircuitBreaker(
        action,
        clock=clock,
        cache=True,
        volume_threshold=3,
        error_threshold_percentage=40,
        timeout=None,
    )
    assert await breaker.fire("good") == "value"
    for _ in range(10):
        assert await breaker.fire("good") == "value"
    with pytest.raises(Boom):
        await breaker.fire("bad")
    # 1 success + 1 failure: 50 % > 40 % but volume 2 < 3 (fires are 12)
    assert breaker.closed
    with pytest.raises(Boom):
        await breaker.fire("bad")
    # volume 3, 2 / 3 = 67 % > 40 % (2 / 13 fires would be 15 %)
    assert breaker.opened
    stats = breaker.stats
    assert (stats.fires, stats.cache_hits, stats.successes, stats.failures) == (13, 10, 1, 2)


async def test_fallback_results_do_not_count_as_successes(clock: FakeClock) -> None:
    """A failure answered by the fallback still counts as a failure in the rate."""
    breaker = CircuitBreaker(as_told, clock=clock, error_threshold_percentage=50, timeout=None)
    breaker.fallback(lambda *args: "fallback")
    assert await breaker.fire(True) == "ok"
    assert await breaker.fire(False) == "fallback"
    assert breaker.closed  # 1 / 2 = 50 %, not above
    assert await breaker.fire(False) == "fallback"
    assert breaker.opened  # 2 / 3
    stats = breaker.stats
    assert (stats.successes, stats.failures, stats.fallbacks) == (1, 2, 2)


async def test_rejects_count_as_fires_only(clock: FakeClock) -> None:
    """A rejected call is a fire and a reject, neither a success nor a failure."""
    breaker = CircuitBreaker(succeed, clock=clock)
    breaker.open()
    for _ in range(3):
        with pytest.raises(OpenCircuitError):
            await breaker.fire()
    stats = breaker.stats
    assert (stats.fires, stats.rejects, stats.successes, stats.failures) == (3, 3, 0, 0)


async def test_rate_is_judged_over_the_rolling_window(clock: FakeClock) -> None:
    """Failures that left the window no longer count towards opening."""
    breaker = CircuitBreaker(
        as_told,
        clock=clock,
        error_threshold_percentage=50,
        volume_threshold=4,
        rolling_count_timeout=10.0,
        timeout=None,
    )
    for _ in range(3):
        with pytest.raises(Boom):
            await breaker.fire(False)
    await clock.advance(10.0)
    await breaker.fire(True)
    with pytest.raises(Boom):
        await breaker.fire(False)
    assert breaker.closed  # only 1 success + 1 failure in the window
    assert breaker.stats.failures == 1


# -- open: rejection -----------------------------------------------------------------------------


@PATHS
async def test_open_breaker_rejects_with_retry_after_counting_down(
    clock: FakeClock, path: str
) -> None:
    """An open breaker raises OpenCircuitError with the time left until a trial."""
    pending = Pending()
    breaker = on_path(path, pending.action, clock=clock, reset_timeout=10.0)
    breaker.open()
    with pytest.raises(OpenCircuitError) as first:
        await breaker.fire()
    await clock.advance(4.0)
    with pytest.raises(OpenCircuitError) as second:
        await breaker.fire()
    assert first.value.code == "EOPENBREAKER"
    assert isinstance(first.value, CircuitBreakerError)
    assert first.value.retry_after == pytest.approx(10.0)
    assert second.value.retry_after == pytest.approx(6.0)
    assert breaker.retry_after == pytest.approx(6.0)
    assert pending.started == 0
    assert breaker.stats.rejects == 2


async def test_rejection_goes_to_the_fallback(clock: FakeClock) -> None:
    """A rejected call returns the fallback's result; events fire, reject, fallback."""
    breaker = CircuitBreaker(as_told, clock=clock)
    received: list[tuple[Any, ...]] = []

    def fallback(*args: Any) -> str:
        received.append(args)
        return "fallback"

    breaker.fallback(fallback)
    recorder = EventLog().attach(breaker, "fire", "reject", "fallback", "success", "failure")
    breaker.open()
    assert await breaker.fire(True) == "fallback"
    assert recorder.names == ["fire", "reject", "fallback"]
    assert received[0][0] is True
    assert isinstance(received[0][1], OpenCircuitError)
    assert breaker.stats.fallbacks == 1


# -- half-open -----------------------------------------------------------------------------------


async def test_half_open_event_fires_when_the_period_ends(clock: FakeClock) -> None:
    """The timer announces half_open at the end of the period, with no call needed."""
    breaker = CircuitBreaker(succeed, clock=clock, reset_timeout=5.0)
    recorder = EventLog().attach(breaker, "open", "half_open", "close")
    breaker.open()
    await clock.advance(2.5)
    assert recorder.names == ["open"]
    await clock.advance(2.5)
    assert recorder.names == ["open", "half_open"]
    assert recorder.args_of("half_open") == [(Cause.TIMER,)]
    assert breaker.half_open
    assert breaker.retry_after == 0.0


@pytest.mark.parametrize("n", [1, 2, 3])
async def test_half_open_admits_exactly_max_calls_trials(clock: FakeClock, n: int) -> None:
    """Exactly half_open_max_calls trials run; concurrent others are rejected."""
    pending = Pending()
    breaker = await half_open_on(clock, pending, half_open_max_calls=n)
    tasks = [asyncio.create_task(breaker.fire(i)) for i in range(n + 2)]
    await settle()
    assert pending.started == n
    for task in tasks[n:]:
        assert task.done()
        with pytest.raises(OpenCircuitError):
            await task
    for index in range(n - 1):
        pending.succeed(index)
        await settle()
        assert breaker.half_open
    pending.succeed(n - 1)
    results = await asyncio.gather(*tasks[:n])
    assert results == ["ok"] * n
    assert breaker.closed


async def test_trial_success_closes_and_clears_the_window(clock: FakeClock) -> None:
    """A successful trial closes (cause trial) and starts a fresh window."""
    breaker = CircuitBreaker(
        as_told, clock=clock, volume_threshold=3, reset_timeout=5.0, timeout=None
    )
    recorder = EventLog().attach(breaker, "close")
    for _ in range(3):
        with pytest.raises(Boom):
            await breaker.fire(False)
    assert breaker.opened
    await clock.advance(5.0)
    assert await breaker.fire(True) == "ok"
    assert breaker.closed
    assert recorder.args_of("close") == [(Cause.TRIAL,)]
    assert breaker.stats.failures == 0
    with pytest.raises(Boom):
        await breaker.fire(False)
    assert breaker.closed  # the old failures are gone: volume is below 3
    assert breaker.stats.failures == 1


async def test_failed_trials_back_off_up_to_the_cap(clock: FakeClock) -> None:
    """multiplier 2 from 1 s gives open periods 1, 2, then 4 capped at 3, 3."""
    breaker = CircuitBreaker(
        fail,
        clock=clock,
        reset_timeout=1.0,
        reset_timeout_multiplier=2.0,
        max_reset_timeout=3.0,
        timeout=None,
    )
    recorder = EventLog().attach(breaker, "open", "half_open")
    breaker.open()
    for attempt, period in enumerate([1.0, 2.0, 3.0, 3.0], start=1):
        assert breaker.attempts == attempt
        assert breaker.retry_after == pytest.approx(period)
        await clock.advance(period / 2)
        assert recorder.names[-1] == "open"
        assert breaker.state is State.OPEN
        await clock.advance(period / 2)
        assert recorder.names[-1] == "half_open"
        with pytest.raises(Boom):
            await breaker.fire()
        assert breaker.state is State.OPEN
    assert breaker.attempts == 5
    assert recorder.args_of("open")[1:] == [(Cause.TRIAL,)] * 4


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_close_and_reset_forget_the_attempts(clock: FakeClock, how: str) -> None:
    """After close() or reset(), the next opening lasts reset_timeout again."""
    breaker = CircuitBreaker(
        fail, clock=clock, reset_timeout=1.0, reset_timeout_multiplier=2.0, timeout=None
    )
    breaker.open()
    for period in (1.0, 2.0):
        await clock.advance(period)
        with pytest.raises(Boom):
            await breaker.fire()
    assert breaker.attempts == 3
    assert breaker.retry_after == pytest.approx(4.0)
    if how == "close":
        breaker.close()
    else:
        await breaker.reset()
    assert breaker.closed
    assert breaker.attempts == 0
    breaker.open()
    assert breaker.attempts == 1
    assert breaker.retry_after == pytest.approx(1.0)


async def test_trial_timeout_reopens(clock: FakeClock) -> None:
    """A trial that times out is a failed trial: open again, one more attempt."""
    pending = Pending()
    breaker = await half_open_on(clock, pending, timeout=2.0)
    trial = asyncio.create_task(breaker.fire())
    await clock.advance(2.0)
    with pytest.raises(CircuitTimeoutError):
        await trial
    assert breaker.state is State.OPEN
    assert breaker.attempts == 2


@PATHS
@pytest.mark.parametrize("until", ["open", "half_open"])
async def test_success_of_a_call_started_before_opening_does_not_close(
    clock: FakeClock, path: str, until: str
) -> None:
    """A call that began while closed and succeeds after the opening changes nothing."""
    pending = Pending()
    breaker = on_path(path, pending.action, clock=clock, reset_timeout=5.0, timeout=None)
    old = asyncio.create_task(breaker.fire())
    await settle()
    breaker.open()
    if until == "half_open":
        await clock.advance(5.0)
    expected = State.OPEN if until == "open" else State.HALF_OPEN
    pending.succeed(0)
    assert await old == "ok"
    assert breaker.state is expected


@PATHS
async def test_failure_of_a_call_started_before_closing_does_not_reopen(
    clock: FakeClock, path: str
) -> None:
    """A call that began before the breaker closed cannot open the fresh window."""
    pending = Pending()
    breaker = on_path(path, pending.action, clock=clock, reset_timeout=5.0, timeout=None)
    old = asyncio.create_task(breaker.fire())
    await settle()
    breaker.open()
    await clock.advance(5.0)
    trial = asyncio.create_task(breaker.fire())
    await settle()
    pending.succeed(1)
    assert await trial == "ok"
    assert breaker.closed
    pending.fail(0)
    with pytest.raises(Boom):
        await old
    assert breaker.closed
    assert breaker.stats.failures == 1


async def test_hung_trial_without_timeout_expires_after_reset_timeout(clock: FakeClock) -> None:
    """With timeout=None a trial that never returns frees its permit after reset_timeout."""
    pending = Pending()
    breaker = await half_open_on(clock, pending)
    hung = asyncio.create_task(breaker.fire("hung"))
    await settle()
    await clock.advance(4.0)
    with pytest.raises(OpenCircuitError) as rejected:
        await breaker.fire("early")
    assert rejected.value.retry_after == pytest.approx(1.0)
    await clock.advance(1.0)
    second = asyncio.create_task(breaker.fire("second"))
    await settle()
    assert pending.args == [("hung",), ("second",)]
    pending.succeed(1)
    assert await second == "ok"
    assert breaker.closed
    pending.fail(0)
    with pytest.raises(Boom):
        await hung
    assert breaker.closed


async def test_hung_trial_lease_is_max_of_timeout_and_reset_timeout(clock: FakeClock) -> None:
    """A trial swallowing its timeout keeps its permit for max(timeout + 1 s, reset_timeout)."""
    release = asyncio.Event()

    async def stubborn() -> str:
        while True:
            try:
                await release.wait()
                return "late"
            except asyncio.CancelledError:
                continue

    breaker = CircuitBreaker(stubborn, clock=clock, reset_timeout=2.0, timeout=6.0)
    breaker.open()
    await clock.advance(2.0)
    hung = asyncio.create_task(breaker.fire())
    await clock.advance(6.9)
    with pytest.raises(OpenCircuitError):
        await breaker.fire()
    await clock.advance(0.1)
    assert breaker.retry_after == 0.0
    release.set()
    with pytest.raises(CircuitTimeoutError):
        await hung


# -- warm-up, reset_timeout=0, manual control ----------------------------------------------------


async def test_warm_up_keeps_the_breaker_closed_during_the_first_window(
    clock: FakeClock,
) -> None:
    """With allow_warm_up, failures in the first rolling window never open."""
    breaker = CircuitBreaker(
        fail, clock=clock, allow_warm_up=True, rolling_count_timeout=10.0, timeout=None
    )
    assert breaker.warm_up
    for _ in range(5):
        with pytest.raises(Boom):
            await breaker.fire()
        await clock.advance(1.5)
    assert breaker.closed
    assert breaker.stats.failures == 5
    await clock.advance(2.5)
    assert not breaker.warm_up
    with pytest.raises(Boom):
        await breaker.fire()
    assert breaker.opened


async def test_without_warm_up_the_first_failure_may_open(clock: FakeClock) -> None:
    """allow_warm_up defaults to False."""
    breaker = CircuitBreaker(fail, clock=clock)
    assert not breaker.warm_up
    with pytest.raises(Boom):
        await breaker.fire()
    assert breaker.opened


async def test_reset_timeout_zero_makes_the_next_call_a_trial(clock: FakeClock) -> None:
    """reset_timeout=0: right after opening, the next call runs as a trial."""
    breaker = CircuitBreaker(as_told, clock=clock, reset_timeout=0.0, timeout=None)
    with pytest.raises(Boom):
        await breaker.fire(False)
    with pytest.raises(Boom):
        await breaker.fire(False)  # a failed trial: opens again
    assert breaker.attempts == 2
    assert await breaker.fire(True) == "ok"
    assert breaker.closed
    assert breaker.attempts == 0


async def test_force_open_rejects_without_trials_until_reset(clock: FakeClock) -> None:
    """force_open() holds the breaker open past any period; reset() closes it."""
    breaker = CircuitBreaker(succeed, clock=clock, reset_timeout=1.0)
    recorder = EventLog().attach(breaker, "open", "half_open", "close")
    await breaker.force_open()
    assert breaker.state is State.FORCED_OPEN
    assert breaker.opened
    with pytest.raises(OpenCircuitError) as rejected:
        await breaker.fire()
    assert rejected.value.retry_after is None
    assert breaker.retry_after is None
    await clock.advance(100.0)
    assert breaker.state is State.FORCED_OPEN
    with pytest.raises(OpenCircuitError):
        await breaker.fire()
    await breaker.reset()
    assert breaker.closed
    assert await breaker.fire() == "ok"
    assert recorder.names == ["open", "close"]
    assert breaker.to_json()["state"]["forced_open"] is False


async def test_open_and_close_act_at_once(clock: FakeClock) -> None:
    """open() and close() are synchronous and announce a manual cause."""
    breaker = CircuitBreaker(succeed, clock=clock)
    recorder = EventLog().attach(breaker, "open", "close")
    breaker.open()
    assert breaker.opened
    breaker.close()
    assert breaker.closed
    assert recorder.entries == [("open", (Cause.MANUAL,)), ("close", (Cause.MANUAL,))]
    assert await breaker.fire() == "ok"


async def test_open_on_an_open_breaker_does_not_rearm(clock: FakeClock) -> None:
    """A second open() keeps the first period and the attempt count."""
    breaker = CircuitBreaker(succeed, clock=clock, reset_timeout=10.0)
    recorder = EventLog().attach(breaker, "open", "half_open")
    breaker.open()
    await clock.advance(6.0)
    breaker.open()
    assert breaker.attempts == 1
    assert breaker.retry_after == pytest.approx(4.0)
    await clock.advance(4.0)
    assert recorder.names == ["open", "half_open"]


async def test_close_cancels_the_half_open_timer(clock: FakeClock) -> None:
    """A breaker closed by hand holds no timer and never announces half_open."""
    breaker = CircuitBreaker(succeed, clock=clock, reset_timeout=5.0, timeout=None)
    recorder = EventLog().attach(breaker, "half_open")
    breaker.open()
    assert clock.pending == 1
    breaker.close()
    assert clock.pending == 0
    await clock.advance(10.0)
    assert recorder.names == []
    assert breaker.closed


async def test_idle_closed_breaker_holds_no_timer(clock: FakeClock) -> None:
    """A closed breaker with no calls in flight schedules nothing."""
    breaker = CircuitBreaker(succeed, clock=clock, timeout=None)
    await breaker.fire()
    assert clock.pending == 0


async def test_opened_at_is_the_opening_time(clock: FakeClock) -> None:
    """to_json() reports when the breaker opened (wall clock), not when it was created."""
    breaker = CircuitBreaker(fail, clock=clock, reset_timeout=5.0, timeout=None)
    assert breaker.to_json()["state"]["opened_at"] is None
    await clock.advance(50.0)
    opened_wall = clock.wall()
    breaker.open()
    await clock.advance(3.0)
    state = breaker.to_json()["state"]
    assert state["open"] is True
    assert state["opened_at"] == pytest.approx(opened_wall)
    assert state["attempts"] == 1
    json.dumps(breaker.to_json())
    await clock.advance(2.0)
    trial_wall = clock.wall()
    with pytest.raises(Boom):
        await breaker.fire()
    assert breaker.to_json()["state"]["opened_at"] == pytest.approx(trial_wall)
    breaker.close()
    assert breaker.to_json()["state"]["opened_at"] is None


# -- timeouts ------------------------------------------------------------------------------------


@PATHS
async def test_timeout_cancels_the_action_at_the_deadline(clock: FakeClock, path: str) -> None:
    """On expiry the action sees CancelledError and the caller gets CircuitTimeoutError."""
    slow = Sleeper(clock, 100.0, result="late")
    breaker = on_path(path, slow, clock=clock, timeout=2.0)
    task = asyncio.create_task(breaker.fire())
    await clock.advance(1.5)
    assert not task.done()
    assert slow.cancelled == 0
    await clock.advance(0.5)
    assert task.done()
    with pytest.raises(CircuitTimeoutError) as info:
        await task
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, CircuitBreakerError)
    assert info.value.code == "ETIMEDOUT"
    assert info.value.timeout == 2.0
    assert slow.cancelled == 1


@PATHS
async def test_timeout_counts_failure_timeout_and_one_latency_sample(
    clock: FakeClock, path: str
) -> None:
    """A timeout is one failure, one timeout and a single latency sample of `timeout`."""
    breaker = on_path(path, clock.sleep, clock=clock, timeout=2.0, error_threshold_percentage=100)
    quick = asyncio.create_task(breaker.fire(0.5))
    await clock.advance(0.5)
    await quick
    slow = asyncio.create_task(breaker.fire(10.0))
    await clock.advance(2.0)
    with pytest.raises(CircuitTimeoutError):
        await slow
    stats = breaker.stats
    assert (stats.successes, stats.failures, stats.timeouts) == (1, 1, 1)
    assert stats.latency_mean == pytest.approx(1.25)  # (0.5 + 2.0) / 2
    assert stats.percentiles[0.5] == value_of(bin_of(0.5))  # nearest rank 1 of 2
    assert stats.percentiles[1.0] == value_of(bin_of(2.0))


async def test_timeout_emits_timeout_then_failure(clock: FakeClock) -> None:
    """Events of a timeout: timeout(error, latency, args) then failure(error, latency, args)."""
    breaker = CircuitBreaker(clock.sleep, clock=clock, timeout=1.0)
    recorder = EventLog().attach(breaker, "timeout", "failure", "success")
    task = asyncio.create_task(breaker.fire(5.0))
    await clock.advance(1.0)
    with pytest.raises(CircuitTimeoutError) as info:
        await task
    assert recorder.names == ["timeout", "failure"]
    for args in (recorder.args_of("timeout")[0], recorder.args_of("failure")[0]):
        assert args[0] is info.value
        assert args[1] == pytest.approx(1.0)
        assert args[2] == (5.0,)


async def test_timeout_goes_to_the_fallback(clock: FakeClock) -> None:
    """A timed-out call returns the fallback's result, which receives the timeout error."""

    async def slow(delay: float) -> str:
        await clock.sleep(delay)
        return "late"

    breaker = CircuitBreaker(slow, clock=clock, timeout=1.0)
    errors: list[BaseException] = []

    def fallback(delay: float, error: BaseException) -> str:
        errors.append(error)
        return "fallback"

    breaker.fallback(fallback)
    task = asyncio.create_task(breaker.fire(5.0))
    await clock.advance(1.0)
    assert await task == "fallback"
    assert len(errors) == 1
    assert isinstance(errors[0], CircuitTimeoutError)


async def test_default_timeout_is_ten_seconds(clock: FakeClock) -> None:
    """Without a timeout option, a call is cut at 10 s."""
    breaker = CircuitBreaker(clock.sleep, clock=clock)
    task = asyncio.create_task(breaker.fire(60.0))
    await clock.advance(9.5)
    assert not task.done()
    await clock.advance(0.5)
    with pytest.raises(CircuitTimeoutError):
        await task


@PATHS
@pytest.mark.parametrize("disabled", [None, 0, False])
async def test_falsy_timeout_disables_it(clock: FakeClock, path: str, disabled: Any) -> None:
    """timeout None, 0 or False lets a call run as long as it takes."""

    async def slow() -> str:
        await clock.sleep(1000.0)
        return "done"

    breaker = on_path(path, slow, clock=clock, timeout=disabled, rolling_count_timeout=10_000.0)
    task = asyncio.create_task(breaker.fire())
    await settle()
    assert clock.pending == 1  # the action's own sleep, no deadline timer
    await clock.advance(1000.0)
    assert await task == "done"
    assert breaker.stats.timeouts == 0
    assert breaker.stats.successes == 1


@PATHS
async def test_success_counts_in_the_window_where_the_call_ends(
    clock: FakeClock, path: str
) -> None:
    """A call longer than the window records its success when it completes, not never."""

    async def action(delay: float, ok: bool) -> str:
        if delay:
            await clock.sleep(delay)
        return await as_told(ok)

    breaker = on_path(
        path,
        action,
        clock=clock,
        timeout=None,
        rolling_count_timeout=10.0,
        error_threshold_percentage=50,
    )
    task = asyncio.create_task(breaker.fire(12.0, True))
    await clock.advance(12.0)
    assert await task == "ok"
    assert breaker.stats.successes == 1
    with pytest.raises(Boom):
        await breaker.fire(0.0, False)
    assert breaker.closed  # 1 success + 1 failure: 50 %, not above


@PATHS
async def test_concurrent_calls_share_one_deadline_timer(clock: FakeClock, path: str) -> None:
    """100 calls in flight hold a single timer between them; results go to their callers."""
    pending = Pending()
    breaker = on_path(path, pending.action, clock=clock, timeout=5.0)
    tasks = []
    peak = 0
    for index in range(100):
        tasks.append(asyncio.create_task(breaker.fire(index)))
        if index % 10 == 9:
            await clock.advance(0.01)
            peak = max(peak, clock.pending)
    await settle()
    assert pending.started == 100
    assert peak <= 1
    assert clock.pending <= 1
    order = list(range(99, -1, -2)) + list(range(0, 100, 2))
    for index in order:
        pending.succeed(index, value=index * 10)
        await settle(2)
        assert clock.pending <= 1
    assert await asyncio.gather(*tasks) == [index * 10 for index in range(100)]
    assert breaker.stats.successes == 100
    await clock.advance(5.0)
    assert clock.pending == 0


@PATHS
async def test_calls_time_out_at_their_own_deadlines(clock: FakeClock, path: str) -> None:
    """Calls started at different times expire at start + timeout, whatever finishes first."""
    pending = Pending()
    breaker = on_path(
        path, pending.action, clock=clock, timeout=5.0, error_threshold_percentage=100
    )
    a = asyncio.create_task(breaker.fire("a"))
    await clock.advance(1.0)
    b = asyncio.create_task(breaker.fire("b"))
    await clock.advance(1.0)
    c = asyncio.create_task(breaker.fire("c"))
    await settle()
    pending.succeed(1, "B")
    assert await b == "B"
    await clock.advance(2.5)  # t = 4.5
    assert not a.done()
    await clock.advance(0.5)  # t = 5: a's deadline
    assert a.done()
    assert not c.done()
    await clock.advance(1.5)  # t = 6.5
    assert not c.done()
    await clock.advance(0.5)  # t = 7: c's deadline
    assert c.done()
    for task in (a, c):
        with pytest.raises(CircuitTimeoutError):
            await task
    stats = breaker.stats
    assert (stats.successes, stats.failures, stats.timeouts) == (1, 2, 2)
    assert pending.cancelled == 2


@PATHS
async def test_action_swallowing_cancellation_still_times_out(clock: FakeClock, path: str) -> None:
    """An action that catches the cancel and returns late still yields a timeout."""

    stubborn = Sleeper(clock, 100.0, result="late", swallow_cancel=True)
    breaker = on_path(path, stubborn, clock=clock, timeout=1.0)

    async def caller() -> int:
        with pytest.raises(CircuitTimeoutError):
            await breaker.fire()
        return current_cancelling()

    task = asyncio.create_task(caller())
    await clock.advance(1.0)
    assert await task == 0  # the breaker took its cancel request back
    stats = breaker.stats
    assert (stats.successes, stats.failures, stats.timeouts) == (0, 1, 1)


@PATHS
async def test_action_raising_on_cancellation_still_times_out(clock: FakeClock, path: str) -> None:
    """An action that turns the timeout's cancel into its own error is still a timeout."""
    messy = Sleeper(clock, 100.0, on_cancel=Boom("cleanup failed"))
    breaker = on_path(path, messy, clock=clock, timeout=1.0, error_threshold_percentage=100)
    task = asyncio.create_task(breaker.fire())
    await clock.advance(1.0)
    with pytest.raises(CircuitTimeoutError):
        await task
    assert breaker.stats.timeouts == 1


@PATHS
async def test_timeout_leaves_no_cancel_request_on_the_caller(clock: FakeClock, path: str) -> None:
    """After any timed-out call the caller's task has no pending cancellation request."""
    messy = Sleeper(clock, 100.0, on_cancel=Boom("cleanup failed"))
    breaker = on_path(path, messy, clock=clock, timeout=1.0, error_threshold_percentage=100)

    async def caller() -> int:
        with pytest.raises((CircuitTimeoutError, Boom)):
            await breaker.fire()
        return current_cancelling()

    task = asyncio.create_task(caller())
    await clock.advance(1.0)
    assert await task == 0


async def test_real_clock_timeout_fires_on_time() -> None:
    """With the system clock, a 30 ms timeout cuts a slow call after about 30 ms."""
    cancelled = asyncio.Event()

    async def slow() -> str:
        try:
            await asyncio.sleep(5.0)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    breaker = CircuitBreaker(slow, timeout=0.03)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CircuitTimeoutError):
        await breaker.fire()
    elapsed = loop.time() - started
    assert 0.025 <= elapsed < 0.5
    assert cancelled.is_set()
    assert breaker.stats.timeouts == 1


async def test_real_clock_fast_calls_are_not_cut() -> None:
    """With the system clock, calls well within the timeout return their value."""

    async def quick(value: int) -> int:
        await asyncio.sleep(0.001)
        return value

    breaker = CircuitBreaker(quick, timeout=0.05)
    assert await asyncio.gather(*(breaker.fire(i) for i in range(20))) == list(range(20))
    assert breaker.stats.timeouts == 0


@PATHS
async def test_real_clock_caller_cancel_arriving_with_the_deadline_propagates(path: str) -> None:
    """A caller's cancel that lands in the same loop step as the deadline stays a cancel."""
    pending = Pending()
    breaker = on_path(path, pending.action, timeout=0.02)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(breaker.fire())
    loop.call_later(0.01, task.cancel)  # due before the breaker's deadline
    await asyncio.sleep(0)
    assert pending.started == 1
    _block_loop(0.05)  # both timers are now due: the cancel runs first, then the deadline
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = breaker.stats
    assert (stats.failures, stats.timeouts) == (0, 0)


# -- caller cancellation -------------------------------------------------------------------------


@PATHS
async def test_caller_cancellation_is_neither_failure_nor_success(
    clock: FakeClock, path: str
) -> None:
    """task.cancel() from outside propagates; nothing is recorded but the fire."""
    pending = Pending()
    breaker = on_path(path, pending.action, clock=clock, timeout=5.0)
    fallbacks: list[Any] = []
    breaker.fallback(lambda *args: fallbacks.append(args))
    task = asyncio.create_task(breaker.fire())
    await settle()
    await cancel(task)
    assert pending.cancelled == 1
    stats = breaker.stats
    assert (stats.fires, stats.successes, stats.failures, stats.timeouts) == (1, 0, 0, 0)
    assert fallbacks == []
    assert breaker.closed


async def test_caller_cancellation_releases_the_capacity_slot(clock: FakeClock) -> None:
    """A cancelled call frees its capacity slot for the next call."""
    pending = Pending()
    breaker = CircuitBreaker(pending.action, clock=clock, capacity=1, timeout=None)
    first = asyncio.create_task(breaker.fire())
    await settle()
    await cancel(first)
    second = asyncio.create_task(breaker.fire())
    await settle()
    assert pending.started == 2
    pending.succeed(1)
    assert await second == "ok"
    assert breaker.stats.semaphore_rejections == 0


async def test_caller_cancellation_releases_the_trial_permit(clock: FakeClock) -> None:
    """A cancelled trial gives its permit back: the next call is a trial, not a reject."""
    pending = Pending()
    breaker = await half_open_on(clock, pending)
    trial = asyncio.create_task(breaker.fire())
    await settle()
    await cancel(trial)
    assert breaker.half_open
    assert breaker.attempts == 1
    second = asyncio.create_task(breaker.fire())
    await settle()
    assert pending.started == 2
    pending.succeed(1)
    assert await second == "ok"
    assert breaker.closed


@PATHS
async def test_outer_asyncio_timeout_is_the_callers_cancellation(
    clock: FakeClock, path: str
) -> None:
    """An enclosing asyncio.timeout ends the call as a caller cancellation, not a failure."""
    pending = Pending()
    breaker = on_path(path, pending.action, clock=clock, timeout=5.0, capacity=1)

    async def caller() -> Any:
        async with asyncio.timeout(0):
            return await breaker.fire()

    with pytest.raises(TimeoutError) as info:
        await caller()
    assert not isinstance(info.value, CircuitTimeoutError)
    assert pending.cancelled == 1
    stats = breaker.stats
    assert (stats.successes, stats.failures, stats.timeouts) == (0, 0, 0)
    second = asyncio.create_task(breaker.fire())
    await settle()
    assert pending.started == 2  # the capacity slot was released
    pending.succeed(1)
    assert await second == "ok"


# -- sync actions --------------------------------------------------------------------------------


@PATHS
async def test_sync_action_value_is_accepted(clock: FakeClock, path: str) -> None:
    """A plain function's return value is the call's result and a success."""

    def add(a: int, b: int) -> int:
        return a + b

    breaker = on_path(path, add, clock=clock)
    assert await breaker.fire(2, 3) == 5
    assert breaker.stats.successes == 1


@PATHS
async def test_sync_action_error_is_a_failure(clock: FakeClock, path: str) -> None:
    """A plain function's exception propagates unchanged and counts as a failure."""

    def broken() -> int:
        raise Boom("sync")

    breaker = on_path(path, broken, clock=clock, error_threshold_percentage=100)
    with pytest.raises(Boom, match="sync"):
        await breaker.fire()
    assert breaker.stats.failures == 1


@PATHS
async def test_sync_action_returning_an_awaitable_is_awaited(clock: FakeClock, path: str) -> None:
    """A plain function that returns a coroutine has the coroutine's result."""

    def indirect() -> Coroutine[Any, Any, str]:
        return succeed()

    breaker = on_path(path, indirect, clock=clock)
    assert await breaker.fire() == "ok"


# -- capacity ------------------------------------------------------------------------------------


async def test_over_capacity_raises_semaphore_locked_as_a_failure(clock: FakeClock) -> None:
    """Beyond `capacity` calls in flight, SemaphoreLockedError: a failure and a rejection."""
    pending = Pending()
    breaker = CircuitBreaker(
        pending.action, clock=clock, capacity=2, timeout=None, error_threshold_percentage=100
    )
    recorder = EventLog().attach(breaker, "semaphore_locked", "failure")
    first = asyncio.create_task(breaker.fire())
    second = asyncio.create_task(breaker.fire())
    await settle()
    with pytest.raises(SemaphoreLockedError) as info:
        await breaker.fire()
    assert info.value.code == "ESEMLOCKED"
    assert pending.started == 2
    assert recorder.names == ["semaphore_locked", "failure"]
    stats = breaker.stats
    assert (stats.failures, stats.semaphore_rejections, stats.fires) == (1, 1, 3)
    pending.succeed(0)
    assert await first == "ok"
    third = asyncio.create_task(breaker.fire())
    await settle()
    assert pending.started == 3
    pending.succeed(1)
    pending.succeed(2)
    assert list(await asyncio.gather(second, third)) == ["ok", "ok"]


async def test_capacity_slot_is_freed_after_a_failure(clock: FakeClock) -> None:
    """A failed call returns its slot too."""
    breaker = CircuitBreaker(
        as_told, clock=clock, capacity=1, timeout=None, error_threshold_percentage=100
    )
    for _ in range(3):
        with pytest.raises(Boom):
            await breaker.fire(False)
    assert await breaker.fire(True) == "ok"
    assert breaker.stats.semaphore_rejections == 0


async def test_capacity_rejection_can_open_the_breaker(clock: FakeClock) -> None:
    """A semaphore rejection goes through the open decision like any failure."""
    pending = Pending()
    breaker = CircuitBreaker(
        pending.action, clock=clock, capacity=1, timeout=None, error_threshold_percentage=50
    )
    first = asyncio.create_task(breaker.fire())
    await settle()
    with pytest.raises(SemaphoreLockedError):
        await breaker.fire()
    assert breaker.opened
    pending.succeed(0)
    assert await first == "ok"
    assert breaker.opened  # that success began before the opening


async def test_capacity_rejection_goes_to_the_fallback(clock: FakeClock) -> None:
    """The fallback answers a semaphore rejection and receives the error."""
    pending = Pending()
    breaker = CircuitBreaker(
        pending.action, clock=clock, capacity=1, timeout=None, error_threshold_percentage=100
    )
    errors: list[BaseException] = []

    def fallback(*args: Any) -> str:
        errors.append(args[-1])
        return "fallback"

    breaker.fallback(fallback)
    first = asyncio.create_task(breaker.fire())
    await settle()
    assert await breaker.fire() == "fallback"
    assert isinstance(errors[0], SemaphoreLockedError)
    assert breaker.stats.fallbacks == 1
    pending.succeed(0)
    await first


# -- error_filter --------------------------------------------------------------------------------


async def test_error_filter_true_is_a_success_reraised_without_fallback(
    clock: FakeClock,
) -> None:
    """A filtered error counts as success, emits success, propagates, skips the fallback."""
    not_a_failure = Recorder(result=True)  # the filter, recording its calls
    lookup = Recorder(error=KeyError(7))
    breaker = CircuitBreaker(lookup, clock=clock, error_filter=not_a_failure.sync)
    fallback = Recorder(result="fallback")
    breaker.fallback(fallback.sync)
    recorder = EventLog().attach(breaker, "success", "failure", "fallback")
    with pytest.raises(KeyError) as info:
        await breaker.fire(7, strict=True)
    assert not_a_failure.calls == [((info.value, 7), {"strict": True})]
    assert fallback.calls == []
    assert recorder.names == ["success"]
    assert (breaker.stats.successes, breaker.stats.failures) == (1, 0)
    assert breaker.closed


async def test_error_filter_false_is_a_failure(clock: FakeClock) -> None:
    """An error the filter rejects is an ordinary failure with fallback."""
    breaker = CircuitBreaker(fail, clock=clock, error_filter=lambda error: False)
    breaker.fallback(lambda error: "fallback")
    assert await breaker.fire() == "fallback"
    assert breaker.stats.failures == 1
    assert breaker.opened


async def test_error_filter_true_during_half_open_closes(clock: FakeClock) -> None:
    """A filtered error of a trial is a trial success."""
    breaker = CircuitBreaker(fail, clock=clock, reset_timeout=1.0, error_filter=lambda error: True)
    breaker.open()
    await clock.advance(1.0)
    with pytest.raises(Boom):
        await breaker.fire()
    assert breaker.closed


# -- disabled ------------------------------------------------------------------------------------


async def test_disabled_breaker_counts_fires_and_calls_straight_through(
    clock: FakeClock,
) -> None:
    """Disabled: a fire is counted, then the action runs with no timeout, stats or fallback."""

    async def action(mode: str) -> str:
        if mode == "fail":
            raise Boom("fail")
        await clock.sleep(5.0)
        return "slow"

    breaker = CircuitBreaker(action, clock=clock, enabled=False, timeout=1.0)
    breaker.fallback(lambda *args: "fallback")
    recorder = EventLog().attach(breaker, "fire", "success", "failure", "timeout", "fallback")
    with pytest.raises(Boom):
        await breaker.fire("fail")
    task = asyncio.create_task(breaker.fire("slow"))
    await clock.advance(5.0)
    assert await task == "slow"
    assert recorder.names == ["fire", "fire"]
    stats = breaker.stats
    assert (stats.fires, stats.successes, stats.failures) == (2, 0, 0)
    assert (stats.timeouts, stats.fallbacks) == (0, 0)
    assert breaker.closed
    assert not breaker.enabled


async def test_disable_lets_calls_through_an_open_breaker(clock: FakeClock) -> None:
    """disable() bypasses an open breaker; enable() restores rejection."""
    breaker = CircuitBreaker(succeed, clock=clock)
    breaker.open()
    breaker.disable()
    assert await breaker.fire() == "ok"
    breaker.enable()
    assert breaker.enabled
    with pytest.raises(OpenCircuitError):
        await breaker.fire()


# -- shutdown ------------------------------------------------------------------------------------


async def test_shutdown_refuses_calls_without_a_fire_event(clock: FakeClock) -> None:
    """After shutdown(): ShutdownError, no fire event, state kept, disabled, cache emptied."""
    cache = CacheTransport()

    async def action(key: str) -> str:
        return key.upper()

    breaker = CircuitBreaker(action, clock=clock, cache=True, cache_transport=cache)
    assert await breaker.fire("a") == "A"
    assert cache.store != {}
    breaker.open()
    recorder = EventLog().attach(breaker, "fire", "shutdown")
    await breaker.shutdown()
    with pytest.raises(ShutdownError) as info:
        await breaker.fire("a")
    assert info.value.code == "ESHUTDOWN"
    assert recorder.names == ["shutdown"]
    assert breaker.is_shutdown
    assert not breaker.enabled
    assert breaker.state is State.OPEN
    assert cache.store == {}
    assert breaker.stats.fires == 1
    assert breaker.to_json()["state"]["shutdown"] is True


async def test_shutdown_stops_the_half_open_timer(clock: FakeClock) -> None:
    """A breaker shut down while open holds no timer and announces nothing later."""
    breaker = CircuitBreaker(succeed, clock=clock, reset_timeout=5.0, timeout=None)
    recorder = EventLog().attach(breaker, "half_open")
    breaker.open()
    await breaker.shutdown()
    assert clock.pending == 0
    await clock.advance(10.0)
    assert recorder.names == []


async def test_shutdown_state_keeps_its_last_value(clock: FakeClock) -> None:
    """The state of a shut-down breaker stays what it was, however much time passes."""
    breaker = CircuitBreaker(succeed, clock=clock, reset_timeout=5.0, timeout=None)
    recorder = EventLog().attach(breaker, "half_open")
    breaker.open()
    await breaker.shutdown()
    await clock.advance(10.0)
    assert breaker.state is State.OPEN
    assert recorder.names == []


async def test_shutdown_twice_is_harmless(clock: FakeClock) -> None:
    """A second shutdown() emits nothing more."""
    breaker = CircuitBreaker(succeed, clock=clock)
    recorder = EventLog().attach(breaker, "shutdown")
    await breaker.shutdown()
    await breaker.shutdown()
    assert recorder.names == ["shutdown"]
