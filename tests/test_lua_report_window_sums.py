"""report_window.lua's running sums (the ``pods`` hash) against the list they sum.

The layout checked here is the script's own (see its header): one field per
pod in the list, votes under the latest rule and up to three others.

Every check recomputes the sums from the stats list in Python, with the same
reading of an entry as the script's ``parse_entry``, and compares them with
the hash field by field. The random sequences also replay each decision with
the rule the script had before it kept sums (read the whole window, filter,
decide) and expect the same verdict. Runs on a private real redis-server and
on fakeredis.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any

import pytest
from test_lua_report_window import GARBAGE_ENTRIES
from transport_support import (
    KEYS,
    PARAMS,
    Client,
    entry,
    params,
    redis_now_ms,
    report,
    seed,
    stats_instances,
    text,
)

from distributed_opossum._redis.keys import BreakerKeys
from distributed_opossum._redis.scripts import DecisionParams, SharedState, scripts_for

MAX_EXACT = 2**53
HEADER_COUNTS = (
    "entries",
    "volume",
    "failures",
    "trips",
    "epoch",
    "reporting",
    "listed",
    "counted",
    "votes",
    "unsorted",
    "latest",
    "refreshed",
    "check",
)
CHECK_WEIGHTS = {
    "entries": 1,
    "volume": 3,
    "failures": 5,
    "trips": 7,
    "epoch": 11,
    "reporting": 13,
    "listed": 17,
    "votes": 19,
    "unsorted": 23,
    "latest": 29,
    "counted": 31,
}


# --------------------------------------------------------------------------- the oracle


def lua_count(value: object) -> float | None:
    """The prelude's ``to_count(tonumber(v))``: a non-negative exact integer, else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    n = float(value)
    if n != n or n < 0 or n >= MAX_EXACT or n != math.floor(n):
        return None
    return n


@dataclass(frozen=True)
class Entry:
    timestamp: float
    instance: str
    successes: float
    failures: float
    local_open: bool
    epoch: float


def parse_entry(raw: bytes | str) -> Entry | None:
    """The script's ``parse_entry``: a v1 entry, or None."""
    try:
        e = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(e, dict) or isinstance(e.get("v"), bool) or e.get("v") != 1:
        return None
    if not isinstance(e.get("instance"), str):
        return None
    fields = [lua_count(e.get(k)) for k in ("timestamp", "epoch", "successes", "failures")]
    timestamp, epoch, successes, failures = fields
    if timestamp is None or epoch is None or successes is None or failures is None:
        return None
    return Entry(timestamp, e["instance"], successes, failures, e.get("local_open") is True, epoch)


def failing(failures: float, volume: float, threshold: float) -> bool:
    return volume > 0 and failures * 100 > threshold * volume


def votes_of(pods: dict[str, list[float]], min_pod_volume: float, threshold: float) -> int:
    """Pods voting under a rule: their own trip, or their own rate with enough volume."""
    return sum(
        1
        for v, f, t, _ in pods.values()
        if t > 0 or (v >= min_pod_volume and failing(f, v, threshold))
    )


def sums_of(entries: list[Entry], epoch: float, min_pod_volume: float, threshold: float) -> Any:
    """Pooled and per-pod sums of ``entries``, trips counted for ``epoch``."""
    pods: dict[str, list[float]] = {}
    for e in entries:
        pod = pods.setdefault(e.instance, [0, 0, 0, 0])
        pod[0] += e.successes + e.failures
        pod[1] += e.failures
        pod[2] += 1 if e.local_open and e.epoch == epoch else 0
        pod[3] += 1
    reporting = sum(1 for v, _, t, _ in pods.values() if v > 0 or t > 0)
    votes = votes_of(pods, min_pod_volume, threshold)
    return {
        "volume": sum(p[0] for p in pods.values()),
        "failures": sum(p[1] for p in pods.values()),
        "trips": sum(p[2] for p in pods.values()),
        "reporting": reporting,
        "listed": len(pods),
        "votes": votes,
        "pods": {name: tuple(pod) for name, pod in pods.items()},
        "pod_lists": pods,
    }


