"""Fallbacks, the result cache and call coalescing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import Boom, CacheTransport, EventLog, Gate, Recorder, Sleeper, breaker_on, settle

from distributed_opossum import (
    CircuitBreaker,
    CircuitTimeoutError,
    OpenCircuitError,
    SemaphoreLockedError,
    ShutdownError,
)
from distributed_opossum.testing import FakeClock

# --------------------------------------------------------------------------- fallback


async def test_sync_fallback_gets_args_then_error_then_kwargs() -> None:
    """A sync fallback is called as ``fn(*args, error, **kwargs)``; its value is the result."""
    error = Boom("down")
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fallback(*args: Any, **kwargs: Any) -> str:
        calls.append((args, kwargs))
        return "fb"

    breaker = breaker_on(FakeClock(), Recorder(error=error)).fallback(fallback)
    assert await breaker.fire(1, 2, mode="fast") == "fb"
    assert calls == [((1, 2, error), {"mode": "fast"})]


async def test_async_fallback_is_awaited() -> None:
    """An async fallback is awaited; its value is the result."""
    error = Boom("down")
    seen: list[Any] = []

    async def fallback(order: int, exc: BaseException, *, currency: str) -> str:
        await asyncio.sleep(0)
        seen.append((order, exc, currency))
        return f"queued {order} {currency}"

    breaker = breaker_on(FakeClock(), Recorder(error=error)).fallback(fallback)
    assert await breaker.fire(9, currency="EUR") == "queued 9 EUR"
    assert seen == [(9, error, "EUR")]


async def test_raising_fallback_makes_fire_raise_its_error() -> None:
    """When the fallback raises, ``fire`` raises the fallback's error, not the action's."""
    fallback_error = RuntimeError("fallback down too")

    def fallback(*args: Any) -> str:
        raise fallback_error

    breaker = breaker_on(FakeClock(), Recorder(error=Boom())).fallback(fallback)
    with pytest.raises(RuntimeError) as caught:
        await breaker.fire()
    assert caught.value is fallback_error


async def test_raising_async_fallback_makes_fire_raise_its_error() -> None:
    """An async fallback's error is what ``fire`` raises."""

    async def fallback(*args: Any) -> str:
        raise KeyError("missing")

    breaker = breaker_on(FakeClock(), Recorder(error=Boom())).fallback(fallback)
    with pytest.raises(KeyError, match="missing"):
        await breaker.fire()


async def test_fallback_counted_in_stats() -> None:
    """Each fallback that ran counts in ``stats.fallbacks``; failures still count."""
    breaker = breaker_on(FakeClock(), Recorder(error=Boom()), volume_threshold=10)
    breaker.fallback(lambda *args: None)
    await breaker.fire()
    await breaker.fire()
    stats = breaker.stats
    assert stats.fallbacks == 2
    assert stats.failures == 2
    assert stats.successes == 0


def test_fallback_is_chainable() -> None:
    """``fallback(fn)`` returns the breaker itself."""
    breaker = breaker_on(FakeClock(), Recorder())
    assert breaker.fallback(lambda *args: None) is breaker


def test_fallback_must_be_callable() -> None:
    """A non-callable fallback raises ``TypeError``."""
    with pytest.raises(TypeError, match="fallback"):
        breaker_on(FakeClock(), Recorder()).fallback("plan b")  # type: ignore[arg-type]


async def test_fallback_on_an_open_breaker_gets_the_open_error() -> None:
    """A rejected call runs the fallback with the ``OpenCircuitError`` after the args."""
    action, fallback = Recorder(), Recorder(result="fb")
    breaker = breaker_on(FakeClock(), action).fallback(fallback.sync)
    breaker.open()
    assert await breaker.fire("a") == "fb"
    [((arg, error), _)] = fallback.calls
    assert arg == "a"
    assert isinstance(error, OpenCircuitError)
    assert action.calls == []
    assert breaker.stats.rejects == 1
    assert breaker.stats.fallbacks == 1


