"""report_window.lua's tally and the plain report: who reads every pod's window, and when.

One pod per breaker and per lease period tallies (reads the windows hash,
decides, caps the list, renews the TTLs, and leaves a snapshot of the state
and the pooled figures in the lease); every other report writes its own entry
and field and reads that snapshot. A trip is judged at once. See the header
of report_window.lua. Runs on a private real redis-server and on fakeredis.
"""

from __future__ import annotations

import json

import pytest
from transport_support import (
    KEYS,
    PARAMS,
    Client,
    entry,
    open_then_half_open,
    params,
    redis_now_ms,
    report,
    seed,
    seed_windows,
    stats_instances,
    text,
    window_field,
    window_fields,
)

from distributed_opossum._redis.scripts import (
    PlainReply,
    PodWindow,
    PooledWindow,
    SharedState,
    WindowReport,
    scripts_for,
)


async def lease_value(client: Client) -> str | None:
    """The tally lease as text: a holder's id, or a tally's snapshot; None when free."""
    value = await client.get(KEYS.tally)
    return None if value is None else text(value)


async def tally_holder(client: Client) -> str | None:
    """Who holds the tally lease (the first word of its value), or None."""
    value = await lease_value(client)
    return None if value is None else value.split(" ")[0]


async def created(client: Client) -> SharedState:
    """The state hash, made by an empty report; then its lease expires (deleted here).

    The report that made the state tallied: its snapshot shows the new state (it
    is written after the state, whose change deletes the old one).
    """
    state = await report(client, "creator")
    assert (await lease_value(client) or "").split(" ")[:2] == ["creator", state.gen]
    await client.delete(KEYS.tally)
    return state


# --------------------------------------------------------------------------- the lease


async def test_one_tally_per_lease(any_redis_client: Client) -> None:
    """The first report takes the lease and tallies; the next, within lease_ms, only
    writes its entry and field (its failures wait); once the lease is gone, the next
    report tallies and judges them."""
    await created(any_redis_client)
    first = await report(any_redis_client, "a", successes=1, holds_lease=False)
    assert first.window == PooledWindow(volume=1, failures=0, reporting=1, votes=0)
    assert await tally_holder(any_redis_client) == "a"
    assert 0 < await any_redis_client.pttl(KEYS.tally) <= 1_000

    # 3 failures of 4 in the pool: a tally would open.
    second = await report(any_redis_client, "b", failures=3, holds_lease=False)
    assert second.window is None
    assert (second.state, second.changed) == ("closed", False)
    fields = await window_fields(any_redis_client)
    assert fields["pod:b"] == window_field(second.now_ms, second.gen, 0, 3, 3, 0)
    assert await tally_holder(any_redis_client) == "a"

    await any_redis_client.delete(KEYS.tally)  # the lease expires
    third = await report(any_redis_client, "c", successes=1, holds_lease=False)
    assert (third.state, third.reason) == ("open", "pooled_rate")
    assert third.window == PooledWindow(volume=5, failures=3, reporting=3, votes=1)


async def test_every_report_keeps_its_entry(any_redis_client: Client) -> None:
    """Tallying or not, each report appends its entry, and no tally removes one (under
    the cap)."""
    await created(any_redis_client)
    await report(any_redis_client, "a", successes=1, holds_lease=False)
    await report(any_redis_client, "b", failures=3, holds_lease=False)
    await report(any_redis_client, "c", successes=1)
    assert await stats_instances(any_redis_client) == ["a", "b", "c"]


async def test_the_lease_lasts_lease_ms(any_redis_client: Client) -> None:
    """A lease taken by the script is its SET NX PX of the report's lease_ms."""
    await created(any_redis_client)
    await report(any_redis_client, "a", holds_lease=False, lease_ms=50)
    assert await tally_holder(any_redis_client) == "a"
    assert 0 < await any_redis_client.pttl(KEYS.tally) <= 50