def old_decision(
    raws: list[bytes | str],
    cutoff: float,
    epoch: float,
    decision: DecisionParams,
    *,
    appended: bool = False,
) -> str | None:
    """The decision as the script made it before it kept sums: every young entry read.

    ``appended``: the last entry is the report's own, young even when it is
    stamped in the millisecond of the last close (it came after the close).
    """
    p = decision.argv_values()
    parsed = [parse_entry(raw) for raw in raws]
    young = [
        e
        for i, e in enumerate(parsed)
        if e is not None and (e.timestamp > cutoff or (appended and i == len(parsed) - 1))
    ]
    if not p["quorum_count"] and not p["quorum_fraction"]:
        if any(e.local_open and e.epoch == epoch for e in young):
            return "local_trip"
        volume = sum(e.successes + e.failures for e in young)
        failures = sum(e.failures for e in young)
        if volume >= p["volume_threshold"] and failing(
            failures, volume, p["error_threshold_percentage"]
        ):
            return "pooled_rate"
        return None
    s = sums_of(young, epoch, p["min_pod_volume"], p["error_threshold_percentage"])
    needed = p["quorum_count"] or max(1, math.ceil(p["quorum_fraction"] * s["reporting"] - 1e-9))
    return "quorum" if s["votes"] >= needed else None


async def assert_sums_match_the_list(client: Client, keys: BreakerKeys = KEYS) -> dict[str, str]:
    """The pods hash holds exactly the sums of the list (and goes with an empty list)."""
    raws = await client.lrange(keys.stats, 0, -1)
    stored = {text(k): text(v) for k, v in (await client.hgetall(keys.pods)).items()}
    if not raws:
        assert not stored, "an empty list leaves no sums behind"
        return stored
    assert await client.type(keys.pods) == b"hash"
    header = {k: lua_count(stored.get(k)) for k in HEADER_COUNTS}
    assert None not in header.values(), stored
    min_pod_volume, threshold = (float(x) for x in stored["rule"].split(" "))
    entries = [e for e in map(parse_entry, raws) if e is not None]
    expected = sums_of(entries, header["epoch"] or 0, min_pod_volume, threshold)
    assert header["entries"] == header["counted"] == len(raws)
    for field in ("volume", "failures", "trips", "reporting", "listed", "votes"):
        assert header[field] == expected[field], (field, stored, expected)
    assert header["check"] == sum(w * (header[f] or 0) for f, w in CHECK_WEIGHTS.items()) % (
        10**9 + 7
    )
    others = [part.split("=") for part in stored["others"].split(";") if part]
    assert len(others) <= 3
    for rule, votes in others:
        other_volume, other_threshold = (float(x) for x in rule.split(" "))
        assert int(votes) == votes_of(expected["pod_lists"], other_volume, other_threshold)
    pods = {
        k.removeprefix("pod:"): tuple(float(x) for x in v.split(" "))
        for k, v in stored.items()
        if k.startswith("pod:")
    }
    assert pods == expected["pods"]
    # From `unsorted` on, timestamps are in order; `latest` bounds them all.
    positioned = [(i, e) for i, raw in enumerate(raws) if (e := parse_entry(raw)) is not None]
    unsorted = header["unsorted"] or 0
    tail = [e.timestamp for i, e in positioned if i >= unsorted]
    assert tail == sorted(tail), stored
    assert all(e.timestamp <= (header["latest"] or 0) for _, e in positioned)
    assert 0 < await client.pttl(keys.pods) <= await client.pttl(keys.stats) + 1_000
    return stored


async def a_moment_passes(client: Client) -> None:
    """Wait until Redis' clock has moved on by at least 1 ms."""
    start = await redis_now_ms(client)
    while await redis_now_ms(client) <= start:
        pass


