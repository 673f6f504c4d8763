"""Distributed breakers through everyday lifecycles: re-created, renamed long, shut down
together, their client closed under them.

Each test runs pods on a private redis-server; a pod is a breaker with a client
of its own, as a replica in another process would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref

import pytest
import redis.asyncio as aioredis
from distributed_support import PREFIX, ClusterFactory
from helpers import Boom, Downstream, EventLog, succeed
from redis_server import RedisServer
from waiting import eventually, stays

from distributed_opossum import CircuitBreaker, OpenCircuitError, State, _registry, shutdown_all
from distributed_opossum._options import MAX_NAME_LENGTH
from distributed_opossum._redis.coordinator import live_coordinators

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("own_registry")]


@pytest.fixture
def own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry of this test's breakers alone: ``shutdown_all()`` must not reach the
    module-level breakers of other test modules living in the same process."""
    monkeypatch.setattr(_registry, "_breakers", weakref.WeakValueDictionary())


async def _connections(admin: aioredis.Redis, name: str) -> int:
    return sum(1 for entry in await admin.client_list() if entry.get("name") == name)


async def _subscribing(admin: aioredis.Redis, name: str) -> int:
    """Connections named ``name`` that hold a subscription of any kind."""
    return sum(
        1
        for entry in await admin.client_list()
        if entry.get("name") == name
        and any(int(entry.get(kind, 0)) for kind in ("sub", "psub", "ssub"))
    )


async def test_breaker_made_after_the_last_one_shut_down_still_shares(
    make_cluster: ClusterFactory,
) -> None:
    """Create, shut down, create again on one client: every generation hears the cluster."""
    cluster = await make_cluster("regen", reset_timeout=5.0, sync_interval=2.0)
    other = cluster.pod("other")
    shared_client = cluster.client("replica")
    for generation in range(3):
        pod = cluster.pod(f"replica-{generation}", client=shared_client)
        await cluster.ready()
        await other.breaker.force_open()
        await eventually(
            lambda pod=pod: pod.breaker.state is State.FORCED_OPEN,  # type: ignore[misc]
            within=1.0,
            what=f"generation {generation} forced open",
        )
        await other.breaker.reset()
        await eventually(lambda pod=pod: pod.breaker.closed, within=1.0)  # type: ignore[misc]
        await pod.breaker.shutdown()
        cluster.pods.remove(pod)


async def test_shutdown_returns_after_its_coordinator_closed(
    redis_server_session: RedisServer, redis_client: aioredis.Redis
) -> None:
    """The last breaker's ``shutdown()`` returns once the client's pub/sub connection is gone."""
    client = aioredis.Redis.from_url(redis_server_session.url, client_name="closing-pod")
    try:
        breaker = CircuitBreaker(
            Downstream().action,
            name="closing",
            distributed={"client": client, "prefix": PREFIX, "sync_interval": 0.05},
        )
        await eventually(lambda: breaker._link is not None and breaker._link.gen is not None)
        await breaker.shutdown()
        assert not [c for c in live_coordinators() if c.client is client]
        # The pool's (the first sync and the check after subscribing may each have
        # taken one), never the pub/sub connection.
        assert await _connections(redis_client, "closing-pod") <= 2
        assert await _subscribing(redis_client, "closing-pod") == 0
        assert await redis_client.pubsub_numsub(f"{PREFIX}:{{closing}}:events") == [
            (f"{PREFIX}:{{closing}}:events".encode(), 0)
        ]
    finally:
        await client.aclose()


async def test_shutdown_all_closes_every_breaker_and_connection(
    redis_server_session: RedisServer, redis_client: aioredis.Redis
) -> None:
    """``await shutdown_all()`` shuts every breaker down and closes every coordinator."""
    clients = [
        aioredis.Redis.from_url(redis_server_session.url, client_name=f"all-{i}") for i in range(2)
    ]
    try:
        breakers = [
            CircuitBreaker(
                Downstream().action,
                name=f"svc-{i}",
                distributed={"client": clients[i % 2], "prefix": PREFIX, "sync_interval": 0.05},
            )
            for i in range(6)
        ]
        local = CircuitBreaker(Downstream().action, name="local-one")
        await eventually(lambda: all(b._link.gen is not None for b in breakers))  # type: ignore[union-attr]
        await shutdown_all()
        assert all(b.is_shutdown for b in [*breakers, local])
        assert not live_coordinators()
        assert await redis_client.pubsub_numpat() == 0
    finally:
        for client in clients:
            await client.aclose()


