"""A breaker used in successive event loops keeps every protection it had in the first.

pytest-asyncio gives each test a loop of its own, scripts warm up with
``asyncio.run()`` before serving, FastAPI's ``TestClient`` runs a loop per block:
whatever a breaker armed on one loop (its timeout timer, its open-period timer,
its snapshot timer, its coordinator) must be armed again on the next one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from distributed_support import PREFIX
from helpers import Boom, EventLog, fail, succeed
from redis_server import RedisServer
from waiting import eventually

from distributed_opossum import CircuitBreaker, CircuitTimeoutError, OpenCircuitError, State

SLOW = 2.0
TIMEOUT = 0.05


async def _maybe_slow(delay: float) -> str:
    await asyncio.sleep(delay)
    return "done"


def test_timeout_fires_in_a_second_asyncio_run() -> None:
    """A call that left the timeout timer pending on a finished loop is still timed in the next."""
    breaker = CircuitBreaker(_maybe_slow, timeout=TIMEOUT)
    assert asyncio.run(breaker.fire(0)) == "done"  # arms the timer, which outlives the loop
    start = time.monotonic()
    with pytest.raises(CircuitTimeoutError):
        asyncio.run(breaker.fire(SLOW))
    assert time.monotonic() - start < SLOW / 2


def test_timeout_fires_in_every_one_of_several_loops() -> None:
    """Five loops in a row: each one times its calls out."""
    breaker = CircuitBreaker(_maybe_slow, timeout=TIMEOUT)
    for _ in range(5):
        assert asyncio.run(breaker.fire(0)) == "done"
        with pytest.raises(CircuitTimeoutError):
            asyncio.run(breaker.fire(SLOW))


def test_half_open_event_fires_in_the_loop_that_follows() -> None:
    """An open period that began in one loop ends with a ``half_open`` event in the next."""

    breaker = CircuitBreaker(fail, reset_timeout=0.5, timeout=None)
    seen = EventLog().attach(breaker, "half_open")

    async def trip() -> None:
        with pytest.raises(Boom):
            await breaker.fire()
        assert breaker.opened

    asyncio.run(trip())

    async def wait_for_half_open() -> None:
        # The first use re-arms the breaker's timers on this loop; a rejected call is one.
        with pytest.raises(OpenCircuitError):
            await breaker.fire()
        assert not seen.names
        await asyncio.sleep(0.7)

    asyncio.run(wait_for_half_open())
    assert seen.names == ["half_open"]


def test_snapshots_continue_in_the_next_loop() -> None:
    """A snapshot listener keeps receiving snapshots after the loop changes."""
    breaker = CircuitBreaker(_maybe_slow, rolling_count_timeout=0.5, rolling_count_buckets=5)
    snapshots: list[Any] = []

    async def listen(wait: float) -> None:
        await breaker.fire(0)
        await asyncio.sleep(wait)

    breaker.on("snapshot", snapshots.append)
    asyncio.run(listen(0.25))
    first = len(snapshots)
    assert first >= 1
    asyncio.run(listen(0.35))
    assert len(snapshots) >= first + 2


# A module-level breaker shared by the next two tests, each of which runs on
# its own pytest-asyncio loop (function scope, the default).
SHARED = CircuitBreaker(_maybe_slow, name="shared-across-test-loops", timeout=TIMEOUT)


async def test_module_breaker_first_test_loop() -> None:
    """First test loop: a quick call leaves the timeout timer armed on this loop."""
    assert await SHARED.fire(0) == "done"


async def test_module_breaker_second_test_loop_still_times_out() -> None:
    """Second test loop: the same breaker still times a slow call out."""
    assert await SHARED.fire(0) == "done"
    start = time.monotonic()
    with pytest.raises(CircuitTimeoutError):
        await SHARED.fire(SLOW)
    assert time.monotonic() - start < SLOW / 2


def _distributed(client: aioredis.Redis, instance: str, **options: Any) -> CircuitBreaker[..., Any]:
    return CircuitBreaker(
        succeed,
        name="loops",
        reset_timeout=5.0,
        distributed={
            "client": client,
            "prefix": PREFIX,
            "instance_id": instance,
            "sync_interval": 0.05,
        },
        **options,
    )


@pytest.mark.redis
def test_distributed_breaker_follows_the_cluster_in_a_second_loop(
    redis_server: RedisServer,
) -> None:
    """Used from a new loop, a distributed breaker reports and hears the cluster again,
    and its shutdown there raises nothing."""
    client = aioredis.Redis.from_url(redis_server.url)
    breaker = _distributed(client, "pod-a")

    async def first_loop() -> None:
        assert await breaker.fire() == "ok"
        await eventually(
            lambda: breaker._link is not None and breaker._link.gen is not None, within=2.0
        )

    asyncio.run(first_loop())

    async def second_loop() -> None:
        other_client = aioredis.Redis.from_url(redis_server.url)
        other = _distributed(other_client, "pod-b")
        try:
            assert await breaker.fire() == "ok"  # the first use in this loop
            await other.force_open()
            await eventually(lambda: breaker.state is State.FORCED_OPEN, within=2.0)
            await breaker.shutdown()
        finally:
            await other.shutdown()
            await other_client.aclose()
            await client.aclose()

    asyncio.run(second_loop())