async def test_fallback_on_timeout_gets_the_timeout_error() -> None:
    """A timed-out call runs the fallback with the ``CircuitTimeoutError``."""
    clock, fallback = FakeClock(), Recorder(result="late")
    breaker = breaker_on(clock, Sleeper(clock, 10.0), timeout=1.0).fallback(fallback.sync)
    task = asyncio.ensure_future(breaker.fire())
    await clock.advance(1.0)
    assert await task == "late"
    [((error,), _)] = fallback.calls
    assert isinstance(error, CircuitTimeoutError)


async def test_fallback_on_capacity_rejection() -> None:
    """A capacity rejection runs the fallback with the ``SemaphoreLockedError``."""
    gate, fallback = Gate(), Recorder(result="busy")
    breaker = breaker_on(FakeClock(), gate, capacity=1, volume_threshold=5)
    breaker.fallback(fallback.sync)
    first = asyncio.ensure_future(breaker.fire())
    await settle()
    assert await breaker.fire() == "busy"
    assert isinstance(fallback.calls[0][0][0], SemaphoreLockedError)
    gate.release()
    assert await first == "ok"


async def test_no_fallback_when_error_filter_says_so() -> None:
    """A filtered error is re-raised without the fallback and counted as a success."""
    fallback_calls: list[Any] = []
    breaker = breaker_on(
        FakeClock(), Recorder(error=KeyError("k")), error_filter=lambda exc, *a: True
    ).fallback(lambda *args: fallback_calls.append(args))
    with pytest.raises(KeyError):
        await breaker.fire()
    assert fallback_calls == []
    assert breaker.stats.successes == 1
    assert breaker.stats.failures == 0
    assert breaker.stats.fallbacks == 0


async def test_error_filter_gets_error_args_and_kwargs() -> None:
    """``error_filter(exc, *args, **kwargs)`` sees the call's arguments."""
    seen: list[Any] = []

    def error_filter(exc: BaseException, *args: Any, **kwargs: Any) -> bool:
        seen.append((exc, args, kwargs))
        return False

    error = Boom()
    breaker = breaker_on(
        FakeClock(), Recorder(error=error), error_filter=error_filter, volume_threshold=5
    )
    with pytest.raises(Boom):
        await breaker.fire(1, k=2)
    assert seen == [(error, (1,), {"k": 2})]
    assert breaker.stats.failures == 1


# --------------------------------------------------------------------------- cache


async def test_cache_serves_identical_calls() -> None:
    """With ``cache=True`` an identical call is served from the cache, the action runs once."""
    action = Recorder(result={"v": 1})
    breaker = breaker_on(FakeClock(), action, cache=True)
    assert await breaker.fire(1) == {"v": 1}
    assert await breaker.fire(1) == {"v": 1}
    assert await breaker.fire(2) == {"v": 1}
    assert len(action.calls) == 2
    stats = breaker.stats
    assert (stats.cache_hits, stats.cache_misses, stats.fires) == (1, 2, 3)


async def test_cache_key_includes_kwargs() -> None:
    """Calls differing only in keyword arguments are cached separately."""
    action = Recorder()
    breaker = breaker_on(FakeClock(), action, cache=True)
    await breaker.fire(1, page=1)
    await breaker.fire(1, page=2)
    await breaker.fire(1, page=1)
    assert len(action.calls) == 2


async def test_cache_hit_served_while_open() -> None:
    """A cached value is served even while the breaker is open; other calls are rejected."""
    action = Recorder(result="cached")
    breaker = breaker_on(FakeClock(), action, cache=True)
    await breaker.fire("k")
    breaker.open()
    assert await breaker.fire("k") == "cached"
    with pytest.raises(OpenCircuitError):
        await breaker.fire("other")
    assert len(action.calls) == 1


