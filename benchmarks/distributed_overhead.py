"""Per-call cost of ``fire()`` with ``distributed`` on, against the same breaker local-only.

A distributed breaker must not pay for Redis on its call path: while closed, ``fire()``
takes the same plain path as a local breaker, and reporting happens in the coordinator's
ticker, once per ``sync_interval``. This measures it: the same ``CircuitBreaker`` with and
without ``distributed`` (connected to a private ``redis-server``, first sync done, ticker
and pub/sub listener running), against a bare ``await``.

Two actions:

* ``f`` returns at once (``async def f(): return 1``): the loop never yields to the event
  loop, so this is the call path alone;
* ``g`` suspends once (``await asyncio.sleep(0)``): the event loop turns once per call, so
  the coordinator's ticker and listener run during the timed loop, as in a service.

``--calls`` sequential awaited calls per run, runs interleaved across variants
(``--repeats`` rounds, one warm-up pass each); medians reported. ``vs local`` is the median
of the per-round ratios to the local breaker with the same options.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from _distributed import (
    first_sync,
    library_versions,
    new_client,
    private_redis,
)
from _harness import (
    Loop,
    Result,
    Setup,
    fmt_ns,
    fmt_ratio,
    header,
    machine,
    md_table,
    measure_interleaved,
    paired_difference,
    paired_ratio,
    verdict,
)

from distributed_opossum import CircuitBreaker

Action = Callable[[], Coroutine[Any, Any, int]]

LIMIT_VS_LOCAL = 1.10

BARE = "bare `await action()`"
LOCAL = "local, defaults (timeout 10 s)"
DISTRIBUTED = "distributed, defaults (timeout 10 s)"
LOCAL_NT = "local, `timeout=None`"
DISTRIBUTED_NT = "distributed, `timeout=None`"
CONTROL = "local, defaults, a second instance (noise control)"
PAIRS = ((DISTRIBUTED, LOCAL), (DISTRIBUTED_NT, LOCAL_NT))
CONTROLS = ((CONTROL, LOCAL),)


async def f() -> int:
    return 1


async def g() -> int:
    await asyncio.sleep(0)
    return 1


class Fixture:
    """The private Redis, the clients made for distributed breakers, and the breakers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.clients: list[Any] = []
        self.breakers: list[CircuitBreaker[[], int]] = []

    def bare(self, action: Action) -> Setup:
        async def setup() -> Loop:
            async def run(n: int) -> None:
                for _ in range(n):
                    await action()

            return run

        return setup

    def breaker(self, action: Action, *, distributed: bool, **options: Any) -> Setup:
        async def setup() -> Loop:
            if distributed:
                client = new_client(self.port)
                self.clients.append(client)
                options["distributed"] = {"client": client, "instance_id": "bench-pod"}
            breaker: CircuitBreaker[[], int] = CircuitBreaker(action, name="payments", **options)
            self.breakers.append(breaker)
            if distributed:
                await first_sync([breaker])
            if breaker._gate:
                raise RuntimeError("the breaker is off its plain call path")

            async def run(n: int) -> None:
                for _ in range(n):
                    await breaker.fire()

            return run

        return setup

    def variants(self, action: Action) -> list[tuple[str, Setup]]:
        return [
            (BARE, self.bare(action)),
            (LOCAL, self.breaker(action, distributed=False)),
            (DISTRIBUTED, self.breaker(action, distributed=True)),
            (LOCAL_NT, self.breaker(action, distributed=False, timeout=None)),
            (DISTRIBUTED_NT, self.breaker(action, distributed=True, timeout=None)),
            (CONTROL, self.breaker(action, distributed=False)),
        ]

    def coordinator_stats(self) -> dict[str, int]:
        total = {"ticks": 0, "round_trips": 0, "reports": 0, "tick_errors": 0}
        for breaker in self.breakers:
            if breaker._link is not None and breaker._link.coordinator is not None:
                for key in total:
                    total[key] += breaker._link.coordinator.stats[key]
        return total

    async def close(self) -> None:
        for breaker in self.breakers:
            await breaker.shutdown()
        await asyncio.sleep(0.05)
        for client in self.clients:
            await client.aclose()


