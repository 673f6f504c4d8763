"""report_window.lua: the entry, the pod windows, the open decision, the list's cap,
backoff, broadcast, TTLs.

The decision reads the windows hash (one field per pod, see the script's
header), never the stats list: tests seed other pods' fields as their reports
would have written them (``seed_windows``). ``report`` tallies at every call
(``holds_lease`` True); the lease itself is tested in
test_lua_report_window_tally.py. Each test runs on a private real
redis-server and on fakeredis (whose Lua supports everything these scripts
use: TIME, cjson, PUBLISH, TYPE).
"""

from __future__ import annotations

import json

import pytest
from transport_support import (
    KEYS,
    PARAMS,
    Client,
    assert_no_broadcast,
    entry,
    next_message,
    params,
    redis_now_ms,
    report,
    seed,
    seed_windows,
    stats_instances,
    subscribed,
    window_field,
    window_fields,
)

from distributed_opossum._redis.keys import BreakerKeys
from distributed_opossum._redis.scripts import (
    DecisionParams,
    PodWindow,
    PooledWindow,
    parse_broadcast,
    scripts_for,
)

# --------------------------------------------------------------------------- basics


async def test_first_report_creates_closed_state_with_a_gen(any_redis_client: Client) -> None:
    """A missing state hash is created closed, epoch 0, with the client's candidate gen."""
    first = await report(any_redis_client, successes=1)
    second = await report(any_redis_client, successes=1)
    assert (first.state, first.epoch, first.attempts, first.changed) == ("closed", 0, 0, False)
    assert len(first.gen) == 16
    assert second.gen == first.gen  # the candidate is used only on creation
    await any_redis_client.delete(KEYS.state)
    assert (await report(any_redis_client, successes=1)).gen != first.gen


async def test_entry_is_appended_as_json(any_redis_client: Client) -> None:
    """The entry carries the counts, the pod, its epoch and Redis' timestamp."""
    state = await report(
        any_redis_client,
        "pod-7",
        known_epoch=0,
        fires=9,
        successes=4,
        failures=1,
        timeouts=2,
        rejects=3,
    )
    [raw] = await any_redis_client.lrange(KEYS.stats, 0, -1)
    assert json.loads(raw) == {
        "v": 1,
        "timestamp": state.now_ms,
        "instance": "pod-7",
        "fires": 9,
        "successes": 4,
        "failures": 1,
        "timeouts": 2,
        "rejects": 3,
        "local_open": False,
        "epoch": 0,
    }


async def test_empty_report_appends_nothing_but_refreshes_state(any_redis_client: Client) -> None:
    """An empty bucket is not appended; the state hash still exists with a TTL."""
    state = await report(any_redis_client)
    assert await any_redis_client.llen(KEYS.stats) == 0
    assert state.gen
    assert 0 < await any_redis_client.pttl(KEYS.state) <= PARAMS.key_ttl_ms


async def test_ttls_are_set_on_every_key(any_redis_client: Client) -> None:
    """The list, the state and the windows expire key_ttl_ms after the last write."""
    await report(any_redis_client, successes=1, decision=params(key_ttl_ms=20_000))
    for key in (KEYS.stats, KEYS.state, KEYS.pods):
        assert 19_000 < await any_redis_client.pttl(key) <= 20_000


async def test_open_state_outlives_its_open_period(any_redis_client: Client) -> None:
    """While open, the state hash lives key_ttl_ms past open_until, keeping attempts."""
    decision = params(reset_timeout_ms=100_000, key_ttl_ms=20_000)
    await report(any_redis_client, local_open=True, decision=decision)
    assert 119_000 < await any_redis_client.pttl(KEYS.state) <= 120_000


# --------------------------------------------------------------------------- the pod's window


async def test_the_pod_writes_its_window_in_its_field(any_redis_client: Client) -> None:
    """pod:<instance> = "<now> <gen> <epoch> <volume> <failures> <trips>", this bucket
    alone by default, the pod's own totals when it passes them."""
    alone = await report(any_redis_client, "pod-7", fires=6, successes=4, failures=1, rejects=1)
    fields = await window_fields(any_redis_client)
    assert fields == {"pod:pod-7": window_field(alone.now_ms, alone.gen, 0, 5, 1, 0)}
    summed = await report(any_redis_client, "pod-7", successes=2, window=PodWindow(12, 3, 0))
    fields = await window_fields(any_redis_client)
    assert fields == {"pod:pod-7": window_field(summed.now_ms, summed.gen, 0, 12, 3, 0)}
    assert summed.window == PooledWindow(volume=12, failures=3, reporting=1, votes=0)