async def test_a_report_that_does_not_tally_leaves_the_list_and_windows(
    any_redis_client: Client,
) -> None:
    """No cap and no removal of old fields: only a tally does those."""
    await created(any_redis_client)
    now = await redis_now_ms(any_redis_client)
    await seed_windows(any_redis_client, ("gone", 0, 5), ts=now - PARAMS.window_ms - 1)
    await any_redis_client.set(KEYS.tally, "someone", px=10_000)
    await seed(any_redis_client, *(entry(now, "flood", successes=1) for _ in range(5)))
    decision = params(max_entries=3, pod_entries=1)
    state = await report(any_redis_client, "a", successes=1, decision=decision, holds_lease=False)
    assert state.window is None
    assert await any_redis_client.llen(KEYS.stats) == 6
    assert sorted(await window_fields(any_redis_client)) == ["pod:a", "pod:gone"]
    assert await lease_value(any_redis_client) == "someone"
    tallied = await report(any_redis_client, "a", successes=1, decision=decision)
    assert tallied.window == PooledWindow(volume=1, failures=0, reporting=1, votes=0)
    assert await stats_instances(any_redis_client) == ["flood", "a", "a"]  # max(3, 2 * 1)
    assert list(await window_fields(any_redis_client)) == ["pod:a"]


async def test_holding_the_lease_tallies_whoever_the_key_names(any_redis_client: Client) -> None:
    """A pod that won the lease in its plain report tallies, and leaves its snapshot."""
    await created(any_redis_client)
    await any_redis_client.set(KEYS.tally, "someone", px=10_000)
    state = await report(any_redis_client, "b", successes=1, lease_ms=700)
    assert state.window == PooledWindow(volume=1, failures=0, reporting=1, votes=0)
    assert await tally_holder(any_redis_client) == "b"
    assert 0 < await any_redis_client.pttl(KEYS.tally) <= 700


async def test_a_change_of_the_state_frees_the_lease(any_redis_client: Client) -> None:
    """The tally that opens leaves no snapshot (of the state it just changed): the next
    report tallies the new state, and snapshots it."""
    await created(any_redis_client)
    opened = await report(any_redis_client, "b", failures=1)
    assert (opened.state, opened.changed) == ("open", True)
    assert await any_redis_client.exists(KEYS.tally) == 0
    after = await report(any_redis_client, "c", rejects=2, holds_lease=False, known_epoch=1)
    assert after.window is not None
    assert (await lease_value(any_redis_client) or "").split(" ")[:4] == [
        "c",
        opened.gen,
        "1",
        "open",
    ]


# --------------------------------------------------------------------------- trips


@pytest.mark.parametrize("holds_lease", [False, True])
async def test_a_trip_without_quorum_opens_without_tallying(
    any_redis_client: Client, holds_lease: bool
) -> None:
    """A trip anywhere opens a closed breaker: nobody else's window is read."""
    await created(any_redis_client)
    now = await redis_now_ms(any_redis_client)
    await seed_windows(any_redis_client, ("gone", 0, 5), ts=now - PARAMS.window_ms - 1)
    await any_redis_client.set(KEYS.tally, "someone", px=10_000)
    state = await report(any_redis_client, "tripper", local_open=True, holds_lease=holds_lease)
    assert (state.state, state.reason, state.changed) == ("open", "local_trip", True)
    assert state.window is None
    assert "pod:gone" in await window_fields(any_redis_client)  # no tally removed it
    assert await any_redis_client.exists(KEYS.tally) == 0  # the change freed the lease


async def test_a_trip_with_quorum_tallies(any_redis_client: Client) -> None:
    """With quorum a trip is a vote: it is tallied at once, whoever holds the lease."""
    await created(any_redis_client)
    await seed_windows(any_redis_client, ("sick", 0, 10))
    await any_redis_client.set(KEYS.tally, "someone", px=10_000)
    alone = await report(
        any_redis_client, "tripper", local_open=True, decision=params(quorum=3), holds_lease=False
    )
    assert (alone.state, alone.changed) == ("closed", False)
    assert alone.window == PooledWindow(volume=10, failures=10, reporting=2, votes=2)
    assert await tally_holder(any_redis_client) == "tripper"
    await any_redis_client.set(KEYS.tally, "someone", px=10_000)
    state = await report(
        any_redis_client, "tripper", local_open=True, decision=params(quorum=2), holds_lease=False
    )
    assert (state.state, state.reason, state.changed) == ("open", "quorum", True)
    assert state.window == PooledWindow(volume=10, failures=10, reporting=2, votes=2)