def table(results: list[Result]) -> str:
    base = results[0]
    named = {r.name: r for r in results}
    local_of = dict(PAIRS + CONTROLS)
    rows = []
    for result in results:
        if not result.ok:
            rows.append([result.name, "n/a", "n/a", "n/a", "n/a", "n/a", result.error or ""])
            continue
        spread = f"{fmt_ns(min(result.samples))}-{fmt_ns(max(result.samples))}"
        ratio = fmt_ratio(paired_ratio(result, base)) if base.ok else "n/a"
        added = "—" if result is base or not base.ok else fmt_ns(paired_difference(result, base))
        vs_local = "—"
        local = named.get(local_of.get(result.name, ""))
        if local is not None and local.ok:
            vs_local = f"{paired_ratio(result, local):.3f}"
        rows.append([result.name, fmt_ns(result.median), ratio, added, vs_local, spread, ""])
    return md_table(
        ["variant", "ns/call (median)", "x bare", "ns added", "vs local", "min-max", "note"], rows
    )


def targets(tables: list[tuple[str, list[Result]]]) -> str:
    rows = []
    for label, results in tables:
        named = {r.name: r for r in results}
        for dist, local in PAIRS:
            d, loc = named[dist], named[local]
            ratio = paired_ratio(d, loc) if d.ok and loc.ok else None
            rows.append(
                [
                    f"{label}: {dist} ≤ {LIMIT_VS_LOCAL:.2f}x local",
                    "n/a" if ratio is None else f"{ratio:.3f}x",
                    verdict(None if ratio is None else ratio <= LIMIT_VS_LOCAL),
                ]
            )
    return md_table(["target", "measured", "verdict"], rows)


def noise(tables: list[tuple[str, list[Result]]]) -> str:
    parts = []
    for label, results in tables:
        named = {r.name: r for r in results}
        control, local = named[CONTROL], named[LOCAL]
        ratio = paired_ratio(control, local) if control.ok and local.ok else None
        parts.append(f"{label} {'n/a' if ratio is None else f'{ratio:.3f}x'}")
    return (
        "Noise control: a second local breaker with the same options, against the first: "
        + ", ".join(parts)
        + ". Identical code paths differ by this much here; read the targets against it."
    )


async def main_async(args: argparse.Namespace) -> str:
    with private_redis() as server:
        fixture = Fixture(server.port)
        try:
            fast = await measure_interleaved(
                fixture.variants(f), calls=args.calls, repeats=args.repeats
            )
            slow = await measure_interleaved(
                fixture.variants(g), calls=args.suspending_calls, repeats=args.repeats
            )
            coordinated = fixture.coordinator_stats()
        finally:
            await fixture.close()
    return "\n\n".join(
        [
            "## Per-call overhead of `distributed`, closed breaker",
            header(),
            machine(),
            "Libraries: " + library_versions(),
            f"Sequential awaited calls per run ({args.calls:,} for `f`, "
            f"{args.suspending_calls:,} for `g`), median of {args.repeats} interleaved runs "
            "(gc disabled while timing, one warm-up pass per variant). Distributed breakers: "
            "own client each, private redis-server, first sync done before timing, report "
            "tick 1 s. `x bare`, `ns added` and `vs local` are medians of per-round ratios "
            "or differences.",
            "### `f()`: `async def f(): return 1`",
            table(fast),
            "### `g()`: `async def g(): await asyncio.sleep(0); return 1`",
            table(slow),
            f"Coordinators over the whole run: {coordinated['ticks']} ticks, "
            f"{coordinated['round_trips']} round trips, {coordinated['reports']} reports, "
            f"{coordinated['tick_errors']} tick errors.",
            "### Targets",
            targets([("`f()`", fast), ("`g()`", slow)]),
            noise([("`f()`", fast), ("`g()`", slow)]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--calls", type=int, default=100_000, help="calls per run with f (default 100000)"
    )
    parser.add_argument(
        "--suspending-calls",
        type=int,
        default=100_000,
        help="calls per run with g (default 100000)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (default 5)")
    args = parser.parse_args()
    print(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
