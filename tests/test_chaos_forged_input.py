"""Chaos: garbage and forged input fed to a fleet under load.

Whoever can write to the breaker's keys or channel (another writer, an old
version, an attacker) sends random bytes, wrong types, future versions, huge
messages, an epoch from the far future, absurd counts. The fleet keeps
working: it is neither opened nor frozen, force_open() and reset() still reach
every pod within two ticks, and the event loops stay responsive.
The invariants of chaos_scenario.py are checked too.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from chaos_scenario import CONVERGE_WITHIN, TICK, ChaosRun, chaos_run
from redis_server import RedisServer
from transport_support import entry_fields, redis_now_ms

pytestmark = [pytest.mark.chaos, pytest.mark.redis]


async def _garbage_broadcasts(run: ChaosRun) -> list[bytes]:
    views = await run.fleet.snapshot()
    now = await redis_now_ms(run.admin)
    base: dict[str, Any] = {
        "v": 1,
        "name": run.fleet.name,
        "gen": views[0].gen,
        "epoch": views[0].epoch + 1,
        "state": "open",
        "open_until": now + 60_000,
        "now": now,
        "attempts": 1,
        "origin": "intruder",
        "reason": "forged",
    }
    variants: list[dict[str, Any]] = [
        {**base, "v": 2},
        {**base, "v": "1"},
        {**base, "epoch": -1},
        {**base, "epoch": 2**64},
        {**base, "epoch": "7"},
        {**base, "state": "exploded"},
        {**base, "gen": 12},
        {**base, "open_until": 1e300},
        {**base, "attempts": [1]},
        {**base, "name": None},
    ]
    return [
        b"",
        b"\x00\xff\xfe garbage",
        b"[]",
        b"{" * 50_000,
        *(json.dumps(v).encode() for v in variants),
        json.dumps({**base, "pad": "x" * (1024 * 1024)}).encode(),
        # The worst of them last: the current gen, an epoch no real one can
        # overtake, closed.
        json.dumps({**base, "epoch": 2**53 - 1, "state": "closed", "open_until": 0}).encode(),
    ]


async def _forged_stats(run: ChaosRun) -> list[bytes]:
    views = await run.fleet.snapshot()
    now = await redis_now_ms(run.admin)
    entry = entry_fields(now, "ghost", failures=10**12, epoch=views[0].epoch)
    return [
        b"not json",
        json.dumps({**entry, "v": 99}).encode(),
        json.dumps({**entry, "failures": "lots"}).encode(),
        json.dumps({**entry, "failures": -5}).encode(),
        json.dumps(entry).encode(),  # well-formed, absurd
    ]


async def test_garbage_and_forged_input_under_load(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Garbage broadcasts, a far-future epoch and absurd stats: no freeze, no opening, no stall."""
    async with chaos_run(tmp_path, redis_server) as run:
        await asyncio.sleep(0.5)
        await run.admin.rpush(run.fleet.keys.stats, *await _forged_stats(run))
        await asyncio.sleep(6 * TICK)  # a few ticks judge the forged entries
        views = await run.fleet.snapshot()
        assert all(v.state == "closed" for v in views), f"forged stats opened pods: {views}"
        for payload in await _garbage_broadcasts(run):
            await run.admin.publish(run.fleet.keys.events, payload)
        await asyncio.sleep(2 * TICK)

        pod = run.fleet.instances[2]
        assert "error" not in await run.fleet.force_open(pod)
        await run.wait_pods(
            lambda v: v.state == "forced_open",
            within=CONVERGE_WITHIN,
            what="force_open reaching every pod after forged input",
        )
        assert "error" not in await run.fleet.reset(pod)
        await run.wait_pods(
            lambda v: v.state == "closed",
            within=CONVERGE_WITHIN,
            what="reset reaching every pod",
        )
        await asyncio.sleep(0.3)
    results = run.results
    assert results is not None
    for process, lag in results.max_lag.items():
        assert lag < 0.02, f"{process}: the event loop stalled {lag * 1000:.0f} ms"
    for process, latency in results.latency.items():
        assert latency["p99"] < 0.02, f"{process}: fire() p99 {latency['p99'] * 1000:.0f} ms"