async def test_the_window_not_the_bucket_is_judged(any_redis_client: Client) -> None:
    """A bucket of failures inside a healthy window opens nothing; a healthy bucket
    inside a failing window opens (the pod sums its buckets, the script does not)."""
    healthy = await report(any_redis_client, failures=3, window=PodWindow(10, 3, 0))
    assert (healthy.state, healthy.changed) == ("closed", False)
    failing = await report(any_redis_client, successes=1, window=PodWindow(11, 6, 0))
    assert (failing.state, failing.reason) == ("open", "pooled_rate")


async def test_an_empty_window_removes_the_field(any_redis_client: Client) -> None:
    """A pod with no calls and no trip in its window has no field (no say)."""
    await report(any_redis_client, "pod-7", successes=1)
    assert list(await window_fields(any_redis_client)) == ["pod:pod-7"]
    state = await report(any_redis_client, "pod-7", fires=3, rejects=3)
    assert await window_fields(any_redis_client) == {}
    assert state.window == PooledWindow(volume=0, failures=0, reporting=0, votes=0)


async def test_a_trip_counts_in_the_pods_window_whatever_it_summed(
    any_redis_client: Client,
) -> None:
    """A local trip is at least one trip in the pod's field, even if its totals say none."""
    state = await report(
        any_redis_client,
        "tripper",
        local_open=True,
        window=PodWindow(5, 0, 0),
        decision=params(quorum=2),
    )
    fields = await window_fields(any_redis_client)
    assert fields["pod:tripper"] == window_field(state.now_ms, state.gen, 0, 5, 0, 1)
    assert state.window == PooledWindow(volume=5, failures=0, reporting=1, votes=1)


# --------------------------------------------------------------------------- decision: no quorum


@pytest.mark.parametrize(
    ("seeded", "decision", "expected"),
    [
        pytest.param([("a", 4, 6)], PARAMS, "pooled_rate", id="rate-above"),
        pytest.param([("a", 5, 5)], PARAMS, None, id="rate-equal-is-not-above"),
        pytest.param([("a", 0, 3)], params(volume_threshold=4), None, id="volume-below"),
        pytest.param([("a", 0, 4)], params(volume_threshold=4), "pooled_rate", id="volume-at"),
        pytest.param(
            [("a", 0, 2), ("b", 0, 2), ("c", 1, 0)],
            params(volume_threshold=5),
            "pooled_rate",
            id="pods-too-small-alone-trip-together",
        ),
        pytest.param([("a", 9, 1)], params(error_threshold_percentage=0), "pooled_rate", id="0%"),
        pytest.param([], params(error_threshold_percentage=0), None, id="no-volume-no-rate"),
    ],
)
async def test_pooled_rate_decision(
    any_redis_client: Client,
    seeded: list[tuple[str, int, int]],
    decision: DecisionParams,
    expected: str | None,
) -> None:
    """Pooled volume >= threshold and pooled rate strictly above the percentage opens."""
    await seed_windows(any_redis_client, *seeded)
    state = await report(any_redis_client, decision=decision, fires=1)  # no completed calls
    if expected is None:
        assert (state.state, state.epoch, state.changed) == ("closed", 0, False)
    else:
        assert (state.state, state.epoch, state.attempts, state.changed) == ("open", 1, 1, True)
        assert state.reason == expected


async def test_rejects_and_timeouts_do_not_dilute_the_rate(any_redis_client: Client) -> None:
    """Volume is successes + failures only."""
    state = await report(
        any_redis_client, fires=50, failures=2, successes=1, timeouts=2, rejects=40
    )
    assert state.reason == "pooled_rate"


async def test_local_trip_opens_without_failures(any_redis_client: Client) -> None:
    """A pod's local trip under the current epoch opens the shared breaker."""
    state = await report(any_redis_client, local_open=True, known_epoch=0, successes=10)
    assert (state.state, state.reason, state.epoch) == ("open", "local_trip", 1)


