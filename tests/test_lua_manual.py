"""force_open.lua, reset.lua, read_state.lua, cleanup_stats.lua.

Run on a real redis-server and on fakeredis.
"""

from __future__ import annotations

import json

import pytest
from transport_support import (
    KEYS,
    PARAMS,
    Client,
    entry,
    next_message,
    open_then_half_open,
    redis_now_ms,
    report,
    seed,
    stats_instances,
    subscribed,
)

from distributed_opossum._redis.scripts import script_source, scripts_for

# --------------------------------------------------------------------------- force_open


async def test_force_open_creates_and_broadcasts(any_redis_client: Client) -> None:
    """On a missing hash: created with a gen, forced_open at epoch 1, broadcast."""
    async with subscribed(any_redis_client, KEYS.events) as pubsub:
        state = await scripts_for(any_redis_client).force_open(KEYS, instance="ops-1")
        message = json.loads(await next_message(pubsub))
    assert (state.state, state.epoch, state.changed, state.open_until_ms) == (
        "forced_open",
        1,
        True,
        0,
    )
    assert state.gen
    assert message == {
        "v": 1,
        "name": "payments",
        "gen": state.gen,
        "epoch": 1,
        "state": "forced_open",
        "open_until": 0,
        "now": state.now_ms,
        "attempts": 0,
        "origin": "ops-1",
        "reason": "forced_open",
    }


async def test_forced_open_never_expires(any_redis_client: Client) -> None:
    """Only reset() ends a forced open, so the hash loses its TTL meanwhile."""
    await report(any_redis_client, successes=1)
    assert await any_redis_client.pttl(KEYS.state) > 0
    await scripts_for(any_redis_client).force_open(KEYS, instance="ops")
    assert await any_redis_client.pttl(KEYS.state) == -1
    await report(any_redis_client, failures=3)  # a report keeps it that way
    assert await any_redis_client.pttl(KEYS.state) == -1


async def test_force_open_twice_changes_nothing(any_redis_client: Client) -> None:
    """The second force_open keeps the epoch and publishes nothing new."""
    scripts = scripts_for(any_redis_client)
    first = await scripts.force_open(KEYS, instance="ops")
    second = await scripts.force_open(KEYS, instance="ops")
    assert (second.epoch, second.changed) == (first.epoch, False)


async def test_force_open_ends_trials(any_redis_client: Client) -> None:
    """Leases of a half-open period are cleared; attempts are kept."""
    await open_then_half_open(any_redis_client)
    await scripts_for(any_redis_client).acquire_trial(KEYS, holder="h1", params=PARAMS)
    state = await scripts_for(any_redis_client).force_open(KEYS, instance="ops")
    assert (state.state, state.epoch, state.attempts, state.lease_expires_ms) == (
        "forced_open",
        2,
        1,
        0,
    )


# --------------------------------------------------------------------------- reset


async def test_reset_closes_and_clears_attempts(any_redis_client: Client) -> None:
    """reset: closed, epoch+1, attempts 0, closed_at now, TTL back, broadcast."""
    scripts = scripts_for(any_redis_client)
    opened = await report(any_redis_client, local_open=True)
    await any_redis_client.hset(KEYS.state, "attempts", 7)
    await scripts.force_open(KEYS, instance="ops")
    async with subscribed(any_redis_client, KEYS.events) as pubsub:
        state = await scripts.reset(KEYS, instance="ops-2", key_ttl_ms=30_000)
        message = json.loads(await next_message(pubsub))
    assert (state.state, state.epoch, state.attempts, state.changed) == ("closed", 3, 0, True)
    assert state.closed_at_ms == state.now_ms
    assert state.gen == opened.gen
    assert 29_000 < await any_redis_client.pttl(KEYS.state) <= 30_000
    assert (message["state"], message["epoch"], message["origin"], message["reason"]) == (
        "closed",
        3,
        "ops-2",
        "reset",
    )


async def test_reset_starts_a_new_window(any_redis_client: Client) -> None:
    """Failures reported before a reset do not count after it."""
    await report(any_redis_client, successes=1)
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, entry(now, "sick", failures=50))
    await scripts_for(any_redis_client).reset(KEYS, instance="ops", key_ttl_ms=60_000)
    state = await report(any_redis_client, successes=1)
    assert state.state == "closed"


