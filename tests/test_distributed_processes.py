"""Pods in separate OS processes share one breaker through Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from distributed_support import Cluster
from pod_processes import PodProcess
from redis_admin import channel_subscribers
from redis_server import RedisServer
from waiting import eventually

pytestmark = pytest.mark.redis


async def test_trip_in_one_process_opens_the_others(
    redis_server_session: RedisServer, redis_client: aioredis.Redis
) -> None:
    """Two pod processes (and this one): a trip in one opens the others; a trial closes all."""
    name = "multi-process"
    options = {"reset_timeout": 0.5, "sync_interval": 2.0}
    children = await asyncio.gather(
        PodProcess.start(redis_server_session.url, name, "proc-a", **options),
        PodProcess.start(redis_server_session.url, name, "proc-b", **options),
    )
    a, b = children
    try:
        async with Cluster(
            redis_server_session.url,
            name,
            reset_timeout=0.5,
            rolling_count_timeout=1.0,
            distributed={"sync_interval": 2.0},
        ) as cluster:
            here = cluster.pod("here")
            await asyncio.gather(a.expect("ready", 15.0), b.expect("ready", 15.0))
            await cluster.ready(redis_client, within=5.0)
            everyone = {"proc-a", "proc-b", "here"}
            deadline = time.monotonic() + 5.0
            while await channel_subscribers(redis_client, everyone) != everyone:
                assert time.monotonic() < deadline, "child processes did not subscribe"
                await asyncio.sleep(0.01)

            await a.send("trip")
            tripped = await a.expect("tripped")
            assert tripped["state"] == "open"
            assert (await a.expect("open"))["cause"] == "local"
            opened = await b.expect("open", 0.5)
            assert opened["cause"] == "remote"
            assert opened["t"] - tripped["t"] < 0.5
            await eventually(lambda: here.breaker.opened, within=0.5, what="in-process pod open")
            assert here.causes("open") == ["remote"]

            await b.send("call")
            assert (await b.expect("call"))["outcome"] == "rejected"
            await b.expect("half_open", 1.5)
            await a.expect("half_open", 1.5)
            await b.send("call")
            assert (await b.expect("call"))["outcome"] == "ok"
            closed = await a.expect("close", 1.0)
            assert closed["cause"] == "remote"
            await eventually(lambda: here.breaker.closed, within=0.5, what="in-process closed")
    finally:
        codes = await asyncio.gather(a.finish(), b.finish())
    assert list(codes) == [0, 0]