async def test_local_trip_of_a_stale_epoch_is_ignored(any_redis_client: Client) -> None:
    """A pod that has not heard of the latest close cannot re-open it."""
    await report(any_redis_client, successes=1)
    await any_redis_client.hset(KEYS.state, "epoch", 2)
    stale = await report(any_redis_client, local_open=True, known_epoch=1, successes=10)
    assert (stale.state, stale.changed) == ("closed", False)
    current = await report(any_redis_client, local_open=True, known_epoch=2, successes=10)
    assert (current.state, current.epoch, current.reason) == ("open", 3, "local_trip")


@pytest.mark.parametrize("state_name", ["open", "half_open", "forced_open"])
async def test_only_a_closed_breaker_is_opened(any_redis_client: Client, state_name: str) -> None:
    """Failures and trips reported while open (or half-open with a trial under way, or
    forced open) change nothing."""
    await report(any_redis_client, successes=1)
    now = await redis_now_ms(any_redis_client)
    await any_redis_client.hset(
        KEYS.state,
        mapping={
            "state": state_name,
            "epoch": 5,
            "open_until": now + 60_000,
            "lease:t": now + 60_000,
        },
    )
    state = await report(any_redis_client, failures=10, local_open=True, known_epoch=5)
    assert (state.state, state.epoch, state.changed) == (state_name, 5, False)


@pytest.mark.parametrize("state_name", ["open", "half_open"])
async def test_a_trip_opens_an_opening_nobody_uses(
    any_redis_client: Client, state_name: str
) -> None:
    """An open period that is over (or half-open without a trial under way) is opened
    again by a new trip, at once, with a broadcast: an expired open absorbs no trip."""
    await report(any_redis_client, successes=1)
    now = await redis_now_ms(any_redis_client)
    await any_redis_client.hset(
        KEYS.state, mapping={"state": state_name, "epoch": 5, "attempts": 1, "open_until": now - 1}
    )
    async with subscribed(any_redis_client, KEYS.events) as pubsub:
        state = await report(any_redis_client, local_open=True, known_epoch=5, failures=3)
        message = json.loads(await next_message(pubsub))
    assert (state.state, state.epoch, state.attempts, state.changed) == ("open", 6, 2, True)
    assert (message["state"], message["epoch"]) == ("open", 6)


async def test_old_failures_do_not_reopen_an_opening_nobody_uses(any_redis_client: Client) -> None:
    """Without a new trip, an expired open stays as it is, whatever the window holds."""
    await report(any_redis_client, failures=10)
    now = await redis_now_ms(any_redis_client)
    await any_redis_client.hset(
        KEYS.state, mapping={"state": "open", "epoch": 5, "open_until": now - 1}
    )
    state = await report(any_redis_client, failures=10, known_epoch=5)
    stale_trip = await report(any_redis_client, local_open=True, known_epoch=4)
    assert (state.changed, stale_trip.changed) == (False, False)
    assert stale_trip.state == "open"


async def test_a_trip_from_another_history_counts_in_this_one(any_redis_client: Client) -> None:
    """A vote made before Redis lost its state (another gen), or before the pod's first
    sync (no gen), opens the shared breaker whatever epoch it carries."""
    await report(any_redis_client, successes=1)
    await any_redis_client.hset(KEYS.state, "epoch", 2)
    other = await report(any_redis_client, local_open=True, known_epoch=7, known_gen="lost")
    assert (other.state, other.epoch, other.reason) == ("open", 3, "local_trip")
    await any_redis_client.delete(KEYS.state, KEYS.stats, KEYS.pods)
    unsynced = await report(any_redis_client, local_open=True, known_epoch=0, known_gen="")
    assert (unsynced.state, unsynced.epoch) == ("open", 1)


async def test_windows_with_absurd_counts_count_nowhere(any_redis_client: Client) -> None:
    """A window claiming more than 10**8 calls or trips is ignored, not trusted, and goes."""
    await seed_windows(any_redis_client, ("ghost", 0, 10**9), ("tripper", 10, 0, 10**8 + 1))
    state = await report(any_redis_client, successes=5)
    assert (state.state, state.changed) == ("closed", False)
    assert list(await window_fields(any_redis_client)) == ["pod:pod-x"]
    await seed_windows(any_redis_client, ("real", 0, 10**8))
    state = await report(any_redis_client, successes=5)
    assert state.state == "open"


# --------------------------------------------------------------------------- decision: quorum


