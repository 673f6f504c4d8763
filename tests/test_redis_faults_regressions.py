"""Regressions of the Redis faults found by the chaos runs: one focused test per defect.

Each test sets up the fault on a real, private redis-server, in one process,
and asserts the behaviour the README promises:

1. (Redis errors reaching callers: see test_redis_faults_errors.py);
2. a dropped pub/sub connection is not an outage;
3. a trip made during an outage reaches the fleet when Redis comes back empty;
4. an expired shared open left over from a freeze does not hold trips back;
5. forged input (an epoch from the far future, absurd counts, huge messages)
   cannot freeze, open or stall the pods;
6. (Sentinel failover: see test_chaos_sentinel.py, it needs a topology);
7. never more than ``half_open_max_calls`` trials in one half-open period.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable

import pytest
import redis
import redis.exceptions
from distributed_support import (
    ClusterFactory,
    assert_no_leak,
    call_outcome,
    counted,
    more_counted,
    more_reports,
)
from redis_admin import kill_pubsub
from redis_server import RedisServer
from transport_support import entry, redis_now_ms
from waiting import eventually, eventually_async, stays

from distributed_opossum import State

pytestmark = pytest.mark.redis

TICK = 0.1
"""sync_interval of the tests that wait for ticks."""
SLACK = 0.3
"""Room for a busy 2-core machine on top of "within two ticks"."""


# --------------------------------------------------------------------------- 2: pub/sub


async def test_killed_pubsub_connection_is_not_an_outage(make_cluster: ClusterFactory) -> None:
    """CLIENT KILL TYPE pubsub while open: no registry_down, still one trial cluster-wide."""
    cluster = await make_cluster(reset_timeout=0.6, sync_interval=1.0)
    pods = await cluster.started(4)
    await cluster.trip()
    assert await kill_pubsub(cluster.admin) >= 4
    await eventually(lambda: all(p.breaker.half_open for p in pods), within=1.5)
    calls = sum(p.downstream.calls for p in pods)
    for pod in pods:
        pod.downstream.mode = "ok"
    outcomes = await asyncio.gather(*(call_outcome(p) for p in pods))
    trials = sum(p.downstream.calls for p in pods) - calls
    downs = {p.instance: p.count("registry_down") for p in pods}
    assert trials == 1, f"{trials} trial calls in one period ({outcomes}); registry_down={downs}"
    assert all(n == 0 for n in downs.values()), f"a lost subscription was an outage: {downs}"


# --------------------------------------------------------------------------- 3: empty restart


async def test_trip_during_outage_reaches_the_fleet_after_an_empty_restart(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """A pod trips while Redis is down; Redis returns empty: within two ticks every pod is open."""
    cluster = await make_cluster(server=redis_server, reset_timeout=5.0, sync_interval=TICK)
    pods = await cluster.started(3)
    # Some history first, so the shared epoch is past 0 when Redis loses it.
    await pods[0].breaker.force_open()
    await pods[0].breaker.reset()
    await eventually(lambda: all(p.breaker.closed for p in pods), within=0.5)
    assert pods[1].link.epoch >= 2

    redis_server.kill()
    await eventually(
        lambda: all(p.count("registry_down") == 1 for p in pods), within=2.0, what="down"
    )
    await pods[2].trip()
    assert pods[2].causes("open")[-1] == "local"
    # The bucket holding the failures is reported into the outage, and lost
    # (nothing is buffered): only the trip vote is kept for later.
    await asyncio.sleep(0.15)  # the bucket (0.1 s) ends
    await more_counted([pods[2]], "tick_errors", 2)  # the failures' report lost
    redis_server.start()  # same port, empty
    await eventually(lambda: all(p.count("registry_up") == 1 for p in pods), within=3.0, what="up")
    back = time.monotonic()
    try:
        await eventually(
            lambda: pods[0].breaker.opened and pods[1].breaker.opened,
            within=2 * TICK + SLACK,
            what="the trip made during the outage reaching the other pods",
        )
    finally:
        state = await cluster.state_hash()
    assert state.get("state") == "open", (state, time.monotonic() - back)


# --------------------------------------------------------------------------- 4: after a freeze


async def test_expired_shared_open_left_by_a_freeze_does_not_hold_trips_back(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """Redis frozen through an open period: after it, a new trip reaches every pod within ms."""
    cluster = await make_cluster(server=redis_server, reset_timeout=1.5, sync_interval=TICK)
    pods = await cluster.started(3)
    await cluster.trip()
    redis_server.pause()
    try:
        await eventually(
            lambda: all(p.count("registry_down") == 1 for p in pods), within=4.0, what="down"
        )
        await eventually(lambda: all(p.breaker.half_open for p in pods), within=2.0)
        for pod in pods:  # the local rule: one local trial each, and they close
            pod.downstream.mode = "ok"
            assert await call_outcome(pod) == "ok"
        assert all(p.breaker.closed for p in pods)
    finally:
        redis_server.resume()
    await eventually(lambda: all(p.count("registry_up") == 1 for p in pods), within=3.0, what="up")
    await more_reports(pods)  # a report of every pod
    await cluster.ready(within=3.0)
    await pods[1].trip()
    try:
        await eventually(
            lambda: pods[0].breaker.opened and pods[2].breaker.opened,
            within=2 * TICK + SLACK,
            what="the trip reaching pod0 and pod2",
        )
    except AssertionError as error:
        state = await cluster.state_hash()
        left = int(state.get("open_until", 0)) - await redis_now_ms(cluster.admin)
        raise AssertionError(
            f"{error}: shared state {state.get('state')!r} epoch {state.get('epoch')} "
            f"(open_until {left} ms from now); pods "
            f"{[(p.instance, p.breaker.state.value, p.link.epoch) for p in pods]}"
        ) from None


# --------------------------------------------------------------------------- 5: forged input


async def test_broadcast_with_a_far_future_epoch_does_not_freeze_the_pods(
    make_cluster: ClusterFactory,
) -> None:
    """A forged broadcast (current gen, epoch 2**53 - 1, closed): force_open still reaches all."""
    cluster = await make_cluster(reset_timeout=1.0, sync_interval=TICK)
    pods = await cluster.started(3)
    forged = {
        "v": 1,
        "name": cluster.name,
        "gen": pods[0].link.gen,
        "epoch": 2**53 - 1,
        "state": "closed",
        "open_until": 0,
        "now": await redis_now_ms(cluster.admin),
        "attempts": 0,
        "origin": "intruder",
        "reason": "forged",
    }
    async with counted(pods, "messages"):  # the forged broadcast delivered
        await cluster.admin.publish(cluster.keys.events, json.dumps(forged))
    await pods[0].breaker.force_open()
    await eventually(
        lambda: all(p.breaker.state is State.FORCED_OPEN for p in pods),
        within=2 * TICK + SLACK,
        what="force_open on every pod after the forged epoch",
    )


async def test_stats_entry_with_absurd_counts_does_not_open_the_fleet(
    make_cluster: ClusterFactory,
) -> None:
    """One forged stats entry claiming 10**12 failures opens nobody."""
    cluster = await make_cluster(reset_timeout=1.0, sync_interval=TICK)
    pods = await cluster.started(3)
    for pod in pods:
        for _ in range(20):
            assert await pod.call() == "ok"
    now = await redis_now_ms(cluster.admin)
    forged = entry(now, "ghost", failures=10**12, epoch=pods[0].link.epoch)
    await cluster.admin.rpush(cluster.keys.stats, forged)
    await stays(
        lambda: all(p.breaker.closed for p in pods),
        duration=4 * TICK,
        what="every pod closed after the forged entry",
    )
    assert (await cluster.state_hash())["state"] == "closed"


async def _stall_per_message(
    publish: Callable[[], None], *, messages: int, gap: float
) -> list[float]:
    """For each of ``messages`` publications, the longest event-loop stall in the gap after it."""
    stalls: list[float] = []
    probe = 0.001
    for _ in range(messages):
        await asyncio.to_thread(publish)  # sent from another thread: not this loop's work
        worst = 0.0
        end = time.monotonic() + gap
        while time.monotonic() < end:
            start = time.monotonic()
            await asyncio.sleep(probe)
            worst = max(worst, time.monotonic() - start - probe)
        stalls.append(worst)
    return stalls


async def test_oversized_broadcast_is_rejected_before_it_costs_the_loop(
    make_cluster: ClusterFactory,
) -> None:
    """1 MB on the events channel stalls the event loop of four pods by less than 5 ms."""
    cluster = await make_cluster(reset_timeout=1.0, sync_interval=1.0)
    pods = await cluster.started(4)
    publisher = redis.Redis.from_url(cluster.url)
    payload = b'{"v":1,"pad":"' + b"x" * (1024 * 1024) + b'"}'

    def publish() -> None:
        publisher.publish(cluster.keys.events, payload)

    try:
        quiet = await _stall_per_message(lambda: None, messages=5, gap=0.05)
        stalls = await _stall_per_message(publish, messages=10, gap=0.06)
    finally:
        publisher.close()
    assert all(p.coordinator.stats["bad_messages"] >= 10 for p in pods)
    typical = statistics.median(stalls)
    assert typical < 0.005, (
        f"each 1 MB message stalled the loop {typical * 1000:.1f} ms (median; "
        f"quiet: {statistics.median(quiet) * 1000:.1f} ms; all: "
        f"{[round(s * 1000, 1) for s in stalls]})"
    )


# --------------------------------------------------------------------------- 7: trial count


async def test_half_open_never_admits_more_than_max_calls_trials(
    make_cluster: ClusterFactory,
) -> None:
    """half_open_max_calls=2: a pod whose trial succeeded gets no third trial in the period."""
    cluster = await make_cluster(reset_timeout=0.3, half_open_max_calls=2, sync_interval=2.0)
    pods = await cluster.half_opened(3)
    calls = sum(p.downstream.calls for p in pods)

    pods[1].downstream.mode = "hang"  # trial 1: holds its lease
    hanging = asyncio.get_running_loop().create_task(call_outcome(pods[1]))
    await eventually(lambda: pods[1].downstream.running == 1, what="pod1's trial running")
    assert await call_outcome(pods[0]) == "ok"  # trial 2: succeeds

    async def one_success_recorded() -> bool:
        return (await cluster.state_hash()).get("trial_successes") == "1"

    await eventually_async(one_success_recorded, what="the first success in Redis")
    later = [await call_outcome(pods[0]), await call_outcome(pods[2])]
    pods[1].downstream.release("ok")
    await hanging
    trials = sum(p.downstream.calls for p in pods) - calls
    assert trials <= 2, f"{trials} trials in one half-open period (later calls: {later})"
    assert_no_leak(later)