async def state_before(client: Client) -> tuple[str, int, int, bool]:
    """(state, epoch, closed_at, unused) as the next script will load them.

    ``unused``: an open period that is over, or a half-open one without a live
    lease: a new trip may open it again.
    """
    state = await scripts_for(client).read_state(KEYS)
    if not state.exists:
        return "closed", 0, 0, False
    unused = (state.state == "open" and state.open_until_ms <= state.now_ms) or (
        state.state == "half_open" and state.lease_expires_ms == 0
    )
    return state.state, state.epoch, state.closed_at_ms, unused


def reopen_decision(
    raws: list[bytes | str], epoch: float, decision: DecisionParams, reporting: int
) -> str | None:
    """The decision on an opening nobody uses: new trips (of ``epoch``) alone count."""
    p = decision.argv_values()
    tripped = {
        e.instance
        for e in map(parse_entry, raws)
        if e is not None and e.local_open and e.epoch == epoch
    }
    if not tripped:
        return None
    if not p["quorum_count"] and not p["quorum_fraction"]:
        return "local_trip"
    needed = p["quorum_count"] or max(
        1, math.ceil(p["quorum_fraction"] * max(reporting, len(tripped)) - 1e-9)
    )
    return "quorum" if len(tripped) >= needed else None


async def checked_report(
    client: Client, instance: str = "pod-x", *, decision: DecisionParams = PARAMS, **kwargs: Any
) -> SharedState:
    """A report whose verdict is compared with the old whole-window decision."""
    name, epoch, closed_at, unused = await state_before(client)
    result = await report(client, instance, decision=decision, **kwargs)
    raws = await client.lrange(KEYS.stats, 0, -1)
    if name == "closed":
        cutoff = max(result.now_ms - decision.window_ms, closed_at)
        appended = any(kwargs.get(k) for k in ("successes", "failures", "fires", "local_open"))
        appended = appended or any(kwargs.get(k) for k in ("timeouts", "rejects"))
        expected = old_decision(raws, cutoff, epoch, decision, appended=appended)
    elif unused and kwargs.get("local_open"):
        entries = [e for e in map(parse_entry, raws) if e is not None]
        p = decision.argv_values()
        reporting = sums_of(entries, epoch, p["min_pod_volume"], 0)["reporting"]
        expected = reopen_decision(raws, epoch, decision, int(reporting))
    else:
        expected = None
    assert result.changed == (expected is not None), (name, expected, result)
    if expected is not None:
        assert result.reason == expected
    await assert_sums_match_the_list(client)
    return result


# --------------------------------------------------------------------------- random sequences


DECISIONS = [
    PARAMS,
    params(volume_threshold=5),
    params(quorum=2),
    params(quorum=0.5, min_pod_volume=3),
    params(quorum=0.5, min_pod_volume=6, error_threshold_percentage=30),
    params(max_entries=6, pod_entries=1),
    params(max_entries=2, pod_entries=1, quorum=1),
    params(window_ms=1),
    params(window_ms=4, volume_threshold=3),
]


