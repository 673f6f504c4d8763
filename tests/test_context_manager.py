"""``async with breaker:`` guarding a block: admission, timeout, outcome, many tasks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from helpers import Boom, EventLog, Recorder, Sleeper, cancel, fail, settle, succeed

from distributed_opossum import (
    CircuitBreaker,
    CircuitTimeoutError,
    OpenCircuitError,
    SemaphoreLockedError,
    ShutdownError,
    State,
)
from distributed_opossum.testing import FakeClock

T = TypeVar("T")


async def run_block(breaker: CircuitBreaker[..., Any], body: Callable[[], Awaitable[T]]) -> T:
    """Run ``body`` inside ``async with breaker:``."""
    async with breaker:
        return await body()
    raise AssertionError("the breaker swallowed the block's exception")


def _block_loop(seconds: float) -> None:
    """Hold the event loop (so that timers due meanwhile run in one iteration)."""
    time.sleep(seconds)


async def test_block_success_counts_one_fire_and_one_success(clock: FakeClock) -> None:
    """A block that completes is one fire and one success with the block's latency."""
    breaker = CircuitBreaker(succeed, clock=clock, timeout=5.0)
    recorder = EventLog().attach(breaker, "fire", "success", "failure")

    task = asyncio.create_task(run_block(breaker, Sleeper(clock, 0.5, result="done")))
    await clock.advance(0.5)
    assert await task == "done"
    stats = breaker.stats
    assert (stats.fires, stats.successes, stats.failures) == (1, 1, 0)
    assert stats.latency_mean == pytest.approx(0.5)
    assert recorder.names == ["fire", "success"]


async def test_block_enter_returns_the_breaker(clock: FakeClock) -> None:
    """``async with breaker as b`` binds the breaker itself."""
    breaker = CircuitBreaker(succeed, clock=clock)
    async with breaker as guarded:
        assert guarded is breaker


async def test_block_is_rejected_on_enter_when_open(clock: FakeClock) -> None:
    """An open breaker raises OpenCircuitError on enter and the body never runs."""
    breaker = CircuitBreaker(succeed, clock=clock, reset_timeout=10.0)
    breaker.open()
    await clock.advance(3.0)
    body = Recorder()
    with pytest.raises(OpenCircuitError) as info:
        await run_block(breaker, body)
    assert body.calls == []
    assert info.value.retry_after == pytest.approx(7.0)
    stats = breaker.stats
    assert (stats.fires, stats.rejects, stats.failures) == (1, 1, 0)


async def test_block_timeout_raises_circuit_timeout_error(clock: FakeClock) -> None:
    """The breaker's timeout cancels the body and CircuitTimeoutError leaves the block."""
    body = Sleeper(clock, 100.0, result="late")
    breaker = CircuitBreaker(succeed, clock=clock, timeout=2.0, error_threshold_percentage=100)
    recorder = EventLog().attach(breaker, "timeout", "failure")
    task = asyncio.create_task(run_block(breaker, body))
    await clock.advance(1.5)
    assert not task.done()
    await clock.advance(0.5)
    assert task.done()
    with pytest.raises(CircuitTimeoutError) as info:
        await task
    assert isinstance(info.value, TimeoutError)
    assert body.cancelled == 1
    stats = breaker.stats
    assert (stats.failures, stats.timeouts, stats.successes) == (1, 1, 0)
    assert stats.latency_mean == pytest.approx(2.0)
    assert recorder.names == ["timeout", "failure"]


async def test_block_swallowing_the_timeout_still_times_out(clock: FakeClock) -> None:
    """A body that catches the cancel and finishes late still leaves with a timeout."""
    body = Sleeper(clock, 100.0, result="late", swallow_cancel=True)
    breaker = CircuitBreaker(succeed, clock=clock, timeout=1.0, error_threshold_percentage=100)

    async def caller() -> int:
        with pytest.raises(CircuitTimeoutError):
            await run_block(breaker, body)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    task = asyncio.create_task(caller())
    await clock.advance(1.0)
    assert await task == 0
    assert breaker.stats.timeouts == 1


async def test_block_without_timeout_runs_as_long_as_it_takes(clock: FakeClock) -> None:
    """With timeout=None the body is never cut."""
    breaker = CircuitBreaker(succeed, clock=clock, timeout=None)

    task = asyncio.create_task(run_block(breaker, Sleeper(clock, 500.0, result="done")))
    await clock.advance(500.0)
    assert await task == "done"
    assert breaker.stats.timeouts == 0


