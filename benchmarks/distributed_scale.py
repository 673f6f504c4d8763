"""Many distributed breakers in one process on one Redis client: round trips, tick CPU,
memory.

``--breakers`` breakers (distinct names, one ``redis.asyncio.Redis`` client) share one
coordinator: one pub/sub connection and one ticker, which sends the reports of every
breaker that is due in one pipelined round trip. Scenarios, each ``--seconds`` long:

* aligned, idle: all breakers made at once (so all are due in the same tick), no calls;
* aligned, busy: the same, each breaker fired ``--busy-rate`` times per second, so every
  report carries a non-empty bucket (appended to the stats list);
* staggered, idle: the breakers made one after another over one report interval (as a
  service that creates breakers lazily, on first use), no calls.

Measured: ticks, round trips and reports (the coordinator's ``stats``), ``EVALSHA`` calls
and all commands (``INFO commandstats``), the CPU time of each tick (``time.process_time``
around the coordinator's ``_tick()``; in the busy scenario calls that run while a tick
waits for Redis are included), the process' and redis-server's CPU time, and the Redis
connections the process holds. Then the Python memory (``tracemalloc``) per breaker,
local-only and distributed (after its first report; ``sync_interval=60`` there, so that
no later tick is in flight while memory is measured). Last, one breaker name shared by
``--pods`` pods, all busy: the Redis time of one report as the shared stats list fills.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from _distributed import (
    calls_delta,
    command_calls,
    first_sync,
    library_versions,
    new_client,
    private_redis,
    server_cpu_seconds,
)
from _harness import fmt_bytes, header, machine, md_table, verdict

from distributed_opossum import CircuitBreaker


async def f() -> int:
    return 1


Breakers = list[CircuitBreaker[[], int]]


@dataclass
class Scenario:
    name: str
    seconds: float = 0.0
    ticks: int = 0
    round_trips: int = 0
    reports: int = 0
    fires: int = 0
    commands: dict[str, int] = field(default_factory=dict)
    tick_cpu: list[float] = field(default_factory=list)
    tick_wall: list[float] = field(default_factory=list)
    process_cpu: float = 0.0
    server_cpu: float = 0.0
    connections: int = 0
    tick_errors: int = 0
    note: str = ""
    registry_down: int = 0


def coordinator_of(breakers: Breakers) -> Any:
    coordinators = {
        id(b._link.coordinator): b._link.coordinator
        for b in breakers
        if b._link is not None and b._link.coordinator is not None
    }
    if len(coordinators) != 1:
        raise RuntimeError(f"expected one coordinator, found {len(coordinators)}")
    return next(iter(coordinators.values()))


class TickTimer:
    """Wraps the coordinator's ``_tick`` to time every tick that reported something."""

    def __init__(self, coordinator: Any) -> None:
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self.recording = False
        self._done = asyncio.Event()
        original: Callable[[], Awaitable[None]] = coordinator._tick

        async def timed() -> None:
            ticks = coordinator.stats["ticks"]
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                await original()
            finally:
                c1, w1 = time.process_time(), time.perf_counter()
                if coordinator.stats["ticks"] != ticks:
                    if self.recording:
                        self.cpu.append(c1 - c0)
                        self.wall.append(w1 - w0)
                    self._done.set()

        setattr(coordinator, "_tick", timed)  # noqa: B010  (instance attribute shadows the method)

    async def next_tick(self, limit_s: float = 30.0) -> None:
        """Wait for the end of the next tick that reported something."""
        self._done.clear()
        async with asyncio.timeout(limit_s):
            await self._done.wait()


async def wait_reports(coordinator: Any, count: int, limit_s: float = 30.0) -> bool:
    """Wait for ``count`` reports in all; False if they did not come within ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while coordinator.stats["reports"] < count:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def busy(breakers: Breakers, rate: float, seconds: float) -> int:
    """Fire every breaker ``rate`` times per second, in rounds of 100 ms."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    per_round = max(1, round(rate / 10))
    fires = 0
    step = 0
    while loop.time() - start < seconds:
        for breaker in breakers:
            for _ in range(per_round):
                await breaker.fire()
        fires += per_round * len(breakers)
        step += 1
        await asyncio.sleep(max(0.0, start + step * 0.1 - loop.time()))
    return fires


