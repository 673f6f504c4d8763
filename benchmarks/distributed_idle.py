"""Redis commands, round trips and Redis CPU per report tick: idle vs busy breakers,
with the idle rule and without it.

N breakers (different names) on one client, hence one coordinator, report every
``--sync-interval``. *Idle*: no calls. *Busy*: every breaker fires once every
``--sync-interval / 4``. Each case runs twice, side by side on one private
redis-server: as shipped (a breaker with nothing to report sends nothing; the
coordinator PINGs once a tick; a ``touch_state`` sweep per idle breaker every
``SWEEP_INTERVAL``), and as before the idle rule (every due breaker sends its
report every tick: emulated by making every breaker claim news at each tick,
which is exactly the old rule).

Counts come from ``INFO commandstats`` (commands the pod sent: ``EVALSHA``,
``PING``; and every command Redis ran, those inside scripts included) and the
coordinator's ``stats``; Redis CPU from ``INFO cpu``, also given as a ratio to
a trivial ``EVALSHA`` (``return 1``) sent the same way (pipelined, N a round
trip) in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

from _distributed import (
    calls_delta,
    command_calls,
    first_sync,
    library_versions,
    new_client,
    private_redis,
    server_cpu_seconds,
)
from _harness import header, machine, md_table

from distributed_opossum import CircuitBreaker
from distributed_opossum._redis import reporter
from distributed_opossum._redis.keys import DEFAULT_PREFIX, BreakerKeys
from distributed_opossum._redis.scripts import scripts_for


async def ok() -> int:
    return 1


@dataclass
class Case:
    breakers: int
    busy: bool
    idle_rule: bool
    ticks: int = 0
    evalsha: int = 0
    ping: int = 0
    all_commands: int = 0
    round_trips: int = 0
    cpu_s: float = 0.0

    def per_tick(self, value: float) -> float:
        return value / self.ticks if self.ticks else float("nan")


async def run_case(port: int, case: Case, seconds: float, interval: float) -> None:
    client = new_client(port)
    stats_client = new_client(port)
    breakers: list[CircuitBreaker[[], int]] = [
        CircuitBreaker(
            ok,
            name=f"b{case.breakers}-{i}",
            rolling_count_timeout=10 * interval,
            rolling_count_buckets=10,
            distributed={"client": client, "instance_id": "pod", "sync_interval": interval},
        )
        for i in range(case.breakers)
    ]
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            await asyncio.gather(*(b.fire() for b in breakers))
            await asyncio.sleep(interval / 4)

    try:
        await first_sync(breakers[:1])
        links = [b._link for b in breakers]
        if not case.idle_rule:
            for link in links:
                # The old rule: every due breaker reports, news or not.
                object.__setattr__(link, "take_local_news", lambda: True)
        task = asyncio.create_task(load()) if case.busy else None
        await asyncio.sleep(3 * interval)  # past the first syncs
        coordinator = links[0].coordinator if links[0] is not None else None
        assert coordinator is not None
        before = dict(coordinator.stats)
        calls_before = await command_calls(stats_client)
        cpu_before = await server_cpu_seconds(stats_client)
        await asyncio.sleep(seconds)
        cpu_after = await server_cpu_seconds(stats_client)
        calls = calls_delta(calls_before, await command_calls(stats_client))
        after = dict(coordinator.stats)
        stop.set()
        if task is not None:
            await task
    finally:
        for breaker in breakers:
            await breaker.shutdown()
        await client.aclose()
        await stats_client.aclose()
    case.ticks = after["ticks"] - before["ticks"]
    case.evalsha = calls.get("evalsha", 0)
    case.ping = calls.get("ping", 0)
    case.all_commands = sum(calls.values())
    case.round_trips = (after["round_trips"] - before["round_trips"]) + (
        after["pings"] - before["pings"]
    )
    case.cpu_s = cpu_after - cpu_before


async def idle_server_cpu(port: int, seconds: float) -> float:
    """Redis CPU seconds of ``seconds`` with no client but this one (its cron, INFO)."""
    client = new_client(port)
    try:
        cpu_before = await server_cpu_seconds(client)
        await asyncio.sleep(seconds)
        return await server_cpu_seconds(client) - cpu_before
    finally:
        await client.aclose()


async def trivial_evalsha_cpu(port: int, batch: int, rounds: int) -> float:
    """Redis CPU seconds per trivial EVALSHA, pipelined ``batch`` a round trip."""
    client = new_client(port)
    try:
        sha = await client.script_load("return 1")
        cpu_before = await server_cpu_seconds(client)
        for _ in range(rounds):
            pipe = client.pipeline(transaction=False)
            for _ in range(batch):
                pipe.evalsha(sha, 0)
            await pipe.execute()
        cpu_after = await server_cpu_seconds(client)
    finally:
        await client.aclose()
    return (cpu_after - cpu_before) / (batch * rounds)


async def touch_cpu(port: int, n: int, rounds: int) -> float:
    """Redis CPU seconds per sweep call (``touch_state``) of the breakers of ``n``,
    pipelined ``n`` a round trip (their keys exist: the cases just ran)."""
    client = new_client(port)
    keys = [BreakerKeys.for_breaker(DEFAULT_PREFIX, f"b{n}-{i}") for i in range(n)]
    scripts = scripts_for(client)
    try:
        await scripts.load(["touch_state"])
        cpu_before = await server_cpu_seconds(client)
        for _ in range(rounds):
            batch = scripts.batch()
            for k in keys:
                batch.touch_state(k, key_ttl_ms=60_000)
            await batch.execute()
        cpu_after = await server_cpu_seconds(client)
    finally:
        await client.aclose()
    return (cpu_after - cpu_before) / (n * rounds)


async def main_async(args: argparse.Namespace) -> str:
    sizes = [int(n) for n in args.breakers.split(",")]
    cases: list[tuple[Case, float]] = []
    sweeps: list[list[str]] = []
    with private_redis() as server:
        floor = await idle_server_cpu(server.port, args.seconds)
        for n in sizes:
            trivial = await trivial_evalsha_cpu(server.port, n, max(1, 20000 // n))
            for busy in (False, True):
                for idle_rule in (False, True):  # side by side
                    case = Case(n, busy, idle_rule)
                    await run_case(server.port, case, args.seconds, args.sync_interval)
                    cases.append((case, trivial))
            touch = await touch_cpu(server.port, n, max(1, 20000 // n))
            trivial = await trivial_evalsha_cpu(server.port, n, max(1, 20000 // n))
            sweeps.append(
                [
                    str(n),
                    f"{touch * 1e6:.1f}",
                    f"{trivial * 1e6:.2f}",
                    f"{touch / trivial:.1f}×" if trivial > 0 else "n/a",
                    f"{touch / reporter.SWEEP_INTERVAL * 1e6:.2f}",
                ]
            )
    rows = []
    for case, trivial in cases:
        cpu_tick = case.per_tick(max(case.cpu_s - floor, 0.0))
        rows.append(
            [
                str(case.breakers),
                "busy" if case.busy else "idle",
                "idle rule" if case.idle_rule else "before (a report each tick)",
                f"{case.per_tick(case.evalsha):.1f}",
                f"{case.per_tick(case.ping):.2f}",
                f"{case.per_tick(case.all_commands):.1f}",
                f"{case.per_tick(case.round_trips):.2f}",
                f"{cpu_tick * 1e6:.0f}",
                f"{cpu_tick / trivial:.0f}×" if trivial > 0 else "n/a",
            ]
        )
    table = md_table(
        [
            "breakers",
            "load",
            "rule",
            "EVALSHA/tick",
            "PING/tick",
            "all commands/tick",
            "round trips/tick",
            "Redis CPU µs/tick (net)",
            "= trivial EVALSHA",
        ],
        rows,
    )
    return "\n\n".join(
        [
            "## Idle breakers: Redis commands per tick, before and after the idle rule",
            header(),
            machine(),
            "Libraries: " + library_versions(),
            f"N breakers on one client (one coordinator), report tick {args.sync_interval:g} s, "
            f"{args.seconds:g} s per case; busy = every breaker fires every "
            f"{args.sync_interval / 4:g} s. Sweep interval {reporter.SWEEP_INTERVAL:g} s: "
            "the idle rows include the sweeps (the first sweep of each breaker falls at a "
            "random point of its first interval, so they come spread out, as in the steady "
            f"state: N × {args.sync_interval:g} / {reporter.SWEEP_INTERVAL:g} `touch_state` "
            "per tick on average). Redis CPU is net of the server's own "
            f"(its cron and the `INFO` reads: {floor / args.seconds * args.sync_interval * 1e6:.0f}"
            " µs per tick, measured with no breaker); it is noisy on a shared machine: "
            "read the ratio to a trivial `EVALSHA` measured in the same run.",
            table,
            "### The sweep: one `touch_state` per idle breaker per sweep interval",
            md_table(
                [
                    "breakers (pipelined per round trip)",
                    "Redis CPU µs per touch_state",
                    "µs per trivial EVALSHA",
                    "ratio",
                    "µs of Redis CPU per idle breaker per second",
                ],
                sweeps,
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--breakers", default="10,100,1000", help="breaker counts (default 10,100,1000)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per case (default 3)")
    parser.add_argument(
        "--sync-interval", type=float, default=0.2, help="report tick in s (default 0.2)"
    )
    args = parser.parse_args()
    started = time.monotonic()
    print(asyncio.run(main_async(args)))
    print(f"\n_(took {time.monotonic() - started:.0f} s)_")


if __name__ == "__main__":
    main()
