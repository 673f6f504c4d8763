"""When Redis misbehaves, breakers keep deciding locally and callers never see Redis errors."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from distributed_support import PREFIX, ClusterFactory, Pod, more_reports
from helpers import take_general_path
from redis_admin import (
    acl_setuser,
    channel_subscribers,
    dead_port_url,
    kill_pubsub,
    readme_acl_rule,
    user_url,
)
from redis_server import RedisServer
from waiting import eventually, eventually_async, stays

import distributed_opossum
from distributed_opossum import State

pytestmark = pytest.mark.redis

FAST: dict[str, Any] = {
    "reset_timeout": 0.3,
    "rolling_count_timeout": 1.0,
    "rolling_count_buckets": 10,
}


def assert_fast(latencies: list[float]) -> None:
    """Calls did not wait for Redis: 95 % under 50 ms, none near a Redis wait (0.5 s, 2 s).

    The bounds leave room for a busy machine to preempt the process now and then.
    """
    assert latencies, "no calls were made"
    ordered = sorted(latencies)
    assert ordered[int(0.95 * (len(ordered) - 1))] < 0.05, ordered[-10:]
    assert ordered[-1] < 0.25, ordered[-10:]


class Traffic:
    """Calls on pods in the background; records outcomes, errors and latencies."""

    def __init__(self, pods: list[Pod]) -> None:
        self.pods = pods
        self.outcomes: dict[str, int] = {}
        self.errors: list[BaseException] = []
        self.latencies: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            for pod in self.pods:
                start = time.monotonic()
                try:
                    outcome = await pod.call()
                except Exception as error:  # anything but the breaker's own outcomes
                    self.errors.append(error)
                    outcome = "error"
                self.latencies.append(time.monotonic() - start)
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            await asyncio.sleep(0.002)

    def start(self) -> None:
        """Start calling."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop calling."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_redis_down_at_start_breaker_works_locally(make_cluster: ClusterFactory) -> None:
    """Redis unreachable from the start: calls work, registry_down once, local trips still open."""
    cluster = await make_cluster(url=dead_port_url(), **FAST, sync_interval=0.05)
    pod = cluster.pod("pod0")
    for _ in range(200):
        assert await pod.call() == "ok"
    await eventually(lambda: pod.count("registry_down") == 1, within=2.0, what="down")
    error = pod.events.args_of("registry_down")[0][0]
    assert isinstance(error, Exception)
    # Many more ticks and listener retries: still one registry_down, no registry_up.
    for _ in range(20):
        assert await pod.call() == "ok"
        await asyncio.sleep(0.02)
    assert pod.coordinator.stats["tick_errors"] >= 3
    assert pod.count("registry_down") == 1
    assert pod.count("registry_up") == 0

    await pod.trip()
    assert pod.breaker.state is State.OPEN
    assert pod.causes("open") == ["local"]
    assert await pod.call() == "rejected"
    # The local half-open rule applies: a local trial runs and closes the breaker.
    await eventually(lambda: pod.breaker.half_open, within=1.0, what="half_open")
    pod.downstream.mode = "ok"
    assert await pod.call() == "ok"
    assert pod.breaker.closed
    assert pod.causes("close") == ["trial"]


async def test_redis_down_at_start_through_async_with(make_cluster: ClusterFactory) -> None:
    """No Redis exception leaves ``async with breaker`` or a gated fire() while Redis is down."""
    cluster = await make_cluster(url=dead_port_url(), **FAST, sync_interval=0.05)
    pod = cluster.pod("pod0")
    take_general_path(pod.breaker)
    await eventually(lambda: pod.count("registry_down") == 1, within=2.0, what="down")
    for _ in range(50):
        async with pod.breaker:
            await asyncio.sleep(0)
        assert await pod.call() == "ok"
    assert pod.breaker.closed


