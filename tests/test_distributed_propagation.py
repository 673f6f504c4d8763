"""Pods of one breaker name act as one: broadcast trips, pooled rates, the Redis layout.

Each pod is a breaker with its own Redis client (own connections, own
coordinator) on a private redis-server. ``sync_interval`` is long where a test
must show that the broadcast, not the next report tick, carried the news.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from distributed_support import PREFIX, ClusterFactory
from transport_support import next_message, redis_now_ms, subscribed, text
from waiting import eventually, eventually_async, stays

from distributed_opossum import OpenCircuitError, State
from distributed_opossum._redis.keys import encode_name

pytestmark = pytest.mark.redis

ENTRY_FIELDS = {
    "v",
    "timestamp",
    "instance",
    "fires",
    "successes",
    "failures",
    "timeouts",
    "rejects",
    "local_open",
}
BROADCAST_FIELDS = {
    "v",
    "name",
    "gen",
    "epoch",
    "state",
    "open_until",
    "now",
    "attempts",
    "origin",
    "reason",
}


async def test_local_trip_opens_every_pod_within_bound(make_cluster: ClusterFactory) -> None:
    """A local trip on one pod opens every other pod within 0.3 s, long before a report tick."""
    cluster = await make_cluster(reset_timeout=1.0, sync_interval=2.0)
    pods = await cluster.started(4)
    start = time.monotonic()
    await pods[0].trip()
    waited = await eventually(
        lambda: all(p.breaker.state is State.OPEN for p in pods),
        within=0.3,
        what="every pod open",
    )
    assert waited < 0.3
    assert pods[0].causes("open") == ["local"]
    for pod in pods[1:]:
        assert pod.causes("open") == ["remote"], pod.instance
        assert pod.times("open")[0] - start < 0.3
        retry_after = pod.breaker.retry_after
        assert retry_after is not None
        assert 0.5 < retry_after <= 1.0
        with pytest.raises(OpenCircuitError):
            await pod.breaker.fire()
        assert pod.downstream.calls == 0
        assert pod.breaker.attempts == 1


async def test_stats_list_state_hash_and_broadcast_layout(make_cluster: ClusterFactory) -> None:
    """Keys are hash-tagged; stats entries, state hash and broadcasts hold the §5 fields."""
    name = "pay:ments v2"
    cluster = await make_cluster(
        name,
        reset_timeout=5.0,
        rolling_count_timeout=2.0,
        rolling_count_buckets=10,
        sync_interval=0.2,
    )
    assert cluster.keys.stats == f"{PREFIX}:{{pay%3Aments%20v2}}:distributedStats"
    assert cluster.keys.state == f"{PREFIX}:{{pay%3Aments%20v2}}:state"
    assert cluster.keys.events == f"{PREFIX}:{{pay%3Aments%20v2}}:events"
    pod0, pod1 = await cluster.started(2)
    for _ in range(3):
        assert await pod0.call() == "ok"

    async def pod0_reported() -> bool:
        entries = await cluster.stats_entries()
        return sum(int(e["successes"]) for e in entries if e["instance"] == "pod0") == 3

    await eventually_async(pod0_reported, within=1.5, what="pod0's calls in the stats list")

    async with subscribed(cluster.admin, cluster.keys.events) as pubsub:
        before = await redis_now_ms(cluster.admin)
        await pod1.trip()
        broadcast = json.loads(await next_message(pubsub))
        after = await redis_now_ms(cluster.admin)

    assert set(broadcast) >= BROADCAST_FIELDS
    assert broadcast["v"] == 1
    assert broadcast["name"] == name
    assert broadcast["state"] == "open"
    assert broadcast["origin"] == "pod1"
    assert broadcast["attempts"] == 1
    assert broadcast["epoch"] >= 1
    assert before <= broadcast["now"] <= after
    assert broadcast["open_until"] - broadcast["now"] == pytest.approx(5000, abs=1)

    keys = {text(k) for k in await cluster.admin.keys(f"{PREFIX}:*")}
    assert {cluster.keys.stats, cluster.keys.state} <= keys
    tag = f"{PREFIX}:{{pay%3Aments%20v2}}:"
    for key in keys:
        assert key.startswith(tag), f"{key} is not under the breaker's hash tag"
        ttl = await cluster.admin.pttl(key)
        assert 0 < ttl <= 60_000 + 5_000, f"{key} has TTL {ttl} ms"

    state = await cluster.state_hash()
    assert re.fullmatch(r"[0-9a-f]{8,}", state["gen"]), state
    assert state["gen"] == broadcast["gen"]
    assert state["state"] == "open"
    assert int(state["epoch"]) == broadcast["epoch"]
    assert int(state["attempts"]) == 1
    assert int(state["open_until"]) == broadcast["open_until"]
    assert int(state["closed_at"]) == 0
    assert state["reason"] == "local_trip"

    entries = await cluster.stats_entries()
    assert entries, "empty stats list"
    now = await redis_now_ms(cluster.admin)
    for entry in entries:
        assert set(entry) >= ENTRY_FIELDS, entry
        assert entry["v"] == 1
        assert entry["instance"] in {"pod0", "pod1"}
        assert now - 2000 < entry["timestamp"] <= now
        for counter in ("fires", "successes", "failures", "timeouts", "rejects"):
            assert isinstance(entry[counter], int)
            assert entry[counter] >= 0
        assert isinstance(entry["local_open"], bool)
    timestamps = [e["timestamp"] for e in entries]
    assert timestamps == sorted(timestamps)
    assert any(e["instance"] == "pod1" and e["local_open"] for e in entries)
    assert not any(e["instance"] == "pod0" and e["local_open"] for e in entries)
    assert sum(e["fires"] for e in entries if e["instance"] == "pod0") == 3


async def test_half_open_and_trial_close_propagate(make_cluster: ClusterFactory) -> None:
    """Every pod half-opens when the shared open period ends; a trial success on one closes all."""
    cluster = await make_cluster(reset_timeout=0.3, sync_interval=0.2)
    pods = await cluster.half_opened(3, within=1.0)
    assert all(p.count("half_open") == 1 for p in pods)
    for pod in pods:
        assert pod.causes("half_open") == ["timer"]
        opened, half_opened = pod.times("open")[0], pod.times("half_open")[0]
        assert 0.2 < half_opened - opened < 0.5, pod.instance
    assert await pods[1].call() == "ok"
    await eventually(lambda: all(p.breaker.closed for p in pods), within=0.5, what="closed")
    assert pods[1].causes("close") == ["trial"]
    assert pods[0].causes("close") == ["remote"]
    assert pods[2].causes("close") == ["remote"]
    for pod in pods:
        assert pod.breaker.attempts == 0
    assert pods[1].downstream.calls == 1  # the one trial
    assert pods[2].downstream.calls == 0

    state = await cluster.state_hash()
    assert state["state"] == "closed"
    assert int(state["attempts"]) == 0
    closed_at = int(state["closed_at"])
    assert closed_at > 0
    assert state["reason"] == "trial_success"

    async def only_young_entries() -> bool:
        entries = await cluster.stats_entries()
        return all(e["timestamp"] > closed_at for e in entries)

    await eventually_async(only_young_entries, what="entries from before the close dropped")


async def test_pooled_rate_trips_pods_that_each_see_too_few_calls(
    make_cluster: ClusterFactory,
) -> None:
    """Without quorum, pods each below volume_threshold trip together on the pooled volume."""
    cluster = await make_cluster(
        volume_threshold=9,
        reset_timeout=5.0,
        rolling_count_timeout=3.0,
        rolling_count_buckets=10,
        sync_interval=0.2,
    )
    pods = await cluster.started(3)
    for pod in pods[:2]:
        pod.downstream.mode = "fail"
        for _ in range(4):
            assert await pod.call() == "failed"
        assert pod.breaker.closed  # 4 < volume_threshold: no local trip

    async def eight_failures_reported() -> bool:
        entries = await cluster.stats_entries()
        return sum(int(e["failures"]) for e in entries) == 8

    await eventually_async(eight_failures_reported, within=1.5, what="8 failures reported")
    # 8 pooled calls < 9: two more report ticks change nothing.
    await stays(lambda: all(p.breaker.closed for p in pods), duration=0.45, what="closed")

    pods[2].downstream.mode = "fail"
    for _ in range(4):
        assert await pods[2].call() == "failed"
    assert pods[2].breaker.closed
    await eventually(lambda: all(p.breaker.opened for p in pods), within=1.0, what="pooled open")
    causes = sorted(c for p in pods for c in p.causes("open"))
    assert causes == ["cluster", "remote", "remote"]
    state = await cluster.state_hash()
    assert state["reason"] == "pooled_rate"
    assert state["state"] == "open"


async def test_pod_created_while_cluster_open_learns_at_first_sync(
    make_cluster: ClusterFactory,
) -> None:
    """A pod built while the cluster is open is open after its first sync, before any tick."""
    cluster = await make_cluster(reset_timeout=5.0, sync_interval=3.0)
    (pod0,) = await cluster.started(1)
    await cluster.trip()
    await cluster.shared_state_becomes("open", within=0.5)

    late = cluster.pod("late")
    waited = await eventually(lambda: late.breaker.opened, within=0.5, what="late pod open")
    assert waited < 0.5
    assert late.causes("open") == ["remote"]
    with pytest.raises(OpenCircuitError) as info:
        await late.breaker.fire()
    assert late.downstream.calls == 0
    late_retry = info.value.retry_after
    first_retry = pod0.breaker.retry_after
    assert late_retry is not None
    assert first_retry is not None
    assert late_retry == pytest.approx(first_retry, abs=0.15)
    assert late.breaker.attempts == 1


async def test_healthy_start_emits_no_registry_events(make_cluster: ClusterFactory) -> None:
    """The first connect is not a recovery: no registry_down and no registry_up."""
    cluster = await make_cluster(sync_interval=0.05)
    pods = await cluster.started(2)
    await eventually(lambda: all(p.coordinator.stats["ticks"] >= 3 for p in pods), within=1.0)
    for pod in pods:
        assert pod.count("registry_down") == 0
        assert pod.count("registry_up") == 0


async def test_other_names_and_prefixes_are_isolated(make_cluster: ClusterFactory) -> None:
    """A trip opens pods of its own name and prefix only, not look-alike names or other prefixes."""
    star, plain, payments = [
        await make_cluster(name, reset_timeout=2.0) for name in ("a*", "ab", "payments")
    ]
    tripping, twin = star.pod("s0"), star.pod("s1")
    lookalike = plain.pod("p0")
    other_prefix = payments.pod("o0", distributed={"prefix": "elsewhere"})
    same_prefix_other_name = payments.pod("o1")
    for cluster in (star, plain, payments):
        await cluster.ready()
    await tripping.trip()
    await eventually(lambda: twin.breaker.opened, within=0.5, what="same-name pod open")
    await stays(
        lambda: (
            lookalike.breaker.closed
            and other_prefix.breaker.closed
            and same_prefix_other_name.breaker.closed
        ),
        duration=0.3,
        what="other breakers closed",
    )


async def test_stale_and_echoed_broadcasts_are_ignored(make_cluster: ClusterFactory) -> None:
    """A broadcast of an older epoch, or an echo of the current one, changes no pod."""
    cluster = await make_cluster(reset_timeout=0.3, sync_interval=2.0)
    pod0, pod1 = await cluster.started(2)
    async with subscribed(cluster.admin, cluster.keys.events) as pubsub:
        await pod0.trip()
        opening = json.loads(await next_message(pubsub))
    await eventually(lambda: pod1.breaker.opened, within=0.5)

    # An older epoch saying "closed" does not close the open pods.
    stale = {**opening, "epoch": opening["epoch"] - 1, "state": "closed", "origin": "old"}
    await cluster.admin.publish(cluster.keys.events, json.dumps(stale))
    await stays(lambda: pod1.breaker.opened and pod0.breaker.opened, duration=0.15)

    # After the open period, the same opening broadcast again re-opens nobody.
    await eventually(
        lambda: pod0.breaker.half_open and pod1.breaker.half_open, within=1.0, what="half"
    )
    await cluster.admin.publish(cluster.keys.events, json.dumps(opening))
    await stays(
        lambda: pod0.breaker.half_open and pod1.breaker.half_open,
        duration=0.15,
        what="half_open after the echo",
    )
    assert pod0.count("open") == pod1.count("open") == 1


async def test_jittered_open_period_is_the_same_on_every_pod(make_cluster: ClusterFactory) -> None:
    """With reset_timeout_jitter every pod half-opens at the cluster's one deadline."""
    cluster = await make_cluster(reset_timeout=0.4, reset_timeout_jitter=0.5, sync_interval=2.0)
    pods = await cluster.half_opened(4, within=1.5)
    assert all(p.count("half_open") == 1 for p in pods)
    ends = [p.times("half_open")[0] for p in pods]
    assert max(ends) - min(ends) < 0.05, ends
    period = ends[1] - pods[1].times("open")[0]
    assert 0.15 < period < 0.65


