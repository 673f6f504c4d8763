"""Redis commands per ``fire()`` of distributed breakers, and the idle cost per report tick.

Two pods (two breakers named ``payments``, each with its own Redis client, hence its own
coordinator and pub/sub connection, in one process) each fire a trivial action at a
paced ``--rate`` calls/s for ``--seconds``. Redis' ``INFO commandstats`` is read before
and after; the difference of all ``cmdstat_*`` calls (the ``INFO`` itself excluded),
divided by the number of fires, is the cost per call.

``INFO commandstats`` also counts the commands a Lua script runs inside itself (``TIME``,
``HGETALL``, ``RPUSH``, ...), one entry each. ``MONITOR`` tells them apart, so the
table shows both: the commands the pods sent (one ``EVALSHA`` is one command) and all
commands Redis ran. The design's unit is the first: one pipelined script call per
breaker per report tick (``sync_interval``, by default the bucket interval, 1 s).

The second scenario is one breaker doing no calls: what a tick costs when idle.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field
from typing import Any

from _distributed import (
    CommandTap,
    calls_delta,
    command_calls,
    first_sync,
    library_versions,
    new_client,
    private_redis,
)
from _harness import header, machine, md_table, verdict

from distributed_opossum import CircuitBreaker

TARGET_PER_FIRE = 0.002
NAME = "payments"


async def f() -> int:
    return 1


@dataclass
class Measured:
    scenario: str
    fires: int = 0
    seconds: float = 0.0
    ticks: int = 0
    round_trips: int = 0
    reports: int = 0
    all_commands: dict[str, int] = field(default_factory=dict)
    client_sent: dict[str, int] = field(default_factory=dict)
    in_scripts: dict[str, int] = field(default_factory=dict)

    @property
    def total_all(self) -> int:
        return sum(self.all_commands.values())

    @property
    def total_sent(self) -> int:
        return sum(self.client_sent.values())


def make_pod(
    port: int, index: int, sync_interval: float | None
) -> tuple[Any, CircuitBreaker[[], int]]:
    client = new_client(port)
    breaker: CircuitBreaker[[], int] = CircuitBreaker(
        f,
        name=NAME,
        distributed={
            "client": client,
            "instance_id": f"pod{index}",
            "sync_interval": sync_interval,
        },
    )
    return client, breaker


def coordinator_stats(breakers: list[CircuitBreaker[[], int]]) -> dict[str, int]:
    total: dict[str, int] = {"ticks": 0, "round_trips": 0, "reports": 0}
    for breaker in breakers:
        link = breaker._link
        assert link is not None
        assert link.coordinator is not None
        for key in total:
            total[key] += link.coordinator.stats[key]
    return total


async def paced(breaker: CircuitBreaker[[], int], rate: float, calls: int) -> int:
    """``calls`` fires at ``rate`` per second, on an absolute schedule (late ones catch up)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while sent < calls:
        due = min(calls, int((loop.time() - start) * rate) + 1)
        while sent < due:
            await breaker.fire()
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
    return sent


async def measure(
    port: int, scenario: str, pods: int, rate: float, seconds: float, sync: float | None
) -> Measured:
    stats_client = new_client(port)
    made = [make_pod(port, i, sync) for i in range(pods)]
    breakers = [breaker for _, breaker in made]
    await first_sync(breakers)
    tap = CommandTap(port)
    await tap.start(stats_client)
    loop = asyncio.get_running_loop()
    coordinated_before = coordinator_stats(breakers)
    before = await command_calls(stats_client)
    started = loop.time()
    if rate > 0:
        calls = round(rate * seconds)
        fires = sum(await asyncio.gather(*(paced(b, rate, calls) for b in breakers)))
    else:
        fires = 0
        await asyncio.sleep(seconds)
    elapsed = loop.time() - started
    after = await command_calls(stats_client)
    coordinated_after = coordinator_stats(breakers)
    await tap.finish()
    result = Measured(
        scenario,
        fires=fires,
        seconds=elapsed,
        ticks=coordinated_after["ticks"] - coordinated_before["ticks"],
        round_trips=coordinated_after["round_trips"] - coordinated_before["round_trips"],
        reports=coordinated_after["reports"] - coordinated_before["reports"],
        all_commands=calls_delta(before, after),
        client_sent=tap.client_sent,
        in_scripts=tap.in_scripts,
    )
    for breaker in breakers:
        await breaker.shutdown()
    await asyncio.sleep(0.05)  # let the coordinators close their pub/sub connections
    for client, _ in made:
        await client.aclose()
    await stats_client.aclose()
    return result


