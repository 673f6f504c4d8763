"""report_window.lua at fleet scale: no report's cost grows with the pods or the list.

The cases where a report used to read the whole list or the whole sums hash:
the first report after a close, pods with different options (a rolling
deploy), sums that had to be rebuilt; and the list cap that cut the window
short once many pods reported. Runs on a private real redis-server and on
fakeredis, except where Redis' own command counts are the evidence.
"""

from __future__ import annotations

import pytest
from test_lua_report_window_sums import assert_sums_match_the_list, commandstats, old_decision
from transport_support import (
    KEYS,
    Client,
    entry,
    params,
    redis_now_ms,
    report,
    seed,
    stats_instances,
    text,
)

from distributed_opossum._redis.fleet import read_windows
from distributed_opossum._redis.scripts import scripts_for

REBUILD_STEP = 256  # report_window.lua's REBUILD_STEP


async def _fill(client: Client, pods: int, per_pod: int, **changes: object) -> None:
    for _ in range(per_pod):
        for pod in range(pods):
            await report(client, f"pod-{pod}", successes=9, failures=1, decision=params(**changes))


# --------------------------------------------------------------------------- closes


@pytest.mark.parametrize("how", ["reset", "trial_success"])
async def test_a_close_deletes_the_window_in_the_closing_script(
    any_redis_client: Client, how: str
) -> None:
    """reset and a trial success delete the list and its sums themselves: the window
    starts over, and the next report has nothing to trim."""
    scripts = scripts_for(any_redis_client)
    await _fill(any_redis_client, 5, 4)
    if how == "reset":
        closed = await scripts.reset(KEYS, instance="ops", key_ttl_ms=60_000)
    else:
        opened = await report(any_redis_client, "sick", local_open=True, jitter=0.0)
        assert opened.state == "open"
        grant = await scripts.acquire_trial(KEYS, holder="t", params=params())
        closed = await scripts.finish_trial(
            KEYS,
            holder="t",
            epoch=grant.state.epoch,
            outcome="success",
            instance="t",
            params=params(),
        )
    assert closed.state == "closed"
    assert await any_redis_client.exists(KEYS.stats, KEYS.pods) == 0
    after = await report(any_redis_client, "fine", successes=1, known_epoch=closed.epoch)
    assert after.window is not None
    assert (after.window.volume, after.window.reporting) == (1, 1)
    assert await stats_instances(any_redis_client) == ["fine"]


async def test_the_report_after_a_close_reads_nothing_old(redis_client: Client) -> None:
    """1,000 entries before a reset: the first report after it runs no LRANGE and
    pops nothing."""
    await _fill(redis_client, 100, 10)
    closed = await scripts_for(redis_client).reset(KEYS, instance="ops", key_ttl_ms=60_000)
    await redis_client.config_resetstat()
    await report(redis_client, "pod-0", successes=1, known_epoch=closed.epoch)
    calls = await commandstats(redis_client)
    assert "lrange" not in calls
    assert "lpop" not in calls


async def test_a_failed_trial_keeps_the_window(any_redis_client: Client) -> None:
    """Only a close starts the window over: a trial failure re-opens with it intact."""
    scripts = scripts_for(any_redis_client)
    await _fill(any_redis_client, 3, 2)
    opened = await report(any_redis_client, "sick", local_open=True, jitter=0.0)
    grant = await scripts.acquire_trial(KEYS, holder="t", params=params())
    failed = await scripts.finish_trial(
        KEYS, holder="t", epoch=grant.state.epoch, outcome="failure", instance="t", params=params()
    )
    assert (failed.state, failed.epoch) == ("open", opened.epoch + 1)
    assert await any_redis_client.llen(KEYS.stats) == 7


# --------------------------------------------------------------------------- mixed options


async def test_pods_with_other_options_do_not_make_reports_read_every_pod(
    redis_client: Client,
) -> None:
    """Two option sets alternating (a rolling deploy) over 200 pods: once each is known,
    a report reads no pod but its own and the ones leaving, and each set's votes are
    kept right."""
    old, new = params(quorum=0.5), params(quorum=0.5, min_pod_volume=20)
    await _fill(redis_client, 200, 1, quorum=0.5)
    await report(redis_client, "pod-0", successes=9, failures=1, decision=new)  # counted once
    await redis_client.config_resetstat()
    votes = []
    for pod in range(1, 41):
        decision = new if pod % 2 else old
        state = await report(redis_client, f"pod-{pod}", failures=19, decision=decision)
        assert state.window is not None
        votes.append(state.window.votes)
    calls = await commandstats(redis_client)
    assert calls["hgetall"] == 40  # the state hash only
    # Pods 1..k are sick; under the new rule (20 calls) too, as each has 29.
    assert votes == list(range(1, 41))
    stored = await assert_sums_match_the_list(redis_client)  # every rule's votes
    assert stored["rule"] == "0 50.0"
    assert stored["others"].startswith("20 50.0=")


