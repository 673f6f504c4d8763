"""Cluster-wide half-open: trial permits shared by every pod, shared outcome, shared backoff."""

from __future__ import annotations

import asyncio
import time

import pytest
from distributed_support import ClusterFactory, gather_calls
from helpers import Downstream, cancel
from transport_support import redis_now_ms
from waiting import eventually, eventually_async, stays

from distributed_opossum import OpenCircuitError, State

pytestmark = pytest.mark.redis


async def test_exactly_half_open_max_calls_reach_the_action_across_pods(
    make_cluster: ClusterFactory,
) -> None:
    """Of 30 concurrent calls on 3 pods at the end of the open period, exactly 2 trials run."""
    shared = Downstream()
    cluster = await make_cluster(
        half_open_max_calls=2, reset_timeout=0.3, timeout=5.0, sync_interval=0.5
    )
    pods = await cluster.half_opened(3, downstream=shared, within=1.0)
    assert all(p.count("half_open") == 1 for p in pods)
    before = shared.calls
    shared.mode = "hang"
    calls = asyncio.gather(*(p.call() for p in pods for _ in range(10)))
    await eventually(lambda: shared.running == 2, within=1.0, what="two trials running")
    await asyncio.sleep(0.1)  # every other call has had time to be admitted, or not
    assert shared.calls - before == 2
    assert shared.running == 2
    shared.release("ok")
    outcomes = await asyncio.wait_for(calls, 2.0)
    assert sorted(outcomes).count("ok") == 2
    assert sorted(outcomes).count("rejected") == 28
    await eventually(
        lambda: all(p.breaker.closed for p in pods), within=0.5, what="every pod closed"
    )
    state = await cluster.state_hash()
    assert state["state"] == "closed"
    assert not [field for field in state if field.startswith("lease:")]


async def test_trial_failure_reopens_every_pod_with_doubled_period(
    make_cluster: ClusterFactory,
) -> None:
    """A failed trial re-opens all pods; with multiplier 2 the next open period is twice as long."""
    cluster = await make_cluster(reset_timeout=0.3, reset_timeout_multiplier=2.0, sync_interval=0.5)
    pods = await cluster.half_opened(3, within=1.0)
    assert all(p.count("half_open") == 1 for p in pods)
    pods[1].downstream.mode = "fail"
    assert await pods[1].call() == "failed"
    await eventually(
        lambda: all(p.breaker.state is State.OPEN for p in pods),
        within=0.3,
        what="every pod re-opened",
    )
    assert pods[1].causes("open")[-1] == "trial"
    for pod in (pods[0], pods[2]):
        assert pod.causes("open")[-1] == "remote", pod.instance
    for pod in pods:
        assert pod.breaker.attempts == 2, pod.instance
    state = await cluster.state_hash()
    assert int(state["attempts"]) == 2
    assert state["reason"] == "trial_failure"
    remaining_ms = int(state["open_until"]) - await redis_now_ms(cluster.admin)
    assert 400 < remaining_ms <= 600

    await eventually(
        lambda: all(p.count("half_open") == 2 for p in pods), within=1.5, what="half_open"
    )
    second_ends = []
    for pod in pods:
        opens, half_opens = pod.times("open"), pod.times("half_open")
        first = half_opens[0] - opens[0]
        second = half_opens[1] - opens[1]
        assert 0.2 < first < 0.4, (pod.instance, first)
        assert 0.5 < second < 0.75, (pod.instance, second)
        assert 1.6 < second / first < 2.6, (pod.instance, first, second)
        second_ends.append(half_opens[1])
    assert max(second_ends) - min(second_ends) < 0.05  # every pod agrees on the deadline


async def test_hung_trial_lease_expires_so_another_trial_goes(
    make_cluster: ClusterFactory,
) -> None:
    """A trial that never returns (timeout=None) loses its lease; another pod's trial then runs."""
    cluster = await make_cluster(timeout=None, reset_timeout=0.3, sync_interval=0.5)
    stuck, other = await cluster.half_opened(2, within=1.0)
    assert stuck.count("half_open") == other.count("half_open") == 1
    hung = await stuck.hanging_call()
    trial_started = time.monotonic()

    with pytest.raises(OpenCircuitError) as info:
        await other.breaker.fire()
    retry_after = info.value.retry_after
    assert retry_after is not None
    # lease = max(timeout or 0, reset_timeout, 1 s) = 1 s
    assert 0.6 < retry_after <= 1.01
    assert other.downstream.calls == 0

    async def other_trial_ran() -> bool:
        return await other.call() == "ok"

    deadline = trial_started + 2.5
    while not await other_trial_ran():
        assert time.monotonic() < deadline, "no second trial after the lease expired"
        await asyncio.sleep(0.05)
    waited = time.monotonic() - trial_started
    assert 0.7 < waited < 1.8
    assert other.downstream.calls == 1
    await eventually(
        lambda: stuck.breaker.closed and other.breaker.closed,
        within=0.5,
        what="both closed",
    )
    assert stuck.causes("close") == ["remote"]

    await cancel(hung)


async def test_late_failure_of_an_expired_trial_does_not_reopen(
    make_cluster: ClusterFactory,
) -> None:
    """A trial that fails after its lease expired and the cluster closed changes no state."""
    cluster = await make_cluster(timeout=None, reset_timeout=0.3, sync_interval=0.3)
    stuck, other = await cluster.half_opened(2, within=1.0)
    hung = await stuck.hanging_call()
    deadline = time.monotonic() + 2.5
    while await other.call() != "ok":  # once the hung trial's lease (1 s) expired
        assert time.monotonic() < deadline, "no second trial after the lease expired"
        await asyncio.sleep(0.05)
    await eventually(lambda: stuck.breaker.closed, within=0.5, what="stuck closed")

    # The late failure belongs to an older epoch: neither the local breaker
    # nor the cluster (through the next reports) may re-open on it.
    stuck.downstream.release("fail")
    assert await asyncio.wait_for(hung, 1.0) == "failed"
    await stays(
        lambda: stuck.breaker.closed and other.breaker.closed,
        duration=0.8,  # the failure's bucket ends and is reported
        what="closed after the late failure",
    )
    state = await cluster.state_hash()
    assert state["state"] == "closed", state