async def scenario(
    port: int, name: str, count: int, *, staggered: bool, rate: float, seconds: float
) -> Scenario:
    stats_client = new_client(port)
    client = new_client(port)
    result = Scenario(name)
    loop = asyncio.get_running_loop()
    breakers: Breakers = []
    interval = 1.0
    for i in range(count):
        breaker: CircuitBreaker[[], int] = CircuitBreaker(
            f, name=f"{name[:3]}-{i}", distributed={"client": client, "instance_id": "pod"}
        )
        breakers.append(breaker)
        if staggered:
            await asyncio.sleep(interval / count)
    coordinator = coordinator_of(breakers)
    downs = [0]

    def on_down(*_: Any) -> None:
        downs[0] += 1

    breakers[0].on("registry_down", on_down)
    interval = breakers[0]._link.interval if breakers[0]._link is not None else interval
    timer = TickTimer(coordinator)
    if not await wait_reports(coordinator, count):  # every breaker's first sync
        result.note = "first reports not all done within 30 s; "
    await asyncio.sleep(interval)  # steady state
    # From the end of one tick to the end of another: whole ticks only.
    await timer.next_tick()
    timer.recording = True
    s0 = dict(coordinator.stats)
    c0 = await command_calls(stats_client)
    cpu0, server0, t0 = time.process_time(), await server_cpu_seconds(stats_client), loop.time()
    if rate > 0:
        result.fires = await busy(breakers, rate, seconds)
    else:
        await asyncio.sleep(seconds)
    await timer.next_tick()
    timer.recording = False
    result.tick_cpu, result.tick_wall = timer.cpu, timer.wall
    result.seconds = loop.time() - t0
    result.process_cpu = time.process_time() - cpu0
    result.server_cpu = await server_cpu_seconds(stats_client) - server0
    result.commands = calls_delta(c0, await command_calls(stats_client))
    s1 = coordinator.stats
    # Ticks completed between the two snapshots (the coordinator's counter may already
    # include a tick that started, but did not finish, before the first snapshot).
    result.ticks = len(timer.wall)
    result.round_trips = s1["round_trips"] - s0["round_trips"]
    result.reports = s1["reports"] - s0["reports"]
    result.tick_errors = s1["tick_errors"] - s0["tick_errors"]
    result.registry_down = downs[0]
    clients: list[Any] = await stats_client.client_list()
    result.connections = len(clients) - 1  # all but the stats client: this process' pool
    for breaker in breakers:
        await breaker.shutdown()
    await asyncio.sleep(0.05)
    await client.aclose()
    await stats_client.aclose()
    return result


def per_interval(r: Scenario, interval: float = 1.0) -> float:
    """Round trips per report interval (the period spans whole intervals, tick to tick)."""
    return r.round_trips / max(1, round(r.seconds / interval))


def ms(values: list[float], pick: Callable[[list[float]], float]) -> str:
    return "n/a" if not values else f"{pick(values) * 1000:.1f}"


def scenario_tables(results: list[Scenario], count: int) -> tuple[str, str]:
    rows = []
    for r in results:
        evalsha = r.commands.get("evalsha", 0)
        rows.append(
            [
                r.name,
                f"{r.seconds:.1f}",
                f"{r.fires:,}",
                str(r.ticks),
                str(r.round_trips),
                f"{r.reports:,}",
                "n/a" if not r.ticks else f"{r.round_trips / r.ticks:.2f}",
                f"{r.round_trips / r.seconds:.1f}",
                "n/a" if not r.round_trips else f"{r.reports / r.round_trips:,.0f}",
                "n/a" if not r.ticks else f"{evalsha / r.ticks:,.0f}",
                "n/a" if not r.reports else f"{sum(r.commands.values()) / r.reports:.1f}",
                str(r.connections),
                f"{r.note}{r.tick_errors} / {r.registry_down}",
            ]
        )
    trips = md_table(
        [
            "scenario",
            "s",
            "fires",
            "ticks",
            "round trips",
            "reports",
            "round trips / tick",
            "round trips / s",
            "reports / round trip",
            "`EVALSHA` / tick",
            "all cmds / report",
            "Redis connections",
            "tick errors / `registry_down`",
        ],
        rows,
    )
    rows = []
    for r in results:
        # CPU of the ticks that completed their round trip, per report they carried.
        per_breaker = (
            "n/a"
            if not r.tick_cpu or not r.round_trips
            else f"{statistics.median(r.tick_cpu) / (r.reports / r.round_trips) * 1e6:.1f}"
        )
        rows.append(
            [
                r.name,
                ms(r.tick_cpu, statistics.median),
                ms(r.tick_cpu, max),
                per_breaker,
                ms(r.tick_wall, statistics.median),
                ms(r.tick_wall, max),
                f"{r.process_cpu / r.seconds * 100:.1f}",
                "n/a" if not r.ticks else f"{r.server_cpu / r.ticks * 1000:.1f}",
                f"{r.server_cpu / r.seconds * 100:.1f}",
            ]
        )
    cpu = md_table(
        [
            "scenario",
            "tick CPU ms (median)",
            "tick CPU ms (max)",
            "µs CPU per report",
            "tick wall ms (median)",
            "tick wall ms (max)",
            "process CPU %",
            "redis-server CPU ms / tick",
            "redis-server CPU %",
        ],
        rows,
    )
    return trips, cpu