async def test_a_fifth_option_set_pushes_out_the_least_recent(any_redis_client: Client) -> None:
    """Up to four rules are kept; a fifth is counted from the pod fields, the oldest goes."""
    for mpv in (1, 2, 3, 4, 5):
        await report(any_redis_client, "a", failures=3, decision=params(min_pod_volume=mpv))
    stored = await assert_sums_match_the_list(any_redis_client)
    assert stored["rule"] == "5 50.0"
    assert [part.split("=")[0] for part in stored["others"].split(";")] == [
        "4 50.0",
        "3 50.0",
        "2 50.0",
    ]


# --------------------------------------------------------------------------- rebuild


async def test_lost_sums_are_rebuilt_a_bounded_step_per_report(any_redis_client: Client) -> None:
    """Sums lost over a long list are rebuilt REBUILD_STEP entries a report; meanwhile
    the window decides nothing, and once rebuilt every decision is the old one."""
    decision = params(volume_threshold=700)
    now = await redis_now_ms(any_redis_client)
    # 700 entries: 690 failures of 700 calls (pooled rate far above 50 %).
    await seed(any_redis_client, *(entry(now, f"pod-{i % 70}", failures=1) for i in range(690)))
    await seed(any_redis_client, *(entry(now, f"pod-{i}", successes=1) for i in range(10)))
    counted = []
    for _ in range(3):
        state = await report(any_redis_client, "x", successes=1, decision=decision)
        raw = await any_redis_client.hget(KEYS.pods, "counted")
        counted.append(int(text(raw or b"0")))
        if counted[-1] < REBUILD_STEP * 2:
            assert (state.state, state.changed) == ("closed", False)
    assert counted == [REBUILD_STEP, 2 * REBUILD_STEP, 703]
    # Rebuilt, with the volume threshold met: the next report opens as before.
    assert state.changed
    assert state.reason == "pooled_rate"
    raws = await any_redis_client.lrange(KEYS.stats, 0, -1)
    assert old_decision(raws, now - decision.window_ms, 0, decision) == "pooled_rate"


async def test_a_trip_opens_at_once_during_a_rebuild(any_redis_client: Client) -> None:
    """Without quorum a trip needs no window: it opens while the sums are rebuilt."""
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, *(entry(now, f"pod-{i}", successes=1) for i in range(600)))
    state = await report(any_redis_client, "sick", local_open=True)
    assert (state.state, state.reason) == ("open", "local_trip")


async def test_the_cli_shows_sums_being_rebuilt_as_unknown(any_redis_client: Client) -> None:
    """Half-counted sums are not shown as the window: the operator reads why."""
    now = await redis_now_ms(any_redis_client)
    await seed(any_redis_client, *(entry(now, f"pod-{i}", successes=1) for i in range(600)))
    await report(any_redis_client, "x", successes=1)
    [(sums, problem)] = await read_windows(any_redis_client, [KEYS])
    assert problem == f"window sums being rebuilt ({REBUILD_STEP} of 601 entries)"
    assert sums.volume is None


async def test_a_short_list_is_rebuilt_at_once(any_redis_client: Client) -> None:
    """Up to REBUILD_STEP entries, a rebuild is one report, as it always was."""
    await _fill(any_redis_client, 10, 20)
    await any_redis_client.delete(KEYS.pods)
    await report(any_redis_client, "pod-0", successes=1)
    stored = await assert_sums_match_the_list(any_redis_client)
    assert stored["counted"] == stored["entries"] == "201"


# --------------------------------------------------------------------------- the list's bound


async def test_a_thousand_pods_keep_their_whole_window(redis_client: Client) -> None:
    """1,000 pods x 6 buckets: every entry stays (a fixed 5,000 cap would cut the window)."""
    decision = params(window_ms=3_600_000, key_ttl_ms=3_600_000, pod_entries=20)
    for i in range(6000):
        await report(redis_client, f"pod-{i % 1000}", successes=1, decision=decision)
    assert await redis_client.llen(KEYS.stats) == 6000
    stored = await assert_sums_match_the_list(redis_client)
    assert stored["listed"] == "1000"
