"""Per-request overhead of ``distributed_opossum.httpx.BreakerTransport``.

The wrapped transport does no I/O: it answers every request with a new
``httpx.Response`` at once, so what is measured is the transport's own cost:
the key, the breaker lookup, the ``async with breaker:`` block and the
judgement of the status. Variants, each run ``--calls`` times per run and
interleaved over ``--repeats`` rounds (median ns/request reported):

* the bare inner transport, and ``BreakerTransport`` around it, with the
  breaker's defaults (timeout 10 s) and with ``timeout=None``; for a 200 and
  for a 500 (a failure that is still returned: it costs an exception);
* the same through ``httpx.AsyncClient.get`` (what an application pays; the
  client's own work dominates).

Run: ``python benchmarks/httpx_overhead.py [--calls N] [--repeats R]``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from _harness import (
    Loop,
    Result,
    Setup,
    base_parser,
    fmt_ns,
    fmt_ratio,
    header,
    md_table,
    measure_interleaved,
    paired_difference,
    paired_ratio,
)

from distributed_opossum.httpx import BreakerTransport

URL = "http://api.example.com/orders"


class Answer(httpx.AsyncBaseTransport):
    """Answers every request with ``status`` at once."""

    def __init__(self, status: int) -> None:
        self.status = status

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(self.status, request=request)


def wrapped(status: int, options: dict[str, Any] | None) -> httpx.AsyncBaseTransport:
    """The answering transport, bare (``options`` None) or inside a BreakerTransport."""
    inner = Answer(status)
    if options is None:
        return inner
    # error_threshold_percentage=100 keeps the breaker closed under 100 % failures.
    return BreakerTransport(inner, breaker_options={"error_threshold_percentage": 100, **options})


def transport_level(status: int, options: dict[str, Any] | None) -> Setup:
    async def setup() -> Loop:
        transport = wrapped(status, options)
        request = httpx.Request("GET", URL)

        async def run(n: int) -> None:
            handle = transport.handle_async_request
            for _ in range(n):
                await handle(request)

        return run

    return setup


def client_level(status: int, options: dict[str, Any] | None) -> Setup:
    async def setup() -> Loop:
        client = httpx.AsyncClient(transport=wrapped(status, options))

        async def run(n: int) -> None:
            get = client.get
            for _ in range(n):
                await get(URL)

        return run

    return setup


def variants(level: Any, status: int) -> list[tuple[str, Setup]]:
    return [
        ("bare transport", level(status, None)),
        ("BreakerTransport, defaults (timeout 10 s)", level(status, {})),
        ("BreakerTransport, `timeout=None`", level(status, {"timeout": None})),
    ]


def table(results: list[Result]) -> str:
    base = results[0]
    rows = []
    for result in results:
        if not result.ok:
            rows.append([result.name, "n/a", "n/a", "n/a", result.error or ""])
            continue
        added = "—" if result is base else fmt_ns(paired_difference(result, base))
        ratio = fmt_ratio(paired_ratio(result, base)) if base.ok else "n/a"
        rows.append([result.name, fmt_ns(result.median), ratio, added, ""])
    return md_table(["variant", "ns/request (median)", "x bare", "ns added", "note"], rows)


async def main_async(calls: int, repeats: int) -> str:
    parts = [f"### httpx: BreakerTransport per-request overhead\n\n{header()}"]
    for title, level, n in (
        ("transport.handle_async_request", transport_level, calls),
        ("AsyncClient.get", client_level, max(calls // 10, 1)),
    ):
        for status in (200, 500):
            results = await measure_interleaved(variants(level, status), calls=n, repeats=repeats)
            parts.append(f"`{title}`, status {status}, {n} requests per run:\n\n{table(results)}")
    return "\n\n".join(parts)


def main() -> None:
    parser = base_parser(__doc__ or "", calls=20_000, repeats=7)
    args = parser.parse_args()
    print(asyncio.run(main_async(args.calls, args.repeats)))


if __name__ == "__main__":
    main()
