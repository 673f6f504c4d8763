"""Per-call overhead of a closed circuit breaker, against a bare ``await`` and peer libraries.

Two actions are measured:

* ``f`` returns at once (``async def f(): return 1``) - the breaker's cost dominates;
* ``g`` suspends once (``await asyncio.sleep(0)``) - one event-loop round trip per call,
  which is what an armed timeout actually has to live through.

Each variant performs ``--calls`` sequential awaited calls per run; runs are interleaved
across variants (``--repeats`` rounds) and the median ns/call is reported, together with the
ratio to the bare ``await`` and the nanoseconds the breaker adds per call.

Each peer is used the way its documentation shows for asyncio code:

* aiobreaker: ``await breaker.call_async(action)``;
* purgatory: the in-memory ``AsyncCircuitBreakerFactory`` and its decorator
  ``@factory("name")``, which runs ``async with await factory.get_breaker("name")`` per call;
* circuitbreaker: the ``@circuit`` decorator on the coroutine function (it has no timeout);
* hyx: the ``@consecutive_breaker()`` decorator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from _harness import (
    Loop,
    Result,
    Setup,
    base_parser,
    fmt_ns,
    fmt_ratio,
    header,
    load_ours,
    md_table,
    measure_interleaved,
    paired_difference,
    paired_ratio,
    verdict,
    versions,
)

Action = Callable[[], Coroutine[Any, Any, int]]

BARE = "bare `await action()`"
OURS_DEFAULT = "distributed_opossum, defaults (timeout 10 s)"
OURS_NO_TIMEOUT = "distributed_opossum, `timeout=None`"
OURS_LEAN = "distributed_opossum, `timeout=None`, no percentiles, no snapshots"
AIOBREAKER = "aiobreaker `call_async`"
PURGATORY = "purgatory (in-memory, decorator)"
CIRCUITBREAKER = "circuitbreaker (async decorator, no timeout)"
HYX = "hyx `consecutive_breaker`"
PEERS = (AIOBREAKER, PURGATORY, CIRCUITBREAKER, HYX)

LIMIT_DEFAULT_RATIO = 8.0
LIMIT_NO_TIMEOUT_RATIO = 5.0
LIMIT_ADDED_NS_SUSPENDING = 500.0


async def f() -> int:
    return 1


async def g() -> int:
    await asyncio.sleep(0)
    return 1


def call_loop(call: Action) -> Loop:
    async def run(n: int) -> None:
        for _ in range(n):
            await call()

    return run


def bare(action: Action) -> Setup:
    async def setup() -> Loop:
        return call_loop(action)

    return setup


def ours(action: Action, **options: Any) -> Setup:
    async def setup() -> Loop:
        breaker = load_ours()(action, **options)

        async def run(n: int) -> None:
            for _ in range(n):
                await breaker.fire()

        return run

    return setup


def aiobreaker(action: Action) -> Setup:
    async def setup() -> Loop:
        from aiobreaker import CircuitBreaker  # noqa: PLC0415

        breaker = CircuitBreaker()

        async def run(n: int) -> None:
            for _ in range(n):
                await breaker.call_async(action)

        return run

    return setup


def purgatory(action: Action) -> Setup:
    async def setup() -> Loop:
        from purgatory import AsyncCircuitBreakerFactory  # noqa: PLC0415

        factory = AsyncCircuitBreakerFactory()
        decorated: Action = factory(f"bench-{action.__name__}")(action)
        return call_loop(decorated)

    return setup


def circuitbreaker(action: Action) -> Setup:
    async def setup() -> Loop:
        from circuitbreaker import circuit  # noqa: PLC0415

        decorated: Action = circuit(name=f"bench-{action.__name__}")(action)
        return call_loop(decorated)

    return setup


def hyx(action: Action) -> Setup:
    async def setup() -> Loop:
        from hyx.circuitbreaker import consecutive_breaker  # noqa: PLC0415

        decorated: Action = consecutive_breaker()(action)
        return call_loop(decorated)

    return setup


def variants(action: Action) -> list[tuple[str, Setup]]:
    return [
        (BARE, bare(action)),
        (OURS_DEFAULT, ours(action)),
        (OURS_NO_TIMEOUT, ours(action, timeout=None)),
        (
            OURS_LEAN,
            ours(action, timeout=None, rolling_percentiles_enabled=False, enable_snapshots=False),
        ),
        (AIOBREAKER, aiobreaker(action)),
        (PURGATORY, purgatory(action)),
        (CIRCUITBREAKER, circuitbreaker(action)),
        (HYX, hyx(action)),
    ]


def table(results: list[Result]) -> str:
    base = results[0]
    rows = []
    for result in results:
        if not result.ok:
            rows.append([result.name, "n/a", "n/a", "n/a", "n/a", "n/a", result.error or ""])
            continue
        median = result.median
        spread = f"{fmt_ns(min(result.samples))}-{fmt_ns(max(result.samples))}"
        if base.ok:
            ratio = fmt_ratio(paired_ratio(result, base))
            best = fmt_ratio(min(result.samples) / min(base.samples))
            added = "—" if result is base else fmt_ns(paired_difference(result, base))
        else:
            ratio = best = added = "n/a"
        rows.append([result.name, fmt_ns(median), ratio, added, spread, best, ""])
    return md_table(
        [
            "variant",
            "ns/call (median)",
            "x bare",
            "ns added",
            "min-max",
            "x bare (best runs)",
            "note",
        ],
        rows,
    )


def by_name(results: list[Result]) -> dict[str, Result]:
    return {result.name: result for result in results}


def targets(fast: list[Result], slow: list[Result]) -> str:
    f_res, g_res = by_name(fast), by_name(slow)
    rows: list[list[str]] = []

    def ratio(results: dict[str, Result], name: str) -> float | None:
        result, base = results[name], results[BARE]
        return paired_ratio(result, base) if result.ok and base.ok else None

    def best_note(results: dict[str, Result], name: str) -> str:
        result, base = results[name], results[BARE]
        if not (result.ok and base.ok):
            return ""
        return f" (best runs {fmt_ratio(min(result.samples) / min(base.samples))})"

    default_ratio = ratio(f_res, OURS_DEFAULT)
    rows.append(
        [
            f"`f()`, defaults (timeout on) ≤ {LIMIT_DEFAULT_RATIO:g}x bare",
            "n/a"
            if default_ratio is None
            else fmt_ratio(default_ratio) + best_note(f_res, OURS_DEFAULT),
            verdict(None if default_ratio is None else default_ratio <= LIMIT_DEFAULT_RATIO),
        ]
    )

    no_timeout_ratio = ratio(f_res, OURS_NO_TIMEOUT)
    rows.append(
        [
            f"`f()`, `timeout=None` ≤ {LIMIT_NO_TIMEOUT_RATIO:g}x bare",
            "n/a"
            if no_timeout_ratio is None
            else fmt_ratio(no_timeout_ratio) + best_note(f_res, OURS_NO_TIMEOUT),
            verdict(
                None if no_timeout_ratio is None else no_timeout_ratio <= LIMIT_NO_TIMEOUT_RATIO
            ),
        ]
    )

    peer_ratios = {name: ratio(f_res, name) for name in PEERS}
    measured = {name: value for name, value in peer_ratios.items() if value is not None}
    if no_timeout_ratio is None or not measured:
        rows.append(["`f()`, `timeout=None` lowest ratio of all libraries", "n/a", "n/a"])
    else:
        best_name, best = min(measured.items(), key=lambda item: item[1])
        rows.append(
            [
                "`f()`, `timeout=None` lowest ratio of all libraries",
                f"{fmt_ratio(no_timeout_ratio)} vs best peer {fmt_ratio(best)} ({best_name})",
                verdict(no_timeout_ratio < best),
            ]
        )

    result, base = g_res[OURS_DEFAULT], g_res[BARE]
    added = paired_difference(result, base) if result.ok and base.ok else None
    best_added = min(result.samples) - min(base.samples) if result.ok and base.ok else 0.0
    rows.append(
        [
            f"`g()`, defaults (timeout on) adds ≤ {LIMIT_ADDED_NS_SUSPENDING:g} ns",
            "n/a" if added is None else f"{fmt_ns(added)} ns (best runs {fmt_ns(best_added)} ns)",
            verdict(None if added is None else added <= LIMIT_ADDED_NS_SUSPENDING),
        ]
    )
    return md_table(["target", "measured", "verdict"], rows)


async def main_async(calls: int, repeats: int) -> str:
    fast = await measure_interleaved(variants(f), calls=calls, repeats=repeats)
    slow = await measure_interleaved(variants(g), calls=calls, repeats=repeats)
    return "\n\n".join(
        [
            "## Per-call overhead, closed breaker",
            header(),
            "Libraries: "
            + versions(["distributed-opossum", "aiobreaker", "purgatory", "circuitbreaker", "hyx"]),
            f"{calls:,} sequential awaited calls per run, median of {repeats} interleaved runs "
            "(gc disabled while timing, one warm-up pass per variant). `x bare` and `ns added` "
            "are medians of the per-round ratios and differences to the bare await; `x bare "
            "(best runs)` divides the fastest run by the fastest bare run, which is what is "
            "left when other load on the machine is filtered out. Verdicts use the medians.",
            "### `f()`: `async def f(): return 1`",
            table(fast),
            "### `g()`: `async def g(): await asyncio.sleep(0); return 1`",
            table(slow),
            "### Targets",
            targets(fast, slow),
        ]
    )


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "", calls=100_000, repeats=5)
    args = parser.parse_args()
    print(asyncio.run(main_async(args.calls, args.repeats)))


if __name__ == "__main__":
    main()
