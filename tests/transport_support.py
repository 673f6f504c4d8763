"""Helpers for the tests of the Redis transport (keys, Lua scripts, replies).

Scripts read Redis ``TIME`` only, so tests move time by writing entries and
hash fields with timestamps relative to Redis' own ``now`` rather than by
sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from distributed_opossum._redis.keys import BreakerKeys
from distributed_opossum._redis.scripts import (
    DecisionParams,
    SharedState,
    WindowReport,
    scripts_for,
)

Client = aioredis.Redis
"""The client type every script test takes (real or fakeredis)."""

KEYS = BreakerKeys.for_breaker("test", "payments")

PARAMS = DecisionParams(
    window_ms=10_000,
    volume_threshold=0,
    error_threshold_percentage=50,
    reset_timeout_ms=1_000,
    lease_ttl_ms=5_000,
    max_entries=1_000,
    key_ttl_ms=60_000,
)


def params(**changes: Any) -> DecisionParams:
    """PARAMS with some fields changed."""
    return dataclasses.replace(PARAMS, **changes)


def entry_fields(
    timestamp: int,
    instance: str = "pod-a",
    *,
    successes: int = 0,
    failures: int = 0,
    local_open: bool = False,
    epoch: int = 0,
) -> dict[str, Any]:
    """The fields of a stats list entry as report_window writes it."""
    return {
        "v": 1,
        "timestamp": timestamp,
        "instance": instance,
        "fires": successes + failures,
        "successes": successes,
        "failures": failures,
        "timeouts": 0,
        "rejects": 0,
        "local_open": local_open,
        "epoch": epoch,
    }


def entry(timestamp: int, instance: str = "pod-a", **fields: Any) -> str:
    """A stats list entry as report_window writes it (JSON of :func:`entry_fields`)."""
    return json.dumps(entry_fields(timestamp, instance, **fields))


async def redis_now_ms(client: aioredis.Redis) -> int:
    """Redis' clock in ms, as the scripts read it."""
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def text(value: bytes | str) -> str:
    """A Redis reply as text (redis-py types replies as bytes or str)."""
    return value.decode() if isinstance(value, bytes) else value


async def seed(client: aioredis.Redis, *entries: str, keys: BreakerKeys = KEYS) -> None:
    """Append raw entries to the stats list."""
    await client.rpush(keys.stats, *entries)


async def report(
    client: aioredis.Redis,
    instance: str = "pod-x",
    *,
    known_epoch: int = 0,
    known_gen: str | None = None,
    decision: DecisionParams = PARAMS,
    jitter: float = 1.0,
    keys: BreakerKeys = KEYS,
    **counts: Any,
) -> SharedState:
    """Run report_window for one pod's bucket.

    ``known_gen`` None: for a trip vote, the gen Redis holds now, so
    ``known_epoch`` is an epoch of the current history (what a synced pod
    sends); without a vote the gen matters to nothing and none is read.
    """
    if known_gen is None:
        known_gen = (
            (await scripts_for(client).read_state(keys)).gen if counts.get("local_open") else ""
        )
    return await scripts_for(client).report_window(
        keys,
        WindowReport(**counts),
        instance=instance,
        known_epoch=known_epoch,
        known_gen=known_gen,
        params=decision,
        jitter=jitter,
    )


async def open_then_half_open(
    client: aioredis.Redis, decision: DecisionParams = PARAMS, keys: BreakerKeys = KEYS
) -> SharedState:
    """Trip the shared breaker, then end its open period so trials may start."""
    opened = await report(client, decision=decision, keys=keys, local_open=True)
    assert opened.state == "open"
    await client.hset(keys.state, "open_until", opened.now_ms - 1)
    return opened


@asynccontextmanager
async def subscribed(client: aioredis.Redis, channel: str) -> AsyncIterator[PubSub]:
    """A pub/sub connection subscribed to ``channel`` (subscription confirmed)."""
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    try:
        # SUBSCRIBE is only sent above; wait for its confirmation so that a
        # PUBLISH from another connection cannot overtake it.
        async with asyncio.timeout(MESSAGE_WAIT_S):
            while (await pubsub.get_message(timeout=MESSAGE_WAIT_S) or {}).get(
                "type"
            ) != "subscribe":
                pass
        yield pubsub
    finally:
        await pubsub.unsubscribe()
        await close_pubsub(pubsub)


MESSAGE_WAIT_S = 2.0


async def close_pubsub(pubsub: PubSub) -> None:
    """Close a pub/sub connection (redis-py leaves PubSub.aclose unannotated)."""
    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def stats_instances(client: aioredis.Redis, keys: BreakerKeys = KEYS) -> list[str]:
    """The ``instance`` of every entry in the stats list, oldest first."""
    return [json.loads(raw)["instance"] for raw in await client.lrange(keys.stats, 0, -1)]


async def next_message(pubsub: PubSub) -> bytes:
    """The next message's payload; fails the test after MESSAGE_WAIT_S seconds."""
    async with asyncio.timeout(MESSAGE_WAIT_S):
        while True:
            message = await pubsub.get_message(timeout=MESSAGE_WAIT_S)
            if message is not None and message["type"] == "message":
                data: bytes = message["data"]
                return data


async def assert_no_broadcast(client: aioredis.Redis, pubsub: PubSub, channel: str) -> None:
    """Assert nothing was published on ``channel`` so far, without waiting for silence.

    Publishes a marker: messages arrive in order, so if the marker comes
    first, nothing came before it.
    """
    await client.publish(channel, b"marker")
    assert await next_message(pubsub) == b"marker"