async def test_pod_built_outside_a_loop_joins_on_first_use(make_cluster: ClusterFactory) -> None:
    """A pod constructed where no loop runs syncs on its first call and then follows the cluster."""
    cluster = await make_cluster(reset_timeout=5.0, sync_interval=3.0)
    await cluster.started(1)
    await cluster.trip()
    await cluster.shared_state_becomes("open", within=0.5)
    client = cluster.client("threaded")
    late = await asyncio.to_thread(cluster.pod, "threaded", client=client)
    assert late.link.coordinator is None  # nothing could attach without a loop
    # Calls before the first sync are judged locally (documented).
    await late.call()
    waited = await eventually(lambda: late.breaker.opened, within=0.5, what="late pod open")
    assert waited < 0.5
    calls = late.downstream.calls
    assert await late.call() == "rejected"
    assert late.downstream.calls == calls
    assert late.causes("open") == ["remote"]


async def test_pod_created_while_forced_open_is_forced_open(make_cluster: ClusterFactory) -> None:
    """A pod built while the cluster is forced open is forced open at its first sync."""
    cluster = await make_cluster(reset_timeout=0.2, sync_interval=3.0)
    (pod0,) = await cluster.started(1)
    await pod0.breaker.force_open()
    late = cluster.pod("late")
    await eventually(
        lambda: late.breaker.state is State.FORCED_OPEN, within=0.5, what="late forced"
    )
    with pytest.raises(OpenCircuitError) as info:
        await late.breaker.fire()
    assert info.value.retry_after is None
    await stays(lambda: late.breaker.state is State.FORCED_OPEN, duration=0.4)
    assert late.downstream.calls == 0


