"""acquire_trial.lua, finish_trial.lua, release_trial.lua: the cluster-wide half-open.

Run on a real redis-server and on fakeredis, except the concurrency test,
which needs real connections racing on a real server.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer
from transport_support import (
    KEYS,
    PARAMS,
    Client,
    assert_no_broadcast,
    next_message,
    open_then_half_open,
    params,
    report,
    subscribed,
)

from distributed_opossum._redis.scripts import DecisionParams, SharedState, TrialGrant, scripts_for


async def acquire(client: Client, holder: str, decision: DecisionParams = PARAMS) -> TrialGrant:
    return await scripts_for(client).acquire_trial(KEYS, holder=holder, params=decision)


async def finish(
    client: Client,
    holder: str,
    outcome: str,
    *,
    epoch: int = 1,
    decision: DecisionParams = PARAMS,
    jitter: float = 1.0,
) -> SharedState:
    return await scripts_for(client).finish_trial(
        KEYS,
        holder=holder,
        epoch=epoch,
        outcome=outcome,  # type: ignore[arg-type]
        instance="pod-t",
        params=decision,
        jitter=jitter,
    )


# --------------------------------------------------------------------------- acquire


async def test_no_shared_state_means_closed(any_redis_client: Client) -> None:
    """Without a state hash the caller proceeds as closed; nothing is created."""
    grant = await acquire(any_redis_client, "h1")
    assert (grant.granted, grant.retry_after_ms, grant.state.state) == (False, 0, "closed")
    assert not grant.state.exists
    assert await any_redis_client.exists(KEYS.state) == 0


async def test_closed_grants_nothing(any_redis_client: Client) -> None:
    """A closed breaker needs no trial."""
    await report(any_redis_client, successes=1)
    grant = await acquire(any_redis_client, "h1")
    assert (grant.granted, grant.retry_after_ms, grant.state.state) == (False, 0, "closed")


async def test_open_grants_nothing_until_open_until(any_redis_client: Client) -> None:
    """Before open_until, retry_after is the rest of the open period."""
    opened = await report(
        any_redis_client, local_open=True, decision=params(reset_timeout_ms=5_000)
    )
    grant = await acquire(any_redis_client, "h1")
    assert not grant.granted
    assert grant.state.state == "open"
    assert grant.retry_after_ms == opened.open_until_ms - grant.state.now_ms
    assert 4_000 < (grant.retry_after_ms or 0) <= 5_000


async def test_elapsed_open_becomes_half_open_and_grants(any_redis_client: Client) -> None:
    """The first request after open_until turns the state half_open (same epoch)."""
    opened = await open_then_half_open(any_redis_client)
    grant = await acquire(any_redis_client, "h1")
    assert grant.granted
    state = grant.state
    assert (state.state, state.epoch, state.changed) == ("half_open", opened.epoch, True)
    assert state.lease_expires_ms == state.now_ms + PARAMS.lease_ttl_ms
    assert (
        await any_redis_client.hget(KEYS.state, "lease:h1") == str(state.lease_expires_ms).encode()
    )


async def test_half_open_is_not_broadcast(any_redis_client: Client) -> None:
    """Every pod reaches open_until on its own clock; no message is needed."""
    await open_then_half_open(any_redis_client)
    async with subscribed(any_redis_client, KEYS.events) as pubsub:
        assert (await acquire(any_redis_client, "h1")).granted
        await assert_no_broadcast(any_redis_client, pubsub, KEYS.events)


async def test_n_permits_then_retry_after_the_earliest_lease(any_redis_client: Client) -> None:
    """half_open_max_calls permits, then retry_after until the earliest lease ends."""
    decision = params(half_open_max_calls=3)
    await open_then_half_open(any_redis_client, decision)
    grants = [await acquire(any_redis_client, f"h{i}", decision) for i in range(5)]
    assert [g.granted for g in grants] == [True, True, True, False, False]
    first_expiry = int(await any_redis_client.hget(KEYS.state, "lease:h0") or 0)
    refused = grants[3]
    assert refused.retry_after_ms == first_expiry - refused.state.now_ms
    assert refused.state.changed is False


async def test_same_holder_renews_instead_of_taking_another(any_redis_client: Client) -> None:
    """A retried request cannot leak a permit."""
    decision = params(half_open_max_calls=2)
    await open_then_half_open(any_redis_client, decision)
    assert (await acquire(any_redis_client, "h1", decision)).granted
    assert (await acquire(any_redis_client, "h1", decision)).granted
    assert (await acquire(any_redis_client, "h2", decision)).granted
    assert not (await acquire(any_redis_client, "h3", decision)).granted


async def test_expired_lease_frees_its_permit(any_redis_client: Client) -> None:
    """A hung trial's permit ends with its lease (50 ms here)."""
    decision = params(lease_ttl_ms=50)
    await open_then_half_open(any_redis_client, decision)
    assert (await acquire(any_redis_client, "hung", decision)).granted
    assert not (await acquire(any_redis_client, "next", decision)).granted
    await asyncio.sleep(0.06)
    grant = await acquire(any_redis_client, "next", decision)
    assert grant.granted
    assert await any_redis_client.hexists(KEYS.state, "lease:hung") is False


