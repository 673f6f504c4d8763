"""Per-call cost of the metrics integrations on a closed breaker (``async def f(): return 1``).

The integrations count calls from the breaker's ``success``/``failure``/``reject``
events. A call event with a listener takes the breaker off its plain path, so
the table separates the two costs: the slower path (no-op listeners) and the
counting itself (Prometheus, OpenTelemetry with the SDK).

``--multiprocess`` runs the Prometheus row in ``prometheus_client``'s multiprocess
mode (values written to files in a temporary directory).

    python benchmarks/metrics_overhead.py [--multiprocess] [--calls N] [--repeats N]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from _harness import (
    Loop,
    Setup,
    base_parser,
    fmt_ns,
    fmt_ratio,
    header,
    md_table,
    measure_interleaved,
    paired_difference,
    paired_ratio,
    versions,
)


async def f() -> int:
    return 1


def bare() -> Setup:
    async def setup() -> Loop:
        async def run(n: int) -> None:
            for _ in range(n):
                await f()

        return run

    return setup


def breaker(prepare: Any = None, **options: Any) -> Setup:
    async def setup() -> Loop:
        from distributed_opossum import CircuitBreaker  # noqa: PLC0415

        made = CircuitBreaker(f, name=f"bench-{id(options)}", **options)
        if prepare is not None:
            prepare(made)

        async def run(n: int) -> None:
            fire = made.fire
            for _ in range(n):
                await fire()

        return run

    return setup


def no_op_listeners(made: Any) -> None:
    made.on("success", lambda result, latency: None)
    made.on("failure", lambda error, latency, args: None)
    made.on("reject", lambda error: None)


def with_prometheus(**options: Any) -> Callable[[Any], None]:
    def prepare(made: Any) -> None:
        from prometheus_client import CollectorRegistry  # noqa: PLC0415

        from distributed_opossum import prometheus  # noqa: PLC0415

        prometheus.register(CollectorRegistry(), breakers=[made], **options)

    return prepare


def with_otel(**options: Any) -> Callable[[Any], None]:
    def prepare(made: Any) -> None:
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415

        from distributed_opossum import otel  # noqa: PLC0415

        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        otel.register(provider, breakers=[made], **options)

    return prepare


async def main_async(calls: int, repeats: int, multiprocess: bool) -> str:
    prometheus_row = "+ prometheus.register()" + (" (multiprocess mode)" if multiprocess else "")
    variants = [
        ("bare `await f()`", bare()),
        ("breaker, defaults", breaker()),
        ("+ no-op success/failure/reject listeners", breaker(no_op_listeners)),
        (prometheus_row, breaker(with_prometheus())),
        (prometheus_row.replace("()", "(buckets=None)"), breaker(with_prometheus(buckets=None))),
        ("+ otel.register() (SDK, in-memory reader)", breaker(with_otel())),
        ("+ otel.register(buckets=None)", breaker(with_otel(buckets=None))),
    ]
    results = await measure_interleaved(variants, calls=calls, repeats=repeats)
    base, plain = results[0], results[1]
    rows = []
    for result in results:
        if not result.ok:
            rows.append([result.name, "n/a", "n/a", "n/a", result.error or ""])
            continue
        added = "—" if result is base else fmt_ns(paired_difference(result, base))
        over_plain = "—" if result in (base, plain) else fmt_ns(paired_difference(result, plain))
        rows.append(
            [
                result.name,
                fmt_ns(result.median),
                fmt_ratio(paired_ratio(result, base)),
                added,
                over_plain,
            ]
        )
    table = md_table(
        ["variant", "ns/call (median)", "x bare", "ns added to bare", "ns added to the breaker"],
        rows,
    )
    return "\n\n".join(
        [
            "## Per-call cost of the metrics integrations",
            header(),
            "Libraries: "
            + versions(["distributed-opossum", "prometheus-client", "opentelemetry-sdk"]),
            f"{calls:,} sequential awaited calls per run, median of {repeats} interleaved runs.",
            table,
        ]
    )


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "", calls=50_000, repeats=7)
    parser.add_argument("--multiprocess", action="store_true", help="prometheus multiprocess mode")
    args = parser.parse_args()
    if args.multiprocess:
        if "prometheus_client" in sys.modules:  # pragma: no cover - a guard for edits
            raise SystemExit("prometheus_client must not be imported before the mode is set")
        directory = tempfile.TemporaryDirectory()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory.name
    print(asyncio.run(main_async(args.calls, args.repeats, args.multiprocess)))


if __name__ == "__main__":
    main()