async def test_shutdown_all_of_one_client_leaves_the_others(
    redis_server_session: RedisServer, redis_client: aioredis.Redis
) -> None:
    """``shutdown_all(client=...)`` touches only the breakers on that client."""
    first = aioredis.Redis.from_url(redis_server_session.url)
    second = aioredis.Redis.from_url(redis_server_session.url)
    try:
        on_first = CircuitBreaker(
            Downstream().action, name="a", distributed={"client": first, "prefix": PREFIX}
        )
        on_second = CircuitBreaker(
            Downstream().action, name="b", distributed={"client": second, "prefix": PREFIX}
        )
        local = CircuitBreaker(Downstream().action, name="c")
        await shutdown_all(client=first)
        assert on_first.is_shutdown
        assert not on_second.is_shutdown
        assert not local.is_shutdown
        assert await on_second.fire() == "ok"
        await shutdown_all()
    finally:
        await first.aclose()
        await second.aclose()


async def test_shutdown_all_as_a_context_manager(redis_server_session: RedisServer) -> None:
    """``async with shutdown_all():`` shuts everything down when the block ends."""
    client = aioredis.Redis.from_url(redis_server_session.url)
    try:
        async with shutdown_all():
            breaker = CircuitBreaker(
                Downstream().action, name="ctx", distributed={"client": client, "prefix": PREFIX}
            )
            assert await breaker.fire() == "ok"
        assert breaker.is_shutdown
        assert not live_coordinators()
    finally:
        await client.aclose()


async def test_longest_name_still_broadcasts_instantly(make_cluster: ClusterFactory) -> None:
    """A name of MAX_NAME_LENGTH four-byte characters reaches other pods by broadcast."""
    name = "\U0001f680" * MAX_NAME_LENGTH
    cluster = await make_cluster(name, reset_timeout=5.0, sync_interval=5.0)
    pods = [cluster.pod(f"pod{i}") for i in range(2)]
    await cluster.ready(within=4.0)
    await cluster.trip()
    assert pods[1].coordinator.stats["messages"] >= 1
    assert pods[1].coordinator.stats["bad_messages"] == 0


async def test_tiny_buckets_do_not_flood_redis(make_cluster: ClusterFactory) -> None:
    """A 0.1 ms bucket interval makes no more round trips than the minimum report interval."""
    cluster = await make_cluster("tiny", rolling_count_timeout=0.001)
    (pod,) = await cluster.started(1)
    before = pod.coordinator.stats["round_trips"]
    await asyncio.sleep(0.5)
    trips = pod.coordinator.stats["round_trips"] - before
    assert trips <= 0.5 / 0.01 + 2


async def test_closing_the_client_under_live_breakers(
    redis_server_session: RedisServer,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client closed while breakers use it: said once, no false registry events,
    no connection re-opened, and the breakers keep deciding locally."""
    client = aioredis.Redis.from_url(redis_server_session.url, client_name="closed-under")
    downstreams = [Downstream() for _ in range(3)]
    breakers = [
        CircuitBreaker(
            d.action,
            name=f"closed-{i}",
            reset_timeout=5.0,
            distributed={"client": client, "prefix": PREFIX, "sync_interval": 0.05},
        )
        for i, d in enumerate(downstreams)
    ]
    events = EventLog()
    for breaker in breakers:
        events.attach(breaker, "registry_down", "registry_up")
    await eventually(lambda: all(b._link is not None and b._link.gen is not None for b in breakers))
    with caplog.at_level(logging.WARNING, logger="distributed_opossum"):
        await client.aclose()
        await asyncio.sleep(0.5)
        assert await _connections(redis_client, "closed-under") == 0
        await stays(lambda: not events.entries, duration=0.3, what="no registry events")
        downstreams[0].mode = "fail"
        for _ in range(3):
            with contextlib.suppress(Boom, OpenCircuitError):
                await breakers[0].fire()
        assert breakers[0].opened  # deciding locally
        await asyncio.sleep(0.2)
        assert await _connections(redis_client, "closed-under") == 0
    said = [r for r in caplog.records if "client" in r.getMessage() and "closed" in r.getMessage()]
    assert len(said) == 1
    for breaker in breakers:
        await breaker.shutdown()


def test_timing_of_a_fresh_loop_rejoin(redis_server: RedisServer) -> None:
    """Successive ``asyncio.run`` blocks re-join the cluster at their first call each time."""
    client = aioredis.Redis.from_url(redis_server.url)

    breaker = CircuitBreaker(
        succeed,
        name="rejoin",
        distributed={"client": client, "prefix": PREFIX, "sync_interval": 0.05},
    )

    async def use() -> float:
        start = time.monotonic()
        await breaker.fire()
        link = breaker._link
        assert link is not None
        link.gen = None
        await eventually(lambda: link.gen is not None, within=2.0)
        return time.monotonic() - start

    for _ in range(3):
        assert asyncio.run(use()) < 2.0

    async def close() -> None:
        await shutdown_all()
        await client.aclose()

    asyncio.run(close())