async def _quorum_report(
    client: Client, pods: list[tuple[str, int, int]], decision: DecisionParams
) -> str | None:
    """Seed one window per (pod, successes, failures), judge them; the reason if it opened."""
    await seed_windows(client, *pods)
    state = await report(client, "pod-last", decision=decision)
    assert state.state == ("open" if state.changed else "closed")
    return state.reason if state.changed else None


SICK = (0, 10)
HEALTHY = (10, 0)


@pytest.mark.parametrize(
    ("pods", "decision", "opens"),
    [
        pytest.param(["a"], params(quorum=2), False, id="one-sick-pod-cannot-open"),
        pytest.param(["a", "b"], params(quorum=2), True, id="two-sick-pods-open"),
        pytest.param(["a"], params(quorum=1), True, id="quorum-1"),
        pytest.param(["a"], params(quorum=0.5), False, id="fraction-1-of-3"),
        pytest.param(["a", "b"], params(quorum=0.5), True, id="fraction-2-of-3"),
        pytest.param(["a", "b"], params(quorum=1.0), False, id="fraction-all-2-of-3"),
        pytest.param(["a", "b", "h"], params(quorum=1.0), True, id="fraction-all-3-of-3"),
    ],
)
async def test_quorum_votes(
    any_redis_client: Client, pods: list[str], decision: DecisionParams, opens: bool
) -> None:
    """Votes against quorum as a count and as a fraction; pods a, b, h are sick if named."""
    table = [(pod, *(SICK if pod in pods else HEALTHY)) for pod in ("a", "b", "h")]
    # One sick pod of three makes the pooled rate 10/30 (not above 50 %), two
    # make it 20/30: a pooled decision would open in the second case too.
    reason = await _quorum_report(any_redis_client, table, decision)
    assert reason == ("quorum" if opens else None)


async def test_pooled_rate_alone_never_opens_with_quorum(any_redis_client: Client) -> None:
    """One very sick pod drives the pooled rate over the threshold, but it is one vote."""
    pods = [("a", 0, 100), ("b", 4, 0), ("c", 6, 4)]  # pooled: 104 failures of 114
    assert await _quorum_report(any_redis_client, pods, params(quorum=2)) is None
    await any_redis_client.flushall()
    assert await _quorum_report(any_redis_client, pods, PARAMS) == "pooled_rate"


async def test_min_pod_volume_gates_a_vote(any_redis_client: Client) -> None:
    """A pod below min_pod_volume does not vote, however bad its rate."""
    pods = [("a", 0, 4), ("b", 0, 4)]
    assert await _quorum_report(any_redis_client, pods, params(quorum=2, min_pod_volume=5)) is None
    await any_redis_client.flushall()
    assert await _quorum_report(any_redis_client, pods, params(quorum=2, min_pod_volume=4))


async def test_min_pod_volume_defaults_to_volume_threshold(any_redis_client: Client) -> None:
    """Without min_pod_volume a pod needs volume_threshold calls to vote."""
    pods = [("a", 0, 4), ("b", 0, 4)]
    reason = await _quorum_report(any_redis_client, pods, params(quorum=2, volume_threshold=5))
    assert reason is None


async def test_idle_pod_has_no_say_in_a_fraction(any_redis_client: Client) -> None:
    """A pod with no completed calls does not count among the reporting pods."""
    # An empty field (no pod writes one: it deletes its field instead) has no say either.
    await seed_windows(any_redis_client, ("sick", 0, 10), ("fine", 10, 0), ("empty", 0, 0))
    # Only rejects: a window of volume 0. Were these pods counted, 1 vote of 3
    # or 4 pods would fall short of 50 %.
    state = await report(any_redis_client, "idle", fires=5, rejects=5, decision=params(quorum=0.5))
    assert (state.state, state.reason) == ("open", "quorum")
    assert state.window == PooledWindow(volume=20, failures=10, reporting=2, votes=1)


async def test_fraction_survives_float_rounding(any_redis_client: Client) -> None:
    """7 of 25 pods meet quorum 0.28, although 0.28 * 25 is 7.000000000000001 in doubles."""
    assert 0.28 * 25 > 7
    pods = [(f"sick{i}", 0, 5) for i in range(7)] + [(f"fine{i}", 5, 0) for i in range(18)]
    await seed_windows(any_redis_client, *pods)
    state = await report(any_redis_client, decision=params(quorum=0.28))
    assert state.reason == "quorum"