@pytest.mark.parametrize(
    ("prefix", "name", "other_prefix", "other_name"),
    [
        ("dtest", "支付 {v2}:*", "dtest", "支付 {v2}:x"),
        ("my*app[1]", "payments", "myXapp1", "payments"),
    ],
)
async def test_awkward_names_and_prefixes_propagate(
    make_cluster: ClusterFactory, prefix: str, name: str, other_prefix: str, other_name: str
) -> None:
    """Unicode, braces and glob characters in a name or prefix still share one breaker."""
    cluster = await make_cluster(
        name, reset_timeout=2.0, sync_interval=2.0, distributed={"prefix": prefix}
    )
    lookalike = await make_cluster(
        other_name, reset_timeout=2.0, distributed={"prefix": other_prefix}
    )
    _, pod1 = cluster.pod("pod0"), cluster.pod("pod1")
    other = lookalike.pod("other")
    await cluster.ready()
    await lookalike.ready()
    await cluster.trip()
    assert pod1.causes("open") == ["remote"]
    keys = (cluster.keys.stats, cluster.keys.state)
    assert await cluster.admin.exists(*keys) == 2
    # Redis Cluster hashes the text between the first "{" and the next "}":
    # both keys must yield the same, whole, encoded name.
    tags = {key[key.index("{") + 1 : key.index("}")] for key in keys}
    assert tags == {encode_name(name)}
    await stays(lambda: other.breaker.closed, duration=0.2, what="look-alike closed")


