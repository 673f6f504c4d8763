"""Broadcasts on a real Redis Cluster: sharded channels (SSUBSCRIBE/SPUBLISH), one per breaker.

Three masters with a replica each (the ``cluster_topology`` fixture). Breaker
names are picked so that their slots cover every master. Each pod is a set of
breakers on a cluster client of its own, handed over uninitialised (the
listener initialises it). Report intervals are long, so only a broadcast can
explain what a pod learns within the test's bounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from cluster_pods import ClusterPod, masters_of, spread_names
from redis_cluster import RedisClusterTopology
from waiting import eventually, eventually_async

from distributed_opossum._redis.keys import BreakerKeys

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

PREFIX = "shard"
LONG = 30.0
"""Report interval and open period, far beyond every wait here."""


def opened(pod: ClusterPod) -> list[tuple[str, str]]:
    """``(name, cause)`` of every ``open`` the pod's breakers emitted."""
    return [(name, cause) for name, log in pod.events.items() for cause in log.causes("open")]


async def learn(pod: ClusterPod, names: list[str]) -> None:
    """Learn those shared states by a command of the pod's own (a reset)."""
    for name in names:
        await pod.breakers[name].reset()


@pytest.fixture
async def make_pod(cluster_topology: RedisClusterTopology) -> AsyncIterator[Any]:
    """``make_pod(instance, names)``: a :class:`ClusterPod` on a client handed over
    uninitialised (the listener initialises it), shut down after the test."""
    made: list[ClusterPod] = []
    host, port = cluster_topology.startup_nodes[0]

    def make(instance: str, names: list[str]) -> ClusterPod:
        pod = ClusterPod(instance, aioredis.RedisCluster(host=host, port=port))
        for name in names:
            pod.add(name, reset_timeout=LONG, distributed={"prefix": PREFIX, "sync_interval": LONG})
        made.append(pod)
        return pod

    try:
        yield make
    finally:
        for pod in made:
            await pod.shutdown()


async def command(node: aioredis.Redis, *args: str | int) -> Any:
    """One raw command (redis-py leaves ``execute_command`` unannotated)."""
    return await node.execute_command(*args)  # type: ignore[no-untyped-call]


async def shard_subscribers(topology: RedisClusterTopology, channel: str) -> tuple[int, int]:
    """``(PUBSUB SHARDNUMSUB, PUBSUB NUMSUB)`` of ``channel`` on the master of its slot."""
    address = await topology.master_of(channel)
    node = aioredis.Redis(host=address[0], port=address[1])
    try:
        sharded = await command(node, "PUBSUB", "SHARDNUMSUB", channel)
        plain = await node.pubsub_numsub(channel)
        return int(sharded[1]), int(plain[0][1])
    finally:
        await node.aclose()


async def spublished(topology: RedisClusterTopology) -> int:
    """SPUBLISH calls so far, summed over the running masters."""
    total = 0
    for address in topology.startup_nodes:
        node = aioredis.Redis(host=address[0], port=address[1])
        try:
            stats = await node.info("commandstats")
            total += int(stats.get("cmdstat_spublish", {}).get("calls", 0))
        finally:
            await node.aclose()
    return total


async def test_a_change_reaches_the_pods_holding_the_breaker_through_its_shard(
    cluster_topology: RedisClusterTopology, make_pod: Any
) -> None:
    """Names over all three masters; pod B follows pod A's changes by SPUBLISH, pod C
    (holding other names) hears nothing of them."""
    names = await spread_names(cluster_topology, 6)
    mine, others = names[:3], names[3:]
    a, b, c = make_pod("A", names), make_pod("B", names), make_pod("C", others)
    await eventually(
        lambda: all(p.coordinator.stats["confirmations"] >= len(p.breakers) for p in (a, b, c)),
        within=10.0,
        what="every pod subscribed",
    )
    for name in names:
        channel = BreakerKeys.for_breaker(PREFIX, name).events
        expected = 3 if name in others else 2
        assert await shard_subscribers(cluster_topology, channel) == (expected, 0), name
    assert len(set((await masters_of(cluster_topology, names)).values())) == 3

    await learn(b, mine)
    heard_by_c = c.coordinator.stats["messages"]
    before = await spublished(cluster_topology)
    started = asyncio.get_running_loop().time()
    for name in mine:
        await a.breakers[name].force_open()
    await eventually(
        lambda: {n for n, _ in opened(b)} == set(mine), within=2.0, what="B open on A's changes"
    )
    assert asyncio.get_running_loop().time() - started < LONG / 10
    assert {cause for _, cause in opened(b)} == {"remote"}
    assert all(b.breakers[n].closed for n in others)
    assert await spublished(cluster_topology) >= before + len(mine)
    await asyncio.sleep(0.1)
    assert c.coordinator.stats["messages"] == heard_by_c  # C holds none of them


async def test_subscriptions_follow_a_master_failover(
    cluster_topology: RedisClusterTopology, make_pod: Any
) -> None:
    """Kill the master of a breaker's slot: once its replica took over, B is subscribed
    there again, checks the breaker, and follows A's next change by SPUBLISH."""
    names = await spread_names(cluster_topology, 3)
    a, b = make_pod("A", names), make_pod("B", names)
    await eventually(
        lambda: all(p.coordinator.stats["confirmations"] >= len(names) for p in (a, b)),
        within=10.0,
        what="both pods subscribed",
    )
    victim = names[0]
    channel = BreakerKeys.for_breaker(PREFIX, victim).events
    confirmed = b.coordinator.stats["confirmations"]
    await cluster_topology.kill_master_of(channel)
    await eventually(
        lambda: b.coordinator.stats["confirmations"] > confirmed,
        within=15.0,
        what="B subscribed again after the failover",
    )

    async def both_there() -> bool:
        return await shard_subscribers(cluster_topology, channel) == (2, 0)

    await eventually_async(both_there, within=15.0, what="both pods on the new master")
    assert a.coordinator.stats["listener_errors"] == b.coordinator.stats["listener_errors"] == 0

    await learn(b, [victim])
    await a.breakers[victim].force_open()
    await eventually(lambda: b.breakers[victim].opened, within=2.0, what="B open")
    assert (victim, "remote") in opened(b)
    assert all(b.breakers[n].closed for n in names[1:])


async def test_subscriptions_follow_a_slot_move(
    cluster_topology: RedisClusterTopology, make_pod: Any
) -> None:
    """Move a breaker's slot to another master: the old owner drops the shard channel,
    B subscribes it on the new owner, and follows A's next change there."""
    names = await spread_names(cluster_topology, 3)
    a, b = make_pod("A", names), make_pod("B", names)
    await eventually(
        lambda: all(p.coordinator.stats["confirmations"] >= len(names) for p in (a, b)),
        within=10.0,
        what="both pods subscribed",
    )
    moved = names[0]
    keys = BreakerKeys.for_breaker(PREFIX, moved)
    await a.breakers[moved].reset()  # the state hash exists, and moves with the slot
    confirmed = b.coordinator.stats["confirmations"]
    await cluster_topology.move_slot_of(keys.state)

    async def both_on_the_new_owner() -> bool:
        return await shard_subscribers(cluster_topology, keys.events) == (2, 0)

    await eventually_async(both_on_the_new_owner, within=10.0, what="both pods moved")
    assert b.coordinator.stats["confirmations"] > confirmed
    await learn(b, [moved])
    await a.breakers[moved].force_open()
    await eventually(lambda: b.breakers[moved].opened, within=2.0, what="B open")
    assert (moved, "remote") in opened(b)
    assert a.coordinator.stats["listener_errors"] == b.coordinator.stats["listener_errors"] == 0
