"""The multi-pod demo: several pods, one downstream outage, one breaker.

    python -m distributed_opossum.demo                         # embedded Redis (fakeredis)
    python -m distributed_opossum.demo --redis-url redis://127.0.0.1:6379 --pods 6

Each "pod" is a breaker named ``payments`` with its own Redis connection,
calling a simulated payments API that goes down for a few seconds. Watch one
pod trip and every other pod open within milliseconds, one trial call go out
cluster-wide when each open period ends (with backoff while the API is still
down), and every pod close when a trial succeeds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from ._breaker import CircuitBreaker
from ._errors import OpenCircuitError
from ._keys import DEFAULT_PREFIX, BreakerKeys

__all__ = ["main"]


class PaymentsApi:
    """A downstream that is down between ``down_at`` and ``up_at`` (seconds from start)."""

    def __init__(self, start: float, down_at: float, up_at: float) -> None:
        self.start, self.down_at, self.up_at = start, down_at, up_at
        self.reached_while_down = 0
        self.calls = 0

    async def charge(self, pod: str) -> str:
        """One call; raises while the API is down."""
        self.calls += 1
        await asyncio.sleep(0.002)
        elapsed = time.monotonic() - self.start
        if self.down_at <= elapsed < self.up_at:
            self.reached_while_down += 1
            raise ConnectionError("payments API unavailable")
        return "charged"


def _clients(url: str | None, pods: int) -> list[Any]:
    if url is not None:
        import redis.asyncio as aioredis  # noqa: PLC0415 (only with a real server)

        return [aioredis.Redis.from_url(url) for _ in range(pods)]
    try:
        import fakeredis  # noqa: PLC0415 (the embedded default)
    except ImportError as error:  # pragma: no cover - depends on the install
        raise SystemExit(
            "the embedded Redis needs fakeredis: pip install 'distributed-opossum[demo]', "
            "or pass --redis-url"
        ) from error
    server = fakeredis.FakeServer()
    return [fakeredis.FakeAsyncRedis(server=server) for _ in range(pods)]


async def run(url: str | None, pods: int, duration: float, quorum: int | None) -> int:
    """Run the scenario; returns the number of trial calls that met the outage."""
    start = time.monotonic()
    api = PaymentsApi(start, down_at=duration * 0.2, up_at=duration * 0.6)

    def log(message: str) -> None:
        print(f"{time.monotonic() - start:6.3f}s  {message}", flush=True)

    clients = _clients(url, pods)
    keys = BreakerKeys.for_breaker(DEFAULT_PREFIX, "payments")
    await clients[0].delete(keys.state, keys.stats, keys.pods)  # a fresh start on a real Redis
    breakers = []
    for index, client in enumerate(clients):
        pod = f"pod-{index}"
        breaker = CircuitBreaker(
            api.charge,
            name="payments",
            timeout=1.0,
            error_threshold_percentage=50,
            volume_threshold=5,
            rolling_count_timeout=2.0,
            rolling_count_buckets=4,
            reset_timeout=0.5,
            reset_timeout_multiplier=2.0,
            max_reset_timeout=2.0,
            distributed={"client": client, "instance_id": pod, "quorum": quorum},
        )
        breaker.fallback(lambda *args: "queued for later")
        for event in ("open", "half_open", "close", "registry_down", "registry_up"):
            breaker.on(event, lambda *args, pod=pod, event=event: log(f"{pod} {event} {args}"))
        breakers.append(breaker)

    rejected = fallbacks = 0

    def count_fallback() -> None:
        nonlocal fallbacks
        fallbacks += 1

    for breaker in breakers:
        breaker.on("fallback", count_fallback)

    async def traffic(breaker: CircuitBreaker[Any, Any], pod: str, pause: float) -> None:
        nonlocal rejected
        while time.monotonic() - start < duration:
            try:
                await breaker.fire(pod)
            except OpenCircuitError:
                rejected += 1
            await asyncio.sleep(pause)

    log(
        f"{pods} pods calling the payments API; it goes down at {api.down_at:.1f}s "
        f"and recovers at {api.up_at:.1f}s"
    )
    # pod-0 takes the most traffic, so it usually trips first and the others follow it.
    await asyncio.gather(*(traffic(b, f"pod-{i}", 0.01 * (1 + i)) for i, b in enumerate(breakers)))
    log(
        f"done: {api.calls} calls reached the API ({api.reached_while_down} while it was down), "
        f"{fallbacks} answered by the fallback, {rejected} rejected"
    )
    for breaker in breakers:
        await breaker.shutdown()
    for client in clients:
        await client.aclose()
    return api.reached_while_down


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the demo."""
    parser = argparse.ArgumentParser(prog="python -m distributed_opossum.demo")
    parser.add_argument("--redis-url", default=None, help="a real Redis (default: embedded)")
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds")
    parser.add_argument("--quorum", type=int, default=None, help="pods that must vote to open")
    args = parser.parse_args(argv)
    if args.pods < 1 or args.duration <= 0:
        parser.error("--pods must be >= 1 and --duration > 0")
    asyncio.run(run(args.redis_url, args.pods, args.duration, args.quorum))
    return 0


if __name__ == "__main__":
    sys.exit(main())
