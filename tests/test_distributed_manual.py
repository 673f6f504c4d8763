"""Manual control across pods: force_open()/reset() are cluster-wide, open()/close() local."""

from __future__ import annotations

import asyncio
import time

import pytest
from distributed_support import Cluster, ClusterFactory, Pod
from redis_server import RedisServer
from waiting import eventually, stays

from distributed_opossum import OpenCircuitError, RegistryError, State

pytestmark = pytest.mark.redis


async def test_force_open_holds_every_pod_open_until_reset_on_any_pod(
    make_cluster: ClusterFactory,
) -> None:
    """force_open() on one pod holds all pods open (retry_after None) until reset() on another."""
    cluster = await make_cluster(reset_timeout=0.2, sync_interval=0.2)
    pods = await cluster.started(3)
    await pods[0].breaker.force_open()
    await eventually(
        lambda: all(p.breaker.state is State.FORCED_OPEN for p in pods),
        within=0.5,
        what="every pod forced open",
    )
    await cluster.shared_state_becomes("forced_open", within=0.5)
    # Three reset_timeouts later nothing has half-opened and nothing got through.
    await stays(
        lambda: all(p.breaker.state is State.FORCED_OPEN for p in pods),
        duration=0.6,
        what="forced open",
    )
    for pod in pods:
        with pytest.raises(OpenCircuitError) as info:
            await pod.breaker.fire()
        assert info.value.retry_after is None, pod.instance
        assert pod.downstream.calls == 0
        assert pod.count("half_open") == 0
    for pod in pods[1:]:
        assert pod.causes("open") == ["remote"], pod.instance

    await pods[2].breaker.reset()
    await eventually(
        lambda: all(p.breaker.closed for p in pods), within=0.5, what="every pod closed"
    )
    for pod in pods:
        assert await pod.call() == "ok"
    for pod in (pods[0], pods[1]):
        assert pod.causes("close") == ["remote"], pod.instance
    state = await cluster.state_hash()
    assert state["state"] == "closed"
    assert int(state["attempts"]) == 0


async def test_local_close_does_not_override_an_open_cluster(
    make_cluster: ClusterFactory,
) -> None:
    """close() on one pod of an open cluster lets no call through: the pod follows the cluster."""
    cluster = await make_cluster(reset_timeout=2.0, sync_interval=0.2)
    pod0, pod1 = await cluster.started(2)
    await cluster.trip()
    pod1.breaker.close()
    await eventually(lambda: pod1.breaker.opened, within=0.25, what="pod1 open again")
    outcomes = [await pod1.call() for _ in range(5)]
    assert outcomes == ["rejected"] * 5
    assert pod1.downstream.calls == 0
    await stays(lambda: pod1.breaker.opened, duration=0.3, what="pod1 open")
    assert (await cluster.state_hash())["state"] == "open"
    # open() stays local too: it does not open anyone else.
    pod0.breaker.close()
    assert pod0.breaker.opened  # follows the open cluster again


async def test_local_open_does_not_open_other_pods(make_cluster: ClusterFactory) -> None:
    """open() on one pod is local: the shared state and the other pods stay closed."""
    cluster = await make_cluster(reset_timeout=2.0, sync_interval=0.2)
    pod0, pod1 = await cluster.started(2)
    pod0.breaker.open()
    assert pod0.breaker.opened
    assert pod0.causes("open") == ["manual"]
    await stays(lambda: pod1.breaker.closed, duration=0.5, what="pod1 closed")
    assert (await cluster.state_hash())["state"] == "closed"


async def lone_pod(make_cluster: ClusterFactory, server: RedisServer) -> tuple[Cluster, Pod]:
    """One ready pod on ``server``, whose open periods (5 s) outlast the test."""
    cluster = await make_cluster(server=server, reset_timeout=5.0, sync_interval=0.2)
    (pod,) = await cluster.started(1)
    return cluster, pod