async def test_block_exception_propagates_and_counts_as_failure(clock: FakeClock) -> None:
    """The body's own exception leaves the block unchanged, is a failure and may open."""
    breaker = CircuitBreaker(succeed, clock=clock)
    recorder = EventLog().attach(breaker, "failure")
    error = Boom("body failed")

    with pytest.raises(Boom) as info:
        await run_block(breaker, Recorder(error=error))
    assert info.value is error
    assert breaker.stats.failures == 1
    assert recorder.args_of("failure")[0][0] is error
    assert recorder.args_of("failure")[0][2] == ()
    assert breaker.opened


async def test_block_failure_rate_uses_threshold(clock: FakeClock) -> None:
    """Blocks feed the same open decision as fire()."""
    breaker = CircuitBreaker(succeed, clock=clock, error_threshold_percentage=50)

    await run_block(breaker, succeed)
    with pytest.raises(Boom):
        await run_block(breaker, fail)
    assert breaker.closed
    with pytest.raises(Boom):
        await run_block(breaker, fail)
    assert breaker.opened


async def test_block_error_filter_gets_the_exception_only(clock: FakeClock) -> None:
    """error_filter is called as error_filter(exc); True counts a success and re-raises."""
    not_a_failure = Recorder(result=True)  # the filter, recording its calls
    breaker = CircuitBreaker(succeed, clock=clock, error_filter=not_a_failure.sync)
    recorder = EventLog().attach(breaker, "success", "failure")
    error = KeyError("missing")

    with pytest.raises(KeyError) as info:
        await run_block(breaker, Recorder(error=error))
    assert info.value is error
    assert not_a_failure.calls == [((error,), {})]
    assert recorder.names == ["success"]
    assert (breaker.stats.successes, breaker.stats.failures) == (1, 0)
    assert breaker.closed


async def test_block_error_filter_false_is_a_failure(clock: FakeClock) -> None:
    """An exception the filter does not excuse is a failure."""
    breaker = CircuitBreaker(succeed, clock=clock, error_filter=lambda error: False)
    with pytest.raises(Boom):
        await run_block(breaker, fail)
    assert breaker.stats.failures == 1


async def test_one_breaker_guards_many_concurrent_blocks(clock: FakeClock) -> None:
    """Blocks in different tasks keep separate bookkeeping and end in any order."""
    loop = asyncio.get_running_loop()
    count = 12
    futures: list[asyncio.Future[str]] = [loop.create_future() for _ in range(count)]
    breaker = CircuitBreaker(
        succeed, clock=clock, timeout=5.0, capacity=count, error_threshold_percentage=100
    )

    def body_of(index: int) -> Callable[[], Awaitable[str]]:
        async def body() -> str:
            return await futures[index]

        return body

    tasks = [asyncio.create_task(run_block(breaker, body_of(i))) for i in range(count)]
    await settle()
    extra = asyncio.create_task(run_block(breaker, succeed))
    await settle()
    with pytest.raises(SemaphoreLockedError):
        await extra
    await clock.advance(1.0)
    for index in (7, 2, 11, 0, 5, 9, 3):
        futures[index].set_result(f"r{index}")
    futures[4].set_exception(Boom("four"))
    futures[8].set_exception(Boom("eight"))
    await settle()
    for index in (7, 2, 11, 0, 5, 9, 3):
        assert await tasks[index] == f"r{index}"
    for index in (4, 8):
        with pytest.raises(Boom):
            await tasks[index]
    await clock.advance(4.0)  # the three left time out at their deadline
    for index in (1, 6, 10):
        with pytest.raises(CircuitTimeoutError):
            await tasks[index]
    stats = breaker.stats
    assert stats.successes == 7
    assert stats.failures == 2 + 3 + 1  # errors, timeouts, the semaphore rejection
    assert stats.timeouts == 3
    assert await run_block(breaker, succeed) == "ok"  # every slot was returned


async def test_nested_blocks_in_one_task(clock: FakeClock) -> None:
    """An inner block's failure caught inside an outer block: one failure, one success."""
    breaker = CircuitBreaker(succeed, clock=clock, error_threshold_percentage=100)

    async def inner() -> None:
        raise Boom("inner")

    async def outer() -> str:
        with pytest.raises(Boom):
            await run_block(breaker, inner)
        return "outer done"

    assert await run_block(breaker, outer) == "outer done"
    stats = breaker.stats
    assert (stats.fires, stats.successes, stats.failures) == (2, 1, 1)


