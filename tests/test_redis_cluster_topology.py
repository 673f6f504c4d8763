"""The Redis Cluster launcher works: a cluster client reads and writes, and a killed
master's slots move to its replica.

Infrastructure for the Redis Cluster work to come (see ARCHITECTURE.md §7);
marked ``cluster`` through its fixture.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from redis_cluster import RedisClusterTopology, cluster_client

pytestmark = pytest.mark.redis

KEYS = ("plain", "{dopossum}:one", "{dopossum}:two", "{payments}:state", "other")


async def test_cluster_client_writes_reads_and_survives_a_master_kill(
    cluster_topology: RedisClusterTopology,
) -> None:
    """SET/GET on every shard; kill the master of a hash tag; its replica takes over."""
    client = await cluster_client(cluster_topology)
    try:
        for key in KEYS:
            assert await client.set(key, f"value of {key}")
            assert await client.get(key) == f"value of {key}".encode()
        masters = {await cluster_topology.master_of(key) for key in KEYS}
        assert len(masters) >= 2  # the keys are spread over shards

        killed, promoted = await cluster_topology.kill_master_of("{dopossum}:one")
        assert killed != promoted
        assert not cluster_topology.node_at(killed).running

        # The client follows the new owner of the slot (after MOVED / a refresh).
        deadline = time.monotonic() + 10.0
        while True:
            try:
                assert await client.get("{dopossum}:one") == b"value of {dopossum}:one"
                assert await client.set("{dopossum}:two", "after the failover")
                break
            except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
                assert time.monotonic() < deadline, "the client did not follow the failover"
                await asyncio.sleep(0.1)
        assert await client.get("{dopossum}:two") == b"after the failover"
    finally:
        await client.aclose()
