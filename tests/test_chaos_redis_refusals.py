"""Chaos: Redis answers, but not as hoped: pub/sub connections killed, script cache
flushed, memory full.

None of these is an outage (Redis answers every command), so every trial
counts against the one-per-period bound, except while Redis refuses every
write (at maxmemory no lease can be recorded). The fleet's downstream fails
through part of each run, so the fleet opens and goes half-open under the
fault. Each test also checks the invariants of chaos_scenario.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis
from chaos_scenario import ChaosRun, chaos_run
from redis_admin import kill_pubsub
from redis_server import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.redis]


def _no_outage_announced(run: ChaosRun) -> None:
    assert run.results is not None
    downs = run.results.events_named("registry_down")
    assert downs == [], (
        f"{len(downs)} registry_down while Redis answered every command, e.g. {downs[:3]}"
    )


@asynccontextmanager
async def _while_the_downstream_fails(
    tmp_path: Path, server: RedisServer
) -> AsyncIterator[ChaosRun]:
    """A chaos run whose downstream fails while the block runs (the fleet opens), then heals;
    the fleet must converge, and no pod may have announced an outage."""
    async with chaos_run(tmp_path, server) as run:
        await asyncio.sleep(0.3)
        run.fleet.switch.fail()
        yield run
        run.fleet.switch.heal()
        await run.fleet.wait_converged(run.admin, within=3.0)
        await asyncio.sleep(0.3)
    _no_outage_announced(run)


async def test_pubsub_connections_killed_once(tmp_path: Path, redis_server: RedisServer) -> None:
    """CLIENT KILL TYPE pubsub once, while the fleet is open: no outage, one trial per period."""
    async with _while_the_downstream_fails(tmp_path, redis_server) as run:
        await asyncio.sleep(1.5)  # open, then a failing trial: open again
        assert await kill_pubsub(run.admin) >= 6
        await asyncio.sleep(1.0)


async def test_pubsub_connections_killed_repeatedly(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Pub/sub connections killed every 150 ms for 3 s through open and half-open periods."""
    async with _while_the_downstream_fails(tmp_path, redis_server) as run:
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            await kill_pubsub(run.admin)
            await asyncio.sleep(0.15)


async def test_script_flush_once(tmp_path: Path, redis_server: RedisServer) -> None:
    """SCRIPT FLUSH once while the fleet is open: reports, leases and trials go on."""
    async with _while_the_downstream_fails(tmp_path, redis_server) as run:
        await asyncio.sleep(1.0)
        await run.admin.script_flush()
        await asyncio.sleep(1.2)


async def test_script_flush_in_a_tight_loop(tmp_path: Path, redis_server: RedisServer) -> None:
    """SCRIPT FLUSH back to back for 3 s, through open and half-open periods."""
    async with _while_the_downstream_fails(tmp_path, redis_server) as run:
        flushes = 0
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            await run.admin.script_flush()
            flushes += 1
    assert flushes > 100


async def test_maxmemory_reached(tmp_path: Path, redis_server: RedisServer) -> None:
    """Redis at maxmemory (noeviction) through open and half-open periods, then freed."""
    async with chaos_run(tmp_path, redis_server) as run:
        await asyncio.sleep(0.3)
        run.fleet.switch.fail()
        await asyncio.sleep(0.6)
        # A Redis that refuses every write cannot record a lease: the trial
        # bound is judged outside that span only.
        with run.timeline.outage():
            for i in range(32):
                await run.admin.set(f"ballast:{i}", b"x" * 65536)
            used = int((await run.admin.info("memory"))["used_memory"])
            await run.admin.config_set("maxmemory-policy", "noeviction")
            await run.admin.config_set("maxmemory", str(used - 1024 * 1024))
            with contextlib.suppress(redis.exceptions.OutOfMemoryError):
                await run.admin.set("one-more", b"x")
                pytest.fail("Redis took a write past maxmemory")
            await asyncio.sleep(1.5)
            run.fleet.switch.heal()
            await asyncio.sleep(1.0)
            await run.admin.config_set("maxmemory", "0")
        await run.converge()
        await asyncio.sleep(0.3)