# --------------------------------------------------------------------------- fleet scale


async def test_a_tally_of_a_thousand_pods(any_redis_client: Client) -> None:
    """1,000 pods' fields: every one is kept and counted, and the decision is exact."""
    decision = params(quorum=0.3)
    state = await created(any_redis_client)
    pipe = any_redis_client.pipeline(transaction=False)
    for i in range(1_000):
        failures = 10 if i < 300 else 0
        value = window_field(state.now_ms, state.gen, 0, 10, failures, 0)
        pipe.hset(KEYS.pods, f"pod:p{i}", value)
    await pipe.execute()
    healthy = await report(any_redis_client, "healthy", successes=10, decision=decision)
    # 300 votes of 1,001 pods: ceil(0.3 * 1001) = 301 needed.
    assert (healthy.state, healthy.changed) == ("closed", False)
    assert healthy.window == PooledWindow(volume=10_010, failures=3_000, reporting=1_001, votes=300)
    assert await any_redis_client.hlen(KEYS.pods) == 1_001
    sick = await report(any_redis_client, "sick", failures=10, decision=decision)
    # 301 votes of 1,002 pods: ceil(0.3 * 1002) = 301 needed.
    assert (sick.state, sick.reason) == ("open", "quorum")
    assert sick.window == PooledWindow(volume=10_020, failures=3_010, reporting=1_002, votes=301)
    assert await any_redis_client.hlen(KEYS.pods) == 1_002


async def test_the_cap_of_a_thousand_pods_keeps_their_entries(any_redis_client: Client) -> None:
    """1,000 pods x 3 entries: a fixed max_entries of 1,000 would cut the window; the
    cap is (1,000 + 1) * pod_entries."""
    state = await created(any_redis_client)
    now = state.now_ms
    await seed(any_redis_client, *(entry(now, f"p{i % 1_000}", successes=1) for i in range(3_000)))
    await seed_windows(any_redis_client, *((f"p{i}", 3, 0) for i in range(1_000)))
    decision = params(max_entries=1_000, pod_entries=3)
    tallied = await report(any_redis_client, "newest", successes=1, decision=decision)
    assert tallied.window is not None
    assert tallied.window.reporting == 1_001
    assert await any_redis_client.llen(KEYS.stats) == 3_001  # cap 3,003: nothing cut


# --------------------------------------------------------------------------- snapshot and TTLs


async def test_a_tally_leaves_its_snapshot_in_the_lease(any_redis_client: Client) -> None:
    """The lease holds "<holder> <gen> <epoch> <state> <now> <volume> <failures>
    <reporting> <votes>" of the last tally, for lease_ms; a close deletes it."""
    await created(any_redis_client)
    await seed_windows(any_redis_client, ("sick", 0, 2))
    state = await report(any_redis_client, "a", successes=6, lease_ms=5_000)
    snapshot = f"a {state.gen} 0 closed {state.now_ms} 8 2 2 1"
    assert await lease_value(any_redis_client) == snapshot
    assert state.window == PooledWindow(volume=8, failures=2, reporting=2, votes=1)
    assert 4_000 < await any_redis_client.pttl(KEYS.tally) <= 5_000
    skipped = await report(any_redis_client, "b", failures=1, holds_lease=False)
    assert skipped.window is None
    assert await lease_value(any_redis_client) == snapshot
    closed = await scripts_for(any_redis_client).reset(KEYS, instance="ops", key_ttl_ms=60_000)
    assert closed.state == "closed"
    assert await any_redis_client.exists(KEYS.tally) == 0


