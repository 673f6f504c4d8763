"""Pods on a Redis Cluster: each pod a client of its own holding many breakers.

Breaker names are picked so that their keys spread over every master of the
cluster (the hash tag of each name decides its slot). A :class:`ClusterPod`
holds one breaker per name, each with its own :class:`Downstream` and
:class:`EventLog`, all on the pod's ``RedisCluster`` client (so one
coordinator per pod, as in a real process).

Example::

    names = await spread_names(topology, 30)
    async with cluster_pods(topology, names, count=2) as (pod0, pod1):
        await pod0.trip(names[0])
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from distributed_support import PREFIX, RECORDED_EVENTS
from helpers import Downstream, EventLog, outcome_of
from redis_cluster import RedisClusterTopology, cluster_client
from waiting import eventually

from distributed_opossum import CircuitBreaker
from distributed_opossum._redis.coordinator import Coordinator
from distributed_opossum._redis.keys import BreakerKeys

__all__ = ["ClusterPod", "calling", "cluster_pods", "masters_of", "spread_names", "state_key"]


@dataclass
class ClusterPod:
    """One replica on the cluster: a client, and one breaker per name."""

    instance: str
    client: aioredis.RedisCluster
    breakers: dict[str, CircuitBreaker[..., Any]] = field(default_factory=dict)
    downstreams: dict[str, Downstream] = field(default_factory=dict)
    events: dict[str, EventLog] = field(default_factory=dict)

    def add(self, name: str, **options: Any) -> CircuitBreaker[..., Any]:
        """A breaker ``name`` on this pod's client."""
        downstream = self.downstreams[name] = Downstream()
        distributed = {
            "client": self.client,
            "instance_id": self.instance,
            "prefix": PREFIX,
            **options.pop("distributed", {}),
        }
        breaker = CircuitBreaker(downstream.action, name=name, distributed=distributed, **options)
        self.breakers[name] = breaker
        self.events[name] = EventLog().attach(breaker, *RECORDED_EVENTS)
        return breaker

    @property
    def coordinator(self) -> Coordinator:
        """The one coordinator of this pod's client."""
        link = next(iter(self.breakers.values()))._link
        assert link is not None
        assert link.coordinator is not None
        return link.coordinator

    def synced(self) -> bool:
        """True once every breaker had its first sync with the cluster."""
        return all(b._link is not None and b._link.gen is not None for b in self.breakers.values())

    def count(self, name: str, event: str) -> int:
        """How many ``event`` breaker ``name`` emitted."""
        return self.events[name].count(event)

    async def call(self, name: str, mode: str = "ok") -> str:
        """One call of breaker ``name`` (its downstream in ``mode``)."""
        self.downstreams[name].mode = mode
        return await outcome_of(self.breakers[name])

    async def shutdown(self) -> None:
        """Shut every breaker down, then close the client."""
        for breaker in self.breakers.values():
            await breaker.shutdown()
        await self.client.aclose()


@asynccontextmanager
async def calling(pod: ClusterPod, names: Sequence[str]) -> AsyncIterator[None]:
    """Keep ``pod`` calling ``names`` (successfully, or rejected) while the block runs:
    a busy breaker reports at every tick, so it learns the shared state by the replies."""
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            for name in names:
                assert await pod.call(name) in ("ok", "rejected")
            await asyncio.sleep(0.02)

    task = asyncio.create_task(load())
    try:
        yield
    finally:
        stop.set()
        await task


def state_key(name: str) -> str:
    """The state hash key of breaker ``name``."""
    return BreakerKeys.for_breaker(PREFIX, name).state


def _master(client: aioredis.RedisCluster, name: str) -> str:
    node = client.get_node_from_key(state_key(name))
    assert node is not None
    return node.name


async def masters_of(topology: RedisClusterTopology, names: Sequence[str]) -> dict[str, str]:
    """``name -> "host:port"`` of the master serving each breaker's keys."""
    client = await cluster_client(topology)
    try:
        return {name: _master(client, name) for name in names}
    finally:
        await client.aclose()


async def spread_names(topology: RedisClusterTopology, count: int) -> list[str]:
    """``count`` breaker names whose keys live on every master, round robin."""
    client = await cluster_client(topology)
    try:
        by_master: dict[str, list[str]] = {}
        i = 0
        while sum(len(v) for v in by_master.values()) < 4 * count:
            name = f"svc-{i}"
            i += 1
            by_master.setdefault(_master(client, name), []).append(name)
    finally:
        await client.aclose()
    assert len(by_master) == 3, by_master.keys()
    columns = list(by_master.values())
    return [columns[k % 3][k // 3] for k in range(count)]


@asynccontextmanager
async def cluster_pods(
    topology: RedisClusterTopology, names: Sequence[str], *, count: int = 2, **options: Any
) -> AsyncIterator[list[ClusterPod]]:
    """``count`` pods, each with one breaker per name, synced; shut down at the end."""
    async with AsyncExitStack() as stack:
        pods = []
        for n in range(count):
            pod = ClusterPod(f"pod{n}", await cluster_client(topology))
            stack.push_async_callback(pod.shutdown)
            for name in names:
                pod.add(name, **options)
            pods.append(pod)
        await eventually(lambda: all(pod.synced() for pod in pods), within=10.0, what="first syncs")
        yield pods
