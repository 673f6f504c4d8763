"""The outage paths: what rejecting and failing cost, against a bare raise and a success.

During an outage, an open breaker's rejections and the failures that open it
*are* the hot path. Measured side by side in one run, by time and by CPU
instructions (callgrind, which the machine's load does not move):

- rejection by an open breaker, with and without a fallback, against a bare
  coroutine that raises (``try: await raising() except ...``);
- what a failure adds to a bare failing await, against what a success adds
  to a bare succeeding await (the failing call keeps its own O(1) benchmark in
  ``failing_call.py``);
- the closed path: ``fire()`` with the default timeout and with
  ``timeout=None``, and an action that suspends once (``await asyncio.sleep(0)``).

Targets: rejection ≤ 2x a bare raise (both), failure added ≤ 2x success
added; closed path by instructions: defaults ≤ 6x bare, ``timeout=None`` ≤ 4x,
and a suspending action gains no more than a non-suspending one does.

    python benchmarks/outage_paths.py              # both tables (needs valgrind for one)
    python benchmarks/outage_paths.py --no-valgrind
"""

from __future__ import annotations

import asyncio
import gc
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _harness import (
    Loop,
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
)

LIMIT_REJECT = 2.0
LIMIT_FAILURE_VS_SUCCESS = 2.0
LIMIT_DEFAULT = 6.0
LIMIT_NO_TIMEOUT = 4.0

_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


class Boom(Exception):
    """The downstream's failure."""


async def ok() -> int:
    return 1


async def boom() -> int:
    raise Boom


async def suspending() -> int:
    await asyncio.sleep(0)
    return 1


def _loop(call: Callable[[], Awaitable[Any]], catch: type[BaseException] | None) -> Loop:
    if catch is None:

        async def run(n: int) -> None:
            for _ in range(n):
                await call()

    else:

        async def run(n: int) -> None:
            for _ in range(n):
                try:  # noqa: SIM105 - the caller's own try/except is part of what is measured
                    await call()
                except catch:
                    pass

    return run


def bare(action: Callable[[], Awaitable[Any]], catch: type[BaseException] | None = None) -> Setup:
    async def setup() -> Loop:
        return _loop(action, catch)

    return setup


def breaker(
    action: Callable[[], Awaitable[Any]],
    catch: type[BaseException] | None = None,
    *,
    opened: bool = False,
    fallback: bool = False,
    **options: Any,
) -> Setup:
    async def setup() -> Loop:
        ours = load_ours()(action, name="bench", **options)
        if fallback:
            ours.fallback(lambda error: 0)
        if opened:
            ours.open()
        return _loop(ours.fire, catch)

    return setup


class _Floor:
    """The least a breaker's ``fire()`` can be on CPython: a method coroutine
    forwarding ``*args, **kwargs`` (and, for the second floor, reading the clock
    twice for the latency; for the third, raising the library's error)."""

    def __init__(self, action: Callable[[], Awaitable[Any]]) -> None:
        self._action = action

    async def forward(self, *args: Any, **kwargs: Any) -> Any:
        return await self._action(*args, **kwargs)

    async def forward_timed(self, *args: Any, **kwargs: Any) -> Any:
        monotonic = time.monotonic
        start = monotonic()
        result = await self._action(*args, **kwargs)
        self.latency = monotonic() - start
        return result

    async def reject(self, *args: Any, **kwargs: Any) -> Any:
        error = _open_error()()
        raise error


def floor(method: str, catch: type[BaseException] | None = None) -> Setup:
    async def setup() -> Loop:
        return _loop(getattr(_Floor(ok), method), catch)

    return setup


def _open_error() -> type[BaseException]:
    import distributed_opossum  # noqa: PLC0415 (benchmarks load the project late)

    error: type[BaseException] = distributed_opossum.OpenCircuitError
    return error


BARE_OK = "bare `await ok()`"
FLOOR_FORWARD = "floor: a method coroutine forwarding to `ok()`"
FLOOR_TIMED = "floor: the same, reading the clock twice"
FLOOR_REJECT = "floor: a method coroutine raising `OpenCircuitError()`"
BARE_RAISE = "bare `await raising()` caught"
BARE_SUSPEND = "bare `await suspending()`"
REJECT = "open breaker, rejection caught"
REJECT_FALLBACK = "open breaker, sync fallback"
SUCCESS = "closed breaker, success (defaults)"
FAILURE = "closed breaker, failure caught (defaults)"
SUCCESS_NT = "closed breaker, success, `timeout=None`"
SUSPEND = "closed breaker, suspending action (defaults)"


def variants() -> list[tuple[str, Setup]]:
    """Every variant, by name (the child processes under callgrind rebuild them by name)."""
    return [
        (BARE_OK, bare(ok)),
        (BARE_RAISE, bare(boom, Boom)),
        (BARE_SUSPEND, bare(suspending)),
        (FLOOR_FORWARD, floor("forward")),
        (FLOOR_TIMED, floor("forward_timed")),
        (FLOOR_REJECT, floor("reject", _open_error())),
        (REJECT, breaker(ok, _open_error(), opened=True, reset_timeout=3600.0)),
        (REJECT_FALLBACK, breaker(ok, opened=True, fallback=True, reset_timeout=3600.0)),
        (SUCCESS, breaker(ok)),
        (FAILURE, breaker(boom, Boom, error_threshold_percentage=100.0, reset_timeout=3600.0)),
        (SUCCESS_NT, breaker(ok, timeout=None)),
        (SUSPEND, breaker(suspending)),
    ]


# --------------------------------------------------------------------------- instructions