async def test_local_trip_is_a_vote_only_under_the_current_epoch(any_redis_client: Client) -> None:
    """With quorum, a local trip is one vote, and a stale one is none."""
    await report(any_redis_client, successes=1)
    await any_redis_client.hset(KEYS.state, "epoch", 4)
    await seed_windows(any_redis_client, ("tripped", 10, 0, 1), epoch=3)
    await seed_windows(any_redis_client, ("sick", 0, 10))
    decision = params(quorum=2)
    assert (await report(any_redis_client, decision=decision)).state == "closed"
    await seed_windows(any_redis_client, ("tripped", 10, 0, 1))
    state = await report(any_redis_client, decision=decision)
    assert (state.state, state.reason) == ("open", "quorum")


async def test_own_trip_of_a_stale_epoch_is_no_vote(any_redis_client: Client) -> None:
    """With quorum the trip is tallied: one of an epoch that is over counts nowhere."""
    await report(any_redis_client, successes=1)
    await any_redis_client.hset(KEYS.state, "epoch", 2)
    decision = params(quorum=1)
    stale = await report(any_redis_client, local_open=True, known_epoch=1, decision=decision)
    assert (stale.state, stale.changed) == ("closed", False)
    assert stale.window == PooledWindow(volume=0, failures=0, reporting=0, votes=0)
    current = await report(any_redis_client, local_open=True, known_epoch=2, decision=decision)
    assert (current.state, current.epoch, current.reason) == ("open", 3, "quorum")


async def test_single_local_trip_does_not_open_a_quorum_of_two(any_redis_client: Client) -> None:
    """A trip is a vote, not a verdict, when quorum is set."""
    state = await report(any_redis_client, local_open=True, decision=params(quorum=2))
    assert state.state == "closed"


# --------------------------------------------------------------------------- which windows count


async def test_fields_older_than_the_window_leave_the_tally_and_go(
    any_redis_client: Client,
) -> None:
    """A pod gone (or idle) for window_ms has its field removed; young ones count."""
    now = await redis_now_ms(any_redis_client)
    window = PARAMS.window_ms
    await seed_windows(any_redis_client, ("gone", 0, 50), ts=now - window - 500)
    await seed_windows(any_redis_client, ("just-gone", 0, 50), ts=now - window - 1)
    await seed_windows(any_redis_client, ("young", 5, 0), ts=now - window + 2_000)
    state = await report(any_redis_client, successes=1)
    assert state.state == "closed"  # the 100 old failures no longer count
    assert state.window == PooledWindow(volume=6, failures=0, reporting=2, votes=0)
    assert sorted(await window_fields(any_redis_client)) == ["pod:pod-x", "pod:young"]


async def test_fields_of_another_epoch_or_gen_do_not_count(any_redis_client: Client) -> None:
    """A window summed under another epoch (before the latest close, say) or another
    history counts nowhere: neither its calls nor its trips."""
    await report(any_redis_client, successes=1)
    await any_redis_client.hset(KEYS.state, "epoch", 2)
    await seed_windows(any_redis_client, ("before-close", 0, 50, 1), epoch=1)
    await seed_windows(any_redis_client, ("ahead", 0, 50, 1), epoch=3)
    await seed_windows(any_redis_client, ("other-history", 0, 50, 1), gen="lost")
    state = await report(any_redis_client, successes=1, known_epoch=2)
    assert (state.state, state.changed) == ("closed", False)
    assert state.window == PooledWindow(volume=1, failures=0, reporting=1, votes=0)
    # Young: they stay (the pod may report again under the current epoch).
    assert len(await window_fields(any_redis_client)) == 4


def _garbage_fields(now: int, gen: str) -> list[str]:
    """Values of a pod field that do not parse; each would open the breaker if it counted."""
    head = f"{gen}:0 {now}"
    return [
        "",
        "garbage",
        f"{head} 10 10",
        f"{head} 10 10 0 0",
        f"{head} 10 11 0",
        f"{head} -10 10 0",
        f"{head} 10.5 10 0",
        f"{head} 1e3 1e3 0",
        f"{head} 10 10 0\n",
        f"{head} 100000001 100000001 0",
        f"{head} 10 10 100000001",
        f"{gen}:0 soon 10 10 0",
        f"{gen}:zero {now} 10 10 0",
        f"{gen}:-1 {now} 10 10 0",
        f":0 {now} 10 10 0",
        f"{gen}:0 {now} 10 10 0 ",
        f" {gen}:0 {now} 10 10 0",
        f"{gen} 0 {now} 10 10 0",
    ]