async def random_step(
    client: Client, rng: random.Random, pods: list[str], *, may_damage: bool = True
) -> str:
    """One random operation: a "report", another "script", or a "foreign" write.

    ``may_damage`` False: the sums are left alone. Two damages between reports
    can cancel out where the checks look (a field deleted, another added:
    same HLEN); one is always noticed.
    """
    scripts = scripts_for(client)
    roll = rng.random()
    if roll < 0.62:
        state = await scripts.read_state(KEYS)
        counts: dict[str, Any] = {}
        if rng.random() < 0.85:
            successes, failures = rng.randint(0, 6), rng.randint(0, 6)
            counts = {
                "successes": successes,
                "failures": failures,
                "fires": successes + failures + rng.randint(0, 2),
                "timeouts": rng.randint(0, 1),
                "rejects": rng.randint(0, 1),
            }
        counts["local_open"] = rng.random() < 0.08
        known = max(0, state.epoch + rng.choice([0, 0, 0, -1, 1]))
        await checked_report(
            client,
            rng.choice(pods),
            decision=rng.choice(DECISIONS),
            known_epoch=known,
            jitter=0.0,  # open periods end at once: trials can follow
            **counts,
        )
        return "report"
    if roll < 0.67:
        await scripts.reset(KEYS, instance="ops", key_ttl_ms=PARAMS.key_ttl_ms)
    elif roll < 0.69:
        await scripts.force_open(KEYS, instance="ops")
    elif roll < 0.80:
        grant = await scripts.acquire_trial(KEYS, holder="trial", params=PARAMS)
        if grant.granted:
            await scripts.finish_trial(
                KEYS,
                holder="trial",
                epoch=grant.state.epoch,
                outcome=rng.choice(["success", "success", "failure"]),
                instance=rng.choice(pods),
                params=PARAMS,
                jitter=0.0,
            )
    elif roll < 0.85:
        # Another writer: garbage, or entries stamped out of order.
        now = await redis_now_ms(client)
        await seed(
            client,
            rng.choice(
                [
                    rng.choice(GARBAGE_ENTRIES),
                    entry(now - rng.randint(0, 20), rng.choice(pods), failures=rng.randint(0, 9)),
                    entry(now + rng.randint(1, 30), rng.choice(pods), successes=1),
                ]
            ),
        )
        return "foreign"
    elif roll < 0.90 and may_damage:
        await corrupt_sums(client, rng)
        return "damage"
    elif roll < 0.92:
        await scripts.cleanup_stats(KEYS, max_age_ms=rng.randint(0, 5))
        return "foreign"
    else:
        await client.time()  # a moment passes (the 1 ms windows trim)
    return "script"


async def corrupt_sums(client: Client, rng: random.Random) -> None:
    """Damage the pods hash in one of the ways the next report must notice."""
    if await client.type(KEYS.pods) not in (b"hash", b"none"):
        await client.delete(KEYS.pods)  # damaged before, not repaired yet
    fields = [text(k) for k in await client.hkeys(KEYS.pods)]
    header = [f for f in fields if not f.startswith("pod:") and f != "rule"]
    how = rng.randrange(6)
    if how == 0 and header:
        await client.hset(KEYS.pods, rng.choice(header), rng.choice(["x", "-1", "1.5", "", "nan"]))
    elif how == 1 and fields:
        await client.hdel(KEYS.pods, rng.choice(fields))
    elif how == 2:
        await client.delete(KEYS.pods)
    elif how == 3:
        await client.delete(KEYS.pods)
        await client.set(KEYS.pods, "not a hash")
    elif how == 4:
        await client.hset(KEYS.pods, "pod:ghost", "5 5 1 1")
    else:
        await client.hset(KEYS.pods, "unknown", "1")


@pytest.mark.parametrize("seed_", [1, 2, 3])
async def test_sums_follow_random_reports_trims_caps_and_closes(
    any_redis_client: Client, seed_: int
) -> None:
    """After every report the sums equal a recomputation, and verdicts equal the old ones."""
    rng = random.Random(seed_)
    pods = [f"pod-{i}" for i in range(6)]
    checked = 0
    foreign = damaged = False  # written behind the sums' back since the last report
    for _ in range(220):
        kind = await random_step(any_redis_client, rng, pods, may_damage=not damaged)
        damaged = kind == "damage" or (damaged and kind != "report")
        foreign = kind in ("foreign", "damage") or (foreign and kind != "report")
        if not foreign:  # checked_report has compared the sums after a report already
            await assert_sums_match_the_list(any_redis_client)
            checked += 1
    assert checked > 150


# --------------------------------------------------------------------------- sums, case by case