async def test_caller_cancellation_inside_a_block(clock: FakeClock) -> None:
    """Cancelling the task in a block propagates, records nothing and frees the slot."""
    breaker = CircuitBreaker(succeed, clock=clock, timeout=5.0, capacity=1)
    body = Sleeper(clock, 100.0)
    task = asyncio.create_task(run_block(breaker, body))
    await settle()
    await cancel(task)
    assert body.cancelled == 1
    stats = breaker.stats
    assert (stats.successes, stats.failures, stats.timeouts) == (0, 0, 0)
    assert await run_block(breaker, succeed) == "ok"
    assert breaker.stats.semaphore_rejections == 0


async def test_caller_cancellation_inside_a_trial_block_releases_the_permit(
    clock: FakeClock,
) -> None:
    """A cancelled trial block gives the permit back; the next block is the trial."""
    breaker = CircuitBreaker(succeed, clock=clock, reset_timeout=5.0, timeout=None)
    breaker.open()
    await clock.advance(5.0)

    async def hang() -> None:
        await clock.sleep(100.0)

    trial = asyncio.create_task(run_block(breaker, hang))
    await settle()
    with pytest.raises(OpenCircuitError):
        await run_block(breaker, succeed)
    await cancel(trial)
    assert breaker.half_open
    assert await run_block(breaker, succeed) == "ok"
    assert breaker.closed


async def test_outer_asyncio_timeout_around_a_block(clock: FakeClock) -> None:
    """An enclosing asyncio.timeout is the caller's cancellation, not a breaker timeout."""
    breaker = CircuitBreaker(succeed, clock=clock, timeout=5.0)

    async def hang() -> None:
        await clock.sleep(100.0)

    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0):
            await run_block(breaker, hang)
    assert not isinstance(info.value, CircuitTimeoutError)
    stats = breaker.stats
    assert (stats.successes, stats.failures, stats.timeouts) == (0, 0, 0)


async def test_block_trial_success_closes(clock: FakeClock) -> None:
    """A block admitted as the half-open trial closes the breaker when it succeeds."""
    breaker = CircuitBreaker(succeed, clock=clock, reset_timeout=5.0)
    breaker.open()
    await clock.advance(5.0)
    assert await run_block(breaker, succeed) == "ok"
    assert breaker.closed
    assert breaker.attempts == 0


async def test_block_trial_failure_reopens(clock: FakeClock) -> None:
    """A failing trial block re-opens with one more attempt."""
    breaker = CircuitBreaker(succeed, clock=clock, reset_timeout=5.0)
    breaker.open()
    await clock.advance(5.0)

    async def bad() -> None:
        raise Boom("trial")

    with pytest.raises(Boom):
        await run_block(breaker, bad)
    assert breaker.state is State.OPEN
    assert breaker.attempts == 2


async def test_block_on_a_disabled_breaker_just_runs(clock: FakeClock) -> None:
    """Disabled: the block runs even while open and only its fire is counted."""
    breaker = CircuitBreaker(succeed, clock=clock)
    breaker.open()
    breaker.disable()

    async def bad() -> None:
        raise Boom("ignored")

    assert await run_block(breaker, succeed) == "ok"
    with pytest.raises(Boom):
        await run_block(breaker, bad)
    stats = breaker.stats
    assert (stats.fires, stats.successes, stats.failures, stats.rejects) == (2, 0, 0, 0)


async def test_block_on_a_shut_down_breaker(clock: FakeClock) -> None:
    """After shutdown() entering a block raises ShutdownError."""
    breaker = CircuitBreaker(succeed, clock=clock)
    await breaker.shutdown()
    with pytest.raises(ShutdownError):
        await run_block(breaker, succeed)


async def test_real_clock_block_timeout_fires_on_time() -> None:
    """With the system clock, a 30 ms timeout ends a slow block after about 30 ms."""
    breaker = CircuitBreaker(succeed, timeout=0.03)

    async def slow() -> None:
        await asyncio.sleep(5.0)

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CircuitTimeoutError):
        await run_block(breaker, slow)
    assert 0.025 <= loop.time() - started < 0.5
    assert breaker.stats.timeouts == 1


async def test_real_clock_cancel_arriving_with_the_deadline_propagates() -> None:
    """A caller's cancel landing in the same loop step as the block's deadline stays a cancel."""
    breaker = CircuitBreaker(succeed, timeout=0.02)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.sleep(5.0)

    loop = asyncio.get_running_loop()
    task = asyncio.create_task(run_block(breaker, hang))
    loop.call_later(0.01, task.cancel)  # due before the block's deadline
    await asyncio.sleep(0)
    assert started.is_set()
    _block_loop(0.05)  # both timers are now due: the cancel runs first, then the deadline
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = breaker.stats
    assert (stats.failures, stats.timeouts) == (0, 0)