async def test_calls_on_many_pods_before_half_open_are_all_rejected(
    make_cluster: ClusterFactory,
) -> None:
    """While the shared open period runs, no pod lets a call through, not even a new one."""
    shared = Downstream()
    cluster = await make_cluster(reset_timeout=1.0, sync_interval=0.5)
    pods = await cluster.started(3, downstream=shared)
    await cluster.trip()
    before = shared.calls
    shared.mode = "ok"
    outcomes = await gather_calls([p.call() for p in pods for _ in range(20)])
    assert set(outcomes) == {"rejected"}
    assert shared.calls == before


async def test_cancelled_trial_gives_its_cluster_permit_back(
    make_cluster: ClusterFactory,
) -> None:
    """A trial whose caller is cancelled frees the cluster permit at once, not at lease expiry."""
    cluster = await make_cluster(timeout=None, reset_timeout=0.3, sync_interval=0.5)
    first, second = await cluster.half_opened(2, within=1.0)
    trial = await first.hanging_call()
    assert await second.call() == "rejected"
    await cancel(trial)
    start = time.monotonic()

    async def leases() -> bool:
        state = await cluster.state_hash()
        return not [f for f in state if f.startswith("lease:")]

    await eventually_async(leases, within=0.5, what="lease released")
    assert await second.call() == "ok"
    assert time.monotonic() - start < 0.5  # far less than the 1 s lease
    await eventually(lambda: first.breaker.closed, within=0.5, what="first closed")


async def test_trial_timeout_counts_as_failure_and_reopens_everywhere(
    make_cluster: ClusterFactory,
) -> None:
    """A trial that exceeds ``timeout`` fails: every pod re-opens with the next attempt."""
    cluster = await make_cluster(
        timeout=0.1, reset_timeout=0.3, reset_timeout_multiplier=2.0, sync_interval=0.5
    )
    pods = await cluster.half_opened(2, within=1.0)
    pods[1].downstream.mode = "hang"
    with pytest.raises(TimeoutError):
        await pods[1].breaker.fire()
    await eventually(
        lambda: all(p.breaker.state is State.OPEN for p in pods),
        within=0.5,
        what="every pod re-opened",
    )
    for pod in pods:
        assert pod.breaker.attempts == 2
    assert pods[0].causes("open")[-1] == "remote"
    pods[1].downstream.release()


async def test_two_permits_on_one_pod_close_the_cluster(make_cluster: ClusterFactory) -> None:
    """With half_open_max_calls=2, two successful trials on one pod close every pod."""
    cluster = await make_cluster(half_open_max_calls=2, reset_timeout=0.3, sync_interval=0.5)
    busy, quiet = await cluster.half_opened(2, within=1.0)
    busy.downstream.mode = "hang"
    trials = asyncio.gather(busy.call(), busy.call())
    await eventually(lambda: busy.downstream.running == 2, within=1.0, what="2 trials")
    assert await quiet.call() == "rejected"
    busy.downstream.release("ok")
    assert list(await asyncio.wait_for(trials, 1.0)) == ["ok", "ok"]
    await eventually(
        lambda: busy.breaker.closed and quiet.breaker.closed, within=0.5, what="closed"
    )
    assert quiet.causes("close") == ["remote"]


async def test_force_open_during_a_running_trial_wins(make_cluster: ClusterFactory) -> None:
    """A trial that succeeds after force_open() does not close the forced-open cluster."""
    cluster = await make_cluster(reset_timeout=0.3, sync_interval=0.5)
    trialist, operator = await cluster.half_opened(2, within=1.0)
    trial = await trialist.hanging_call()
    await operator.breaker.force_open()
    await eventually(lambda: trialist.breaker.state is State.FORCED_OPEN, within=0.5, what="forced")
    trialist.downstream.release("ok")
    assert await asyncio.wait_for(trial, 1.0) == "ok"
    await stays(
        lambda: (
            trialist.breaker.state is State.FORCED_OPEN
            and operator.breaker.state is State.FORCED_OPEN
        ),
        duration=0.4,
        what="forced open after the late trial success",
    )
    assert (await cluster.state_hash())["state"] == "forced_open"


async def test_busy_pods_in_an_open_period_open_once_and_half_open_once(
    make_cluster: ClusterFactory,
) -> None:
    """Pods rejecting calls through an open period, while one trial hangs, report every
    tick (plain reports, tallies, snapshots under way): none of it re-opens a pod
    that is open or half-open on the same epoch."""
    shared = Downstream()
    cluster = await make_cluster(reset_timeout=0.3, timeout=5.0, sync_interval=0.05)
    pods = await cluster.half_opened(3, downstream=shared, within=1.0)
    shared.mode = "hang"
    trial = asyncio.ensure_future(pods[0].call())
    await eventually(lambda: shared.running == 1, within=1.0, what="the trial running")
    deadline = time.monotonic() + 0.6  # a dozen ticks of rejected calls on every pod
    while time.monotonic() < deadline:
        assert {await p.call() for p in pods[1:]} == {"rejected"}
        await asyncio.sleep(0.01)
    assert [p.count("open") for p in pods] == [1, 1, 1]
    assert [p.count("half_open") for p in pods] == [1, 1, 1]
    shared.release("ok")
    assert await asyncio.wait_for(trial, 2.0) == "ok"
