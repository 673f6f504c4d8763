"""The frame of a chaos test: a fleet under load, the faults' timeline, and the checks.

Every chaos test promises the same four things (see chaos_records.py):

- no Redis exception reaches a caller of ``fire()``;
- at most ``half_open_max_calls`` trial calls per half-open period,
  cluster-wide, while Redis answers;
- every pod converges (agrees with the shared state in Redis) within two
  ticks of Redis answering again (:meth:`ChaosRun.converge`);
- memory stays flat.

Breaker options are short (1 s window, 0.1 s ticks, 1 s open periods) so
each scenario plays out in a few seconds; :data:`SLACK` is the room left for a
busy 2-core machine on top of "two ticks".

Example::

    async with chaos_run(tmp_path, server) as run:
        with run.timeline.outage():
            server.kill()
            await asyncio.sleep(0.8)
            server.start()
        await run.converge()
    results = run.results  # checked already
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from chaos_fleet import ClientSpec, Fleet, PodView, url_client
from chaos_records import FleetResults, Timeline, assert_invariants
from redis_admin import admin_of
from redis_server import RedisServer

__all__ = [
    "CHAOS_OPTIONS",
    "CONVERGE_WITHIN",
    "GRACE",
    "SLACK",
    "TICK",
    "ChaosRun",
    "chaos_run",
    "open_spread",
]

TICK = 0.1
"""sync_interval of every chaos pod."""
SLACK = 0.3
"""Room for process scheduling on a shared 2-core machine, on top of a bound in ticks."""
CONVERGE_WITHIN = 2 * TICK + SLACK
"""Every pod agrees with Redis this soon after Redis answers again."""
GRACE = 2 * TICK + SLACK
"""After an outage, pods may apply the local half-open rule this long (until they notice)."""

CHAOS_OPTIONS: dict[str, Any] = {
    "timeout": 1.0,
    # Longer than GRACE, so local trials after an outage are judged as cluster trials.
    "reset_timeout": 1.0,
    "rolling_count_timeout": 1.0,
    "rolling_count_buckets": 10,
    # Above the trials a fleet of six makes in a window, so trial failures alone
    # (the pooled rate) cannot hide a lost trip.
    "volume_threshold": 20,
    "half_open_max_calls": 1,
}
"""Breaker options of the chaos pods: short windows so scenarios play out in seconds."""


@dataclass
class ChaosRun:
    """A fleet under load, the admin client to read Redis, and what the test injected."""

    fleet: Fleet
    admin: aioredis.Redis
    timeline: Timeline = field(default_factory=Timeline)
    convergence: list[float] = field(default_factory=list)
    """Seconds each :meth:`converge` waited."""
    results: FleetResults | None = None

    async def converge(self, within: float = CONVERGE_WITHIN) -> float:
        """Wait until every pod agrees with Redis (fails after ``within``); seconds waited."""
        waited = await self.fleet.wait_converged(self.admin, within=within)
        self.convergence.append(waited)
        return waited

    async def wait_pods(
        self, predicate: Callable[[PodView], bool], *, within: float, what: str
    ) -> float:
        """Wait until ``predicate`` holds for every pod (fails after ``within``); seconds waited."""
        start = time.monotonic()
        while True:
            views = await self.fleet.snapshot()
            if all(predicate(v) for v in views):
                return time.monotonic() - start
            if time.monotonic() - start > within:
                odd = [(v.instance, v.state, v.gen, v.epoch) for v in views if not predicate(v)]
                raise AssertionError(f"{what} did not hold within {within:.2f} s: {odd}")
            await asyncio.sleep(0.01)

    async def wait_closed(self, within: float) -> float:
        """Wait until Redis and every pod say closed (fails after ``within``); seconds waited."""
        start = time.monotonic()
        while True:
            shared, views = await asyncio.gather(
                self.fleet.shared_state(self.admin), self.fleet.snapshot()
            )
            if shared.get("state") == "closed" and all(v.state == "closed" for v in views):
                return time.monotonic() - start
            if time.monotonic() - start > within:
                pods = [(v.instance, v.state, v.epoch) for v in views]
                raise AssertionError(
                    f"the fleet did not close within {within:.1f} s of a healthy downstream: "
                    f"redis={ {k: shared.get(k) for k in ('state', 'epoch')} } pods={pods}"
                )
            await asyncio.sleep(0.02)

    async def finish(self) -> FleetResults:
        """Stop the load, collect the records and check the invariants on them."""
        results = self.results = await self.fleet.results()
        assert self.fleet.load_started is not None
        assert_invariants(
            results,
            half_open_max_calls=int(self.fleet.options.get("half_open_max_calls", 1)),
            timeline=self.timeline,
            grace=GRACE,
            load_started=self.fleet.load_started,
        )
        return results


@asynccontextmanager
async def chaos_run(
    workdir: Path,
    server: RedisServer,
    *,
    client: ClientSpec | Callable[[str], ClientSpec] | None = None,
    admin: aioredis.Redis | None = None,
    options: dict[str, Any] | None = None,
    **fleet_args: Any,
) -> AsyncIterator[ChaosRun]:
    """A :class:`ChaosRun` on ``server``: 3 processes × 2 pods, loaded from the start.

    Args:
        workdir: the test's private directory.
        server: the Redis of the admin client (and of the pods, unless ``client``).
        client: how the pods make their clients (default: ``server.url``).
        admin: the admin client (default: one on ``server``, reconnecting).
        options: breaker options on top of :data:`CHAOS_OPTIONS`.
        **fleet_args: more :class:`Fleet` arguments (processes, rate, ...).

    On a clean exit the invariants are checked (see :meth:`ChaosRun.finish`).
    """
    spec = client if client is not None else url_client(server.url)
    merged = {**CHAOS_OPTIONS, **(options or {})}
    async with admin_of(server) as own_admin:
        fleet = Fleet(
            workdir,
            client=spec,
            options=merged,
            distributed={"sync_interval": TICK},
            **fleet_args,
        )
        async with fleet:
            run = ChaosRun(fleet, admin if admin is not None else own_admin)
            await fleet.start_load()
            yield run
            if run.results is None:
                await run.finish()


def open_spread(results: FleetResults, instances: list[str], after: float) -> float:
    """Seconds from the first ``open`` at or after ``after`` until every pod had opened."""
    firsts: dict[str, float] = {}
    for event in results.events_named("open", after=after):
        firsts.setdefault(event.instance, event.t)
    missing = set(instances) - set(firsts)
    assert not missing, f"pods that never opened after {after:.3f}: {sorted(missing)}"
    return max(firsts.values()) - min(firsts.values())
