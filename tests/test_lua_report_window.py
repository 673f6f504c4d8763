"""report_window.lua: appending, trimming, the open decision, backoff, broadcast, TTLs.

Each test runs on a private real redis-server and on fakeredis (whose Lua
supports everything these scripts use: TIME, cjson, PUBLISH, TYPE).
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
    stats_instances,
    subscribed,
)

from distributed_opossum._redis.keys import BreakerKeys
from distributed_opossum._redis.scripts import DecisionParams, parse_broadcast

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


async def test_ttls_are_set_on_both_keys(any_redis_client: Client) -> None:
    """Both keys expire key_ttl_ms after the last write."""
    await report(any_redis_client, successes=1, decision=params(key_ttl_ms=20_000))
    for key in (KEYS.stats, KEYS.state):
        assert 19_000 < await any_redis_client.pttl(key) <= 20_000


async def test_open_state_outlives_its_open_period(any_redis_client: Client) -> None:
    """While open, the state hash lives key_ttl_ms past open_until, keeping attempts."""
    decision = params(reset_timeout_ms=100_000, key_ttl_ms=20_000)
    await report(any_redis_client, local_open=True, decision=decision)
    assert 119_000 < await any_redis_client.pttl(KEYS.state) <= 120_000


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
    now = await redis_now_ms(any_redis_client)
    entries = [entry(now, pod, successes=s, failures=f) for pod, s, f in seeded]
    if entries:
        await seed(any_redis_client, *entries)
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


async def test_entries_with_absurd_counts_count_nowhere(any_redis_client: Client) -> None:
    """An entry claiming more than 10**8 calls of a kind is ignored, not trusted."""
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, entry(now, "ghost", successes=0, failures=10**9))
    state = await report(any_redis_client, successes=5)
    assert (state.state, state.changed) == ("closed", False)
    await seed(any_redis_client, entry(now, "real", successes=0, failures=10**8))
    state = await report(any_redis_client, successes=5)
    assert state.state == "open"


# --------------------------------------------------------------------------- decision: quorum


async def _quorum_report(
    client: Client, pods: list[tuple[str, int, int]], decision: DecisionParams
) -> str | None:
    """Seed one entry per (pod, successes, failures), judge them; the reason if it opened."""
    now = await redis_now_ms(client)
    await seed(client, *(entry(now, pod, successes=s, failures=f) for pod, s, f in pods))
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
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, entry(now, "sick", failures=10), entry(now, "fine", successes=10))
    # Only rejects: an entry of volume 0. Were this pod counted, 1 vote of 3
    # pods would fall short of 50 %.
    state = await report(any_redis_client, "idle", fires=5, rejects=5, decision=params(quorum=0.5))
    assert (state.state, state.reason) == ("open", "quorum")


async def test_fraction_survives_float_rounding(any_redis_client: Client) -> None:
    """7 of 25 pods meet quorum 0.28, although 0.28 * 25 is 7.000000000000001 in doubles."""
    assert 0.28 * 25 > 7
    now = await redis_now_ms(any_redis_client)
    pods = [entry(now, f"sick{i}", failures=5) for i in range(7)]
    pods += [entry(now, f"fine{i}", successes=5) for i in range(18)]
    await seed(any_redis_client, *pods)
    state = await report(any_redis_client, decision=params(quorum=0.28))
    assert state.reason == "quorum"


async def test_local_trip_is_a_vote_only_under_the_current_epoch(any_redis_client: Client) -> None:
    """With quorum, a local trip is one vote, and a stale one is none."""
    await report(any_redis_client, successes=1)
    await any_redis_client.hset(KEYS.state, "epoch", 4)
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, entry(now, "tripped", local_open=True, epoch=3, successes=10))
    await seed(any_redis_client, entry(now, "sick", failures=10))
    decision = params(quorum=2)
    assert (await report(any_redis_client, decision=decision)).state == "closed"
    await seed(any_redis_client, entry(now, "tripped", local_open=True, epoch=4, successes=10))
    state = await report(any_redis_client, decision=decision)
    assert (state.state, state.reason) == ("open", "quorum")


async def test_single_local_trip_does_not_open_a_quorum_of_two(any_redis_client: Client) -> None:
    """A trip is a vote, not a verdict, when quorum is set."""
    state = await report(any_redis_client, local_open=True, decision=params(quorum=2))
    assert state.state == "closed"


# --------------------------------------------------------------------------- trimming


async def test_entries_older_than_the_window_are_trimmed(any_redis_client: Client) -> None:
    """Old entries leave the list and the decision; young ones stay."""
    now = await redis_now_ms(any_redis_client)
    window = PARAMS.window_ms
    await seed(
        any_redis_client,
        entry(now - window - 500, "old", failures=50),
        entry(now - window - 1, "old", failures=50),
        entry(now - window + 2_000, "young", successes=5),
    )
    state = await report(any_redis_client, successes=1)
    assert state.state == "closed"  # the 100 old failures no longer count
    instances = await stats_instances(any_redis_client)
    assert instances == ["young", "pod-x"]


async def test_entries_before_the_last_close_are_trimmed(any_redis_client: Client) -> None:
    """The window starts over at closed_at (an entry stamped at it is before it)."""
    await report(any_redis_client)  # creates the state hash, appends nothing
    now = await redis_now_ms(any_redis_client)
    await any_redis_client.hset(KEYS.state, "closed_at", now - 100)
    await seed(
        any_redis_client,
        entry(now - 200, "before", failures=50),
        entry(now - 100, "at", failures=50),
        entry(now - 50, "after", successes=1),
    )
    state = await report(any_redis_client, successes=1)
    assert state.state == "closed"
    instances = await stats_instances(any_redis_client)
    assert instances == ["after", "pod-x"]


async def test_trim_stops_at_the_first_young_entry(any_redis_client: Client) -> None:
    """An old entry behind a young head stays in the list but is not counted."""
    now = await redis_now_ms(any_redis_client)
    await seed(
        any_redis_client,
        entry(now, "young", successes=1),
        entry(now - PARAMS.window_ms - 1, "stepped-back", failures=100),
    )
    state = await report(any_redis_client, successes=1)
    assert state.state == "closed"
    assert await any_redis_client.llen(KEYS.stats) == 3


async def test_list_is_capped_per_pod_in_it(any_redis_client: Client) -> None:
    """The newest max(max_entries, (pods in the list + 1) * pod_entries) entries are kept."""
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, *(entry(now, "flood", successes=1) for i in range(10)))
    decision = params(max_entries=4, pod_entries=1)  # 2 pods: max(4, 3 * 1)
    await report(any_redis_client, "newest", successes=1, decision=decision)
    instances = await stats_instances(any_redis_client)
    assert instances == ["flood", "flood", "flood", "newest"]


async def test_cap_grows_with_the_pods_so_the_window_stays_whole(any_redis_client: Client) -> None:
    """Many pods each within their share: nothing is cut, however low max_entries is."""
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, *(entry(now, f"pod{i}", successes=1) for i in range(10)))
    decision = params(max_entries=4, pod_entries=1)  # 11 pods: max(4, 12 * 1)
    await report(any_redis_client, "newest", successes=1, decision=decision)
    assert len(await stats_instances(any_redis_client)) == 11


async def test_capped_entries_leave_the_decision(any_redis_client: Client) -> None:
    """Failures pushed out by the cap no longer count."""
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, entry(now, "p", failures=100), entry(now, "p", successes=1))
    decision = params(max_entries=2, pod_entries=1)
    state = await report(any_redis_client, "p", successes=1, decision=decision)
    assert state.state == "closed"


# --------------------------------------------------------------------------- garbage


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


async def test_garbage_entries_are_skipped_and_popped_at_the_head(any_redis_client: Client) -> None:
    """Unparsable entries never fail the script: dropped at the head, ignored elsewhere."""
    now = await redis_now_ms(any_redis_client)
    middle = json.dumps({"v": 1, "timestamp": now, "instance": "x", "failures": "many"})
    await seed(
        any_redis_client,
        *GARBAGE_ENTRIES,
        entry(now, "young", successes=3),
        middle,
        entry(now, "young", failures=2),
    )
    state = await report(any_redis_client, successes=1)
    assert state.state == "closed"  # 2 failures of 6: the garbage added nothing
    remaining = await any_redis_client.lrange(KEYS.stats, 0, -1)
    assert remaining[1] == middle.encode()
    assert len(remaining) == 4


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
    """A string where the list or hash should be does not make the script fail."""
    await any_redis_client.set(KEYS.stats, "x")
    await any_redis_client.set(KEYS.state, "y")
    state = await report(any_redis_client, failures=1)
    assert (state.state, state.reason) == ("open", "pooled_rate")
    assert await any_redis_client.type(KEYS.stats) == b"list"


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
        await report(any_redis_client, failures=1)  # opens: one message
        await report(any_redis_client, failures=9)  # already open
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
