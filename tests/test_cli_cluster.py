"""The operator CLI on a Redis Cluster (``--cluster``): list, force open and reset
breakers whose keys live on every master."""

from __future__ import annotations

from typing import Any

import pytest
from cli_support import run_cli
from cluster_pods import cluster_pods, spread_names
from distributed_support import PREFIX
from redis_admin import dead_port_url
from redis_cluster import RedisClusterTopology
from waiting import eventually

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

OPTIONS: dict[str, Any] = {"distributed": {"sync_interval": 0.1}}


async def test_cli_lists_and_steers_breakers_on_every_master(
    cluster_topology: RedisClusterTopology, capsys: pytest.CaptureFixture[str]
) -> None:
    """status lists the breakers of all three masters; force-open and reset reach the pods."""
    names = await spread_names(cluster_topology, 3)
    host, port = cluster_topology.startup_nodes[0]
    common = ("--cluster", "--url", f"redis://{host}:{port}/0", "--prefix", PREFIX, "--json")
    async with cluster_pods(cluster_topology, names, **OPTIONS) as pods:
        listed = await run_cli(capsys, *common, "status")
        assert listed.code == 0, listed.err
        assert sorted(b["name"] for b in listed.json()["breakers"]) == sorted(names)

        target = names[2]
        opened = await run_cli(capsys, *common, "force-open", target)
        assert opened.code == 0, opened.err
        await eventually(
            lambda: all(p.breakers[target].opened for p in pods), within=2.0, what="forced open"
        )
        assert all(p.breakers[n].closed for p in pods for n in names if n != target)

        reset = await run_cli(capsys, *common, "reset", target)
        assert reset.code == 0, reset.err
        await eventually(
            lambda: all(p.breakers[target].closed for p in pods), within=2.0, what="reset"
        )


async def test_cli_says_when_no_cluster_node_answers(capsys: pytest.CaptureFixture[str]) -> None:
    """--cluster with a dead address: exit 3, one line naming the URL, no traceback."""
    url = dead_port_url()
    ran = await run_cli(capsys, "--cluster", "--url", url, "status")
    assert ran.code == 3, (ran.out, ran.err)
    assert ran.err.count("\n") == 1, ran.err
    assert url.split("/")[2] in ran.err
    assert "Traceback" not in ran.err