async def _child(name: str, calls: int) -> None:
    loop = await dict(variants())[name]()
    await loop(calls)
    for thing in gc.get_objects():  # fold the deferred latency binning into the count
        if type(thing).__name__ == "CircuitBreaker" and hasattr(thing, "to_json"):
            thing.stats  # noqa: B018


def _count(name: str, calls: int) -> int:
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, str(Path(__file__)), "--child", name, "--calls", str(calls),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    match = _REFS.search(done.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count for {name!r}: {done.stderr[-500:]}")
    return int(match.group(1).replace(",", ""))


def instructions(calls: int) -> dict[str, float]:
    """Instructions per call of every variant: (count(calls) - count(0)) / calls."""
    return {name: (_count(name, calls) - _count(name, 0)) / calls for name, _ in variants()}


# --------------------------------------------------------------------------- report


def targets(cost: dict[str, float], unit: str) -> list[list[str]]:
    """The target rows from per-call costs (time or instructions)."""
    added_success = cost[SUCCESS] - cost[BARE_OK]
    added_failure = cost[FAILURE] - cost[BARE_RAISE]
    added_suspend = cost[SUSPEND] - cost[BARE_SUSPEND]
    rows = [
        [
            "floors: forwarding, with two clock reads, raising the library's error",
            f"{fmt_ratio(cost[FLOOR_FORWARD] / cost[BARE_OK])}, "
            f"{fmt_ratio(cost[FLOOR_TIMED] / cost[BARE_OK])} bare `ok()`; "
            f"{fmt_ratio(cost[FLOOR_REJECT] / cost[BARE_RAISE])} a bare raise",
            "",
        ],
        [
            f"rejection ≤ {LIMIT_REJECT:g}x a bare raise",
            fmt_ratio(cost[REJECT] / cost[BARE_RAISE]),
            verdict(cost[REJECT] / cost[BARE_RAISE] <= LIMIT_REJECT),
        ],
        [
            f"rejection with a fallback ≤ {LIMIT_REJECT:g}x a bare raise",
            fmt_ratio(cost[REJECT_FALLBACK] / cost[BARE_RAISE]),
            verdict(cost[REJECT_FALLBACK] / cost[BARE_RAISE] <= LIMIT_REJECT),
        ],
        [
            f"failure adds ≤ {LIMIT_FAILURE_VS_SUCCESS:g}x what a success adds",
            f"{fmt_ratio(added_failure / added_success)} "
            f"({added_failure:,.0f} vs {added_success:,.0f} {unit})",
            verdict(added_failure / added_success <= LIMIT_FAILURE_VS_SUCCESS),
        ],
        [
            "a suspending action gains no more than a non-suspending one",
            f"{added_suspend:,.0f} vs {added_success:,.0f} {unit} added",
            verdict(added_suspend <= added_success),
        ],
    ]
    if unit == "instructions":
        rows += [
            [
                f"defaults ≤ {LIMIT_DEFAULT:g}x bare await",
                fmt_ratio(cost[SUCCESS] / cost[BARE_OK]),
                verdict(cost[SUCCESS] / cost[BARE_OK] <= LIMIT_DEFAULT),
            ],
            [
                f"`timeout=None` ≤ {LIMIT_NO_TIMEOUT:g}x bare await",
                fmt_ratio(cost[SUCCESS_NT] / cost[BARE_OK]),
                verdict(cost[SUCCESS_NT] / cost[BARE_OK] <= LIMIT_NO_TIMEOUT),
            ],
        ]
    return rows


async def timed(calls: int, repeats: int) -> dict[str, float]:
    """Median ns per call of every variant, interleaved; ratios are paired in ``report``."""
    results = await measure_interleaved(variants(), calls=calls, repeats=repeats)
    by_name = {result.name: result for result in results}
    failed = [f"{r.name}: {r.error}" for r in results if not r.ok]
    if failed:
        raise RuntimeError("; ".join(failed))
    base = by_name[BARE_OK]
    rows = [
        [
            r.name,
            fmt_ns(r.median),
            fmt_ratio(paired_ratio(r, base)),
            fmt_ns(paired_difference(r, base)),
        ]
        for r in results
    ]
    print(f"\n**Time per call** ({calls:,} calls per run, median of {repeats} interleaved runs)\n")
    print(md_table(["variant", "ns/call", "x bare `ok()`", "ns added to bare `ok()`"], rows))
    return {name: result.median for name, result in by_name.items()}


def main() -> None:
    """Print the tables (or run one variant when called with ``--child``)."""
    parser = base_parser(__doc__ or "", calls=20_000, repeats=7)
    parser.add_argument("--child", default=None, help="internal: one variant under valgrind")
    parser.add_argument("--no-valgrind", action="store_true", help="skip the instruction counts")
    parser.add_argument("--instruction-calls", type=int, default=5_000)
    args = parser.parse_args()
    if args.child is not None:
        asyncio.run(_child(args.child, args.calls))
        return
    print(header())
    times = asyncio.run(timed(args.calls, args.repeats))
    print("\n**Targets, by time**\n")
    print(md_table(["target", "measured", "verdict"], targets(times, "ns")))
    if args.no_valgrind or shutil.which("valgrind") is None:
        print("\n(no instruction counts: valgrind skipped or not installed)")
        return
    counts = instructions(args.instruction_calls)
    base = counts[BARE_OK]
    rows = [[name, f"{count:,.0f}", fmt_ratio(count / base)] for name, count in counts.items()]
    print(f"\n**Instructions per call** ({args.instruction_calls:,} calls, callgrind)\n")
    print(md_table(["variant", "instructions/call", "x bare `ok()`"], rows))
    print("\n**Targets, by instructions**\n")
    print(md_table(["target", "measured", "verdict"], targets(counts, "instructions")))


if __name__ == "__main__":
    main()