async def memory(port: int, count: int) -> list[list[str]]:
    """Python bytes per breaker from tracemalloc: local-only, then distributed."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        local: Breakers = [CircuitBreaker(f, name=f"mem-local-{i}") for i in range(count)]
        gc.collect()
        after_local = tracemalloc.get_traced_memory()[0]
        client = new_client(port)
        distributed: Breakers = [
            CircuitBreaker(
                f,
                name=f"mem-dist-{i}",
                # No second tick while measuring: its batch in flight would be counted.
                distributed={"client": client, "instance_id": "pod", "sync_interval": 60.0},
            )
            for i in range(count)
        ]
        gc.collect()
        created = tracemalloc.get_traced_memory()[0]
        coordinator = coordinator_of(distributed)
        synced_ok = await wait_reports(coordinator, count, limit_s=60.0)
        await asyncio.sleep(0.1)
        gc.collect()
        synced = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_local = (after_local - base) / count
    per_created = (created - after_local) / count
    per_synced = (synced - after_local) / count
    rows = [
        ["local-only `CircuitBreaker(f)`", fmt_bytes(per_local), "—"],
        [
            "distributed, just made (first sync not done)",
            fmt_bytes(per_created),
            fmt_bytes(per_created - per_local),
        ],
        [
            "distributed, after its first report (coordinator, pub/sub and connection included)",
            fmt_bytes(per_synced) if synced_ok else "n/a",
            fmt_bytes(per_synced - per_local)
            if synced_ok
            else f"no complete first tick within 60 s under tracemalloc "
            f"({coordinator.stats['tick_errors']} tick errors)",
        ],
    ]
    for breaker in [*local, *distributed]:
        await breaker.shutdown()
    await asyncio.sleep(0.05)
    await client.aclose()
    return rows


async def window_growth(port: int, pods: int, rate: float, seconds: float) -> list[list[str]]:
    """One breaker name across ``pods`` pods, each firing ``rate`` calls/s: the Redis time of
    one report as the shared stats list fills (one entry per pod per interval)."""
    stats_client = new_client(port)
    clients = [new_client(port) for _ in range(pods)]
    breakers: Breakers = [
        CircuitBreaker(f, name="shared", distributed={"client": c, "instance_id": f"pod{i}"})
        for i, c in enumerate(clients)
    ]
    await first_sync(breakers)
    link = breakers[0]._link
    assert link is not None
    stats_key = link.keys.stats

    async def evalsha() -> tuple[int, int]:
        info: dict[str, Any] = await stats_client.info("commandstats")
        entry = info.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        return int(entry["calls"]), int(entry["usec"])

    loop = asyncio.get_running_loop()
    start = loop.time()
    rows = []
    calls0, usec0 = await evalsha()
    per_second = max(1, round(rate))
    for second in range(1, round(seconds) + 1):
        for breaker in breakers:
            for _ in range(per_second):
                await breaker.fire()
        await asyncio.sleep(max(0.0, start + second - loop.time()))
        calls1, usec1 = await evalsha()
        length = int(await stats_client.llen(stats_key))
        reports, usec = calls1 - calls0, usec1 - usec0
        calls0, usec0 = calls1, usec1
        if second % 2 == 0 or second == round(seconds):
            rows.append(
                [
                    str(second),
                    str(length),
                    str(reports),
                    "n/a" if not reports else f"{usec / reports:,.0f}",
                    f"{usec / 1000:,.1f}",
                ]
            )
    for breaker in breakers:
        await breaker.shutdown()
    await asyncio.sleep(0.05)
    for client in [*clients, stats_client]:
        await client.aclose()
    return rows


async def main_async(args: argparse.Namespace) -> str:
    n = args.breakers
    with private_redis() as server:
        results = [
            await scenario(
                server.port, "aligned, idle", n, staggered=False, rate=0, seconds=args.seconds
            ),
            await scenario(
                server.port,
                f"aligned, busy ({args.busy_rate:g} calls/s each)",
                n,
                staggered=False,
                rate=args.busy_rate,
                seconds=args.seconds,
            ),
            await scenario(
                server.port, "staggered, idle", n, staggered=True, rate=0, seconds=args.seconds
            ),
        ]
        memory_rows = await memory(server.port, n)
        growth = (
            await window_growth(server.port, args.pods, args.busy_rate, args.growth_seconds)
            if args.pods > 0
            else []
        )
    trips, cpu = scenario_tables(results, n)
    aligned, staggered = results[0], results[2]
    exact = all(r.ticks and r.round_trips == r.ticks and not r.tick_errors for r in results)
    slowest = max((max(r.tick_wall) for r in results if r.tick_wall), default=0.0)
    errors = sum(r.tick_errors for r in results)
    downs = sum(r.registry_down for r in results)
    targets = md_table(
        ["target", "measured", "verdict"],
        [
            [
                f"{n:,} breakers, one client: round trips per tick = 1 (every scenario)",
                ", ".join(
                    "n/a" if not r.ticks else f"{r.round_trips / r.ticks:.2f}" for r in results
                ),
                verdict(exact),
            ],
            [
                f"{n:,} breakers made at once: round trips per report interval = 1",
                f"{per_interval(aligned):.2f}",
                verdict(per_interval(aligned) == 1.0),
            ],
            [
                "extra check: every tick shorter than the 1 s report interval",
                f"slowest tick {slowest * 1000:,.0f} ms",
                verdict(slowest < 1.0),
            ],
            [
                "extra check: no tick error, no `registry_down` (Redis was healthy throughout)",
                f"{errors} tick errors, {downs} `registry_down`",
                verdict(errors == 0 and downs == 0),
            ],
            [
                f"extra check: {n:,} breakers made one by one over one interval (lazily): "
                "round trips per report interval = 1",
                f"{per_interval(staggered):.1f}",
                verdict(per_interval(staggered) == 1.0),
            ],
        ],
    )
    return "\n\n".join(
        [
            "## Scale: many distributed breakers on one client",
            header(),
            machine(),
            "Libraries: " + library_versions(),
            f"{n:,} breakers with distinct names in one process on one Redis client, default "
            f"options (report interval 1 s); private redis-server on loopback; each scenario "
            f"{args.seconds:g} s after every breaker's first report and one more interval. "
            "`ticks` = ticks completed in the period; `round trips` = pipelined round trips "
            "of the ticker (coordinator `stats`); `EVALSHA / tick` and `all cmds / report` "
            "from `INFO commandstats` (commands run inside scripts included in the latter; "
            "exact only while ticks are shorter than the interval, else a tick may straddle "
            "a snapshot); `Redis connections` = connections of this process at the end "
            "(`CLIENT LIST`); `tick errors` = ticks the coordinator gave up on (it then "
            "declares Redis down: `registry_down`).",
            trips,
            "### CPU",
            cpu,
            "### Memory per breaker (tracemalloc, Python allocations)",
            md_table(["breaker", "bytes per breaker", "over local-only"], memory_rows),
            f"### Redis time per report as the window fills: one name, {args.pods} pods",
            f"One breaker name on {args.pods} pods (own client each, one process), each pod "
            f"firing {args.busy_rate:g} calls/s, default window (10 s, 10 buckets): every pod "
            "appends one entry per second to the shared stats list; a report keeps running "
            "sums instead of reading the list, so its cost should not grow with the list. "
            "`Redis µs per report` = "
            "`cmdstat_evalsha` usec / calls over the last second.",
            md_table(
                [
                    "second",
                    "entries in the stats list",
                    "reports in the last second",
                    "Redis µs per report",
                    "Redis ms in the last second (this name)",
                ],
                growth,
            )
            if growth
            else "(skipped: `--pods 0`)",
            "### Targets",
            targets,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--breakers", type=int, default=1000, help="breakers in the process (default 1000)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per scenario (default 5)")
    parser.add_argument(
        "--busy-rate",
        type=float,
        default=10.0,
        help="calls/s per breaker in the busy scenario (default 10)",
    )
    parser.add_argument(
        "--pods",
        type=int,
        default=50,
        help="pods sharing one name in the window-growth section (default 50, 0 skips it)",
    )
    parser.add_argument(
        "--growth-seconds",
        type=float,
        default=12.0,
        help="length of the window-growth section in s (default 12)",
    )
    args = parser.parse_args()
    print(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
