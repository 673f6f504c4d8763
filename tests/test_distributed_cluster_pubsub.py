"""Broadcasts on a real Redis Cluster: sharded channels (SSUBSCRIBE/SPUBLISH), one per breaker.

Three masters with a replica each (the ``cluster_topology`` fixture). Breaker
names are picked so that their slots cover every master. Each pod is a set of
breakers on a cluster client of its own, handed over uninitialised (the
listener initialises it). Report intervals are long, so only a broadcast can
explain what a pod learns within the test's bounds.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from helpers import Downstream
from redis.crc import key_slot
from redis_cluster import RedisClusterTopology
from waiting import eventually, eventually_async

from distributed_opossum import CircuitBreaker
from distributed_opossum._redis.coordinator import Coordinator
from distributed_opossum._redis.keys import BreakerKeys

pytestmark = pytest.mark.redis

PREFIX = "shard"
LONG = 30.0
"""Report interval and open period, far beyond every wait here."""


async def _slot_owner(client: aioredis.RedisCluster, key: str) -> str:
    node = client.get_node_from_key(key)
    assert node is not None
    return str(node.name)


async def names_over_every_master(topology: RedisClusterTopology, per_master: int) -> list[str]:
    """Breaker names whose keys land on each master, ``per_master`` of them each."""
    host, port = topology.startup_nodes[0]
    probe = aioredis.RedisCluster(host=host, port=port)
    try:
        await probe.initialize()
        masters = {node.name for node in probe.get_primaries()}
        by_master: dict[str, list[str]] = {name: [] for name in masters}
        for i in itertools.count():
            name = f"svc-{i}"
            owner = await _slot_owner(probe, BreakerKeys.for_breaker(PREFIX, name).state)
            if len(by_master[owner]) < per_master:
                by_master[owner].append(name)
            if all(len(names) == per_master for names in by_master.values()):
                return sorted(n for names in by_master.values() for n in names)
        raise AssertionError("unreachable")
    finally:
        await probe.aclose()


class Pod:
    """Breakers of the given names on one (uninitialised) cluster client."""

    def __init__(self, topology: RedisClusterTopology, instance: str, names: list[str]) -> None:
        host, port = topology.startup_nodes[0]
        self.client = aioredis.RedisCluster(host=host, port=port)
        self.breakers = {
            name: CircuitBreaker(
                Downstream().action,
                name=name,
                reset_timeout=LONG,
                distributed={
                    "client": self.client,
                    "prefix": PREFIX,
                    "instance_id": instance,
                    "sync_interval": LONG,
                },
            )
            for name in names
        }
        self.opened: list[tuple[str, str]] = []
        for name, breaker in self.breakers.items():
            breaker.on("open", self._opened(name))

    def _opened(self, name: str) -> Any:
        def handler(cause: object, *_: object) -> None:
            self.opened.append((name, str(getattr(cause, "value", cause))))

        return handler

    @property
    def coordinator(self) -> Coordinator:
        """The one coordinator of this pod's client."""
        link = next(iter(self.breakers.values()))._link
        assert link is not None
        assert link.coordinator is not None
        return link.coordinator

    async def learn(self, names: list[str]) -> None:
        """Learn those shared states by a command of this pod's own (a reset)."""
        for name in names:
            await self.breakers[name].reset()

    async def aclose(self) -> None:
        for breaker in self.breakers.values():
            await breaker.shutdown()
        await self.client.aclose()


@pytest.fixture
async def make_pod(cluster_topology: RedisClusterTopology) -> AsyncIterator[Any]:
    """``make_pod(instance, names)``: a :class:`Pod`, closed after the test."""
    made: list[Pod] = []

    def make(instance: str, names: list[str]) -> Pod:
        made.append(Pod(cluster_topology, instance, names))
        return made[-1]

    try:
        yield make
    finally:
        for pod in made:
            await pod.aclose()


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
    names = await names_over_every_master(cluster_topology, per_master=2)
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
    assert {key_slot(n.encode()) for n in names}  # (names differ; their slots spread)

    await b.learn(mine)
    heard_by_c = c.coordinator.stats["messages"]
    before = await spublished(cluster_topology)
    started = asyncio.get_running_loop().time()
    for name in mine:
        await a.breakers[name].force_open()
    await eventually(
        lambda: {n for n, _ in b.opened} == set(mine), within=2.0, what="B open on A's changes"
    )
    assert asyncio.get_running_loop().time() - started < LONG / 10
    assert {cause for _, cause in b.opened} == {"remote"}
    assert all(b.breakers[n].closed for n in others)
    assert await spublished(cluster_topology) >= before + len(mine)
    await asyncio.sleep(0.1)
    assert c.coordinator.stats["messages"] == heard_by_c  # C holds none of them


async def test_subscriptions_follow_a_master_failover(
    cluster_topology: RedisClusterTopology, make_pod: Any
) -> None:
    """Kill the master of a breaker's slot: once its replica took over, B is subscribed
    there again, checks the breaker, and follows A's next change by SPUBLISH."""
    names = await names_over_every_master(cluster_topology, per_master=1)
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

    await b.learn([victim])
    await a.breakers[victim].force_open()
    await eventually(lambda: b.breakers[victim].opened, within=2.0, what="B open")
    assert (victim, "remote") in b.opened
    assert all(b.breakers[n].closed for n in names[1:])


async def move_slot(topology: RedisClusterTopology, key: str) -> tuple[str, str]:
    """Migrate the slot of ``key`` (and its keys) to another master; ``(from, to)`` node names."""
    slot = key_slot(key.encode())
    source = await topology.master_of(key)
    host, port = topology.startup_nodes[0]
    probe = aioredis.RedisCluster(host=host, port=port)
    try:
        await probe.initialize()
        masters = [(n.host, int(n.port)) for n in probe.get_primaries()]
    finally:
        await probe.aclose()
    target = next(a for a in masters if a != source)
    nodes = {a: aioredis.Redis(host=a[0], port=a[1]) for a in masters}
    try:
        src, dst = nodes[source], nodes[target]
        src_id = (await command(src, "CLUSTER", "MYID")).decode()
        dst_id = (await command(dst, "CLUSTER", "MYID")).decode()
        await command(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        await command(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := await command(src, "CLUSTER", "GETKEYSINSLOT", slot, 100):
            await command(src, "MIGRATE", target[0], target[1], "", 0, 5000, "KEYS", *keys)
        for address in (target, source, *[a for a in masters if a not in (source, target)]):
            await command(nodes[address], "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    finally:
        for node in nodes.values():
            await node.aclose()
    return f"{source[0]}:{source[1]}", f"{target[0]}:{target[1]}"


async def test_subscriptions_follow_a_slot_move(
    cluster_topology: RedisClusterTopology, make_pod: Any
) -> None:
    """Move a breaker's slot to another master: the old owner drops the shard channel,
    B subscribes it on the new owner, and follows A's next change there."""
    names = await names_over_every_master(cluster_topology, per_master=1)
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
    await move_slot(cluster_topology, keys.state)

    async def both_on_the_new_owner() -> bool:
        return await shard_subscribers(cluster_topology, keys.events) == (2, 0)

    await eventually_async(both_on_the_new_owner, within=10.0, what="both pods moved")
    assert b.coordinator.stats["confirmations"] > confirmed
    await b.learn([moved])
    await a.breakers[moved].force_open()
    await eventually(lambda: b.breakers[moved].opened, within=2.0, what="B open")
    assert (moved, "remote") in b.opened
    assert a.coordinator.stats["listener_errors"] == b.coordinator.stats["listener_errors"] == 0
