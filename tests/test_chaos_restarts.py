"""Chaos: Redis killed and restarted empty, and Redis frozen (SIGSTOP), under load.

Six pods in three processes call a fake downstream 200 times a second each.
Each test also checks the invariants of chaos_scenario.py: no Redis
exception to callers, at most one trial per period while Redis answers,
convergence within two ticks of Redis answering again, flat memory.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from chaos_scenario import CONVERGE_WITHIN, ChaosRun, chaos_run, open_spread
from redis_server import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.redis]

FREEZE = 2.6
"""Seconds of SIGSTOP: past the 2 s round-trip limit, so pods declare an outage."""


async def _all_open(run: ChaosRun, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while True:
        views = await run.fleet.snapshot()
        if all(v.state in ("open", "half_open") for v in views):
            return
        assert time.monotonic() < deadline, f"not every pod opened: {views}"
        await asyncio.sleep(0.02)


async def _kill_and_restart(run: ChaosRun, server: RedisServer, down_for: float) -> None:
    with run.timeline.outage():
        server.kill()
        await asyncio.sleep(down_for)
        server.start()  # same port, empty
    await run.converge()


async def test_kill_and_empty_restart_three_times_with_a_downstream_outage(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Three kills and empty restarts under load; the downstream fails through the second one."""
    async with chaos_run(tmp_path, redis_server) as run:
        await asyncio.sleep(0.8)
        await _kill_and_restart(run, redis_server, 0.8)

        # Some shared history (an open and a close), so the epoch is past 0.
        run.fleet.switch.fail()
        await _all_open(run)
        run.fleet.switch.heal()
        await run.fleet.wait_converged(run.admin, within=3.0)

        # The downstream fails while Redis is gone; pods trip on their own.
        with run.timeline.outage():
            redis_server.kill()
            await asyncio.sleep(0.2)
            run.fleet.switch.fail()
            await asyncio.sleep(0.8)
            redis_server.start()
        await run.converge()
        views = await run.fleet.snapshot()
        assert all(v.state != "closed" for v in views), f"a trip was lost: {views}"
        run.fleet.switch.heal()
        await run.fleet.wait_converged(run.admin, within=3.0)

        await _kill_and_restart(run, redis_server, 0.8)
        await asyncio.sleep(0.5)
    assert run.results is not None
    assert run.results.total("ok") > 1000


async def test_sigstop_while_closed(tmp_path: Path, redis_server: RedisServer) -> None:
    """Redis frozen 2.6 s while the fleet is closed: calls stay fast and nothing changes."""
    async with chaos_run(tmp_path, redis_server) as run:
        await asyncio.sleep(0.5)
        with run.timeline.outage():
            redis_server.pause()
            await asyncio.sleep(FREEZE)
            redis_server.resume()
        await run.converge()
        await asyncio.sleep(0.5)
    results = run.results
    assert results is not None
    assert results.total("rejected") == 0, results.summary()
    assert results.trials == []
    for process, latency in results.latency.items():
        assert latency["p99"] < 0.05, f"{process}: fire() waited on a frozen Redis: {latency}"


async def test_sigstop_while_open(tmp_path: Path, redis_server: RedisServer) -> None:
    """Redis frozen 2.6 s while the fleet is open; afterwards a new trip spreads within ms."""
    async with chaos_run(tmp_path, redis_server) as run:
        await asyncio.sleep(0.3)
        run.fleet.switch.fail()
        await _all_open(run)
        with run.timeline.outage():
            redis_server.pause()
            await asyncio.sleep(1.0)
            run.fleet.switch.heal()  # local trials (once the outage is declared) close pods
            await asyncio.sleep(FREEZE - 1.0)
            redis_server.resume()
        await run.converge()
        await asyncio.sleep(0.3)
        tripped = time.monotonic()
        run.fleet.switch.fail()
        await _all_open(run, within=CONVERGE_WITHIN + 0.5)
        await asyncio.sleep(0.2)
        run.fleet.switch.heal()
        await run.fleet.wait_converged(run.admin, within=3.0)
    assert run.results is not None
    spread = open_spread(run.results, run.fleet.instances, tripped)
    assert spread < CONVERGE_WITHIN, f"the trip took {spread:.3f} s to reach every pod"
