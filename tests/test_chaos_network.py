"""Chaos: a slow network (200 ms per command) and a partition (a black hole) under load.

The pods reach Redis through a :class:`~chaos_proxy.ChaosProxy`. With
latency, Redis is slow but answers: nothing may count as an outage and the
trial bound holds throughout. With a black hole in front of some pods only
(a split brain), those pods decide locally while the others go on
coordinating; once the partition heals, everyone converges within two ticks.
Each test also checks the invariants of chaos_scenario.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from chaos_fleet import url_client
from chaos_proxy import ChaosProxy
from chaos_scenario import CHAOS_OPTIONS, chaos_run
from redis_server import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.redis]


async def test_latency_of_200_ms_per_command(tmp_path: Path, redis_server: RedisServer) -> None:
    """Every command answered 200 ms late: no outage, one trial per period, the fleet recovers."""
    with ChaosProxy(redis_server.port) as proxy:
        async with chaos_run(tmp_path, redis_server, client=url_client(proxy.url)) as run:
            await asyncio.sleep(0.3)
            proxy.delay(0.2)
            await asyncio.sleep(0.3)
            run.fleet.switch.fail()
            await asyncio.sleep(
                4.5
            )  # open, a failing trial (its lease takes a few 200 ms round trips), open again
            run.fleet.switch.heal()
            # A trial needs a lease (a few round trips): 200 ms each must not keep it out.
            await run.wait_closed(within=CHAOS_OPTIONS["reset_timeout"] + 2.0)
            await run.fleet.wait_converged(run.admin, within=3.0)
            await asyncio.sleep(0.5)
            assert proxy.stats.upstream_bytes > 0
    results = run.results
    assert results is not None
    downs = results.events_named("registry_down")
    assert downs == [], f"200 ms of latency counted as an outage: {downs[:3]}"
    assert len(results.trials) >= 2, results.summary()  # it did go half-open under latency


async def test_black_hole_in_front_of_some_pods(tmp_path: Path, redis_server: RedisServer) -> None:
    """A partition cuts two pods off (split brain) while the downstream fails; then it heals."""
    with ChaosProxy(redis_server.port) as proxy:
        isolated = {"proc0-pod0", "proc0-pod1"}

        def client_of(instance: str) -> dict[str, object]:
            return url_client(proxy.url if instance in isolated else redis_server.url)

        async with chaos_run(tmp_path, redis_server, client=client_of) as run:
            await asyncio.sleep(0.3)
            run.fleet.switch.fail()
            with run.timeline.outage(pods=isolated):
                proxy.black_hole()
                await asyncio.sleep(3.5)  # past the 2 s round-trip limit
                proxy.pass_through()
            await run.converge()
            run.fleet.switch.heal()
            await run.fleet.wait_converged(run.admin, within=3.0)
            await asyncio.sleep(0.3)
            assert proxy.stats.swallowed_bytes > 0
    results = run.results
    assert results is not None
    downs = {e.instance for e in results.events_named("registry_down")}
    assert downs <= isolated, f"pods with a working link announced an outage: {downs - isolated}"
    assert downs == isolated, f"the cut-off pods did not notice: {isolated - downs}"