async def test_failures_are_not_cached() -> None:
    """A failing call stores nothing: the next identical call runs the action again."""
    action = Recorder(error=Boom())
    breaker = breaker_on(FakeClock(), action, cache=True, volume_threshold=10)
    with pytest.raises(Boom):
        await breaker.fire(1)
    action.error = None
    assert await breaker.fire(1) == "ok"
    assert len(action.calls) == 2


async def test_cache_ttl_expires_on_the_clock() -> None:
    """A cached value lives ``cache_ttl`` seconds."""
    clock = FakeClock()
    action = Recorder()
    breaker = breaker_on(clock, action, cache=True, cache_ttl=5.0)
    await breaker.fire(1)
    await clock.advance(4.9)
    await breaker.fire(1)
    assert len(action.calls) == 1
    await clock.advance(0.2)
    await breaker.fire(1)
    assert len(action.calls) == 2


async def test_cache_without_ttl_does_not_expire() -> None:
    """Without ``cache_ttl`` a cached value stays until cleared."""
    clock = FakeClock()
    action = Recorder()
    breaker = breaker_on(clock, action, cache=True)
    await breaker.fire(1)
    await clock.advance(86_400.0)
    await breaker.fire(1)
    assert len(action.calls) == 1


async def test_cache_size_evicts_first_in_first_out() -> None:
    """With ``cache_size=2`` the oldest stored entry goes first, even if it was just read."""
    action = Recorder()
    breaker = breaker_on(FakeClock(), action, cache=True, cache_size=2)
    await breaker.fire("a")
    await breaker.fire("b")
    await breaker.fire("a")  # hit: a FIFO cache does not refresh "a"
    await breaker.fire("c")  # evicts "a"
    assert [args for args, _ in action.calls] == [("a",), ("b",), ("c",)]
    await breaker.fire("b")  # still cached
    assert len(action.calls) == 3
    await breaker.fire("a")  # evicted: runs again
    assert [args for args, _ in action.calls][-1] == ("a",)
    assert len(action.calls) == 4


async def test_cache_get_key_decides_identity() -> None:
    """``cache_get_key(*args, **kwargs)`` gives the key: equal keys share an entry."""
    action = Recorder()
    keys: list[Any] = []

    def get_key(request: dict[str, Any], **kwargs: Any) -> str:
        keys.append((request, kwargs))
        return str(request["id"])

    breaker = breaker_on(FakeClock(), action, cache=True, cache_get_key=get_key)
    await breaker.fire({"id": 1, "trace": "x"}, retry=True)
    await breaker.fire({"id": 1, "trace": "y"})
    await breaker.fire({"id": 2, "trace": "x"})
    assert len(action.calls) == 2
    assert keys[0] == ({"id": 1, "trace": "x"}, {"retry": True})


class AsyncTransport:
    """An asynchronous cache transport recording its calls."""

    def __init__(self) -> None:
        self.store: dict[Any, Any] = {}
        self.sets: list[tuple[Any, Any, float | None]] = []
        self.flushes = 0

    async def get(self, key: Any) -> Any:
        await asyncio.sleep(0)
        return self.store.get(key)

    async def set(self, key: Any, value: Any, ttl: float | None) -> None:
        await asyncio.sleep(0)
        self.sets.append((key, value, ttl))
        self.store[key] = value

    async def flush(self) -> None:
        await asyncio.sleep(0)
        self.flushes += 1
        self.store.clear()


async def test_sync_cache_transport() -> None:
    """A sync transport gets ``get(key)`` and ``set(key, value, ttl)`` with ``cache_ttl``."""
    transport = CacheTransport()
    action = Recorder(result=10)
    breaker = breaker_on(FakeClock(), action, cache=True, cache_ttl=7.0, cache_transport=transport)
    assert await breaker.fire(3) == 10
    assert await breaker.fire(3) == 10
    assert len(action.calls) == 1
    [(key, value, ttl)] = transport.sets
    assert (value, ttl) == (10, 7.0)
    assert transport.gets == [key, key]
    assert breaker.stats.cache_hits == 1


