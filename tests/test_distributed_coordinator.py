"""One coordinator per (event loop, Redis client): shared connections, one round trip per tick."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from distributed_support import PREFIX, Cluster, coordinator_idle
from helpers import succeed
from redis_admin import dead_port_url
from redis_server import RedisServer
from waiting import eventually

from distributed_opossum import CircuitBreaker
from distributed_opossum._redis.coordinator import Coordinator, coordinator_for

pytestmark = pytest.mark.redis


def pool_connections(client: aioredis.Redis) -> int:
    """Connections the client's pool holds, idle or in use."""
    pool: Any = client.connection_pool
    return len(pool._available_connections) + len(pool._in_use_connections)


async def server_connections(admin: aioredis.Redis, name: str) -> int:
    """Connections the server sees from clients named ``name``."""
    return sum(1 for entry in await admin.client_list() if entry.get("name") == name)


def breakers_on(
    client: aioredis.Redis, count: int, **options: Any
) -> list[CircuitBreaker[..., Any]]:
    """``count`` distributed breakers with different names on one client."""
    return [
        CircuitBreaker(
            succeed,
            name=f"b{i}",
            rolling_count_timeout=1.0,
            distributed={
                "client": client,
                "instance_id": "pod",
                "prefix": PREFIX,
                "sync_interval": 0.2,
            },
            **options,
        )
        for i in range(count)
    ]


def coordinator_of(breaker: CircuitBreaker[..., Any]) -> Coordinator:
    """The coordinator a breaker is attached to."""
    link = breaker._link
    assert link is not None
    assert link.coordinator is not None
    return link.coordinator


async def test_hundred_breakers_share_one_coordinator_and_few_connections(
    redis_server_session: RedisServer, redis_client: aioredis.Redis
) -> None:
    """100 breakers on one client: one coordinator, ≤ 3 connections, one round trip per tick."""
    client = aioredis.Redis.from_url(redis_server_session.url, client_name="pod")
    try:
        breakers = breakers_on(client, 100)
        coordinators = {id(coordinator_of(b)) for b in breakers}
        assert len(coordinators) == 1
        coordinator = coordinator_of(breakers[0])
        assert coordinator is coordinator_for(client, asyncio.get_running_loop())

        # Busy breakers report at every tick (idle ones would send nothing).
        async with asyncio.timeout(2.0):
            while coordinator.stats["round_trips"] < 5:
                await asyncio.gather(*(b.fire() for b in breakers))
                await asyncio.sleep(0.01)
        # A burst of calls costs no extra round trips: one per sync_interval (0.2 s).
        before = coordinator.stats["round_trips"]
        start = loop_time = asyncio.get_running_loop().time()
        while loop_time - start < 0.6:
            await asyncio.gather(*(b.fire() for b in breakers))
            await asyncio.sleep(0.01)
            loop_time = asyncio.get_running_loop().time()
        assert coordinator.stats["round_trips"] - before <= 0.6 / 0.2 + 2

        assert pool_connections(client) <= 3
        assert await server_connections(redis_client, "pod") <= 3
        stats = dict(coordinator.stats)
        # A tick is counted when it starts, its round trip when it is back;
        # a tick with every breaker idle sends nothing.
        assert stats["round_trips"] <= stats["ticks"]
        assert stats["reports"] >= 95 * stats["round_trips"]
        assert stats["tick_errors"] == stats["script_errors"] == 0
        # Every breaker's calls made it into its own stats list.
        for i in (0, 42, 99):
            key = f"{PREFIX}:{{b{i}}}:distributedStats"
            assert await redis_client.llen(key) >= 1, key

        for breaker in breakers[:-1]:
            await breaker.shutdown()
        assert not coordinator.closed
        assert coordinator._ticker is not None
        assert not coordinator._ticker.done()
        await breakers[-1].shutdown()
        await eventually(
            lambda: coordinator.closed and coordinator_idle(coordinator),
            within=1.0,
            what="coordinator stopped after the last shutdown",
        )
        assert not coordinator.listener.subscribed
        # A new breaker on the same client gets a fresh, working coordinator.
        again = breakers_on(client, 1)[0]
        fresh = coordinator_of(again)
        assert fresh is not coordinator
        assert not fresh.closed
        await eventually(lambda: fresh.stats["round_trips"] >= 1, within=1.0, what="fresh tick")
        await again.shutdown()
        await eventually(lambda: fresh.closed and coordinator_idle(fresh), within=1.0)
    finally:
        await client.aclose()


async def test_other_client_gets_its_own_coordinator(
    redis_server_session: RedisServer, redis_client: aioredis.Redis
) -> None:
    """Breakers on different clients get different coordinators; same client, same coordinator."""
    async with Cluster(redis_server_session.url, rolling_count_timeout=1.0) as cluster:
        shared = cluster.client("shared")
        a = cluster.pod("a", client=shared)
        b = cluster.pod("b", client=shared)
        c = cluster.pod("c")
        assert a.coordinator is b.coordinator
        assert c.coordinator is not a.coordinator
        await cluster.ready(redis_client)


async def test_registry_down_once_per_breaker_for_many_breakers() -> None:
    """Every breaker on an unreachable client emits registry_down exactly once."""
    client = aioredis.Redis.from_url(dead_port_url())
    try:
        breakers = breakers_on(client, 20)
        seen: dict[str, int] = {}
        for breaker in breakers:
            breaker.on(
                "registry_down",
                lambda *args, name=breaker.name: seen.__setitem__(name, seen.get(name, 0) + 1),
            )
        await eventually(lambda: len(seen) == 20, within=2.0, what="registry_down everywhere")
        await asyncio.sleep(0.5)
        assert set(seen.values()) == {1}
        assert pool_connections(client) <= 3
        coordinator = coordinator_of(breakers[0])
        for breaker in breakers:
            assert await breaker.fire() == "ok"
            await breaker.shutdown()
        await eventually(lambda: coordinator.closed and coordinator_idle(coordinator))
    finally:
        await client.aclose()
