"""Trip propagation: one pod trips, how long until every other pod reports ``open``.

``--workers`` worker processes (started with multiprocessing's ``spawn``) each run
``--pods-per-worker`` pods: breakers named ``payments``, each with its own Redis client,
hence its own coordinator and pub/sub connection. The main process runs one more pod, the
tripping one, whose action always fails (``volume_threshold=1``: one failure trips it).

For each of ``--trips`` trips (after ``--warmup`` untimed ones) the main process takes
``t0 = time.monotonic_ns()`` and fires one failing call; the pod trips locally, its
coordinator reports at once, the report script opens the shared breaker and publishes it,
and each pod's listener applies the broadcast and emits ``open``. Every ``open`` handler
sends ``time.monotonic_ns()`` to the main process (one system-wide ``CLOCK_MONOTONIC`` on
Linux, so the stamps of all processes compare). The latency of a pod is its stamp minus
``t0``. Then the shared breaker is reset (``await breaker.reset()``) and the next trip
starts once every pod reported ``close``, after a random 5-15 ms pause.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import random
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from _distributed import (
    Inbox,
    first_sync,
    fmt_ms,
    library_versions,
    new_client,
    next_record,
    percentile,
    private_redis,
    send_record,
)
from _harness import header, machine, md_table, verdict
from helpers import Boom, fail

from distributed_opossum import CircuitBreaker

NAME = "payments"
TARGET_P99_S = 0.010
LONG = 600.0  # reset_timeout: no pod may go half-open during the benchmark

READY, OPEN, CLOSE, STOP, RAW = 1, 2, 3, 4, 5
RAW_CHANNEL = "bench:raw-fanout"


# ------------------------------------------------------------------------------ worker side


async def healthy() -> int:
    return 1


def stamp(conn: Connection, kind: int, pod: int) -> Callable[..., None]:
    def handler(*_: Any) -> None:
        send_record(conn, kind, pod, time.monotonic_ns())

    return handler


async def worker_async(
    port: int, worker: int, pods: int, events: Connection, control: Connection
) -> None:
    clients = [new_client(port) for _ in range(pods)]
    breakers: list[CircuitBreaker[[], int]] = []
    for index, client in enumerate(clients):
        pod = worker * pods + index
        breaker: CircuitBreaker[[], int] = CircuitBreaker(
            healthy,
            name=NAME,
            reset_timeout=LONG,
            distributed={"client": client, "instance_id": f"w{worker}p{index}"},
        )
        breaker.on("open", stamp(events, OPEN, pod))
        breaker.on("close", stamp(events, CLOSE, pod))
        breakers.append(breaker)
    await first_sync(breakers)
    listeners = []
    for index, client in enumerate(clients):
        pubsub = client.pubsub()
        await pubsub.subscribe(RAW_CHANNEL)
        listeners.append(asyncio.create_task(raw_listener(pubsub, events, worker * pods + index)))
    send_record(events, READY, worker, 0)
    while (await next_record(control))[0] != STOP:
        pass
    for task in listeners:
        task.cancel()
    await asyncio.gather(*listeners, return_exceptions=True)
    for breaker in breakers:
        await breaker.shutdown()
    await asyncio.sleep(0.05)
    for client in clients:
        await client.aclose()


async def raw_listener(pubsub: Any, events: Connection, pod: int) -> None:
    """The baseline: a plain redis-py subscriber stamping each message it gets."""
    try:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None:
                send_record(events, RAW, pod, time.monotonic_ns())
    finally:
        await pubsub.aclose()


def worker_main(port: int, worker: int, pods: int, events: Connection, control: Connection) -> None:
    asyncio.run(worker_async(port, worker, pods, events, control))


# ------------------------------------------------------------------------------ main side


class Trips:
    """The tripping pod and what it measured."""

    def __init__(self, port: int, inbox: Inbox, others: int) -> None:
        self.client = new_client(port)
        self.inbox = inbox
        self.others = others
        self.breaker: CircuitBreaker[[], str] = CircuitBreaker(
            fail,
            name=NAME,
            reset_timeout=LONG,
            volume_threshold=1,
            error_threshold_percentage=50,
            distributed={"client": self.client, "instance_id": "tripper"},
        )
        self.latencies: list[dict[int, float]] = []  # per trip: pod -> seconds
        self.decided: list[float] = []  # t0 -> the tripper's report answered "open"
        self.raw: list[list[float]] = []  # per round, per pod: PUBLISH -> plain subscriber
        self.missing = 0
        self.reset_mode = "`await breaker.reset()`"
        self.reset_fallbacks = 0
        self._answered_ns = 0
        link = self.breaker._link
        assert link is not None
        original = link.apply

        def apply(state: Any, *, own: bool, cause: Any = None) -> None:
            if own and self._answered_ns == 0 and getattr(state, "state", "") == "open":
                self._answered_ns = time.monotonic_ns()
            original(state, own=own, cause=cause)

        setattr(link, "apply", apply)  # noqa: B010  (instance attribute wraps the method)

    def count(self, kind: int) -> Callable[[list[tuple[int, int, int, int]]], bool]:
        def done(records: list[tuple[int, int, int, int]]) -> bool:
            return len({pod for _, k, pod, _ in records if k == kind}) >= self.others

        return done

    async def trip(self, timed: bool) -> None:
        self.inbox.take()
        self._answered_ns = 0
        t0 = time.monotonic_ns()
        with contextlib.suppress(Boom):
            await self.breaker.fire()
        all_open = await self.inbox.wait_for(self.count(OPEN), limit_s=5.0)
        records = self.inbox.take()
        for _ in range(1000):  # the reply may be read after the broadcasts
            if self._answered_ns:
                break
            await asyncio.sleep(0.001)
        if timed:
            first: dict[int, int] = {}
            for _, kind, pod, value in records:
                if kind == OPEN and pod not in first:
                    first[pod] = value
            self.missing += self.others - len(first)
            self.latencies.append({pod: (value - t0) / 1e9 for pod, value in first.items()})
            if self._answered_ns:
                self.decided.append((self._answered_ns - t0) / 1e9)
        if not all_open and not timed:
            raise RuntimeError("warm-up trip: not every pod opened within 5 s")
        await self.reset()

    async def raw_round(self) -> None:
        """The baseline: the same fan-out with a plain PUBLISH and plain subscribers."""
        self.inbox.take()
        t0 = time.monotonic_ns()
        await self.client.publish(RAW_CHANNEL, b"x")
        await self.inbox.wait_for(self.count(RAW), limit_s=5.0)
        first: dict[int, int] = {}
        for _, kind, pod, value in self.inbox.take():
            if kind == RAW and pod not in first:
                first[pod] = value
        self.raw.append([(first[p] - t0) / 1e9 for p in sorted(first)])

    async def reset(self) -> None:
        closed = self.count(CLOSE)
        if self.reset_fallbacks == 0 or self.reset_mode.startswith("`await breaker"):
            await self.breaker.reset()
            if await self.inbox.wait_for(closed, limit_s=2.0):
                return
            # breaker.reset() did not reach the cluster: close it through the link.
            self.reset_fallbacks += 1
            self.reset_mode = "the link's cluster reset (`breaker._link.reset()`)"
        link = self.breaker._link
        assert link is not None
        await link.reset()
        if not await self.inbox.wait_for(closed, limit_s=5.0):
            raise RuntimeError("the pods did not close within 5 s of a cluster reset")

    async def close(self) -> None:
        await self.breaker.shutdown()
        await asyncio.sleep(0.05)
        await self.client.aclose()


def summary(trips: Trips, workers: int, pods: int) -> tuple[str, str, float | None]:
    every = [value for trip in trips.latencies for value in trip.values()]
    slowest = [max(trip.values()) for trip in trips.latencies if trip]
    rows: list[list[str]] = []

    def row(label: str, values: list[float]) -> None:
        if not values:
            rows.append([label, "0", "n/a", "n/a", "n/a", "n/a"])
            return
        rows.append(
            [
                label,
                f"{len(values):,}",
                fmt_ms(percentile(values, 50)),
                fmt_ms(percentile(values, 99)),
                fmt_ms(max(values)),
                fmt_ms(min(values)),
            ]
        )

    row("each pod (trip → that pod's `open`)", every)
    row("slowest pod of each trip (all open)", slowest)
    row("tripper's report answered (`open` decided in Redis)", trips.decided)
    row("baseline: plain `PUBLISH` → each plain subscriber", [v for r in trips.raw for v in r])
    row("baseline: plain `PUBLISH` → slowest subscriber", [max(r) for r in trips.raw if r])
    main_table = md_table(["latency", "samples", "p50 ms", "p99 ms", "max ms", "min ms"], rows)
    rows = []
    for worker in range(workers):
        values = [
            value
            for trip in trips.latencies
            for pod, value in trip.items()
            if pod // pods == worker
        ]
        row(f"worker process {worker} (pods {worker * pods}-{worker * pods + pods - 1})", values)
    worker_table = md_table(
        ["each pod of", "samples", "p50 ms", "p99 ms", "max ms", "min ms"], rows
    )
    return main_table, worker_table, percentile(every, 99) if every else None


async def main_async(args: argparse.Namespace) -> str:
    context = multiprocessing.get_context("spawn")
    others = args.workers * args.pods_per_worker
    with private_redis() as server:
        pipes = [
            (context.Pipe(duplex=False), context.Pipe(duplex=False)) for _ in range(args.workers)
        ]
        processes = [
            context.Process(
                target=worker_main,
                args=(server.port, w, args.pods_per_worker, events_w, control_r),
                daemon=True,
            )
            for w, ((_, events_w), (control_r, _)) in enumerate(pipes)
        ]
        for process in processes:
            process.start()
        inbox = Inbox([events_r for (events_r, _), _ in pipes])
        trips: Trips | None = None
        try:
            ready = await inbox.wait_for(
                lambda records: sum(1 for r in records if r[1] == READY) >= args.workers,
                limit_s=60.0,
            )
            if not ready:
                raise RuntimeError("the worker processes did not get ready within 60 s")
            inbox.take()
            trips = Trips(server.port, inbox, others)
            await first_sync([trips.breaker])
            started = time.monotonic()
            for number in range(args.warmup + args.trips):
                await trips.trip(timed=number >= args.warmup)
                await asyncio.sleep(random.uniform(0.005, 0.015))
                if number >= args.warmup:
                    await trips.raw_round()
                    await asyncio.sleep(random.uniform(0.005, 0.015))
            elapsed = time.monotonic() - started
        finally:
            for (_, _), (_, control_w) in pipes:
                with contextlib.suppress(OSError):
                    send_record(control_w, STOP, 0, 0)
            if trips is not None:
                await trips.close()
            inbox.close()
            for process in processes:
                process.join(10)
                if process.is_alive():
                    process.terminate()
                    process.join(5)
    main_table, worker_table, p99 = summary(trips, args.workers, args.pods_per_worker)
    fallback = (
        ""
        if trips.reset_fallbacks == 0
        else (
            " **`await breaker.reset()` on the tripping pod did not close the other pods "
            "within 2 s** (it closed the local breaker only), so the benchmark reset the "
            "cluster with " + trips.reset_mode + "."
        )
    )
    targets = md_table(
        ["target", "measured", "verdict"],
        [
            [
                f"p99 trip → each pod open ≤ {TARGET_P99_S * 1000:g} ms (loopback)",
                "n/a" if p99 is None else f"{p99 * 1000:.2f} ms",
                verdict(None if p99 is None else p99 <= TARGET_P99_S),
            ],
            [
                "every pod opened on every trip",
                f"{trips.missing} pod-trips missing",
                verdict(trips.missing == 0),
            ],
        ],
    )
    return "\n\n".join(
        [
            "## Trip propagation across pods",
            header(),
            machine(),
            "Libraries: " + library_versions(),
            f"{others} listening pods in {args.workers} worker processes "
            f"({args.pods_per_worker} each, own Redis client and pub/sub connection per pod) + "
            f"the tripping pod in the main process; {args.trips} timed trips after "
            f"{args.warmup} warm-up trips, {elapsed:.1f} s. Private redis-server on "
            "loopback. Latency = `time.monotonic_ns()` in each pod's `open` handler minus "
            "the stamp taken just before the tripping call. Between trips the cluster is "
            f"reset with {trips.reset_mode} and every pod must report `close`." + fallback,
            "Baseline rows: after each trip, the main process `PUBLISH`es on a plain channel "
            "that every pod also subscribes to with a plain redis-py `PubSub` (its own "
            "connection, same client, same process): the floor set by Redis, redis-py, "
            "the processes' wake-ups and the machine, without the library.",
            main_table,
            worker_table,
            "### Targets",
            targets,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument(
        "--pods-per-worker", type=int, default=5, help="pods per worker process (default 5)"
    )
    parser.add_argument("--trips", type=int, default=200, help="timed trips (default 200)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed trips first (default 3)")
    args = parser.parse_args()
    print(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