async def test_async_cache_transport() -> None:
    """An async transport's coroutines are awaited."""
    transport = AsyncTransport()
    action = Recorder(result="v")
    breaker = breaker_on(FakeClock(), action, cache=True, cache_transport=transport)
    assert await breaker.fire(1) == "v"
    assert await breaker.fire(1) == "v"
    assert len(action.calls) == 1
    assert [(value, ttl) for _, value, ttl in transport.sets] == [("v", None)]


async def test_clear_cache_with_sync_transport() -> None:
    """``clear_cache()`` flushes a sync transport at once."""
    transport = CacheTransport()
    action = Recorder()
    breaker = breaker_on(FakeClock(), action, cache=True, cache_transport=transport)
    await breaker.fire(1)
    breaker.clear_cache()
    assert transport.flushes == 1
    await breaker.fire(1)
    assert len(action.calls) == 2


async def test_clear_cache_with_async_transport() -> None:
    """``clear_cache()`` flushes an async transport (the flush completes in the background)."""
    transport = AsyncTransport()
    breaker = breaker_on(FakeClock(), Recorder(), cache=True, cache_transport=transport)
    await breaker.fire(1)
    breaker.clear_cache()
    await settle()
    assert transport.flushes == 1
    assert transport.store == {}


async def test_clear_cache_default_memory() -> None:
    """``clear_cache()`` empties the default in-memory cache."""
    action = Recorder()
    breaker = breaker_on(FakeClock(), action, cache=True)
    await breaker.fire(1)
    await breaker.fire(1)
    breaker.clear_cache()
    await breaker.fire(1)
    assert len(action.calls) == 2
    assert breaker.stats.cache_misses == 2


def test_clear_cache_without_cache_is_harmless() -> None:
    """``clear_cache()`` on a breaker without a cache does nothing and returns None."""
    breaker = breaker_on(FakeClock(), Recorder())
    assert breaker.clear_cache() is None  # type: ignore[func-returns-value]


@pytest.mark.parametrize("transport_type", [CacheTransport, AsyncTransport])
async def test_shutdown_empties_the_cache(transport_type: type[Any]) -> None:
    """``shutdown()`` flushes the cache transport before returning."""
    transport = transport_type()
    breaker = breaker_on(FakeClock(), Recorder(), cache=True, cache_transport=transport)
    await breaker.fire(1)
    assert transport.store
    await breaker.shutdown()
    assert transport.store == {}
    assert transport.flushes == 1
    with pytest.raises(ShutdownError):
        await breaker.fire(1)


async def test_none_results_are_not_served_from_cache() -> None:
    """A ``None`` result is not a cache hit: the action runs again."""
    action = Recorder(result=None)
    breaker = breaker_on(FakeClock(), action, cache=True)
    await breaker.fire(1)
    await breaker.fire(1)
    assert len(action.calls) == 2


# --------------------------------------------------------------------------- coalesce


async def test_concurrent_identical_calls_run_once() -> None:
    """N concurrent identical calls: the action runs once and everyone gets its result."""
    gate = Gate(result=["shared"])
    breaker = breaker_on(FakeClock(), gate, coalesce=True)
    tasks = [asyncio.ensure_future(breaker.fire("id")) for _ in range(5)]
    await settle()
    assert len(gate.calls) == 1
    gate.release()
    results = await asyncio.gather(*tasks)
    assert results == [["shared"]] * 5
    assert all(result is results[0] for result in results)
    stats = breaker.stats
    assert (stats.coalesce_cache_misses, stats.coalesce_cache_hits) == (1, 4)
    assert stats.fires == 5
    assert stats.successes == 1


async def test_different_calls_are_not_coalesced() -> None:
    """Calls with different arguments run separately."""
    gate = Gate()
    breaker = breaker_on(FakeClock(), gate, coalesce=True)
    tasks = [asyncio.ensure_future(breaker.fire(i)) for i in range(3)]
    await settle()
    gate.release()
    await asyncio.gather(*tasks)
    assert len(gate.calls) == 3