async def test_sums_are_kept_per_pod_and_pooled(any_redis_client: Client) -> None:
    """Three pods' reports: pooled sums, one field per pod, votes and reporting pods."""
    decision = params(quorum=2)
    await report(any_redis_client, "a", successes=4, failures=6, decision=decision)
    await report(any_redis_client, "b", successes=9, failures=1, decision=decision)
    await report(any_redis_client, "a", failures=2, decision=decision)
    await report(any_redis_client, "idle", rejects=3, decision=decision)
    stored = await assert_sums_match_the_list(any_redis_client)
    assert stored.pop("tail") == text(await any_redis_client.lindex(KEYS.stats, -1) or b"")
    assert {k: v for k, v in stored.items() if k not in ("latest", "refreshed", "check")} == {
        "rule": "0 50.0",
        "others": "",
        "entries": "4",
        "volume": "22",
        "failures": "9",
        "trips": "0",
        "epoch": "0",
        "reporting": "2",
        "listed": "3",
        "counted": "4",
        "votes": "1",
        "unsorted": "0",
        "pod:a": "12 8 0 2",
        "pod:b": "10 1 0 1",
        "pod:idle": "0 0 0 1",
    }


async def test_a_pod_whose_entries_leave_leaves_the_sums(any_redis_client: Client) -> None:
    """Trimmed out, a pod's counts go to zero and its field goes with them."""
    await report(any_redis_client, "gone", failures=3, decision=params(quorum=2))
    await a_moment_passes(any_redis_client)
    await report(any_redis_client, "stays", successes=1, decision=params(window_ms=1, quorum=2))
    stored = await assert_sums_match_the_list(any_redis_client)
    assert "pod:gone" not in stored
    assert (stored["reporting"], stored["listed"], stored["votes"]) == ("1", "1", "0")


async def test_the_key_goes_with_the_last_entry(any_redis_client: Client) -> None:
    """When trimming empties the list, the sums are deleted too; TTLs match the list's."""
    await report(any_redis_client, successes=1, decision=params(key_ttl_ms=20_000))
    assert 19_000 < await any_redis_client.pttl(KEYS.pods) <= 20_000
    await a_moment_passes(any_redis_client)
    await report(any_redis_client, decision=params(window_ms=1))
    assert await any_redis_client.exists(KEYS.stats, KEYS.pods) == 0


async def test_a_close_restarts_the_sums(any_redis_client: Client) -> None:
    """After a trial success the old entries and their trip leave the sums."""
    scripts = scripts_for(any_redis_client)
    opened = await report(any_redis_client, "sick", local_open=True, failures=5, jitter=0.0)
    assert opened.state == "open"
    grant = await scripts.acquire_trial(KEYS, holder="t", params=PARAMS)
    closed = await scripts.finish_trial(
        KEYS, holder="t", epoch=grant.state.epoch, outcome="success", instance="x", params=PARAMS
    )
    assert closed.state == "closed"
    after = await checked_report(any_redis_client, instance="fine", successes=2)
    assert after.state == "closed"
    stored = await assert_sums_match_the_list(any_redis_client)
    assert (stored["epoch"], stored["trips"], stored["volume"]) == (str(closed.epoch), "0", "2")


async def test_trips_of_the_open_period_do_not_survive_the_close(any_redis_client: Client) -> None:
    """A trip reported while open is counted for that epoch only, never after the close."""
    opened = await report(any_redis_client, local_open=True)
    await report(any_redis_client, "late", local_open=True, known_epoch=opened.epoch)
    assert (await assert_sums_match_the_list(any_redis_client))["trips"] == "1"
    reset = await scripts_for(any_redis_client).reset(KEYS, instance="ops", key_ttl_ms=60_000)
    state = await checked_report(any_redis_client, successes=1, known_epoch=reset.epoch)
    assert state.state == "closed"


async def test_options_of_another_pod_recount_the_votes(any_redis_client: Client) -> None:
    """Votes are recounted from the pod fields when min_pod_volume or the threshold differ."""
    for pod in ("a", "b"):
        await report(any_redis_client, pod, failures=4, decision=params(quorum=3))
    strict = params(quorum=2, min_pod_volume=5)
    state = await checked_report(any_redis_client, "c", decision=strict, successes=1)
    assert state.state == "closed"
    stored = await assert_sums_match_the_list(any_redis_client)
    assert (stored["rule"], stored["votes"]) == ("5 50.0", "0")
    lenient = params(quorum=2, min_pod_volume=4)
    state = await checked_report(any_redis_client, "c", decision=lenient, successes=1)
    assert (state.state, state.reason) == ("open", "quorum")


