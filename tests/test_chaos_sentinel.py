"""Chaos: a Sentinel failover under load, by killing the master and by SENTINEL FAILOVER.

The pods' clients come from ``Sentinel(...).master_for(...)``. The fleet's
downstream starts failing as the failover begins, so trips are made while the
master changes. After the switch is visible (every sentinel names the new
master and it acts as one), every pod must follow it within two ticks: agree
with the new master's state (the trip was not lost with the demoted master),
keep agreeing, and a later trip must land on the new master and reach every
pod.
The invariants of chaos_scenario.py are checked too (the failover itself is
the outage).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from chaos_fleet import sentinel_client
from chaos_scenario import CONVERGE_WITHIN, ChaosRun, chaos_run, open_spread
from redis.asyncio.sentinel import Sentinel
from redis_sentinel import SentinelTopology

pytestmark = [pytest.mark.chaos, pytest.mark.redis]


@asynccontextmanager
async def sentinel_admin(topology: SentinelTopology) -> AsyncIterator[aioredis.Redis]:
    """The test's own client of whichever server is master."""
    sentinel = Sentinel(topology.sentinel_addresses, socket_timeout=1.0)  # type: ignore[no-untyped-call]
    admin = sentinel.master_for(topology.service, socket_timeout=1.0)
    try:
        yield admin
    finally:
        await admin.aclose()
        for client in sentinel.sentinels:
            await client.aclose()


async def _through_a_switch(
    tmp_path: Path, topology: SentinelTopology, switch: Callable[[], Awaitable[object]]
) -> None:
    """A fleet trips while ``switch`` changes the master: the fleet must agree on the new
    master within two ticks of the switch, then work on."""
    spec = sentinel_client(topology.sentinel_addresses, topology.service)
    async with (
        sentinel_admin(topology) as admin,
        chaos_run(tmp_path, topology.master, client=spec, admin=admin) as run,
    ):
        await asyncio.sleep(0.5)
        with run.timeline.outage():
            run.fleet.switch.fail()  # the fleet trips while the master changes
            await switch()
        await _after_the_switch(run)


async def _after_the_switch(run: ChaosRun) -> None:
    """The fleet tripped during the failover: it must agree on the new master, then work on."""
    await run.converge()  # the trip made during the switch was not lost
    views = await run.fleet.snapshot()
    assert all(v.state != "closed" for v in views), f"the trip was lost in the switch: {views}"
    run.fleet.switch.heal()
    await run.wait_closed(within=3.0)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # no pod falls back to the demoted master's view
        ok, odd = await run.fleet.converged(run.admin)
        assert ok, f"a pod left the new master's state after converging: {odd}"
        await asyncio.sleep(0.05)
    run.fleet.switch.fail()
    tripped = time.monotonic()
    await run.wait_pods(
        lambda v: v.state in ("open", "half_open"),
        within=CONVERGE_WITHIN + 0.5,
        what="a trip after the failover reaching every pod",
    )
    shared = await run.fleet.shared_state(run.admin)
    assert shared.get("state") in ("open", "half_open"), f"the new master holds {shared}"
    run.fleet.switch.heal()
    await run.wait_closed(within=3.0)
    results = await run.finish()
    spread = open_spread(results, run.fleet.instances, tripped)
    assert spread < CONVERGE_WITHIN, f"the trip took {spread:.3f} s to reach every pod"


async def test_sentinel_master_killed(tmp_path: Path, sentinel_topology: SentinelTopology) -> None:
    """kill -9 of the master: pods follow the promoted replica within two ticks of the switch."""
    await _through_a_switch(tmp_path, sentinel_topology, sentinel_topology.kill_master)


async def test_sentinel_failover_command(
    tmp_path: Path, sentinel_topology: SentinelTopology
) -> None:
    """SENTINEL FAILOVER: pods leave the demoted master within two ticks of the switch."""
    await _through_a_switch(tmp_path, sentinel_topology, sentinel_topology.failover)