async def test_coalesced_failure_raises_the_same_exception_for_all() -> None:
    """When the shared call fails, every caller gets the very same exception object."""
    error = Boom("shared failure")
    gate = Gate(error=error)
    breaker = breaker_on(FakeClock(), gate, coalesce=True, volume_threshold=10)
    tasks = [asyncio.ensure_future(breaker.fire("id")) for _ in range(4)]
    await settle()
    gate.release()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(outcome is error for outcome in outcomes)
    assert len(gate.calls) == 1
    assert breaker.stats.failures == 1


@pytest.mark.parametrize("victim", [0, 2])
async def test_cancelled_caller_does_not_cancel_the_others(victim: int) -> None:
    """Cancelling one caller (the first included) leaves the shared call running for the rest."""
    gate = Gate(result="done")
    breaker = breaker_on(FakeClock(), gate, coalesce=True)
    tasks = [asyncio.ensure_future(breaker.fire("id")) for _ in range(3)]
    await settle()
    tasks[victim].cancel()
    await settle()
    assert gate.cancelled == 0
    gate.release()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(outcomes[victim], asyncio.CancelledError)
    assert [o for i, o in enumerate(outcomes) if i != victim] == ["done", "done"]
    assert len(gate.calls) == 1


async def test_coalesce_ttl_counts_from_the_start_of_the_call() -> None:
    """With ``coalesce_ttl`` a settled result is shared until start + ttl, not settle + ttl."""
    clock = FakeClock()
    action = Sleeper(clock, 1.0, result="r")
    breaker = breaker_on(clock, action, coalesce=True, coalesce_ttl=3.0)
    first = asyncio.ensure_future(breaker.fire("k"))
    await clock.advance(1.0)
    assert await first == "r"
    await clock.advance(1.5)  # start + 2.5: still shared
    assert await breaker.fire("k") == "r"
    assert len(action.calls) == 1
    await clock.advance(1.0)  # start + 3.5 (settle + 2.5): expired
    late = asyncio.ensure_future(breaker.fire("k"))
    await clock.advance(1.0)
    assert await late == "r"
    assert len(action.calls) == 2


async def test_without_ttl_only_in_flight_calls_are_shared() -> None:
    """Without ``coalesce_ttl`` a settled call is not reused."""
    action = Recorder()
    breaker = breaker_on(FakeClock(), action, coalesce=True)
    await breaker.fire(1)
    await breaker.fire(1)
    assert len(action.calls) == 2


async def test_settled_failure_is_shared_within_ttl_without_reset_on() -> None:
    """Without ``coalesce_reset_on`` a failure is shared for the TTL too."""
    error = Boom("sticky")
    action = Recorder(error=error)
    breaker = breaker_on(FakeClock(), action, coalesce=True, coalesce_ttl=10.0, volume_threshold=10)
    with pytest.raises(Boom):
        await breaker.fire(1)
    with pytest.raises(Boom) as caught:
        await breaker.fire(1)
    assert caught.value is error
    assert len(action.calls) == 1


@pytest.mark.parametrize(
    "error", [Boom(), TimeoutError("upstream")], ids=["error", "action-own-timeout-error"]
)
async def test_coalesce_reset_on_error(error: Exception) -> None:
    """``reset_on=["error"]`` drops a failed entry at once (an action's TimeoutError included)."""
    action = Recorder(error=error)
    breaker = breaker_on(
        FakeClock(),
        action,
        coalesce=True,
        coalesce_ttl=30.0,
        coalesce_reset_on=["error"],
        volume_threshold=10,
    )
    with pytest.raises(type(error)):
        await breaker.fire(1)
    action.error = None
    assert await breaker.fire(1) == "ok"
    assert len(action.calls) == 2