async def test_out_of_order_entries_are_judged_by_reading_until_popped(
    any_redis_client: Client,
) -> None:
    """Behind a young head, old entries do not count; once popped, sums alone decide."""
    now = await redis_now_ms(any_redis_client)
    window = PARAMS.window_ms
    await seed(
        any_redis_client,
        entry(now - window + 300, "young", successes=1),
        entry(now - window - 1, "stepped-back", failures=100),
    )
    state = await checked_report(any_redis_client, successes=1)
    assert state.state == "closed"
    stored = await assert_sums_match_the_list(any_redis_client)
    assert stored["unsorted"] == "1"
    # The young head ages out; the stepped-back entry goes with it.
    await a_moment_passes(any_redis_client)
    decision = params(window_ms=window - 300)
    await checked_report(any_redis_client, decision=decision, successes=1)
    stored = await assert_sums_match_the_list(any_redis_client)
    assert (stored["unsorted"], stored["volume"]) == ("0", "2")


async def test_a_later_stamp_in_the_list_marks_new_entries_unsorted(
    any_redis_client: Client,
) -> None:
    """An entry stamped after Redis' now (a clock stepped back) makes appends out of order."""
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, entry(now + 60_000, "future", successes=1))
    await checked_report(any_redis_client, successes=1)  # rebuilt: behind the later stamp
    await checked_report(any_redis_client, "next", failures=1)
    stored = await assert_sums_match_the_list(any_redis_client)
    assert stored["unsorted"] == "2"
    assert stored["latest"] == str(now + 60_000)


# --------------------------------------------------------------------------- damage is repaired


@pytest.mark.parametrize("garbage", GARBAGE_ENTRIES)
async def test_garbage_entries_never_enter_the_sums(any_redis_client: Client, garbage: str) -> None:
    """Garbage written between reports is counted nowhere, wherever it sits."""
    await report(any_redis_client, "a", failures=1, successes=3)
    await seed(any_redis_client, garbage)
    await checked_report(any_redis_client, "b", successes=2)
    await seed(any_redis_client, garbage)
    state = await checked_report(any_redis_client, "c", failures=1, successes=1)
    assert state.state == "closed"  # 2 failures of 8


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *((field, value) for field in ("rule", "tail", *HEADER_COUNTS) for value in (None, "x")),
        ("others", None),
        ("others", "0 50.0=x"),
        ("others", "1 2=1;1 3=1;1 4=1;1 5=1"),
        *((field, value) for field in HEADER_COUNTS for value in ("", "-1", "2.5", "1e400")),
        ("entries", "4"),
        ("failures", "99999"),
        ("trips", "99"),
        ("reporting", "2"),
        ("listed", "2"),
        ("votes", "4"),
        ("unsorted", "9"),
        ("epoch", "1"),
        ("tail", entry(0)),
        ("unknown", "1"),
        ("pod:ghost", "1 0 0"),
    ],
)
async def test_damaged_sums_are_rebuilt_from_the_list(
    any_redis_client: Client, field: str, value: str | None
) -> None:
    """A missing, unreadable or impossible field, or one too many, is not trusted: the list is."""
    for pod in ("a", "b", "c"):
        await report(any_redis_client, pod, successes=5, failures=4)
    if value is None:
        await any_redis_client.hdel(KEYS.pods, field)
    else:
        await any_redis_client.hset(KEYS.pods, field, value)
    state = await checked_report(any_redis_client, "d", successes=1)
    assert state.state == "closed"  # 12 failures of 28
    await checked_report(any_redis_client, "d", failures=4)  # 16 of 32: still not above
    state = await checked_report(any_redis_client, "d", failures=1)
    assert (state.state, state.reason) == ("open", "pooled_rate")


