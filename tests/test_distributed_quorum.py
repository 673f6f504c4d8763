"""Quorum: one sick pod's trip is a vote, not a cluster-wide open."""

from __future__ import annotations

from typing import Any

import pytest
from distributed_support import Cluster, ClusterFactory, Pod
from waiting import eventually, eventually_async, stays

pytestmark = pytest.mark.redis

QUORUM_OPTIONS: dict[str, Any] = {
    "volume_threshold": 3,
    "reset_timeout": 5.0,
    "rolling_count_timeout": 3.0,
    "rolling_count_buckets": 10,
    "sync_interval": 0.2,
}


async def entry_of(cluster: Cluster, instance: str, *, vote: bool) -> None:
    """Wait until ``instance`` has an entry in the stats list (a vote, if ``vote``)."""

    async def present() -> bool:
        entries = await cluster.stats_entries()
        return any(e["instance"] == instance and (e["local_open"] or not vote) for e in entries)

    await eventually_async(present, within=1.5, what=f"{instance}'s entry in the stats list")


async def test_quorum_count_one_sick_pod_opens_only_locally(make_cluster: ClusterFactory) -> None:
    """With quorum=2 one trip opens its pod alone (cause local); a second opens the cluster."""
    cluster = await make_cluster(**QUORUM_OPTIONS, distributed={"quorum": 2})
    pods = await cluster.started(3)

    await pods[0].trip()
    assert pods[0].causes("open") == ["local"]
    await entry_of(cluster, "pod0", vote=True)
    await stays(
        lambda: pods[1].breaker.closed and pods[2].breaker.closed,
        duration=0.5,
        what="healthy pods closed",
    )
    assert pods[0].breaker.opened
    state = await cluster.state_hash()
    assert state["state"] == "closed"
    assert pods[1].count("open") == pods[2].count("open") == 0
    assert await pods[2].call() == "ok"

    await pods[1].trip()
    assert pods[1].causes("open") == ["local"]
    await eventually(lambda: pods[2].breaker.opened, within=1.0, what="pod2 open")
    assert pods[2].causes("open") == ["remote"]
    # The sick pods were open already: no second open event.
    assert pods[0].causes("open") == ["local"]
    assert pods[1].causes("open") == ["local"]
    state = await cluster.state_hash()
    assert state["state"] == "open"
    assert state["reason"] == "quorum"


async def test_quorum_pooled_rate_alone_never_opens(make_cluster: ClusterFactory) -> None:
    """Under quorum, pods each below min_pod_volume stay closed whatever their pooled rate."""
    cluster = await make_cluster(
        **{**QUORUM_OPTIONS, "volume_threshold": 5}, distributed={"quorum": 2}
    )
    pods = await cluster.started(3)
    for pod in pods:
        pod.downstream.mode = "fail"
        for _ in range(3):
            assert await pod.call() == "failed"

    async def all_reported() -> bool:
        entries = await cluster.stats_entries()
        return sum(int(e["failures"]) for e in entries) == 9

    await eventually_async(all_reported, within=1.5, what="9 failures reported")
    await stays(lambda: all(p.breaker.closed for p in pods), duration=0.5, what="every pod closed")
    assert (await cluster.state_hash())["state"] == "closed"


async def test_quorum_fraction_ignores_idle_pods(make_cluster: ClusterFactory) -> None:
    """With quorum=0.75 only pods that reported calls count: two votes of two busy pods open it."""
    cluster = await make_cluster(**QUORUM_OPTIONS, distributed={"quorum": 0.75})
    sick, busy, idle = (cluster.pod(name) for name in ("sick", "busy", "idle"))
    pods: list[Pod] = [sick, busy, idle]
    await cluster.ready()

    for _ in range(3):
        assert await busy.call() == "ok"
    await entry_of(cluster, "busy", vote=False)

    # One vote of two reporting pods: ceil(0.75 * 2) = 2 are needed.
    await sick.trip()
    assert sick.causes("open") == ["local"]
    await entry_of(cluster, "sick", vote=True)
    await stays(
        lambda: busy.breaker.closed and idle.breaker.closed,
        duration=0.5,
        what="busy and idle pods closed",
    )
    assert (await cluster.state_hash())["state"] == "closed"

    # Two votes of two reporting pods open it; the idle pod would make it 3 needed.
    await busy.trip()
    await eventually(lambda: idle.breaker.opened, within=1.0, what="idle pod open")
    assert idle.causes("open") == ["remote"]
    assert all(p.breaker.opened for p in pods)
    state = await cluster.state_hash()
    assert state["reason"] == "quorum"
    entries = await cluster.stats_entries()
    assert not any(e["instance"] == "idle" for e in entries)


async def test_quorum_votes_by_pod_rate_without_local_trips(make_cluster: ClusterFactory) -> None:
    """A pod with min_pod_volume calls failing above the threshold votes without tripping."""
    cluster = await make_cluster(
        **{**QUORUM_OPTIONS, "volume_threshold": 100},
        distributed={"quorum": 2, "min_pod_volume": 3},
    )
    pods = await cluster.started(3)
    pods[0].downstream.mode = "fail"
    for _ in range(4):
        assert await pods[0].call() == "failed"
    await entry_of(cluster, "pod0", vote=False)
    await stays(lambda: all(p.breaker.closed for p in pods), duration=0.45, what="closed")

    pods[1].downstream.mode = "fail"
    for _ in range(4):
        assert await pods[1].call() == "failed"
    assert all(p.count("open") == 0 for p in pods)  # nobody tripped locally
    await eventually(lambda: all(p.breaker.opened for p in pods), within=1.0, what="quorum open")
    causes = sorted(c for p in pods for c in p.causes("open"))
    assert causes in (["cluster", "remote", "remote"], ["remote", "remote", "remote"])
    assert "local" not in causes
    assert (await cluster.state_hash())["reason"] == "quorum"


async def test_reset_closes_pods_open_on_their_own_vote(make_cluster: ClusterFactory) -> None:
    """Under quorum, reset() on a healthy pod also closes a pod that is open on its own trip."""
    cluster = await make_cluster(**QUORUM_OPTIONS, distributed={"quorum": 2})
    sick, healthy = cluster.pod("sick"), cluster.pod("healthy")
    await cluster.ready()
    await sick.trip()
    await entry_of(cluster, "sick", vote=True)
    assert sick.breaker.opened
    assert healthy.breaker.closed
    await healthy.breaker.reset()
    await eventually(lambda: sick.breaker.closed, within=0.5, what="sick pod closed")
    assert sick.causes("close") == ["remote"]
    assert sick.breaker.attempts == 0
    sick.downstream.mode = "ok"
    assert await sick.call() == "ok"