@pytest.mark.parametrize(
    ("reset_on", "calls"),
    [("error", 1), ("success", 2)],
    ids=["error-keeps-successes", "success-drops-them"],
)
async def test_coalesce_reset_on_and_successes(reset_on: str, calls: int) -> None:
    """A success stays for the TTL under ``reset_on=["error"]``, not under ``["success"]``."""
    action = Recorder()
    breaker = breaker_on(
        FakeClock(), action, coalesce=True, coalesce_ttl=10.0, coalesce_reset_on=[reset_on]
    )
    await breaker.fire(1)
    await breaker.fire(1)
    assert len(action.calls) == calls


async def timed_out_once(
    reset_on: list[str],
) -> tuple[CircuitBreaker[..., Any], Sleeper, FakeClock]:
    """A coalescing breaker (1 s timeout, 30 s TTL) whose first call, for key 1, timed out."""
    clock = FakeClock()
    action = Sleeper(clock, 5.0)
    breaker = breaker_on(
        clock,
        action,
        timeout=1.0,
        coalesce=True,
        coalesce_ttl=30.0,
        coalesce_reset_on=reset_on,
        volume_threshold=10,
    )
    first = asyncio.ensure_future(breaker.fire(1))
    await clock.advance(1.0)
    with pytest.raises(CircuitTimeoutError):
        await first
    return breaker, action, clock


async def test_coalesce_reset_on_timeout() -> None:
    """``coalesce_reset_on=["timeout"]`` drops an entry whose call timed out."""
    breaker, action, clock = await timed_out_once(["timeout"])
    second = asyncio.ensure_future(breaker.fire(1))
    await clock.advance(1.0)
    with pytest.raises(CircuitTimeoutError):
        await second
    assert len(action.calls) == 2


async def test_timeout_is_not_an_error_for_reset_on() -> None:
    """With ``coalesce_reset_on=["error"]`` a breaker timeout keeps the entry for the TTL."""
    breaker, action, _ = await timed_out_once(["error"])
    with pytest.raises(CircuitTimeoutError):
        await breaker.fire(1)
    assert len(action.calls) == 1


async def test_coalesce_size_evicts_the_oldest_entry() -> None:
    """With ``coalesce_size=2`` a third key evicts the oldest entry."""
    action = Recorder()
    breaker = breaker_on(FakeClock(), action, coalesce=True, coalesce_ttl=60.0, coalesce_size=2)
    for key in ("a", "b", "c"):
        await breaker.fire(key)
    await breaker.fire("c")
    await breaker.fire("b")
    assert len(action.calls) == 3
    await breaker.fire("a")
    assert len(action.calls) == 4
    assert action.calls[-1][0] == ("a",)


async def test_clear_cache_empties_the_coalescing_table() -> None:
    """``clear_cache()`` also forgets coalesced results."""
    action = Recorder()
    breaker = breaker_on(FakeClock(), action, coalesce=True, coalesce_ttl=60.0)
    await breaker.fire(1)
    breaker.clear_cache()
    await breaker.fire(1)
    assert len(action.calls) == 2


async def test_coalesced_fallback_runs_once() -> None:
    """A failing coalesced call runs its fallback once; every caller gets its result."""
    gate = Gate(error=Boom())
    fallback_calls: list[Any] = []
    breaker = breaker_on(FakeClock(), gate, coalesce=True, volume_threshold=10)

    def fallback(*args: Any) -> str:
        fallback_calls.append(args)
        return "fb"

    breaker.fallback(fallback)
    tasks = [asyncio.ensure_future(breaker.fire(1)) for _ in range(3)]
    await settle()
    gate.release()
    assert await asyncio.gather(*tasks) == ["fb", "fb", "fb"]
    assert len(fallback_calls) == 1


async def test_coalesce_events_and_cache_together() -> None:
    """With cache and coalesce on, a cached value short-cuts coalescing."""
    breaker = breaker_on(FakeClock(), Recorder(), cache=True, coalesce=True)
    log = EventLog().attach(breaker, "cache_hit", "cache_miss", "coalesce_cache_miss")
    await breaker.fire(1)
    await breaker.fire(1)
    assert log.names == ["cache_miss", "coalesce_cache_miss", "cache_hit"]