@pytest.mark.parametrize(
    "damage",
    ["missing-pod", "garbage-pod", "negative-pod", "failures-above-volume", "wrong-type", "gone"],
)
async def test_damaged_pods_are_rebuilt_from_the_list(
    any_redis_client: Client, damage: str
) -> None:
    """A pod field that is gone or wrong, or the whole key, is rebuilt when it is needed."""
    await report(any_redis_client, "a", successes=6)
    await report(any_redis_client, "b", successes=3, failures=3)
    if damage == "missing-pod":
        await any_redis_client.hdel(KEYS.pods, "pod:a")
    elif damage == "garbage-pod":
        await any_redis_client.hset(KEYS.pods, "pod:a", "six")
    elif damage == "negative-pod":
        await any_redis_client.hset(KEYS.pods, "pod:a", "-6 -6 0 1")
    elif damage == "failures-above-volume":
        await any_redis_client.hset(KEYS.pods, "pod:a", "1 6 0 1")
    elif damage == "wrong-type":
        await any_redis_client.delete(KEYS.pods)
        await any_redis_client.rpush(KEYS.pods, "x")
    else:
        await any_redis_client.delete(KEYS.pods)
    # The trim pops pod a's entry: its field is read and must be right.
    await a_moment_passes(any_redis_client)
    decision = params(window_ms=1)
    state = await checked_report(any_redis_client, "c", decision=decision, successes=1)
    assert state.state == "closed"


async def test_a_stray_pod_field_cannot_sway_a_recount(any_redis_client: Client) -> None:
    """A pod nobody reported, found while recounting votes, sends the sums to a rebuild."""
    await report(any_redis_client, "a", failures=4, decision=params(quorum=2))
    await any_redis_client.hset(KEYS.pods, "pod:ghost", "9 9 0")
    decision = params(quorum=2, min_pod_volume=1)
    state = await checked_report(any_redis_client, "b", decision=decision, successes=1)
    assert state.state == "closed"  # one vote (a), not two
    assert "pod:ghost" not in await assert_sums_match_the_list(any_redis_client)


async def test_cleanup_by_an_operator_is_noticed(any_redis_client: Client) -> None:
    """cleanup_stats pops entries behind the sums' back; the list length gives it away."""
    hour = params(window_ms=3_600_000, key_ttl_ms=3_600_000)
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, entry(now - 40 * 60_000, "old", failures=9))
    await checked_report(any_redis_client, "a", decision=hour, successes=9)
    assert (await assert_sums_match_the_list(any_redis_client))["failures"] == "9"
    assert await scripts_for(any_redis_client).cleanup_stats(KEYS) == 1
    state = await checked_report(any_redis_client, "b", decision=hour, failures=9)
    assert state.state == "closed"  # 9 failures of 18, not 18 of 27
    assert (await assert_sums_match_the_list(any_redis_client))["failures"] == "9"


async def test_stale_sums_of_an_empty_list_are_dropped(any_redis_client: Client) -> None:
    """Sums left behind by a deleted list count nothing and are deleted."""
    await report(any_redis_client, "a", failures=9, decision=params(volume_threshold=100))
    await any_redis_client.delete(KEYS.stats)
    await checked_report(any_redis_client, "b")
    assert await any_redis_client.exists(KEYS.pods) == 0
    state = await checked_report(any_redis_client, "b", successes=1)
    assert state.state == "closed"


# --------------------------------------------------------------------------- writes and cost


