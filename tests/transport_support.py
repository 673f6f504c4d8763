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
    PodWindow,
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
    window: PodWindow | None = None,
    holds_lease: bool = True,
    lease_ms: int = 1_000,
    **counts: Any,
) -> SharedState:
    """Run report_window for one pod's bucket.

    ``known_gen`` None: for a trip vote, the gen Redis holds now, so
    ``known_epoch`` is an epoch of the current history (what a synced pod
    sends); without a vote, "" (none is read): a pod before its first sync,
    whose window counts in the current epoch whatever ``known_epoch`` says.
    Pass the gen for a synced pod whose epoch may be over.
    ``window``: the pod's own totals in the window (None: this bucket alone).
    ``holds_lease`` True by default, so every report tallies and decides (what
    a test of a decision wants); False: the script tallies only if it wins
    the tally lease itself (or must judge a trip).
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
        window=window,
        holds_lease=holds_lease,
        lease_ms=lease_ms,
    )


def window_field(
    ts: int, gen: str, epoch: int, volume: int = 0, failures: int = 0, trips: int = 0
) -> str:
    """A pod's field in the windows hash, as a report writes it."""
    return f"{gen}:{epoch} {ts} {volume} {failures} {trips}"


async def seed_windows(
    client: aioredis.Redis,
    *pods: tuple[str, int, int] | tuple[str, int, int, int],
    ts: int | None = None,
    gen: str | None = None,
    epoch: int | None = None,
    keys: BreakerKeys = KEYS,
) -> SharedState:
    """Write pods' fields in the windows hash, as other pods' reports would have.

    Each pod is ``(instance, successes, failures[, trips])``: its window holds
    ``successes + failures`` calls. ``ts``, ``gen`` and ``epoch`` default to
    Redis' now and the state Redis holds (created by an empty report if
    missing). Returns that state.
    """
    state = await scripts_for(client).read_state(keys)
    if not state.exists:
        state = await report(client, "seeder", keys=keys)
    if pods:
        await client.hset(
            keys.pods,
            mapping={
                f"pod:{pod[0]}": window_field(
                    state.now_ms if ts is None else ts,
                    state.gen if gen is None else gen,
                    state.epoch if epoch is None else epoch,
                    pod[1] + pod[2],
                    pod[2],
                    pod[3] if len(pod) == 4 else 0,
                )
                for pod in pods
            },
        )
    return state


async def window_fields(client: aioredis.Redis, keys: BreakerKeys = KEYS) -> dict[str, str]:
    """The windows hash as text, field by field."""
    return {text(k): text(v) for k, v in (await client.hgetall(keys.pods)).items()}


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