async def test_ttls_are_renewed_by_a_tally_every_quarter(any_redis_client: Client) -> None:
    """A tally renews every key's TTL once a quarter of key_ttl_ms has passed since the
    last renewal (the state's `refreshed`), or when `refreshed` lies ahead of Redis'
    clock; a report that does not tally renews nothing."""
    decision = params(key_ttl_ms=60_000)
    keys = (KEYS.state, KEYS.stats, KEYS.pods)
    first = await report(any_redis_client, "a", successes=1, decision=decision)
    refreshed = await any_redis_client.hget(KEYS.state, "refreshed")
    assert refreshed is not None
    assert int(refreshed) == first.now_ms
    for key in keys:
        await any_redis_client.pexpire(key, 50_000)
    await report(any_redis_client, "a", successes=1, decision=decision)  # renewed a moment ago
    for key in keys:
        assert 0 < await any_redis_client.pttl(key) <= 50_000

    now = await redis_now_ms(any_redis_client)
    await any_redis_client.hset(KEYS.state, "refreshed", now - 15_000)  # a quarter ago
    skipped = await report(any_redis_client, "b", successes=1, decision=decision, holds_lease=False)
    assert skipped.window is None
    for key in keys:
        assert 0 < await any_redis_client.pttl(key) <= 50_000
    tallied = await report(any_redis_client, "a", successes=1, decision=decision)
    for key in keys:
        assert 55_000 < await any_redis_client.pttl(key) <= 60_000
    assert int(await any_redis_client.hget(KEYS.state, "refreshed") or 0) == tallied.now_ms

    for key in keys:
        await any_redis_client.pexpire(key, 50_000)
    await any_redis_client.hset(KEYS.state, "refreshed", now + 3_600_000)  # clock stepped back
    await report(any_redis_client, "a", successes=1, decision=decision)
    for key in keys:
        assert 55_000 < await any_redis_client.pttl(key) <= 60_000


# --------------------------------------------------------------------------- plain reports


async def plain(
    client: Client,
    bucket: WindowReport,
    *,
    gen: str,
    epoch: int = 0,
    window: PodWindow | None = None,
    instance: str = "pod-p",
    redis_ms: int | None = None,
) -> PlainReply:
    """One plain report, alone in its batch; its result."""
    batch = scripts_for(client).batch()
    batch.plain_report(
        KEYS,
        bucket,
        instance=instance,
        gen=gen,
        epoch=epoch,
        window=PodWindow.of(bucket) if window is None else window,
        redis_ms=await redis_now_ms(client) if redis_ms is None else redis_ms,
        lease_ms=1_000,
    )
    [result] = await batch.execute()
    assert isinstance(result, PlainReply)
    return result


async def test_a_plain_report_appends_writes_and_reads_the_snapshot(
    any_redis_client: Client,
) -> None:
    """RPUSH of the entry, HSET of the pod's window, SET NX PX GET of the lease: the
    last tally's snapshot while it lasts."""
    await created(any_redis_client)
    tallied = await report(any_redis_client, "a", successes=6)
    now = await redis_now_ms(any_redis_client)
    bucket = WindowReport(fires=5, successes=3, failures=1, timeouts=1)
    first = await plain(
        any_redis_client, bucket, gen=tallied.gen, window=PodWindow(10, 2, 0), redis_ms=now
    )
    assert first.now_ms >= now
    assert first == PlainReply(
        tally=False,
        now_ms=first.now_ms,
        gen=tallied.gen,
        epoch=0,
        state="closed",
        window=PooledWindow(volume=6, failures=0, reporting=1, votes=0),
        snapshot=f"{tallied.gen} 0 closed {first.snapshot.split(' ')[3]} 6 0 1 0"
        if first.snapshot
        else "missing",
    )
    read = await scripts_for(any_redis_client).read_state(KEYS)
    assert (first.gen, first.epoch, first.state) == (read.gen, read.epoch, read.state)
    raw = await any_redis_client.lindex(KEYS.stats, -1)
    assert raw is not None
    assert json.loads(raw) == {
        "v": 1,
        "timestamp": now,
        "instance": "pod-p",
        "fires": 5,
        "successes": 3,
        "failures": 1,
        "timeouts": 1,
        "rejects": 0,
        "local_open": False,
        "epoch": 0,
    }
    fields = await window_fields(any_redis_client)
    assert fields["pod:pod-p"] == window_field(now, tallied.gen, 0, 10, 2, 0)
    assert await tally_holder(any_redis_client) == "a"  # the snapshot stays


