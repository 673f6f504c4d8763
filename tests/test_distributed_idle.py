"""Idle breakers send nothing; the sweep catches what they missed and keeps their keys.

A breaker with nothing to report (no calls, no trip, no local close, no check
asked for) sends no report at its tick: its coordinator PINGs the node once
per tick whatever the number of breakers, and every ``SWEEP_INTERVAL`` one
``touch_state`` call per idle breaker reads the state hash and renews the
keys' TTLs. The sweep interval is shortened here so the tests stay quick.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from distributed_support import PREFIX, ClusterFactory
from redis_server import RedisServer
from waiting import eventually, stays

from distributed_opossum import CircuitBreaker
from distributed_opossum._redis import reporter
from distributed_opossum._redis.coordinator import Coordinator
from distributed_opossum._redis.params import WindowReport

pytestmark = pytest.mark.redis

TICK = 0.05
SWEEP = 0.3


async def evalsha_calls(client: aioredis.Redis) -> int:
    """How many EVALSHA the server ran so far (INFO commandstats), NOSCRIPT replies left out
    (a script's first call on a server meets one, then the script is loaded and retried)."""
    stats: dict[str, Any] = await client.info("commandstats")
    evalsha = stats.get("cmdstat_evalsha", {})
    return int(evalsha.get("calls", 0)) - int(evalsha.get("failed_calls", 0))


def coordinator_of(breaker: CircuitBreaker[..., Any]) -> Coordinator:
    """The coordinator a breaker is attached to."""
    link = breaker._link
    assert link is not None
    assert link.coordinator is not None
    return link.coordinator


async def ticks(coordinator: Coordinator, more: int) -> None:
    """Wait for ``more`` ticks of ``coordinator``."""
    target = coordinator.stats["ticks"] + more
    await eventually(
        lambda: coordinator.stats["ticks"] >= target, within=more * TICK + 1.0, what="ticks"
    )


async def test_breakers_without_calls_send_no_reports(
    redis_server_session: RedisServer,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20 idle breakers: no EVALSHA for 10 ticks, one PING a tick; a call makes one breaker
    report until its window is empty."""
    monkeypatch.setattr(reporter, "SWEEP_INTERVAL", 3600.0)  # no sweep in the counts
    client = aioredis.Redis.from_url(redis_server_session.url)
    names = [f"idle{i}" for i in range(20)]
    breakers = [
        CircuitBreaker(
            lambda: "ok",
            name=name,
            rolling_count_timeout=0.5,
            rolling_count_buckets=10,
            distributed={"client": client, "prefix": PREFIX, "sync_interval": TICK},
        )
        for name in names
    ]
    try:
        coordinator = coordinator_of(breakers[0])
        await eventually(
            lambda: all(b._link is not None and b._link.gen is not None for b in breakers),
            what="synced",
        )
        await ticks(coordinator, 2)
        before = dict(coordinator.stats)
        server_before = await evalsha_calls(redis_client)
        await ticks(coordinator, 10)
        after = dict(coordinator.stats)
        sweeps = after["sweeps"] - before["sweeps"]  # (first sweeps are spread over the hour)
        assert await evalsha_calls(redis_client) == server_before + sweeps
        assert after["reports"] == before["reports"]
        assert sweeps <= 2
        # One PING per tick, not one per breaker (none in a tick that swept).
        assert after["pings"] >= before["pings"] + 9 - sweeps
        # (+1: a tick's PING is counted when it is back, the tick when it starts)
        assert after["pings"] - before["pings"] <= after["ticks"] - before["ticks"] + 1

        # One breaker with a call reports while its window (0.5 s) holds the call, then stops.
        await breakers[7].fire()
        await eventually(
            lambda: coordinator.stats["reports"] > after["reports"],
            within=1.0,
            what="the busy breaker's report",
        )
        await eventually(
            lambda: (
                breakers[7]._link is not None
                and breakers[7]._link.pod_window(WindowReport()).is_empty
            ),
            within=1.0,
            what="the call leaving the window",
        )
        await ticks(coordinator, 2)
        reports = coordinator.stats["reports"]
        await ticks(coordinator, 5)
        assert coordinator.stats["reports"] == reports
        assert reports - after["reports"] <= 0.5 / TICK + 2  # one breaker's, each tick
        stats = dict(coordinator.stats)
        sweeps = stats["sweeps"] - before["sweeps"]
        # Script calls: the reports not sent as plain commands, the tallies not
        # made with plain commands, the sweeps.
        scripted = reports - before["reports"] - (stats["plain_reports"] - before["plain_reports"])
        tallies = stats["tallies"] - stats["plain_tallies"]
        tallies -= before["tallies"] - before["plain_tallies"]
        assert stats["plain_reports"] > before["plain_reports"]
        assert await evalsha_calls(redis_client) == server_before + scripted + tallies + sweeps
    finally:
        for breaker in breakers:
            await breaker.shutdown()
        await client.aclose()


async def test_sweep_corrects_a_change_that_was_never_broadcast(
    make_cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state hash changes with no broadcast: idle pods follow it at their next sweep."""
    monkeypatch.setattr(reporter, "SWEEP_INTERVAL", SWEEP)
    cluster = await make_cluster(reset_timeout=5.0, sync_interval=TICK)
    pods = await cluster.started(2)
    # The read that follows each subscription's confirmation is done, and so is
    # any second look it asked for (a read older than the first report's reply
    # is asked again, by a report): from now on only a sweep reads the state hash.
    await eventually(
        lambda: all(p.coordinator.stats["checks"] >= 1 and not p.link.verifying for p in pods),
        within=2.0,
        what="subscriptions confirmed and checked",
    )
    # A first report (sent before the first read gave the pod its gen) may
    # still be on its way: ticks run one after the other, so two more ticks
    # see its reply counted.
    for pod in pods:
        await ticks(pod.coordinator, 2)
    assert not any(p.link.verifying for p in pods)
    reports = [p.coordinator.stats["reports"] for p in pods]
    sweeps = [p.coordinator.stats["sweeps"] for p in pods]
    checks = [p.coordinator.stats["checks"] for p in pods]
    state = await cluster.state_hash()
    # What force_open writes, without its PUBLISH: news no pod heard.
    await cluster.admin.hset(
        cluster.keys.state,
        mapping={"state": "forced_open", "epoch": int(state["epoch"]) + 1, "reason": "forced"},
    )
    await eventually(
        lambda: all(p.breaker.opened for p in pods),
        within=SWEEP + 3 * TICK + 0.5,
        what="the sweep catching up",
    )
    for pod, reported, swept, checked in zip(pods, reports, sweeps, checks, strict=True):
        assert pod.causes("open") == ["remote"]
        assert pod.coordinator.stats["reports"] == reported  # idle: no report
        assert pod.coordinator.stats["checks"] == checked  # nor a subscription's read
        assert pod.coordinator.stats["sweeps"] > swept


async def test_sweep_keeps_the_keys_of_idle_breakers_alive(
    make_cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep renews the TTLs of an idle breaker's keys; a hash gone is made again."""
    monkeypatch.setattr(reporter, "SWEEP_INTERVAL", SWEEP)
    cluster = await make_cluster(sync_interval=TICK)
    (pod,) = await cluster.started(1)
    await cluster.admin.pexpire(cluster.keys.state, 2000)
    await eventually(
        lambda: pod.coordinator.stats["sweeps"] >= 2, within=2 * SWEEP + 1.0, what="sweeps"
    )
    assert await cluster.admin.pttl(cluster.keys.state) > 50_000  # key_ttl_ms: 60 s at least

    gen = pod.link.gen
    await cluster.admin.delete(cluster.keys.state)
    await eventually(
        lambda: pod.link.gen not in (None, gen), within=SWEEP + 1.0, what="a new state hash"
    )
    assert (await cluster.state_hash())["state"] == "closed"
    await stays(lambda: pod.breaker.closed, duration=TICK)