@pytest.mark.parametrize(
    "client_options",
    [
        {"decode_responses": True},
        {"protocol": 3},
        {"protocol": 3, "decode_responses": True},
        {"health_check_interval": 1},
    ],
    ids=["decoded", "resp3", "resp3-decoded", "health-checked"],
)
async def test_a_trip_reaches_pods_whose_clients_decode_or_speak_resp3(
    make_cluster: ClusterFactory, client_options: dict[str, Any]
) -> None:
    """The listener reads broadcasts off the connection itself: text replies and RESP3
    pushes carry them as well as RESP2 bytes, and a client with health checks reads
    the redis-py way (it pings); the trip still opens every pod by broadcast (the
    report tick is far off)."""
    cluster = await make_cluster(reset_timeout=5.0, sync_interval=5.0)
    pods = [
        cluster.pod(
            f"pod{i}",
            client=cluster.adopt(
                aioredis.Redis.from_url(cluster.url, client_name=f"pod{i}", **client_options)
            ),
        )
        for i in range(3)
    ]
    await cluster.ready()
    await pods[0].trip()
    await eventually(
        lambda: all(p.breaker.state is State.OPEN for p in pods), within=1.0, what="every pod open"
    )
    for pod in pods[1:]:
        assert pod.causes("open") == ["remote"], pod.instance
        assert pod.breaker._link is not None
        coordinator = pod.breaker._link.coordinator
        assert coordinator is not None
        assert coordinator.stats["messages"] >= 1
        assert coordinator.stats["listener_errors"] == 0