async def test_ttls_are_renewed_every_quarter_of_their_life(any_redis_client: Client) -> None:
    """Reports renew the TTLs once a quarter of key_ttl_ms has passed since the last
    renewal, not at every report; an idle report never rewrites the state hash."""
    decision = params(key_ttl_ms=60_000)
    await report(any_redis_client, successes=1, decision=decision)
    await any_redis_client.hset(KEYS.state, "epoch", "00")
    for key in (KEYS.state, KEYS.stats, KEYS.pods):
        await any_redis_client.pexpire(key, 50_000)
    await report(any_redis_client, decision=decision)  # renewed a moment ago: left alone
    for key in (KEYS.state, KEYS.stats, KEYS.pods):
        assert await any_redis_client.pttl(key) <= 50_000
    now = await redis_now_ms(any_redis_client)
    stored = await assert_sums_match_the_list(any_redis_client)
    await any_redis_client.hset(KEYS.pods, "refreshed", now - 15_000)  # a quarter ago
    state = await report(any_redis_client, decision=decision)
    assert (state.epoch, state.changed) == (0, False)
    assert await any_redis_client.hget(KEYS.state, "epoch") == b"00"
    for key in (KEYS.state, KEYS.stats, KEYS.pods):
        assert await any_redis_client.pttl(key) > 55_000
    assert int((await assert_sums_match_the_list(any_redis_client))["refreshed"]) >= now
    assert stored["volume"] == "1"


async def test_an_opening_report_writes_the_state(any_redis_client: Client) -> None:
    """A report that opens the breaker writes the whole state, as before."""
    await report(any_redis_client, successes=1)
    await any_redis_client.hset(KEYS.state, "epoch", "00")
    state = await report(any_redis_client, failures=5)
    assert state.state == "open"
    assert await any_redis_client.hget(KEYS.state, "epoch") == b"1"


async def commandstats(client: Client) -> dict[str, int]:
    """Calls per command (lower case) since the last CONFIG RESETSTAT."""
    info = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in info.items()}


async def test_busy_reports_never_read_the_whole_list(redis_client: Client) -> None:
    """50 pods x 10 entries: a busy report is nine commands inside the script, none of
    them reading the whole list or hash, none rewriting the state hash or a TTL."""
    decision = params(window_ms=3_600_000, key_ttl_ms=3_600_000, volume_threshold=20)
    for _ in range(10):
        for pod in range(50):
            await report(redis_client, f"pod-{pod}", successes=19, failures=1, decision=decision)
    await redis_client.config_resetstat()
    for pod in range(50):
        state = await report(
            redis_client, f"pod-{pod}", successes=19, failures=1, decision=decision
        )
        assert state.state == "closed"
    calls = await commandstats(redis_client)
    assert calls.pop("config|resetstat", 0) <= 1
    commands = ("evalsha", "time", "hgetall", "rpush", "lindex", "lrange", "hmget", "hlen", "hset")
    assert calls == dict.fromkeys(commands, 50)
    await assert_sums_match_the_list(redis_client)


async def until(client: Client, ms: int) -> None:
    """Wait until Redis' clock reads ``ms``."""
    while await redis_now_ms(client) < ms:
        pass


async def test_a_steady_window_pops_the_aged_head_in_one_command(redis_client: Client) -> None:
    """Entries leaving the window go in one LPOP, their pods read with the sums."""
    hour = params(window_ms=3_600_000, key_ttl_ms=3_600_000)
    start = await redis_now_ms(redis_client)
    for pod in range(3):
        await report(redis_client, f"old-{pod}", successes=1, decision=hour)
    await until(redis_client, start + 100)
    young = await redis_now_ms(redis_client)
    for pod in range(3):
        await report(redis_client, f"young-{pod}", successes=1, decision=hour)
    await redis_client.config_resetstat()
    # The window ends between the two groups (50 ms of slack either side).
    window = await redis_now_ms(redis_client) - young + 50
    await report(redis_client, "young-0", successes=1, decision=params(window_ms=window))
    calls = await commandstats(redis_client)
    assert (calls["lpop"], calls["lrange"], calls["hmget"]) == (1, 1, 1)
    assert await stats_instances(redis_client) == ["young-0", "young-1", "young-2", "young-0"]
    stored = await assert_sums_match_the_list(redis_client)
    assert not any(field.startswith("pod:old") for field in stored)