async def test_reset_on_a_missing_hash_creates_it(any_redis_client: Client) -> None:
    """reset works on a breaker Redis knows nothing about."""
    state = await scripts_for(any_redis_client).reset(KEYS, instance="ops", key_ttl_ms=60_000)
    assert (state.state, state.epoch) == ("closed", 1)
    assert state.gen


# --------------------------------------------------------------------------- read_state


async def test_read_state_creates_nothing(any_redis_client: Client) -> None:
    """A missing hash reads as closed with an empty gen, and stays missing."""
    state = await scripts_for(any_redis_client).read_state(KEYS)
    assert (state.exists, state.state, state.epoch, state.changed) == (False, "closed", 0, False)
    assert state.now_ms > 0
    assert await any_redis_client.exists(KEYS.state) == 0


async def test_read_state_returns_what_the_writers_wrote(any_redis_client: Client) -> None:
    """read_state agrees with the last write and adds Redis' now."""
    opened = await report(any_redis_client, failures=1)
    state = await scripts_for(any_redis_client).read_state(KEYS)
    assert (state.gen, state.epoch, state.state, state.open_until_ms, state.reason) == (
        opened.gen,
        opened.epoch,
        "open",
        opened.open_until_ms,
        "pooled_rate",
    )
    assert state.now_ms >= opened.now_ms
    assert state.changed is False


async def test_read_state_leaves_a_garbage_hash_alone(any_redis_client: Client) -> None:
    """An unusable hash reads as no state; reading repairs nothing (writers do)."""
    await any_redis_client.hset(KEYS.state, mapping={"state": "banana", "gen": "g"})
    state = await scripts_for(any_redis_client).read_state(KEYS)
    assert not state.exists
    assert await any_redis_client.hget(KEYS.state, "state") == b"banana"


async def test_read_state_of_a_wrong_type_key(any_redis_client: Client) -> None:
    """A string under the state key reads as no state, without an error."""
    await any_redis_client.set(KEYS.state, "x")
    assert not (await scripts_for(any_redis_client).read_state(KEYS)).exists


# --------------------------------------------------------------------------- cleanup_stats


async def test_cleanup_removes_old_and_garbage_entries_from_the_head(
    any_redis_client: Client,
) -> None:
    """Old entries and garbage at the head go; the first young entry stops the loop."""
    now = await redis_now_ms(any_redis_client)
    await seed(
        any_redis_client,
        entry(now - 40 * 60_000),
        "garbage",
        entry(now - 31 * 60_000),
        entry(now - 5 * 60_000, "young"),
        entry(now - 60 * 60_000, "behind-young"),
    )
    removed = await scripts_for(any_redis_client).cleanup_stats(KEYS)
    assert removed == 3
    remaining = await stats_instances(any_redis_client)
    assert remaining == ["young", "behind-young"]


@pytest.mark.parametrize(("max_age_ms", "removed"), [(0, 2), (120_000, 1), (600_000, 0)])
async def test_cleanup_max_age(any_redis_client: Client, max_age_ms: int, removed: int) -> None:
    """max_age_ms picks the cutoff."""
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, entry(now - 300_000), entry(now - 60_000))
    count = await scripts_for(any_redis_client).cleanup_stats(KEYS, max_age_ms=max_age_ms)
    assert count == removed


async def test_cleanup_of_nothing(any_redis_client: Client) -> None:
    """A missing list, or a key of another type, is left alone."""
    scripts = scripts_for(any_redis_client)
    assert await scripts.cleanup_stats(KEYS) == 0
    await any_redis_client.set(KEYS.stats, "x")
    assert await scripts.cleanup_stats(KEYS) == 0
    assert await any_redis_client.get(KEYS.stats) == b"x"


async def test_cleanup_default_is_thirty_minutes(any_redis_client: Client) -> None:
    """Without max_age_ms (empty ARGV), the script keeps 30 minutes."""
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, entry(now - 31 * 60_000), entry(now - 29 * 60_000))
    sha = await any_redis_client.script_load(script_source("cleanup_stats"))
    assert await any_redis_client.evalsha(sha, 1, KEYS.stats) == 1
