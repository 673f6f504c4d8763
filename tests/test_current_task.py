"""Timed calls find and cancel their own task, loop after loop and thread beside thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from distributed_opossum import CircuitBreaker, CircuitTimeoutError


def test_a_new_loop_in_the_same_thread_times_calls_out_too() -> None:
    """Two asyncio.run() in one thread: each timed call finds its own task, and times out."""

    async def hang() -> None:
        await asyncio.Event().wait()

    async def one_run() -> None:
        breaker = CircuitBreaker(hang, timeout=0.01)
        with pytest.raises(CircuitTimeoutError):
            await breaker.fire()
        assert breaker.stats.timeouts == 1

    asyncio.run(one_run())
    asyncio.run(one_run())


def test_loops_in_two_threads_each_cancel_their_own_task() -> None:
    """Breakers timing calls in two threads at once each cancel the right task."""
    errors: list[BaseException] = []

    def worker() -> None:
        async def main() -> None:
            breaker = CircuitBreaker(asyncio.sleep, timeout=0.02, error_threshold_percentage=100)
            for _ in range(5):
                with pytest.raises(CircuitTimeoutError):
                    await breaker.fire(1.0)
                await breaker.fire(0)
            assert breaker.stats.timeouts == 5
            assert breaker.stats.successes == 5

        try:
            asyncio.run(main())
        except BaseException as error:  # reported to the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == []
