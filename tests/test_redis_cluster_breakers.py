"""Distributed breakers on a real Redis Cluster (3 masters, 3 replicas).

Breaker names spread over every master; two pods (two clients, one
coordinator each) share them. The pooled rate, a trip, the cluster-wide
trial and manual control work on every shard, and a master killed under load
affects only the breakers whose keys it served. Propagation here is by the
reports (a short report interval): the assertions give the open state one
report interval to arrive, rather than expecting it at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from cluster_pods import ClusterPod, calling, cluster_pods, masters_of, spread_names, state_key
from distributed_support import PREFIX
from pod_processes import PodProcess
from redis_cluster import RedisClusterTopology
from waiting import eventually, stays

from distributed_opossum._redis.fleet import Fleet

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

TICK = 0.1
"""The pods' report interval."""
ARRIVES = 3 * TICK + 0.5
"""Time for a change to reach another pod by the reports (with room for a busy machine)."""
OPTIONS: dict[str, Any] = {
    "rolling_count_timeout": 1.0,
    "rolling_count_buckets": 10,
    "volume_threshold": 10,
    "error_threshold_percentage": 50,
    "reset_timeout": 0.5,
    "distributed": {"sync_interval": TICK},
}


def clean(pods: list[ClusterPod]) -> None:
    """No Redis trouble was seen: no outage, no failed tick, no failed script."""
    for pod in pods:
        stats = pod.coordinator.stats
        assert stats["tick_errors"] == stats["script_errors"] == 0, (pod.instance, stats)
        for name in pod.breakers:
            assert pod.count(name, "registry_down") == 0, (pod.instance, name)


async def test_pooled_rate_and_trips_on_every_shard(
    cluster_topology: RedisClusterTopology,
) -> None:
    """Names on all three masters: a pooled rate over two pods opens both; others stay closed."""
    names = await spread_names(cluster_topology, 12)
    assert len(set((await masters_of(cluster_topology, names)).values())) == 3
    async with cluster_pods(cluster_topology, names, **OPTIONS) as pods:
        failing, calm = names[:3], names[3:]  # one name per master fails
        for name in failing:
            for pod in pods:  # 6 failures per pod: below the volume threshold alone
                for _ in range(6):
                    assert await pod.call(name, "fail") == "failed"
                assert pod.breakers[name].closed
        for name in calm:
            for pod in pods:
                assert await pod.call(name) == "ok"
        await eventually(
            lambda: all(p.breakers[n].opened for p in pods for n in failing),
            within=1.0 + ARRIVES,  # the calls' bucket ends, then it is reported
            what="the pooled rate opening every failing name on both pods",
        )
        await stays(lambda: all(p.breakers[n].closed for p in pods for n in calm), duration=TICK)
        for pod in pods:
            for name in failing:
                assert pod.events[name].causes("open") in (["cluster"], ["remote"])
        clean(pods)

        # The operator's view: SCAN over every master finds every name.
        fleet = Fleet(pods[0].client, PREFIX)
        assert await fleet.names() == sorted(names)
        statuses = {status.name: status for status in await fleet.read(names)}
        for name in names:
            shared = statuses[name].state
            assert shared is not None
            assert shared.state == ("open" if name in failing else "closed"), name


async def test_trial_and_manual_control_across_pods(
    cluster_topology: RedisClusterTopology,
) -> None:
    """One trial across two pods in half-open; force_open and reset reach the other pod."""
    names = await spread_names(cluster_topology, 3)
    async with cluster_pods(cluster_topology, names, **OPTIONS) as (pod0, pod1):
        for name in names:
            for _ in range(10):
                await pod0.call(name, "fail")
            assert pod0.breakers[name].opened
        await eventually(
            lambda: all(pod1.breakers[n].opened for n in names), within=ARRIVES, what="remote open"
        )
        await eventually(
            lambda: all(p.breakers[n].half_open for p in (pod0, pod1) for n in names),
            within=2.0,
            what="half-open everywhere",
        )
        for name in names:
            calls = [asyncio.create_task(p.call(name, "hang")) for p in (pod0, pod1) * 3]

            def one_trial(name: str = name, calls: list[asyncio.Task[str]] = calls) -> bool:
                running = sum(p.downstreams[name].running for p in (pod0, pod1))
                return running == 1 and sum(c.done() for c in calls) == 5

            await eventually(one_trial, what=f"one trial of {name} in flight, the others rejected")
            hanging = [c for c in calls if not c.done()]
            assert [c.result() for c in calls if c.done()] == ["rejected"] * 5
            for pod in (pod0, pod1):
                pod.downstreams[name].release("ok")
            assert await hanging[0] == "ok"
        await eventually(
            lambda: all(p.breakers[n].closed for p in (pod0, pod1) for n in names),
            within=ARRIVES,
            what="closed everywhere after the trials",
        )

        for name in names:
            await pod0.breakers[name].force_open()
        await eventually(
            lambda: all(pod1.breakers[n].opened for n in names), within=ARRIVES, what="forced"
        )
        for name in names:
            await pod1.breakers[name].reset()
        await eventually(
            lambda: all(pod0.breakers[n].closed for n in names), within=ARRIVES, what="reset"
        )
        clean([pod0, pod1])


async def test_master_killed_under_load_affects_its_breakers_only(
    cluster_topology: RedisClusterTopology,
) -> None:
    """kill -9 one master under load: its breakers alone go down, callers see no error,
    and after the failover they are up and share trips again."""
    names = await spread_names(cluster_topology, 12)
    masters = await masters_of(cluster_topology, names)
    victim = names[0]
    hit = [n for n in names if masters[n] == masters[victim]]
    spared = [n for n in names if masters[n] != masters[victim]]
    async with cluster_pods(cluster_topology, names, **OPTIONS) as pods:
        outcomes: dict[str, int] = {}
        errors: list[BaseException] = []
        stop = asyncio.Event()

        async def load(pod: ClusterPod) -> None:
            while not stop.is_set():
                for name in names:
                    try:
                        outcome = await pod.call(name)
                    except Exception as error:  # what this test looks for
                        errors.append(error)
                    else:
                        outcomes[outcome] = outcomes.get(outcome, 0) + 1
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(load(pod)) for pod in pods]
        try:
            await asyncio.sleep(3 * TICK)
            started = time.monotonic()
            killed, promoted = await cluster_topology.kill_master_of(state_key(victim))
            assert killed != promoted
            await eventually(
                lambda: all(p.count(n, "registry_down") == 1 for p in pods for n in hit),
                within=2.0,
                what="registry_down on the killed master's breakers",
            )
            await eventually(
                lambda: all(p.count(n, "registry_up") == 1 for p in pods for n in hit),
                within=10.0,
                what="registry_up after the failover",
            )
            print(f"failover observed in {time.monotonic() - started:.1f} s")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert errors == []
        assert set(outcomes) == {"ok"}
        for pod in pods:
            for name in spared:
                assert pod.count(name, "registry_down") == 0, (pod.instance, name)
            for name in hit:
                assert pod.count(name, "registry_down") == 1, (pod.instance, name)

        # The moved breakers share trips again, through the promoted master.
        for _ in range(1000):  # the load's successes are still in the window
            if pods[0].breakers[victim].opened:
                break
            await pods[0].call(victim, "fail")
        assert pods[0].breakers[victim].opened
        await eventually(
            lambda: pods[1].breakers[victim].opened, within=ARRIVES, what="trip after failover"
        )


async def test_trip_in_one_process_opens_the_other(
    cluster_topology: RedisClusterTopology,
) -> None:
    """Two pod processes on the cluster: a trip in one opens the other; a trial closes both."""
    host, port = cluster_topology.startup_nodes[0]
    url = f"cluster://{host}:{port}"
    options = {"reset_timeout": 0.5, "sync_interval": TICK}
    a, b = await asyncio.gather(
        PodProcess.start(url, "multi-process", "proc-a", **options),
        PodProcess.start(url, "multi-process", "proc-b", **options),
    )
    try:
        await asyncio.gather(a.expect("ready", 15.0), b.expect("ready", 15.0))
        await a.send("trip")
        tripped = await a.expect("tripped")
        assert tripped["state"] == "open"
        opened = await b.expect("open", ARRIVES)
        assert opened["cause"] == "remote"
        await b.expect("half_open", 1.5)
        await b.send("call")
        assert (await b.expect("call"))["outcome"] == "ok"
        closed = await a.expect("close", ARRIVES)
        assert closed["cause"] == "remote"
    finally:
        codes = await asyncio.gather(a.finish(), b.finish())
    assert list(codes) == [0, 0]


async def test_breakers_follow_a_slot_moved_to_another_master(
    cluster_topology: RedisClusterTopology,
) -> None:
    """A resharding moves a breaker's slot: the pods follow the MOVED replies, nobody goes
    down, and trips still reach the other pod."""
    names = await spread_names(cluster_topology, 3)
    async with cluster_pods(cluster_topology, names, **OPTIONS) as pods:
        moved = names[1]
        async with calling(pods[1], [moved]):  # busy: its reports meet the move
            assert await pods[0].call(moved) == "ok"
            source, target = await cluster_topology.move_slot_of(state_key(moved))
            assert source != target
            for _ in range(1000):
                if pods[0].breakers[moved].opened:
                    break
                await pods[0].call(moved, "fail")
            await eventually(
                lambda: pods[1].breakers[moved].opened, within=ARRIVES, what="trip after the move"
            )
        # Followed: by a MOVED reply to a report, or first by the subscription,
        # which re-reads the slot map when its shard drops the channel.
        moved_to = f"{target[0]}:{target[1]}"
        for pod in pods:
            node = pod.client.get_node_from_key(state_key(moved))
            assert node is not None
            assert node.name == moved_to, (pod.instance, node.name, moved_to)
        clean(pods)


async def test_frozen_master_does_not_hold_the_other_masters_back(
    cluster_topology: RedisClusterTopology,
) -> None:
    """SIGSTOP one master: its breakers go down; a trip on another master still reaches
    the other pod (busy there: by its reports) within a few ticks; all is up after it."""
    names = await spread_names(cluster_topology, 6)
    masters = await masters_of(cluster_topology, names)
    hit = [n for n in names if masters[n] == masters[names[0]]]
    spared = [n for n in names if masters[n] != masters[names[0]]]
    async with cluster_pods(cluster_topology, names, **OPTIONS) as pods:
        for pod in pods:
            for name in names:
                assert await pod.call(name) == "ok"  # busy: reports every tick
        frozen = cluster_topology.node_at(await cluster_topology.master_of(state_key(hit[0])))
        frozen.pause()
        try:
            await eventually(
                lambda: all(p.count(n, "registry_down") == 1 for p in pods for n in hit),
                within=4.0,
                what="registry_down on the frozen master's breakers",
            )
            tripped = spared[0]
            async with calling(pods[1], spared):
                for _ in range(100):
                    if pods[0].breakers[tripped].opened:
                        break
                    assert await pods[0].call(tripped, "fail") == "failed"
                await eventually(
                    lambda: pods[1].breakers[tripped].opened,
                    within=ARRIVES,
                    what="a trip on a healthy master reaching the other pod",
                )
        finally:
            frozen.resume()
        await eventually(
            lambda: all(p.count(n, "registry_up") == 1 for p in pods for n in hit),
            within=15.0,
            what="registry_up once the master is back (or replaced)",
        )
        for pod in pods:
            for name in spared:
                assert pod.count(name, "registry_down") == 0, (pod.instance, name)
            for name in hit:
                assert await pod.call(name) == "ok"