async def test_unparsable_fields_count_nowhere_and_go(any_redis_client: Client) -> None:
    """A field that does not parse never fails the script, counts nowhere, and is removed."""
    created = await report(any_redis_client, "first")
    garbage = _garbage_fields(created.now_ms, created.gen)
    await any_redis_client.hset(
        KEYS.pods, mapping={f"pod:bad{i}": value for i, value in enumerate(garbage)}
    )
    state = await report(any_redis_client, successes=1)
    assert (state.state, state.changed) == ("closed", False)
    assert state.window == PooledWindow(volume=1, failures=0, reporting=1, votes=0)
    assert list(await window_fields(any_redis_client)) == ["pod:pod-x"]


async def test_a_trip_does_not_reopen_from_a_garbage_field(any_redis_client: Client) -> None:
    """On an opening nobody uses, only parsable trips of this epoch re-open."""
    opened = await report(any_redis_client, "first", local_open=True, decision=params(quorum=1))
    await any_redis_client.hset(KEYS.state, "open_until", opened.now_ms - 1)
    head = f"{opened.now_ms} {opened.gen} {opened.epoch}"
    await any_redis_client.hset(
        KEYS.pods, mapping={"pod:a": f"{head} 0 0 x", "pod:b": f"{head} 0 0 100000001"}
    )
    decision = params(quorum=2)
    state = await report(any_redis_client, local_open=True, known_epoch=1, decision=decision)
    assert (state.state, state.changed) == ("open", False)
    assert state.window == PooledWindow(volume=0, failures=0, reporting=1, votes=1)
    assert "pod:a" not in await window_fields(any_redis_client)


@pytest.mark.parametrize("how", ["reset", "trial_success"])
async def test_a_close_starts_the_window_over(any_redis_client: Client, how: str) -> None:
    """A close deletes the list, the windows and the tally lease with its snapshot; a pod
    that has not heard of it yet reports under the old epoch, and its window counts
    nowhere."""
    scripts = scripts_for(any_redis_client)
    await report(any_redis_client, "creator")
    before = await report(any_redis_client, "fine", successes=10)
    assert await any_redis_client.exists(KEYS.tally) == 1
    await seed_windows(any_redis_client, ("sick", 0, 10))
    if how == "reset":
        closed = await scripts.reset(KEYS, instance="ops", key_ttl_ms=60_000)
    else:
        opened = await report(any_redis_client, "sick", local_open=True, jitter=0.0)
        assert opened.state == "open"
        grant = await scripts.acquire_trial(KEYS, holder="t", params=PARAMS)
        closed = await scripts.finish_trial(
            KEYS,
            holder="t",
            epoch=grant.state.epoch,
            outcome="success",
            instance="t",
            params=PARAMS,
        )
    assert closed.state == "closed"
    assert closed.epoch > before.epoch
    assert await any_redis_client.exists(KEYS.stats, KEYS.pods, KEYS.tally) == 0
    late = await report(
        any_redis_client, "late", failures=10, known_epoch=before.epoch, known_gen=before.gen
    )
    assert (late.state, late.changed) == ("closed", False)
    assert late.window == PooledWindow(volume=0, failures=0, reporting=0, votes=0)
    fresh = await report(any_redis_client, "fresh", successes=1, known_epoch=closed.epoch)
    assert fresh.window == PooledWindow(volume=1, failures=0, reporting=1, votes=0)
    assert await stats_instances(any_redis_client) == ["late", "fresh"]


# --------------------------------------------------------------------------- the list


GARBAGE_ENTRIES = [
    "not json",
    "{}",
    "[1, 2]",
    '"a string"',
    "null",
    "1e999",
    json.dumps({"v": 2, "timestamp": 1, "instance": "x", "successes": 0, "failures": 9}),
    json.dumps({"v": 1, "timestamp": "soon", "instance": "x", "successes": 0, "failures": 9}),
    json.dumps({"v": 1, "timestamp": 1, "instance": 7, "successes": 0, "failures": 9}),
    json.dumps({"v": 1, "timestamp": 1, "instance": "x", "successes": -1, "failures": 9}),
    json.dumps({"v": 1, "timestamp": 1, "instance": "x", "successes": 0, "failures": 0.5}),
    "[" * 5000,
]