async def test_manual_commands_raise_registry_error_when_redis_is_dead(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """With Redis killed, force_open()/reset() raise RegistryError within 5 s and change nothing."""
    _, pod = await lone_pod(make_cluster, redis_server)
    redis_server.kill()

    start = time.monotonic()
    with pytest.raises(RegistryError):
        await pod.breaker.force_open()
    assert time.monotonic() - start < 5.5
    assert pod.breaker.state is State.CLOSED
    assert pod.count("open") == 0
    assert await pod.call() == "ok"

    await pod.trip()
    assert State(pod.breaker.state) is State.OPEN
    start = time.monotonic()
    with pytest.raises(RegistryError):
        await pod.breaker.reset()
    assert time.monotonic() - start < 5.5
    assert State(pod.breaker.state) is State.OPEN
    assert pod.breaker.attempts == 1
    assert pod.count("close") == 0


async def test_force_open_raises_registry_error_within_5s_when_redis_hangs(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """With Redis frozen (SIGSTOP), force_open() gives up within ~5 s and changes nothing."""
    cluster, pod = await lone_pod(make_cluster, redis_server)
    redis_server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(RegistryError):
            await pod.breaker.force_open()
        elapsed = time.monotonic() - start
    finally:
        redis_server.resume()
    assert elapsed < 6.0
    assert pod.breaker.state is State.CLOSED
    assert await pod.call() == "ok"
    state = await cluster.state_hash()
    assert state.get("state") != "forced_open"


async def test_manual_commands_announce_manual_cause_on_the_calling_pod(
    make_cluster: ClusterFactory,
) -> None:
    """The pod where force_open()/reset() is called says ``manual``; the others say ``remote``."""
    cluster = await make_cluster(reset_timeout=1.0, sync_interval=0.5)
    operator, other = await cluster.started(2)
    await operator.breaker.force_open()
    await eventually(lambda: other.breaker.state is State.FORCED_OPEN, within=0.5)
    await operator.breaker.reset()
    await eventually(lambda: other.breaker.closed, within=0.5)
    assert other.causes("open") == ["remote"]
    assert other.causes("close") == ["remote"]
    assert operator.causes("open") == ["manual"]
    assert operator.causes("close") == ["manual"]


async def test_local_close_keeps_the_clusters_deadline(make_cluster: ClusterFactory) -> None:
    """After close() on a pod of an open cluster, the pod re-opens until the cluster's deadline."""
    cluster = await make_cluster(reset_timeout=1.2, sync_interval=2.0)
    pod0, pod1 = await cluster.started(2)
    await cluster.trip()
    await asyncio.sleep(0.7)
    pod1.breaker.close()
    assert pod1.breaker.opened
    left0, left1 = pod0.breaker.retry_after, pod1.breaker.retry_after
    assert left0 is not None
    assert left1 is not None
    assert left1 == pytest.approx(left0, abs=0.1)
    await eventually(
        lambda: pod0.breaker.half_open and pod1.breaker.half_open,
        within=1.0,
        what="both half_open at the cluster's deadline",
    )
    ends = [pod0.times("half_open")[0], pod1.times("half_open")[0]]
    assert abs(ends[0] - ends[1]) < 0.1


async def test_local_close_during_forced_open_stays_forced(make_cluster: ClusterFactory) -> None:
    """close() on one pod does not end a cluster-wide forced open."""
    cluster = await make_cluster(reset_timeout=0.2, sync_interval=0.2)
    pod0, pod1 = await cluster.started(2)
    await pod0.breaker.force_open()
    await eventually(lambda: pod1.breaker.state is State.FORCED_OPEN, within=0.5)
    pod1.breaker.close()
    assert pod1.breaker.state is State.FORCED_OPEN
    assert await pod1.call() == "rejected"
    await stays(lambda: pod1.breaker.state is State.FORCED_OPEN, duration=0.5)
    assert pod1.downstream.calls == 0


async def test_reset_clears_backoff_on_every_pod(make_cluster: ClusterFactory) -> None:
    """After failed trials doubled the period, reset() makes the next opening a first attempt."""
    cluster = await make_cluster(reset_timeout=0.2, reset_timeout_multiplier=2.0, sync_interval=0.5)
    pod0, pod1 = await cluster.half_opened(2, within=1.0)
    pod1.downstream.mode = "fail"
    assert await pod1.call() == "failed"
    await eventually(lambda: pod0.breaker.attempts == 2, within=0.5, what="attempt 2")
    await pod0.breaker.reset()
    await eventually(lambda: pod1.breaker.closed, within=0.5, what="pod1 closed")
    assert pod0.breaker.attempts == pod1.breaker.attempts == 0
    state = await cluster.state_hash()
    assert state["state"] == "closed"
    assert int(state["attempts"]) == 0
    assert state["reason"] == "reset"

    await pod1.trip()
    await eventually(lambda: pod0.breaker.opened, within=0.5, what="pod0 open")
    assert pod0.breaker.attempts == pod1.breaker.attempts == 1
    left = pod0.breaker.retry_after
    assert left is not None
    assert left <= 0.2