async def test_a_plain_report_wins_a_free_lease(any_redis_client: Client) -> None:
    """The first plain report after the lease went wins it (tally); the next one reads
    the bare holder (no snapshot: a tally under way); the winner's tally counts every
    plain report's window."""
    state = await created(any_redis_client)
    won = await plain(any_redis_client, WindowReport(successes=1), gen=state.gen, instance="q")
    assert won == PlainReply(tally=True, now_ms=won.now_ms)
    assert await lease_value(any_redis_client) == "q"
    assert 0 < await any_redis_client.pttl(KEYS.tally) <= 1_000
    later = await plain(any_redis_client, WindowReport(failures=1), gen=state.gen, instance="r")
    assert later == PlainReply(tally=False, now_ms=later.now_ms)
    assert await lease_value(any_redis_client) == "q"
    tallied = await report(any_redis_client, "q", window=PodWindow(1, 0, 0))
    assert tallied.window == PooledWindow(volume=2, failures=1, reporting=2, votes=1)
    assert await tally_holder(any_redis_client) == "q"


async def test_an_empty_plain_report_removes_the_field(any_redis_client: Client) -> None:
    """No calls and no trip in the window: HDEL of the field; an empty bucket: no entry."""
    state = await report(any_redis_client, "pod-p", successes=1)
    assert "pod:pod-p" in await window_fields(any_redis_client)
    await plain(any_redis_client, WindowReport(), gen=state.gen)
    assert await window_fields(any_redis_client) == {}
    assert await stats_instances(any_redis_client) == ["pod-p"]


async def test_a_plain_report_reads_an_open_state_from_the_snapshot(
    any_redis_client: Client,
) -> None:
    """After an open, the next tally snapshots the open state; plain reports read it."""
    await created(any_redis_client)
    opened = await report(any_redis_client, "a", local_open=True)
    won = await plain(any_redis_client, WindowReport(rejects=3), gen=opened.gen, epoch=1)
    assert won.tally
    await report(any_redis_client, "pod-p", known_epoch=1, known_gen=opened.gen)
    result = await plain(any_redis_client, WindowReport(rejects=3), gen=opened.gen, epoch=1)
    assert (result.tally, result.gen, result.epoch, result.state) == (
        False,
        opened.gen,
        1,
        "open",
    )


async def test_a_trial_starting_frees_the_lease(any_redis_client: Client) -> None:
    """open -> half_open is a change of the state: the snapshot of the open goes."""
    opened = await open_then_half_open(any_redis_client)
    await report(any_redis_client, "a", known_epoch=1, known_gen=opened.gen)
    assert await tally_holder(any_redis_client) == "a"
    grant = await scripts_for(any_redis_client).acquire_trial(KEYS, holder="t", params=PARAMS)
    assert (grant.state.state, grant.state.changed) == ("half_open", True)
    assert await any_redis_client.exists(KEYS.tally) == 0
    result = await plain(any_redis_client, WindowReport(successes=1), gen=opened.gen, epoch=2)
    assert result.tally


async def test_a_plain_report_without_a_state_wins_the_lease(any_redis_client: Client) -> None:
    """Nothing in Redis: the lease is free, so the pod tallies next (and the script
    creates the state); the entry and the field are written all the same."""
    result = await plain(any_redis_client, WindowReport(successes=1), gen="g")
    assert result == PlainReply(tally=True, now_ms=result.now_ms)
    assert await any_redis_client.exists(KEYS.state) == 0
    assert await stats_instances(any_redis_client) == ["pod-p"]
    assert list(await window_fields(any_redis_client)) == ["pod:pod-p"]
    state = await report(any_redis_client, "pod-p", successes=1)
    assert state.exists


async def test_a_trip_is_never_reported_plain(fake_redis_client: Client) -> None:
    """A trip needs the script; nothing is sent."""
    batch = scripts_for(fake_redis_client).batch()
    with pytest.raises(ValueError, match="trip"):
        batch.plain_report(
            KEYS,
            WindowReport(local_open=True),
            instance="p",
            gen="g",
            epoch=0,
            window=PodWindow(0, 0, 1),
            redis_ms=1,
            lease_ms=1_000,
        )
    assert len(batch) == 0
    assert await fake_redis_client.dbsize() == 0