async def test_the_decision_never_reads_the_list(any_redis_client: Client) -> None:
    """The list is the record of reports: failures in it without a window (and garbage)
    decide nothing, and are left where they are."""
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, entry(now, "sick", failures=100), *GARBAGE_ENTRIES)
    state = await report(any_redis_client, successes=1)
    assert (state.state, state.changed) == ("closed", False)
    assert state.window == PooledWindow(volume=1, failures=0, reporting=1, votes=0)
    assert await any_redis_client.llen(KEYS.stats) == len(GARBAGE_ENTRIES) + 2


async def test_list_is_capped_at_max_entries_at_least(any_redis_client: Client) -> None:
    """A tally keeps the newest max(max_entries, (pods + 1) * pod_entries) entries."""
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, *(entry(now, "flood", successes=1) for _ in range(10)))
    await seed_windows(any_redis_client, ("flood", 10, 0))
    decision = params(max_entries=4, pod_entries=1)  # 2 pods: max(4, 3 * 1)
    await report(any_redis_client, "newest", successes=1, decision=decision)
    instances = await stats_instances(any_redis_client)
    assert instances == ["flood", "flood", "flood", "newest"]


async def test_cap_grows_with_the_pods(any_redis_client: Client) -> None:
    """With many pods the cap is (pods + 1) * pod_entries: the newest that many stay,
    however low max_entries is."""
    now = await redis_now_ms(any_redis_client)
    names = [f"pod{i}" for i in range(10)]
    await seed(any_redis_client, *(entry(now, name, successes=1) for name in names * 2))
    await seed_windows(any_redis_client, *((name, 2, 0) for name in names))
    decision = params(max_entries=4, pod_entries=1)  # 11 pods: max(4, 12 * 1)
    await report(any_redis_client, "newest", successes=1, decision=decision)
    assert await stats_instances(any_redis_client) == [*names, *names, "newest"][-12:]


async def test_cap_leaves_a_short_list_whole(any_redis_client: Client) -> None:
    """Under the cap nothing is cut, garbage included."""
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, *GARBAGE_ENTRIES[:3], entry(now, "a", successes=1))
    await report(any_redis_client, "newest", successes=1, decision=params(max_entries=5))
    assert await any_redis_client.llen(KEYS.stats) == 5


# --------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    "fields",
    [
        {"state": "banana"},
        {"epoch": "three"},
        {"epoch": "-1"},
        {"attempts": "1.5"},
        {"open_until": "inf"},
        {"closed_at": "nan"},
        {"gen": ""},
    ],
)
async def test_garbage_state_hash_is_replaced(
    any_redis_client: Client, fields: dict[str, str]
) -> None:
    """A state hash the scripts cannot read is replaced by a fresh one with a new gen."""
    old = await report(any_redis_client, successes=1)
    for field, value in fields.items():
        await any_redis_client.hset(KEYS.state, field, value)
    new = await report(any_redis_client, successes=1)
    assert (new.state, new.epoch, new.attempts) == ("closed", 0, 0)
    assert new.gen not in ("", old.gen)
    assert await any_redis_client.hget(KEYS.state, "gen") == new.gen.encode()


async def test_hash_without_core_fields_is_replaced(any_redis_client: Client) -> None:
    """Another writer's hash under our name is replaced, its fields dropped."""
    await any_redis_client.hset(KEYS.state, mapping={"foo": "bar"})
    state = await report(any_redis_client, successes=1)
    assert state.gen
    assert await any_redis_client.hget(KEYS.state, "foo") is None


async def test_keys_of_the_wrong_type_are_replaced(any_redis_client: Client) -> None:
    """A string where the list or a hash should be does not make the script fail."""
    await any_redis_client.set(KEYS.stats, "x")
    await any_redis_client.set(KEYS.state, "y")
    await any_redis_client.set(KEYS.pods, "z")
    state = await report(any_redis_client, failures=1)
    assert (state.state, state.reason) == ("open", "pooled_rate")
    assert await any_redis_client.type(KEYS.stats) == b"list"
    assert await any_redis_client.type(KEYS.pods) == b"hash"
    assert list(await window_fields(any_redis_client)) == ["pod:pod-x"]