async def test_garbage_lease_counts_as_expired(any_redis_client: Client) -> None:
    """A lease field that is not a number holds no permit."""
    await open_then_half_open(any_redis_client)
    await any_redis_client.hset(KEYS.state, "lease:junk", "forever")
    assert (await acquire(any_redis_client, "h1")).granted


async def test_forced_open_grants_nothing_and_has_no_retry_after(any_redis_client: Client) -> None:
    """Only reset() ends a forced open: retry_after is None."""
    await scripts_for(any_redis_client).force_open(KEYS, instance="ops")
    grant = await acquire(any_redis_client, "h1")
    assert (grant.granted, grant.retry_after_ms, grant.state.state) == (False, None, "forced_open")


@pytest.mark.redis
async def test_concurrent_acquires_grant_exactly_n(redis_server_session: RedisServer) -> None:
    """40 pods racing on separate connections get exactly half_open_max_calls permits."""
    decision = params(half_open_max_calls=3)
    clients = [aioredis.Redis.from_url(redis_server_session.url) for _ in range(40)]
    try:
        await clients[0].flushall()
        await open_then_half_open(clients[0], decision)
        await asyncio.gather(*(c.ping() for c in clients))  # connect first, then race
        grants = await asyncio.gather(
            *(acquire(c, f"pod{i}", decision) for i, c in enumerate(clients))
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    assert sum(g.granted for g in grants) == 3
    assert all(g.state.state == "half_open" for g in grants)
    assert sum(g.state.changed for g in grants) == 1  # one of them ended the open period


# --------------------------------------------------------------------------- finish


async def test_success_closes_for_everyone(any_redis_client: Client) -> None:
    """A successful trial closes: epoch+1, attempts 0, closed_at now, leases gone, broadcast."""
    opened = await open_then_half_open(any_redis_client)
    await acquire(any_redis_client, "h1")
    async with subscribed(any_redis_client, KEYS.events) as pubsub:
        closed = await finish(any_redis_client, "h1", "success", epoch=opened.epoch)
        message = json.loads(await next_message(pubsub))
    assert (closed.state, closed.epoch, closed.attempts, closed.changed) == ("closed", 2, 0, True)
    assert closed.closed_at_ms == closed.now_ms
    assert (closed.lease_expires_ms, closed.trial_successes) == (0, 0)
    assert message == {
        "v": 1,
        "name": "payments",
        "gen": opened.gen,
        "epoch": 2,
        "state": "closed",
        "open_until": 0,
        "now": closed.now_ms,
        "attempts": 0,
        "origin": "pod-t",
        "reason": "trial_success",
    }
    assert set(await any_redis_client.hkeys(KEYS.state)) == {
        b"gen",
        b"epoch",
        b"state",
        b"open_until",
        b"attempts",
        b"closed_at",
        b"reason",
        b"trial_successes",
    }  # no lease:* field left


async def test_closing_needs_n_successes(any_redis_client: Client) -> None:
    """With N permits the breaker closes on the N-th success."""
    decision = params(half_open_max_calls=2)
    await open_then_half_open(any_redis_client, decision)
    await acquire(any_redis_client, "h1", decision)
    await acquire(any_redis_client, "h2", decision)
    first = await finish(any_redis_client, "h1", "success", decision=decision)
    assert (first.state, first.trial_successes, first.changed) == ("half_open", 1, False)
    # A trial that succeeded used its permit: never more than N trials a period.
    refused = await acquire(any_redis_client, "h3", decision)
    assert not refused.granted
    assert refused.retry_after_ms is not None
    assert refused.retry_after_ms > 0
    second = await finish(any_redis_client, "h2", "success", decision=decision)
    assert (second.state, second.changed) == ("closed", True)


async def test_failure_reopens_with_the_next_backoff(any_redis_client: Client) -> None:
    """A failed trial re-opens: epoch+1, attempts+1, the open period multiplied."""
    decision = params(half_open_max_calls=2, reset_timeout_multiplier=3.0)
    opened = await open_then_half_open(any_redis_client, decision)
    await acquire(any_redis_client, "h1", decision)
    await acquire(any_redis_client, "h2", decision)
    async with subscribed(any_redis_client, KEYS.events) as pubsub:
        state = await finish(any_redis_client, "h1", "failure", decision=decision, jitter=0.5)
        message = json.loads(await next_message(pubsub))
    assert (state.state, state.epoch, state.attempts, state.changed) == ("open", 2, 2, True)
    assert state.open_until_ms - state.now_ms == 1_500  # 1000 * 3^(2-1) * 0.5
    assert state.lease_expires_ms == 0  # h2's permit went with the half-open period
    assert (message["state"], message["reason"], message["gen"]) == (
        "open",
        "trial_failure",
        opened.gen,
    )


async def test_backoff_grows_over_failed_trials_up_to_the_cap(any_redis_client: Client) -> None:
    """1 s, 2 s, 4 s, then the 5 s cap: attempts live in Redis."""
    decision = params(reset_timeout_multiplier=2.0, max_reset_timeout_ms=5_000)
    opened = await report(any_redis_client, local_open=True, decision=decision)
    periods = [opened.open_until_ms - opened.now_ms]
    epoch = opened.epoch
    for i in range(3):
        await any_redis_client.hset(KEYS.state, "open_until", 0)
        await acquire(any_redis_client, f"h{i}", decision)
        state = await finish(any_redis_client, f"h{i}", "failure", epoch=epoch, decision=decision)
        periods.append(state.open_until_ms - state.now_ms)
        epoch = state.epoch
    assert periods == [1_000, 2_000, 4_000, 5_000]
    assert state.attempts == 4


@pytest.mark.parametrize("outcome", ["success", "failure"])
async def test_stale_or_foreign_results_change_nothing(
    any_redis_client: Client, outcome: str
) -> None:
    """An old epoch, an unknown holder, or an expired lease cannot flip the state."""
    opened = await open_then_half_open(any_redis_client)
    await acquire(any_redis_client, "h1")
    stale = await finish(any_redis_client, "h1", outcome, epoch=opened.epoch - 1)
    unknown = await finish(any_redis_client, "stranger", outcome, epoch=opened.epoch)
    await any_redis_client.hset(KEYS.state, "lease:h1", stale.now_ms - 1)
    expired = await finish(any_redis_client, "h1", outcome, epoch=opened.epoch)
    for state in (stale, unknown, expired):
        assert (state.state, state.epoch, state.changed) == ("half_open", opened.epoch, False)


async def test_results_outside_half_open_change_nothing(any_redis_client: Client) -> None:
    """A trial result after the breaker was reset is ignored."""
    opened = await open_then_half_open(any_redis_client)
    await acquire(any_redis_client, "h1")
    reset = await scripts_for(any_redis_client).reset(KEYS, instance="ops", key_ttl_ms=60_000)
    late = await finish(any_redis_client, "h1", "failure", epoch=opened.epoch)
    assert (late.state, late.epoch, late.changed) == ("closed", reset.epoch, False)


async def test_finish_without_shared_state_changes_nothing(any_redis_client: Client) -> None:
    """No hash (Redis lost its data): nothing to finish, nothing created."""
    state = await finish(any_redis_client, "h1", "success")
    assert (state.exists, state.changed) == (False, False)
    assert await any_redis_client.exists(KEYS.state) == 0


# --------------------------------------------------------------------------- release


async def test_release_frees_the_permit(any_redis_client: Client) -> None:
    """A cancelled trial gives its permit back at once."""
    await open_then_half_open(any_redis_client)
    assert (await acquire(any_redis_client, "h1")).granted
    assert not (await acquire(any_redis_client, "h2")).granted
    released = await scripts_for(any_redis_client).release_trial(KEYS, holder="h1")
    assert (released.state, released.changed, released.lease_expires_ms) == ("half_open", False, 0)
    assert (await acquire(any_redis_client, "h2")).granted


async def test_release_of_an_unknown_holder_is_a_no_op(any_redis_client: Client) -> None:
    """Releasing twice, or a permit never held, changes nothing."""
    await open_then_half_open(any_redis_client)
    assert (await acquire(any_redis_client, "h1")).granted
    state = await scripts_for(any_redis_client).release_trial(KEYS, holder="stranger")
    assert state.lease_expires_ms > 0
    missing = await scripts_for(any_redis_client).release_trial(
        KEYS.for_breaker("test", "nothing-here"), holder="h1"
    )
    assert not missing.exists
