"""Memory and event-loop footprint of many idle circuit breakers in one process.

For each library a fresh child process (so that libraries do not share allocator state)
creates ``--count`` breakers with default options inside a running event loop and holds
on to them, then calls each one once and lets them go idle again. It reports

* bytes per breaker from ``tracemalloc`` (Python allocations only),
* the resident-set growth per breaker as a cross-check (a separate batch, created before
  ``tracemalloc`` starts, since tracing itself costs memory),
* live (not cancelled) timer handles in the loop and tasks per breaker, both right after
  creation and after one call each - an idle breaker should own neither.

What each library's "breaker" is: the project's ``CircuitBreaker(action)``; aiobreaker's
``CircuitBreaker()``; for purgatory, circuitbreaker and hyx - whose breakers are applied as
decorators - the decorated coroutine function (purgatory's state is created in its
factory's in-memory repository on the first call, and is counted from then on).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from _harness import (
    base_parser,
    describe_error,
    fmt_bytes,
    header,
    load_ours,
    md_table,
    verdict,
    versions,
)

LIMIT_BYTES = 8 * 1024

#: (create breaker number i, call one breaker once)
Adapter = tuple[Callable[[int], Awaitable[Any]], Callable[[Any], Awaitable[Any]]]


async def action() -> int:
    return 1


async def ours_adapter() -> Adapter:
    cls = load_ours()

    async def create(i: int) -> Any:
        return cls(action, name=f"b{i}")

    async def call(breaker: Any) -> Any:
        return await breaker.fire()

    return create, call


async def aiobreaker_adapter() -> Adapter:
    from aiobreaker import CircuitBreaker  # noqa: PLC0415

    async def create(i: int) -> Any:
        return CircuitBreaker(name=f"b{i}")

    async def call(breaker: Any) -> Any:
        return await breaker.call_async(action)

    return create, call


async def purgatory_adapter() -> Adapter:
    from purgatory import AsyncCircuitBreakerFactory  # noqa: PLC0415

    factory = AsyncCircuitBreakerFactory()

    async def create(i: int) -> Any:
        return factory(f"b{i}")(action)

    async def call(decorated: Any) -> Any:
        return await decorated()

    return create, call


async def circuitbreaker_adapter() -> Adapter:
    from circuitbreaker import circuit  # noqa: PLC0415

    async def create(i: int) -> Any:
        return circuit(name=f"b{i}")(action)

    async def call(decorated: Any) -> Any:
        return await decorated()

    return create, call


async def hyx_adapter() -> Adapter:
    from hyx.circuitbreaker import consecutive_breaker  # noqa: PLC0415

    async def create(i: int) -> Any:
        return consecutive_breaker()(action)

    async def call(decorated: Any) -> Any:
        return await decorated()

    return create, call


LIBRARIES: dict[str, tuple[str, Callable[[], Awaitable[Adapter]]]] = {
    "ours": ("distributed_opossum `CircuitBreaker(action)`", ours_adapter),
    "aiobreaker": ("aiobreaker `CircuitBreaker()`", aiobreaker_adapter),
    "purgatory": ("purgatory (decorated function)", purgatory_adapter),
    "circuitbreaker": ("circuitbreaker (decorated function)", circuitbreaker_adapter),
    "hyx": ("hyx `consecutive_breaker` (decorated function)", hyx_adapter),
}


@dataclass
class Footprint:
    traced_created: float
    traced_called: float
    rss_created: float
    rss_called: float
    timers_created: float
    timers_called: float
    tasks_created: float
    tasks_called: float
    timers_idle: float
    tasks_idle: float
    idle_seconds: float


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_timer_handles(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    scheduled: list[asyncio.TimerHandle] = getattr(loop, "_scheduled", [])
    return [handle for handle in scheduled if not handle.cancelled()]


def new_timers(loop: asyncio.AbstractEventLoop, before: list[asyncio.TimerHandle]) -> int:
    """Live timer handles in the loop that are not in ``before``."""
    known = {id(handle) for handle in before}
    return sum(1 for handle in live_timer_handles(loop) if id(handle) not in known)


async def settle() -> None:
    """Let callbacks scheduled with call_soon (and what they start) run, then collect."""
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()


async def measure_child(library: str, count: int, calls: int, idle_wait: float) -> Footprint:
    create, call = await LIBRARIES[library][1]()
    loop = asyncio.get_running_loop()

    # Warm up: lazy imports, class-level caches, first-call code paths.
    for i in range(10):
        await call(await create(-1 - i))
    await settle()

    # Batch A, untraced: resident-set growth, timers and tasks.
    # The warm-up's own timers are kept alive in timers0, so their ids stay unique.
    timers0, tasks0 = live_timer_handles(loop), len(asyncio.all_tasks())
    rss0 = rss_bytes()
    batch_a = [await create(i) for i in range(count)]
    await settle()
    rss1 = rss_bytes()
    timers1, tasks1 = new_timers(loop, timers0), len(asyncio.all_tasks())
    for breaker in batch_a:
        for _ in range(calls):
            await call(breaker)
    await settle()
    rss2 = rss_bytes()
    timers2, tasks2 = new_timers(loop, timers0), len(asyncio.all_tasks())
    # Timers still pending after the calls (a per-call deadline, say) may lapse on their
    # own: wait for the last of them (at most idle_wait seconds) and count again.
    idle_seconds = 0.0
    if timers2:
        last = max(handle.when() for handle in live_timer_handles(loop))
        idle_seconds = min(max(last - loop.time(), 0.0) + 0.1, idle_wait)
        await asyncio.sleep(idle_seconds)
        await settle()
    timers3, tasks3 = new_timers(loop, timers0), len(asyncio.all_tasks())

    # Batch B, traced: Python allocations that stay alive.
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    batch_b = [await create(count + i) for i in range(count)]
    await settle()
    traced1 = tracemalloc.get_traced_memory()[0]
    for breaker in batch_b:
        for _ in range(calls):
            await call(breaker)
    await settle()
    traced2 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()

    assert len(batch_a) == len(batch_b) == count
    return Footprint(
        traced_created=(traced1 - traced0) / count,
        traced_called=(traced2 - traced0) / count,
        rss_created=(rss1 - rss0) / count,
        rss_called=(rss2 - rss0) / count,
        timers_created=timers1,
        timers_called=timers2,
        tasks_created=tasks1 - tasks0,
        tasks_called=tasks2 - tasks0,
        timers_idle=timers3,
        tasks_idle=tasks3 - tasks0,
        idle_seconds=idle_seconds,
    )


def run_child(library: str, count: int, calls: int, idle_wait: float) -> Footprint | str:
    command = [sys.executable, __file__, "--child", library, "--count", str(count)]
    command += ["--calls", str(calls), "--idle-wait", str(idle_wait)]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        errors = proc.stderr.strip().splitlines()
        return errors[-1] if errors else f"exit status {proc.returncode}"
    data = json.loads(lines[-1])
    if "error" in data:
        return str(data["error"])
    return Footprint(**data)


def median_footprint(runs: list[Footprint]) -> Footprint:
    fields = asdict(runs[0]).keys()
    values = {name: statistics.median(asdict(run)[name] for run in runs) for name in fields}
    return Footprint(**values)


def measure_library(
    library: str, count: int, calls: int, repeats: int, idle_wait: float
) -> Footprint | str:
    runs = []
    for _ in range(repeats):
        result = run_child(library, count, calls, idle_wait)
        if isinstance(result, str):
            return result
        runs.append(result)
    return median_footprint(runs)


def counts(timers: float, tasks: float) -> str:
    return f"{timers:g} / {tasks:g}"


def main_parent(count: int, calls: int, repeats: int, idle_wait: float) -> str:
    memory_rows = []
    loop_rows = []
    ours: Footprint | str = "not run"
    after = f"after {calls} call{'s' if calls != 1 else ''} each"
    for library, (label, _) in LIBRARIES.items():
        result = measure_library(library, count, calls, repeats, idle_wait)
        if library == "ours":
            ours = result
        if isinstance(result, str):
            memory_rows.append([label, *["n/a"] * 4, result])
            loop_rows.append([label, *["n/a"] * 3, result])
            continue
        memory_rows.append(
            [
                label,
                fmt_bytes(result.traced_created),
                fmt_bytes(result.rss_created),
                fmt_bytes(result.traced_called),
                fmt_bytes(result.rss_called),
                "",
            ]
        )
        idle_note = f"{result.idle_seconds:.1f} s later" if result.idle_seconds else ""
        loop_rows.append(
            [
                label,
                counts(result.timers_created, result.tasks_created),
                counts(result.timers_called, result.tasks_called),
                counts(result.timers_idle, result.tasks_idle),
                idle_note,
            ]
        )
    memory_table = md_table(
        [
            "library",
            "B/breaker, created (tracemalloc)",
            "B/breaker, created (RSS)",
            f"B/breaker, {after} (tracemalloc)",
            f"B/breaker, {after} (RSS)",
            "note",
        ],
        memory_rows,
    )
    loop_table = md_table(
        [
            "library",
            "live timers / tasks, created",
            f"live timers / tasks, {after}",
            "live timers / tasks, once pending timers lapsed",
            "note",
        ],
        loop_rows,
    )
    if isinstance(ours, Footprint):
        worst = max(ours.traced_created, ours.traced_called)
        size = (f"{fmt_bytes(worst)} B", verdict(worst <= LIMIT_BYTES))
        idle = ours.timers_created + ours.tasks_created + ours.timers_idle + ours.tasks_idle
        loop_use = (
            f"created: {counts(ours.timers_created, ours.tasks_created)}, "
            f"idle after use: {counts(ours.timers_idle, ours.tasks_idle)} "
            f"(right after the calls: {counts(ours.timers_called, ours.tasks_called)})",
            verdict(idle <= 1),
        )
    else:
        size = loop_use = ("n/a", "n/a")
    targets = md_table(
        ["target", "measured", "verdict"],
        [
            [f"≤ {LIMIT_BYTES // 1024} KiB per idle breaker (tracemalloc, larger column)", *size],
            [
                f"no timer handle or task per idle breaker ({count:,} breakers; timers / tasks)",
                *loop_use,
            ],
        ],
    )
    return "\n\n".join(
        [
            f"## {count:,} idle breakers in one process",
            header(),
            "Libraries: "
            + versions(["distributed-opossum", "aiobreaker", "purgatory", "circuitbreaker", "hyx"]),
            f"Default options; {repeats} child process(es) per library, medians shown. "
            "tracemalloc counts Python allocations still alive; RSS (a separate, untraced "
            "batch) is the cross-check.",
            memory_table,
            f"Event-loop footprint of all {count:,} breakers together: live (not cancelled) "
            "timer handles in the loop's schedule, and tasks. The last column waits (at most "
            f"{idle_wait:g} s) for timers still pending after the calls to fire.",
            loop_table,
            "### Targets",
            targets,
        ]
    )


def main() -> None:
    parser = base_parser(
        __doc__.splitlines()[0] if __doc__ else "",
        calls=1,
        repeats=3,
        calls_help="calls of each breaker before the 'after calls' measurement",
        repeats_help="child processes per library, medians reported",
    )
    parser.add_argument("--count", type=int, default=10_000, help="breakers (default 10000)")
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=15.0,
        help="longest wait for pending timers to lapse, in seconds (default 15)",
    )
    parser.add_argument("--child", choices=sorted(LIBRARIES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        try:
            footprint = asyncio.run(
                measure_child(args.child, args.count, args.calls, args.idle_wait)
            )
        except Exception as exc:
            print(json.dumps({"error": describe_error(exc)}))
        else:
            print(json.dumps(asdict(footprint)))
        return
    print(main_parent(args.count, args.calls, args.repeats, args.idle_wait))


if __name__ == "__main__":
    main()