async def test_reason_and_unknown_fields_are_tolerated(any_redis_client: Client) -> None:
    """Extra fields survive; a missing reason reads as empty."""
    await report(any_redis_client, successes=1)
    await any_redis_client.hset(KEYS.state, "extra", "kept")
    await any_redis_client.hdel(KEYS.state, "reason")
    state = await report(any_redis_client, successes=1)
    assert state.reason == ""
    assert await any_redis_client.hget(KEYS.state, "extra") == b"kept"


# --------------------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("attempts_before", "multiplier", "max_ms", "jitter", "period"),
    [
        pytest.param(0, 2.0, None, 1.0, 1_000, id="first-open-is-reset-timeout"),
        pytest.param(1, 2.0, None, 1.0, 2_000, id="second-doubles"),
        pytest.param(3, 2.0, None, 1.0, 8_000, id="fourth"),
        pytest.param(3, 1.0, None, 1.0, 1_000, id="multiplier-1-is-fixed"),
        pytest.param(3, 2.0, 5_000, 1.0, 5_000, id="capped"),
        pytest.param(0, 2.0, None, 0.5, 500, id="jitter-down"),
        pytest.param(0, 2.0, 1_200, 1.5, 1_200, id="jitter-clamped-to-cap"),
        pytest.param(3, 2.0, 5_000, 0.9, 4_500, id="jitter-after-cap"),
        pytest.param(0, 2.0, None, 0.0, 0, id="zero-jitter-zero-period"),
        pytest.param(5_000, 2.0, None, 1.0, 315_360_000_000, id="overflow-stops-at-ten-years"),
    ],
)
async def test_backoff(
    any_redis_client: Client,
    attempts_before: int,
    multiplier: float,
    max_ms: int | None,
    jitter: float,
    period: int,
) -> None:
    """open_until = now + min(reset * multiplier^(attempts-1), max) * jitter, clamped to max."""
    await report(any_redis_client, successes=1)
    await any_redis_client.hset(KEYS.state, "attempts", attempts_before)
    decision = params(reset_timeout_multiplier=multiplier, max_reset_timeout_ms=max_ms)
    state = await report(any_redis_client, local_open=True, decision=decision, jitter=jitter)
    assert state.attempts == attempts_before + 1
    assert state.open_until_ms - state.now_ms == period


# --------------------------------------------------------------------------- broadcast


async def test_opening_publishes_the_state(any_redis_client: Client) -> None:
    """The open is broadcast as v1 JSON with Redis' now and the reporting pod as origin."""
    async with subscribed(any_redis_client, KEYS.events) as pubsub:
        state = await report(any_redis_client, "pod-9", failures=3)
        payload = await next_message(pubsub)
    assert json.loads(payload) == {
        "v": 1,
        "name": "payments",
        "gen": state.gen,
        "epoch": 1,
        "state": "open",
        "open_until": state.open_until_ms,
        "now": state.now_ms,
        "attempts": 1,
        "origin": "pod-9",
        "reason": "pooled_rate",
    }
    broadcast = parse_broadcast(payload)
    assert broadcast is not None
    assert (broadcast.gen, broadcast.epoch, broadcast.open_until_ms) == (
        state.gen,
        1,
        state.open_until_ms,
    )


async def test_reports_that_change_nothing_publish_nothing(any_redis_client: Client) -> None:
    """Only a state change is broadcast."""
    async with subscribed(any_redis_client, KEYS.events) as pubsub:
        await report(any_redis_client, successes=5)
        await report(any_redis_client, failures=4, window=PodWindow(9, 4))  # 4 of 9: closed
        await report(any_redis_client, failures=2, window=PodWindow(11, 6))  # opens: one message
        await report(any_redis_client, failures=9, window=PodWindow(20, 15))  # already open
        assert json.loads(await next_message(pubsub))["state"] == "open"
        await assert_no_broadcast(any_redis_client, pubsub, KEYS.events)


async def test_name_with_unicode_and_quotes_is_broadcast_intact(any_redis_client: Client) -> None:
    """The name travels through cjson unharmed."""
    keys = BreakerKeys.for_breaker("test", 'pay "€" {x}\n')
    async with subscribed(any_redis_client, keys.events) as pubsub:
        await report(any_redis_client, keys=keys, local_open=True)
        broadcast = parse_broadcast(await next_message(pubsub))
    assert broadcast is not None
    assert broadcast.name == 'pay "€" {x}\n'