async def test_redis_killed_mid_traffic_then_restarted(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """Killed mid-traffic: calls unaffected, registry_down once; back: registry_up once, reports."""
    cluster = await make_cluster(server=redis_server, **FAST, sync_interval=0.1)
    pods = await cluster.started(2)
    old_gen = pods[0].link.gen
    traffic = Traffic(pods)
    traffic.start()
    try:
        await asyncio.sleep(0.3)
        redis_server.kill()
        await eventually(
            lambda: all(p.count("registry_down") == 1 for p in pods),
            within=2.0,
            what="registry_down on every pod",
        )
        await asyncio.sleep(0.5)  # a few failing ticks and reconnects
        assert all(p.count("registry_down") == 1 for p in pods)
        calls_during = sum(traffic.outcomes.values())
        await asyncio.sleep(0.1)
        assert sum(traffic.outcomes.values()) > calls_during  # traffic keeps flowing

        redis_server.start()  # same port, empty
        await eventually(
            lambda: all(p.count("registry_up") == 1 for p in pods),
            within=3.0,
            what="registry_up on every pod",
        )
        started = time.monotonic()

        async def both_reported() -> bool:
            entries = await cluster.stats_entries()
            return {e["instance"] for e in entries} == {"pod0", "pod1"}

        await eventually_async(both_reported, within=1.0, what="reports resumed")
        assert time.monotonic() - started < 1.0
        # One outage, one registry_down: the recovery does not flap.
        await stays(
            lambda: all(p.count("registry_down") == 1 for p in pods),
            duration=0.6,
            what="a single registry_down after the restart",
        )
    finally:
        await traffic.stop()
    assert traffic.errors == []
    assert_fast(traffic.latencies)
    assert set(traffic.outcomes) == {"ok"}
    for pod in pods:
        assert pod.count("registry_down") == 1
        assert pod.count("registry_up") == 1
        assert pod.link.gen is not None
        assert pod.link.gen != old_gen
    assert (await cluster.state_hash())["gen"] == pods[0].link.gen


async def test_local_trip_during_outage_opens_locally_and_cluster_works_after(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """During an outage a trip stays local; once Redis is back, trips propagate again."""
    cluster = await make_cluster(server=redis_server, reset_timeout=0.3, sync_interval=0.1)
    pod0, pod1 = await cluster.started(2)
    redis_server.kill()
    await eventually(
        lambda: pod0.count("registry_down") == 1 and pod1.count("registry_down") == 1,
        within=2.0,
        what="down",
    )
    await pod0.trip()
    assert pod0.causes("open") == ["local"]
    assert pod1.breaker.closed
    await eventually(lambda: pod0.breaker.half_open, within=1.0, what="local half_open")
    pod0.downstream.mode = "ok"
    assert await pod0.call() == "ok"
    assert pod0.breaker.closed

    redis_server.start()
    await eventually(
        lambda: pod0.count("registry_up") == 1 and pod1.count("registry_up") == 1,
        within=3.0,
        what="up",
    )
    await cluster.ready(within=3.0)
    await pod1.trip()
    try:
        await eventually(lambda: pod0.breaker.opened, within=0.5, what="pod0 open")
    except AssertionError as error:  # say what each pod knew, and the state in Redis
        known = [
            (p.instance, p.link.gen, p.link.epoch, p.link.shared, dict(p.coordinator.stats))
            for p in (pod0, pod1)
        ]
        state = await cluster.state_hash()
        raise AssertionError(f"{error}; pods: {known}; Redis: {state}") from error
    assert pod0.causes("open")[-1] == "remote"


async def test_paused_redis_does_not_slow_calls(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """With Redis frozen (SIGSTOP) calls stay fast, trips open locally at once, and all recovers."""
    cluster = await make_cluster(server=redis_server, **FAST, sync_interval=0.1)
    pods = await cluster.started(2)
    traffic = Traffic([pods[1]])
    traffic.start()
    redis_server.pause()
    try:
        await asyncio.sleep(0.3)  # ticks are now stuck on the frozen server
        start = time.monotonic()
        for _ in range(200):
            assert await pods[0].call() == "ok"
        assert time.monotonic() - start < 0.5
        pods[0].downstream.mode = "fail"
        latencies: list[float] = []
        while not pods[0].breaker.opened:
            start = time.monotonic()
            assert await pods[0].call() == "failed"
            latencies.append(time.monotonic() - start)
        assert_fast(latencies)
        assert pods[0].causes("open") == ["local"]
        start = time.monotonic()
        assert await pods[0].call() == "rejected"
        assert time.monotonic() - start < 0.05
        await asyncio.sleep(2.2)  # past the round-trip limit
    finally:
        redis_server.resume()
        await traffic.stop()
    assert traffic.errors == []
    assert_fast(traffic.latencies)
    assert set(traffic.outcomes) == {"ok"}
    assert sum(traffic.outcomes.values()) > 100
    # Back: reporting resumes, nothing was lost in the stuck connections.
    await more_reports([pods[1]], 3, within=3.0)
    for pod in pods:
        assert pod.count("registry_down") == pod.count("registry_up") <= 1


async def test_restart_empty_gives_new_gen_and_state_is_recreated(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """After an empty restart, pods adopt the new gen, re-create the state, propagate again."""
    cluster = await make_cluster(server=redis_server, **FAST, sync_interval=0.1)
    pods = await cluster.started(2)
    old_gen = pods[0].link.gen
    assert old_gen is not None
    assert pods[1].link.gen == old_gen
    assert await cluster.admin.exists(cluster.keys.state)

    redis_server.restart()
    await eventually(
        lambda: all(p.link.gen not in (None, old_gen) for p in pods),
        within=3.0,
        what="new gen on every pod",
    )
    state = await cluster.state_hash()
    assert state["gen"] == pods[0].link.gen == pods[1].link.gen
    assert state["state"] == "closed"
    for pod in pods:
        assert await pod.call() == "ok"
    await cluster.ready(within=3.0)
    await cluster.trip()
    assert pods[1].causes("open") == ["remote"]
    assert (await cluster.state_hash())["state"] == "open"


async def test_script_flush_is_handled(make_cluster: ClusterFactory) -> None:
    """After SCRIPT FLUSH the next tick, a trip and a trial all still work (NOSCRIPT handled)."""
    cluster = await make_cluster(**FAST, sync_interval=0.1)
    pods = await cluster.started(2)
    await cluster.admin.script_flush()
    await more_reports(pods, 2, within=1.0)
    await cluster.admin.script_flush()
    await cluster.trip()
    await cluster.half_open(within=1.0)
    await cluster.admin.script_flush()
    assert await pods[1].call() == "ok"  # the trial's lease needs acquire_trial
    await eventually(lambda: pods[0].breaker.closed, within=0.5, what="pod0 closed")
    assert pods[0].causes("close") == ["remote"]
    for pod in pods:
        assert pod.coordinator.stats["script_errors"] == 0
        assert pod.coordinator.stats["tick_errors"] == 0
        assert pod.count("registry_down") == 0


async def test_garbage_on_events_channel_is_ignored_and_counted(
    make_cluster: ClusterFactory,
) -> None:
    """Non-JSON, wrong types, 1 MB and v=2 broadcasts count as bad; the listener keeps working."""
    cluster = await make_cluster(reset_timeout=2.0, sync_interval=2.0)
    pods = await cluster.started(2)
    gen = pods[1].link.gen
    good = {
        "v": 1,
        "name": cluster.name,
        "gen": gen,
        "epoch": 99,
        "state": "open",
        "open_until": 2**40,
        "now": 2**40 - 5000,
        "attempts": 1,
        "origin": "intruder",
        "reason": "forged",
    }
    garbage: list[bytes | str] = [
        b"not json at all",
        b"\xff\xfe\x00 binary",
        b"[1, 2, 3]",
        b"null",
        json.dumps({**good, "epoch": "99"}),
        json.dumps({**good, "state": "exploded"}),
        json.dumps({**good, "attempts": -1}),
        json.dumps({**good, "gen": 12}),
        json.dumps({k: v for k, v in good.items() if k != "open_until"}),
        json.dumps({**good, "v": 2}),
        json.dumps({**good, "pad": "x" * (1024 * 1024)}),
        b"{" * 100_000,
    ]
    bad_before = [p.coordinator.stats["bad_messages"] for p in pods]
    for payload in garbage:
        await cluster.admin.publish(cluster.keys.events, payload)
    await eventually(
        lambda: all(
            p.coordinator.stats["bad_messages"] == b + len(garbage)
            for p, b in zip(pods, bad_before, strict=True)
        ),
        within=1.0,
        what="every bad message counted",
    )
    for pod in pods:
        assert pod.breaker.closed, pod.instance
        assert pod.coordinator._listener is not None
        assert not pod.coordinator._listener.done()
        assert pod.link.gen == gen
        assert pod.count("registry_down") == 0
    # The listener still works: a real trip reaches pod1 before any report tick.
    await cluster.trip()
    assert pods[1].causes("open") == ["remote"]


async def test_garbage_in_stats_list_and_state_hash_does_not_crash(
    make_cluster: ClusterFactory,
) -> None:
    """Bad stats entries and a bad state hash are skipped or replaced; ticks and trips go on."""
    cluster = await make_cluster(**FAST, sync_interval=0.1)
    pods = await cluster.started(2)
    old_gen = pods[0].link.gen
    now_ms = int((await cluster.admin.time())[0]) * 1000
    entry = {
        "v": 1,
        "timestamp": now_ms,
        "instance": "ghost",
        "fires": 100,
        "successes": 0,
        "failures": 100,
        "timeouts": 0,
        "rejects": 0,
        "local_open": True,
        "epoch": 0,
    }
    await cluster.admin.rpush(
        cluster.keys.stats,
        b"not json",
        json.dumps({**entry, "v": 2}),
        json.dumps({**entry, "failures": "many"}),
        json.dumps({**entry, "timestamp": "soon"}),
        json.dumps({**entry, "instance": 7}),
        json.dumps([entry]),
        b"\x00\xff",
    )
    await cluster.admin.hset(
        cluster.keys.state, mapping={"state": "exploded", "epoch": "NaN", "attempts": "-3"}
    )
    # The garbage is noticed by the next tally (within a lease period), which makes
    # the state anew; each other pod sees the new gen in the lease's snapshot at
    # its next report and reads the state at the one after: five reports bound it.
    await more_reports(pods, 5, within=2.5)
    for pod in pods:
        assert pod.breaker.closed, pod.instance  # the v2 "trip" of a ghost was ignored
        assert pod.coordinator.stats["script_errors"] == 0
        assert pod.link.gen not in (None, old_gen)
    state = await cluster.state_hash()
    assert state["state"] == "closed"
    assert state["gen"] == pods[0].link.gen

    # Keys of the wrong type are replaced too.
    await cluster.admin.delete(cluster.keys.state, cluster.keys.stats)
    await cluster.admin.set(cluster.keys.state, "a string")
    await cluster.admin.hset(cluster.keys.stats, "a", "hash")
    await more_reports(pods, 5, within=2.5)
    assert await cluster.admin.type(cluster.keys.state) == b"hash"
    for pod in pods:
        assert pod.coordinator.stats["script_errors"] == 0
        assert await pod.call() == "ok"
    await cluster.trip()
    assert await cluster.admin.type(cluster.keys.stats) == b"list"


async def test_memory_stays_flat_during_an_outage(make_cluster: ClusterFactory) -> None:
    """20k calls while Redis is down buffer nothing: no growth in coordinator, link, redis-py."""
    cluster = await make_cluster(
        url=dead_port_url(),
        reset_timeout=0.3,
        rolling_count_timeout=0.5,
        rolling_count_buckets=5,
        sync_interval=0.02,
    )
    pod = cluster.pod("pod0")
    await eventually(lambda: pod.count("registry_down") == 1, within=2.0, what="down")
    for _ in range(2000):  # warm up every path once
        await pod.breaker.fire()
    await asyncio.sleep(0.6)
    _ = pod.breaker.stats
    gc.collect()
    ticks_before = pod.coordinator.stats["ticks"]
    already_tracing = tracemalloc.is_tracing()
    if not already_tracing:
        tracemalloc.start(1)
    try:
        before = tracemalloc.take_snapshot()
        for i in range(20_000):
            await pod.breaker.fire()
            if i % 2000 == 0:
                await asyncio.sleep(0.03)  # let the ticker and listener retry
        await asyncio.sleep(0.6)  # the window rolls over: raw samples are gone
        _ = pod.breaker.stats
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        if not already_tracing:
            tracemalloc.stop()
    assert pod.coordinator.stats["ticks"] > ticks_before + 5
    assert pod.downstream.calls == 22_000
    assert pod.count("registry_down") == 1

    library = str(Path(distributed_opossum.__file__).parent)
    redis_py = str(Path(redis.__file__).parent)
    stdlib_asyncio = str(Path(asyncio.__file__).parent)
    growth = {
        stat.traceback[0].filename: stat.size_diff
        for stat in after.compare_to(before, "filename")
        if stat.size_diff > 0
        and stat.traceback[0].filename.startswith((library, redis_py, stdlib_asyncio))
    }
    assert sum(growth.values()) < 64 * 1024, growth
    total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert total < 256 * 1024, total
    # Nothing queued for Redis: no pending calls, no trial leases, no spawned tasks.
    assert len(pod.coordinator._tasks) <= 1
    assert pod.link._holders == {}
    assert pod.link._vote is False


async def test_redis_pubsub_reconnects_after_listener_connection_is_killed(
    make_cluster: ClusterFactory,
) -> None:
    """A killed pub/sub connection is re-established and broadcasts reach the pod again."""
    cluster = await make_cluster(reset_timeout=2.0, sync_interval=2.0)
    _, pod1 = await cluster.started(2)
    assert await kill_pubsub(cluster.admin) >= 2
    await eventually_async(
        lambda: _subscribed(cluster.admin, {"pod0", "pod1"}),
        within=2.0,
        what="listeners re-subscribed",
    )
    await stays(lambda: pod1.breaker.closed, duration=0.05)
    await cluster.trip()
    assert pod1.causes("open") == ["remote"]


async def _subscribed(admin: aioredis.Redis, names: set[str]) -> bool:
    return await channel_subscribers(admin, names) == names


async def test_redis_down_at_start_then_up(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """Redis not yet up when pods start: registry_down once, then registry_up once when it comes."""
    cluster = await make_cluster(server=redis_server, **FAST, sync_interval=0.1)
    redis_server.stop()
    pods = [cluster.pod("pod0"), cluster.pod("pod1")]
    await eventually(
        lambda: all(p.count("registry_down") == 1 for p in pods), within=2.0, what="down"
    )
    for pod in pods:
        assert await pod.call() == "ok"
    redis_server.start()
    await eventually(lambda: all(p.count("registry_up") == 1 for p in pods), within=3.0, what="up")
    await cluster.ready(within=3.0)
    await cluster.trip()
    assert pods[1].causes("open") == ["remote"]
    assert all(p.count("registry_down") == 1 for p in pods)


async def test_half_open_with_redis_dead_follows_the_local_rule(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """When Redis is gone at the end of the open period, each pod's trial follows the local rule."""
    cluster = await make_cluster(server=redis_server, reset_timeout=0.4, sync_interval=0.1)
    pods = await cluster.started(2)
    await cluster.trip()
    redis_server.kill()
    await eventually(lambda: all(p.breaker.half_open for p in pods), within=1.0)
    for pod in pods:
        pod.downstream.mode = "ok"
        calls = pod.downstream.calls
        start = time.monotonic()
        assert await pod.call() == "ok"
        assert time.monotonic() - start < 0.6
        assert pod.downstream.calls == calls + 1
        assert pod.breaker.closed
        assert pod.causes("close") == ["trial"]


async def test_frozen_redis_during_half_open_rejects_rather_than_herds(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """Redis frozen as the open period ends: a trial call waits at most ~0.5 s, then is rejected."""
    cluster = await make_cluster(server=redis_server, reset_timeout=0.3, sync_interval=1.0)
    pods = await cluster.started(2)
    await cluster.trip()
    redis_server.pause()
    try:
        await eventually(lambda: all(p.breaker.half_open for p in pods), within=1.0)
        for pod in pods:
            pod.downstream.mode = "ok"
        start = time.monotonic()
        outcomes = await asyncio.gather(*(p.call() for p in pods for _ in range(5)))
        elapsed = time.monotonic() - start
    finally:
        redis_server.resume()
    assert elapsed < 0.8
    assert outcomes == ["rejected"] * 10
    assert sum(p.downstream.calls for p in pods) == 1  # only pod0's tripping call


async def test_readme_acl_user_gets_broadcasts(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """With the README's least-privilege ACL user, trips still propagate by broadcast."""
    url = user_url(redis_server.url, "dopossum", "secret")
    cluster = await make_cluster(server=redis_server, url=url, reset_timeout=2.0, sync_interval=2.0)
    await acl_setuser(cluster.admin, *readme_acl_rule(PREFIX))
    pods = [cluster.pod(name, client=cluster.client(name, named=False)) for name in ("p0", "p1")]
    await cluster.ready(user="dopossum")
    await cluster.trip()
    for pod in pods:
        assert pod.coordinator.stats["listener_errors"] == 0
        assert pod.coordinator.stats["script_errors"] == 0


async def test_user_without_rights_keeps_the_breaker_local(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """A Redis user with no command rights: calls work, trips open locally, commands fail loudly."""
    url = user_url(redis_server.url, "nobody", "pw")
    cluster = await make_cluster(server=redis_server, url=url, **FAST, sync_interval=0.05)
    await acl_setuser(cluster.admin, "nobody", "on", ">pw", "-@all")
    pod = cluster.pod("pod0", client=cluster.client("pod0", named=False))
    for _ in range(50):
        assert await pod.call() == "ok"
    await eventually(
        lambda: pod.coordinator.stats["tick_errors"] >= 2,
        within=1.0,
        what="refused reports counted",
    )
    assert pod.count("registry_down") == 1  # refused: Redis cannot be used
    await pod.trip()
    assert pod.causes("open") == ["local"]
    with pytest.raises(Exception) as info:  # noqa: PT011 (any loud error will do)
        await pod.breaker.reset()
    assert not isinstance(info.value, AssertionError)
    assert pod.breaker.state is State.OPEN  # nothing changed


async def test_refused_subscription_retries_with_growing_backoff(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """A listener whose PSUBSCRIBE is refused backs off (growing, capped), no tight retry loop."""
    url = user_url(redis_server.url, "nochannels", "pw")
    cluster = await make_cluster(server=redis_server, url=url, **FAST, sync_interval=1.0)
    rule = ("nochannels", "on", ">pw", f"~{PREFIX}:*", "resetchannels", "+@all")
    await acl_setuser(cluster.admin, *rule)
    pod = cluster.pod("pod0", client=cluster.client("pod0", named=False))
    for _ in range(20):
        assert await pod.call() == "ok"
    await asyncio.sleep(1.6)
    stats = pod.coordinator.stats
    # 50 ms doubling: 0.05 + 0.1 + 0.2 + 0.4 + 0.8 s covers 1.55 s.
    assert 1 <= stats["listener_errors"] <= 8, stats
    # Reports stay at about one per sync_interval (plus a re-sync per reconnect).
    assert stats["round_trips"] <= 2 + 8, stats
    assert await pod.call() == "ok"


async def test_lease_request_that_timed_out_does_not_block_later_trials(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """A lease request abandoned on a frozen Redis leaves no orphan permit once Redis is back."""
    cluster = await make_cluster(
        server=redis_server,
        timeout=3.0,  # lease TTL = max(timeout, reset_timeout) + 1 s = 4 s
        reset_timeout=0.3,
        sync_interval=1.0,
    )
    pods = await cluster.half_opened(2, within=1.0)
    redis_server.pause()
    try:
        assert await pods[0].call() == "rejected"  # the lease request timed out
    finally:
        redis_server.resume()
    resumed = time.monotonic()
    outcome = "rejected"
    while outcome == "rejected" and time.monotonic() - resumed < 2.0:
        await asyncio.sleep(0.05)
        outcome = await pods[1].call()
    assert outcome == "ok", "no trial could run for 2 s after Redis came back"
    await eventually(lambda: pods[0].breaker.closed, within=0.5, what="pod0 closed")


async def test_broadcast_lost_while_listener_reconnects_is_caught_up(
    make_cluster: ClusterFactory,
) -> None:
    """A trip broadcast while a pod's pub/sub connection is gone reaches it on reconnect."""
    cluster = await make_cluster(reset_timeout=2.0, sync_interval=3.0)
    _, pod1 = await cluster.started(2)
    assert await kill_pubsub(cluster.admin) >= 2
    await cluster.trip(within=1.0)  # pod0's broadcast finds no subscriber: pod1 catches up
    assert pod1.causes("open") == ["remote"]


async def test_breaker_joining_during_an_outage_is_told_so(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """A breaker added to a client whose Redis is down emits registry_down, then registry_up."""
    cluster = await make_cluster(server=redis_server, **FAST, sync_interval=0.1)
    redis_server.stop()
    client = cluster.client("shared")
    first = cluster.pod("first", client=client)
    await eventually(lambda: first.count("registry_down") == 1, within=2.0, what="down")
    second = cluster.pod("second", client=client)
    assert second.coordinator is first.coordinator
    await eventually(lambda: second.count("registry_down") == 1, within=1.0, what="second down")
    assert await second.call() == "ok"
    redis_server.start()
    await eventually(
        lambda: first.count("registry_up") == 1 and second.count("registry_up") == 1,
        within=3.0,
        what="up",
    )
    names = second.events.names
    assert names.index("registry_down") < names.index("registry_up")
    await cluster.ready(within=3.0)