@pytest.mark.parametrize("key", ["stats", "pods", "tally"])
async def test_a_key_of_the_wrong_type_sends_the_pod_to_the_script(
    any_redis_client: Client, key: str
) -> None:
    """WRONGTYPE on any key: the pod tallies next (PlainReply with tally, nothing
    learnt), and the script replaces the key."""
    state = await created(any_redis_client)
    await any_redis_client.hset(getattr(KEYS, key), "not", "ours")
    if key == "pods":
        await any_redis_client.delete(KEYS.pods)
        await any_redis_client.set(KEYS.pods, "not ours")
    result = await plain(any_redis_client, WindowReport(successes=1), gen=state.gen)
    assert result == PlainReply(tally=True, now_ms=result.now_ms)
    tallied = await report(any_redis_client, "pod-p", successes=1)
    assert tallied.window is not None
    assert await any_redis_client.type(KEYS.stats) == b"list"
    assert await any_redis_client.type(KEYS.pods) == b"hash"
    assert await any_redis_client.type(KEYS.tally) == b"string"
    assert "pod:pod-p" in await window_fields(any_redis_client)
    assert await tally_holder(any_redis_client) == "pod-p"


# --------------------------------------------------------------------------- regressions


async def test_the_keys_made_again_after_a_close_get_their_ttls(any_redis_client: Client) -> None:
    """A close deletes the list and the windows; those the next reports make again
    get their TTLs at the next tally, not a quarter of key_ttl_ms later."""
    await report(any_redis_client, "a", successes=1)
    await scripts_for(any_redis_client).reset(KEYS, instance="ops", key_ttl_ms=60_000)
    await report(any_redis_client, "a", successes=1)
    assert await any_redis_client.pttl(KEYS.stats) > 0
    assert await any_redis_client.pttl(KEYS.pods) > 0


async def test_a_field_from_the_future_counts_nowhere(any_redis_client: Client) -> None:
    """A pod's clock estimate is off by a round trip: a field stamped a window or more
    ahead of Redis is forged or corrupt, and goes."""
    now = await redis_now_ms(any_redis_client)
    await seed_windows(any_redis_client, ("ghost", 0, 100), ts=now + PARAMS.window_ms + 5_000)
    state = await report(any_redis_client, "a", successes=1)
    assert state.state == "closed"
    assert state.window == PooledWindow(volume=1, failures=0, reporting=1, votes=0)
    assert "pod:ghost" not in await window_fields(any_redis_client)


async def test_a_lease_without_ttl_is_taken_over(any_redis_client: Client) -> None:
    """A stray SET of the lease key (no TTL) would stop every tally until the next
    change of state: a script report takes it over."""
    await created(any_redis_client)
    await any_redis_client.set(KEYS.tally, "not-ours")
    state = await report(any_redis_client, "a", failures=3, holds_lease=False)
    assert (state.state, state.reason) == ("open", "pooled_rate")


async def test_the_winner_of_the_lease_passes_the_last_snapshot_on(
    any_redis_client: Client,
) -> None:
    """Pods on one machine report in the same instant, and the first wins the lease
    every time: it leaves the snapshot it last read there until its tally writes the
    new one, so the others still read the pooled window (one interval older), never
    a bare holder."""
    tallied = await created(any_redis_client)
    now = await redis_now_ms(any_redis_client)
    old = f"{tallied.gen} 0 closed {now} 6 1 2 0"
    batch = scripts_for(any_redis_client).batch()
    for instance, snapshot in (("winner", old), ("other", None)):
        batch.plain_report(
            KEYS,
            WindowReport(successes=1),
            instance=instance,
            gen=tallied.gen,
            epoch=0,
            window=PodWindow(1, 0, 0),
            redis_ms=now,
            lease_ms=1_000,
            snapshot=snapshot,
        )
    winner, other = await batch.execute()
    assert isinstance(winner, PlainReply)
    assert isinstance(other, PlainReply)
    assert winner.tally
    assert not other.tally
    assert other.window == PooledWindow(volume=6, failures=1, reporting=2, votes=0)
    assert other.snapshot == old