def per(value: int, unit: int) -> str:
    return "n/a" if unit == 0 else f"{value / unit:.5f}"


def results_table(rows: list[Measured]) -> str:
    out = []
    for m in rows:
        out.append(
            [
                m.scenario,
                f"{m.fires:,}",
                f"{m.seconds:.2f}",
                f"{m.ticks} / {m.round_trips} / {m.reports}",
                str(m.total_sent),
                per(m.total_sent, m.fires),
                per(m.total_sent, m.reports),
                str(m.total_all),
                per(m.total_all, m.fires),
                per(m.total_all, m.reports),
            ]
        )
    return md_table(
        [
            "scenario",
            "fires",
            "seconds",
            "ticks / round trips / reports",
            "client-sent cmds",
            "sent / fire",
            "sent / report",
            "all cmds (INFO commandstats)",
            "all / fire",
            "all / report",
        ],
        out,
    )


def breakdown_table(rows: list[Measured]) -> str:
    out = []
    for m in rows:
        names = sorted(set(m.all_commands) | set(m.client_sent) | set(m.in_scripts))
        for name in names:
            out.append(
                [
                    m.scenario,
                    f"`{name}`",
                    str(m.all_commands.get(name, 0)),
                    str(m.client_sent.get(name, 0)),
                    str(m.in_scripts.get(name, 0)),
                ]
            )
    return md_table(
        ["scenario", "command", "INFO commandstats", "sent by the pods", "run inside scripts"],
        out,
    )


def targets_table(busy: Measured, idle: Measured) -> str:
    sent = busy.total_sent / busy.fires if busy.fires else None
    every = busy.total_all / busy.fires if busy.fires else None
    idle_sent = idle.total_sent / idle.reports if idle.reports else None
    rows = [
        [
            f"commands sent per `fire()` ≤ {TARGET_PER_FIRE} (a script call counts 1)",
            "n/a" if sent is None else f"{sent:.5f}",
            verdict(None if sent is None else sent <= TARGET_PER_FIRE),
        ],
        [
            f"all `INFO commandstats` calls per `fire()` ≤ {TARGET_PER_FIRE} "
            "(commands inside scripts counted one by one)",
            "n/a" if every is None else f"{every:.5f}",
            verdict(None if every is None else every <= TARGET_PER_FIRE),
        ],
        [
            "idle breaker: commands sent per report tick = 1",
            "n/a" if idle_sent is None else f"{idle_sent:.2f}",
            verdict(None if idle_sent is None else round(idle_sent, 2) <= 1.0),
        ],
    ]
    return md_table(["target", "measured", "verdict"], rows)


async def main_async(args: argparse.Namespace) -> str:
    with private_redis() as server:
        busy = await measure(
            server.port,
            f"{args.pods} pods × {args.rate:g} calls/s",
            args.pods,
            args.rate,
            args.seconds,
            args.sync_interval,
        )
        idle = await measure(
            server.port, "1 breaker, no calls", 1, 0.0, args.idle_seconds, args.sync_interval
        )
    sync = "the bucket interval (1 s)" if args.sync_interval is None else f"{args.sync_interval} s"
    return "\n\n".join(
        [
            "## Redis commands per `fire()`, distributed breakers",
            header(),
            machine(),
            "Libraries: " + library_versions(),
            f"Pods: {args.pods} breakers named `{NAME}` in one process, each with its own "
            f"Redis client (own coordinator and pub/sub connection); trivial action; paced "
            f"{args.rate:g} calls/s per pod for {args.seconds:g} s; report tick = {sync}. "
            "Private redis-server. Commands counted from the first to the second "
            "`INFO commandstats` snapshot (the `INFO` calls excluded); `MONITOR` splits them "
            "into those the pods sent and those scripts ran inside themselves. Ticks, round "
            "trips and reports come from the coordinators' `stats`.",
            results_table([busy, idle]),
            "### Commands by name",
            breakdown_table([busy, idle]),
            "### Targets",
            targets_table(busy, idle),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--pods", type=int, default=2, help="pods firing (default 2)")
    parser.add_argument("--rate", type=float, default=1000.0, help="calls/s per pod (default 1000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="paced period (default 5)")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle period (default 5)")
    parser.add_argument(
        "--sync-interval",
        type=float,
        default=None,
        help="distributed sync_interval in s (default: the bucket interval)",
    )
    args = parser.parse_args()
    print(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
