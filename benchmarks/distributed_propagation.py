"""Trip propagation: one pod trips, how long until every other pod reports ``open``.

For each fleet size of ``--fleets`` (default 5, 20 and 50 pods), ``--workers`` worker
processes (started with multiprocessing's ``spawn``) share the pods (as evenly as they
go): breakers named ``payments``, each with its own Redis client, hence its own
coordinator and pub/sub connection. The main process runs one more pod, the tripping
one, whose action always fails (``volume_threshold=1``: one failure trips it).

For each of ``--trips`` trips (after ``--warmup`` untimed ones) the main process takes
``t0 = time.monotonic_ns()`` and fires one failing call; the pod trips locally, its
coordinator reports at once, the report script opens the shared breaker and publishes it,
and each pod's listener applies the broadcast and emits ``open``. Every ``open`` handler
sends ``time.monotonic_ns()`` to the main process (one system-wide ``CLOCK_MONOTONIC`` on
Linux, so the stamps of all processes compare). The latency of a pod is its stamp minus
``t0``. Then the shared breaker is reset (``await breaker.reset()``) and the next trip
starts once every pod reported ``close``, after a random 5-15 ms pause.

After each trip the main process also ``PUBLISH``es on a plain channel to which every pod
subscribes with a plain redis-py ``PubSub`` of its own: the floor, measured the same
way, by the same processes, on the same clock, interleaved with the trips.

With ``--breakdown`` the run also stamps where the time goes: when the tripping pod's
report leaves (the ticker sends it), and when each pod's listener receives the broadcast
(before parsing it); each stamp costs its pod one pipe write, so the headline rows come
from a run without it.

With ``--read-only-pods`` the listening pods stamp ``open`` as their listener reads
the broadcast and do nothing else with it: the latency a pod's own work on a broadcast
(decoding, checks, following the state, timers, events) could at best give back.

With ``--slowlog`` Redis records how long it ran each command (``SLOWLOG`` with a 0 µs
threshold): the report script that carries each trip (it decides, writes and
``PUBLISH``es) against each bare ``PUBLISH``, both run by Redis after the same idle
pause, in the same fan-out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from _distributed import (
    Inbox,
    first_sync,
    fmt_ms,
    join_workers,
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
from distributed_opossum._redis.keys import BreakerKeys
from distributed_opossum._redis.scripts import ScriptBatch

NAME = "payments"
LONG = 600.0  # reset_timeout: no pod may go half-open during the benchmark

READY, OPEN, CLOSE, STOP, RAW, RECV, SEEN = 1, 2, 3, 4, 5, 6, 7
OBSERVER = -1  # the breakdown's plain subscriber of the breaker's channel, in a process alone
TARGET_RATIO = 1.5  # p99 of trip -> open over p99 of the bare PUBLISH
RAW_CHANNEL = "bench:raw-fanout"


# ------------------------------------------------------------------------------ worker side


async def healthy() -> int:
    return 1


def stamp(conn: Connection, kind: int, pod: int) -> Callable[..., None]:
    def handler(*_: Any) -> None:
        send_record(conn, kind, pod, time.monotonic_ns())

    return handler


def stamp_receipt(breaker: CircuitBreaker[[], int], conn: Connection, pod: int) -> None:
    """Stamp each broadcast as the pod's listener receives it, before it is parsed."""
    link = breaker._link
    assert link is not None
    assert link.coordinator is not None
    listener = link.coordinator.listener
    original = listener._on_message

    def on_message(message: dict[str, Any]) -> None:
        if message.get("type") in ("message", "smessage"):
            send_record(conn, RECV, pod, time.monotonic_ns())
        original(message)

    setattr(listener, "_on_message", on_message)  # noqa: B010  (wraps the bound method)


def read_only(breaker: CircuitBreaker[[], int], conn: Connection, pod: int) -> None:
    """``--read-only-pods``: the pod's listener stamps ``open``/``close`` as it receives a
    broadcast, and follows nothing (what the propagation would be if a pod's work on a
    broadcast cost nothing beyond reading it)."""
    link = breaker._link
    assert link is not None
    assert link.coordinator is not None
    listener = link.coordinator.listener

    def on_message(message: dict[str, Any]) -> None:
        if message.get("type") in ("message", "smessage"):
            state = json.loads(message["data"])["state"]
            send_record(conn, OPEN if state == "open" else CLOSE, pod, time.monotonic_ns())

    setattr(listener, "_on_message", on_message)  # noqa: B010  (replaces the bound method)


async def worker_async(
    port: int,
    worker: int,
    indexes: list[int],
    breakdown: bool,
    events: Connection,
    control: Connection,
    read_only_pods: bool = False,
) -> None:
    clients = [new_client(port) for _ in indexes]
    breakers: list[CircuitBreaker[[], int]] = []
    for index, (pod, client) in enumerate(zip(indexes, clients, strict=True)):
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
    if read_only_pods:
        for pod, breaker in zip(indexes, breakers, strict=True):
            read_only(breaker, events, pod)
    if breakdown:
        for pod, breaker in zip(indexes, breakers, strict=True):
            stamp_receipt(breaker, events, pod)
    listeners = []
    for pod, client in zip(indexes, clients, strict=True):
        pubsub = client.pubsub()
        await pubsub.subscribe(RAW_CHANNEL)
        listeners.append(asyncio.create_task(raw_listener(pubsub, events, pod)))
    if not indexes:  # the observer: when each broadcast leaves Redis, give or take a wake-up
        clients.append(new_client(port))
        pubsub = clients[-1].pubsub()
        await pubsub.subscribe(RAW_CHANNEL, BreakerKeys.for_breaker("dopossum", NAME).events)
        listeners.append(asyncio.create_task(raw_listener(pubsub, events, OBSERVER)))
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
    """The baseline: a plain redis-py subscriber stamping each message it gets (a message
    on another channel than the baseline's is a broadcast the observer saw)."""
    raw = RAW_CHANNEL.encode()
    try:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None:
                kind = RAW if message["channel"] == raw else SEEN
                send_record(events, kind, pod, time.monotonic_ns())
    finally:
        await pubsub.aclose()


def worker_main(
    port: int,
    worker: int,
    indexes: list[int],
    breakdown: bool,
    events: Connection,
    control: Connection,
    read_only_pods: bool = False,
) -> None:
    asyncio.run(worker_async(port, worker, indexes, breakdown, events, control, read_only_pods))


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
        self.received: list[dict[int, float]] = []  # per trip: pod -> broadcast received
        self.sent: list[float] = []  # t0 -> the ticker takes the tripping pod's report
        self.written: list[float] = []  # t0 -> its call built, handed to redis-py
        self.seen: list[float] = []  # t0 -> the observer received the broadcast
        self.seen_raw: list[float] = []  # bare PUBLISH -> the observer received it
        self.decided: list[float] = []  # t0 -> the tripper's report answered "open"
        self.raw: list[list[float]] = []  # per round, per pod: PUBLISH -> plain subscriber
        self.missing = 0
        self.reset_mode = "`await breaker.reset()`"
        self.reset_fallbacks = 0
        self._answered_ns = 0
        self._sent_ns = 0
        self._written_ns = 0
        link = self.breaker._link
        assert link is not None
        original = link.apply

        def apply(state: Any, *, own: bool, cause: Any = None) -> None:
            if own and self._answered_ns == 0 and getattr(state, "state", "") == "open":
                self._answered_ns = time.monotonic_ns()
            original(state, own=own, cause=cause)

        setattr(link, "apply", apply)  # noqa: B010  (instance attribute wraps the method)

    def stamp_sending(self) -> None:
        """Stamp when the ticker sends the report that carries the trip."""
        link = self.breaker._link
        assert link is not None
        assert link.coordinator is not None
        reporter = link.coordinator._reporter
        send_due = reporter._send

        async def send_reports(route: Any, calls: Any, *, tally: bool = False) -> Any:
            if self._sent_ns == 0 and any(r is not None and r.bucket.local_open for _, r in calls):
                self._sent_ns = time.monotonic_ns()
            return await send_due(route, calls, tally=tally)

        setattr(reporter, "_send", send_reports)  # noqa: B010
        pipeline_send = ScriptBatch._send

        async def send_pipeline(batch: ScriptBatch, calls: Any, *, source: bool = False) -> Any:
            if self._sent_ns and not self._written_ns:
                self._written_ns = time.monotonic_ns()
            return await pipeline_send(batch, calls, source=source)

        setattr(ScriptBatch, "_send", send_pipeline)  # noqa: B010  (this process only)

    def count(self, kind: int) -> Callable[[list[tuple[int, int, int, int]]], bool]:
        def done(records: list[tuple[int, int, int, int]]) -> bool:
            return len({pod for _, k, pod, _ in records if k == kind and pod >= 0}) >= self.others

        return done

    async def trip(self, timed: bool) -> None:
        self.inbox.take()
        self._answered_ns = 0
        self._sent_ns = 0
        self._written_ns = 0
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
            received: dict[int, int] = {}
            for _, kind, pod, value in records:
                if kind == RECV and pod not in received:
                    received[pod] = value
            self.received.append({pod: (value - t0) / 1e9 for pod, value in received.items()})
            if self._answered_ns:
                self.decided.append((self._answered_ns - t0) / 1e9)
            if self._sent_ns:
                self.sent.append((self._sent_ns - t0) / 1e9)
            if self._written_ns:
                self.written.append((self._written_ns - t0) / 1e9)
            seen = [v for _, kind, pod, v in records if kind == SEEN and pod == OBSERVER]
            if seen:
                self.seen.append((min(seen) - t0) / 1e9)
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
        if OBSERVER in first:
            self.seen_raw.append((first.pop(OBSERVER) - t0) / 1e9)
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


def _row(label: str, values: list[float]) -> list[str]:
    if not values:
        return [label, "0", "n/a", "n/a", "n/a", "n/a"]
    return [
        label,
        f"{len(values):,}",
        fmt_ms(percentile(values, 50)),
        fmt_ms(percentile(values, 99)),
        fmt_ms(max(values)),
        fmt_ms(min(values)),
    ]


@dataclass
class Fleet:
    """What one fleet size measured."""

    pods: int
    workers: int
    trips: Trips
    elapsed: float
    script_us: list[int] = field(default_factory=list)
    """Redis' time for each report script that carried a trip (``--slowlog``)."""
    publish_us: list[int] = field(default_factory=list)
    """Redis' time for each bare ``PUBLISH`` (``--slowlog``)."""

    @property
    def each(self) -> list[float]:
        return [value for trip in self.trips.latencies for value in trip.values()]

    @property
    def raw(self) -> list[float]:
        return [v for r in self.trips.raw for v in r]

    def ratio(self, q: float) -> float | None:
        each, raw = self.each, self.raw
        if not each or not raw:
            return None
        return percentile(each, q) / percentile(raw, q)

    def table(self) -> str:
        trips = self.trips
        rows = [
            _row("each pod (trip → that pod's `open`)", self.each),
            _row(
                "slowest pod of each trip (all open)",
                [max(trip.values()) for trip in trips.latencies if trip],
            ),
            _row("baseline: bare `PUBLISH` → each plain subscriber", self.raw),
            _row("baseline: bare `PUBLISH` → slowest subscriber", [max(r) for r in trips.raw if r]),
        ]
        if trips.sent:
            received = [v for trip in trips.received for v in trip.values()]
            gaps = [
                trip[pod] - received_at
                for trip, arrivals in zip(trips.latencies, trips.received, strict=True)
                for pod, received_at in arrivals.items()
                if pod in trip
            ]
            rows += [
                _row("· trip → the ticker takes the tripping pod's report", trips.sent),
                _row("· trip → its script call built, handed to redis-py", trips.written),
                _row("· trip → the observer received the broadcast", trips.seen),
                _row("· bare `PUBLISH` → the observer received it", trips.seen_raw),
                _row("· trip → each pod's listener received the broadcast", received),
                _row("· received → that pod's `open` (parse, follow, emit)", gaps),
                _row("· trip → the tripping pod's report answered", trips.decided),
            ]
        table = md_table(["latency", "samples", "p50 ms", "p99 ms", "max ms", "min ms"], rows)
        if not self.script_us:
            return table
        redis_rows = [
            _us_row("the report script that carries the trip", self.script_us),
            _us_row("a bare `PUBLISH`", self.publish_us),
        ]
        return "\n\n".join(
            [
                table,
                "Redis' own time per command (`SLOWLOG`):",
                md_table(["command", "samples", "p50 µs", "p90 µs", "p99 µs"], redis_rows),
            ]
        )


def _us_row(label: str, values: list[int]) -> list[str]:
    ordered = sorted(values)
    if not ordered:
        return [label, "0", "n/a", "n/a", "n/a"]

    def at(q: float) -> str:
        return str(ordered[min(len(ordered) - 1, int(len(ordered) * q))])

    return [label, f"{len(ordered):,}", at(0.5), at(0.9), at(0.99)]


TRIP_REPORT_AT = 13
"""Where ARGV[7] (local_open) of report_window sits in an EVALSHA: name, sha, numkeys,
four keys, then ARGV[1..]."""


async def slowlog_times(port: int) -> tuple[list[int], list[int]]:
    """Redis' time (µs) for each trip's report script and for each bare PUBLISH so far."""
    client = new_client(port)
    try:
        entries = await client.slowlog_get(1_000_000)
    finally:
        await client.aclose()
    scripts, publishes = [], []
    for entry in entries:
        command = entry["command"]
        words = command.split() if isinstance(command, bytes) else str(command).encode().split()
        if words[:1] == [b"EVALSHA"] and len(words) > TRIP_REPORT_AT + 1:
            if words[7] == b"tripper" and words[TRIP_REPORT_AT] == b"1":
                scripts.append(int(entry["duration"]))
        elif words[:2] == [b"PUBLISH", RAW_CHANNEL.encode()]:
            publishes.append(int(entry["duration"]))
    return scripts, publishes


def spread(pods: int, workers: int) -> list[list[int]]:
    """Pod indexes of each worker, as even as they go."""
    return [[p for p in range(pods) if p % workers == w] for w in range(min(workers, pods))]


async def run_fleet(port: int, pods: int, args: argparse.Namespace) -> Fleet:
    context = multiprocessing.get_context("spawn")
    shares = spread(pods, args.workers)
    if args.breakdown:
        shares.append([])  # the observer
    pipes = [(context.Pipe(duplex=False), context.Pipe(duplex=False)) for _ in shares]
    processes = [
        context.Process(
            target=worker_main,
            args=(port, w, indexes, args.breakdown, events_w, control_r, args.read_only_pods),
            daemon=True,
        )
        for w, (indexes, ((_, events_w), (control_r, _))) in enumerate(
            zip(shares, pipes, strict=True)
        )
    ]
    for process in processes:
        process.start()
    inbox = Inbox([events_r for (events_r, _), _ in pipes])
    trips: Trips | None = None
    try:
        ready = await inbox.wait_for(
            lambda records: sum(1 for r in records if r[1] == READY) >= len(shares),
            limit_s=60.0,
        )
        if not ready:
            raise RuntimeError("the worker processes did not get ready within 60 s")
        inbox.take()
        if args.slowlog:
            admin = new_client(port)
            await admin.config_set("slowlog-log-slower-than", 0)
            await admin.config_set("slowlog-max-len", 1_000_000)
            await admin.slowlog_reset()
            await admin.aclose()
        trips = Trips(port, inbox, pods)
        await first_sync([trips.breaker])
        if args.breakdown:
            trips.stamp_sending()
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
        join_workers(processes)
    fleet = Fleet(pods, len(spread(pods, args.workers)), trips, elapsed)
    if args.slowlog:
        fleet.script_us, fleet.publish_us = await slowlog_times(port)
    return fleet


async def main_async(args: argparse.Namespace) -> str:
    fleets: list[Fleet] = []
    with private_redis() as server:
        for pods in args.fleets:
            fleets.append(await run_fleet(server.port, pods, args))
    summary_rows = []
    for fleet in fleets:
        each, raw = fleet.each, fleet.raw
        ratio = fleet.ratio(99)
        summary_rows.append(
            [
                f"{fleet.pods} pods in {fleet.workers} processes",
                f"{len(fleet.trips.latencies)}",
                f"{fmt_ms(percentile(each, 50))} / {fmt_ms(percentile(each, 99))}",
                f"{fmt_ms(percentile(raw, 50))} / {fmt_ms(percentile(raw, 99))}",
                "n/a" if ratio is None else f"{ratio:.2f}×",
                verdict(None if ratio is None else ratio <= TARGET_RATIO),
                f"{fleet.trips.missing}",
            ]
        )
    summary = md_table(
        [
            "fleet",
            "trips",
            "trip → each pod `open`, p50 / p99 ms",
            "bare `PUBLISH` → each subscriber, p50 / p99 ms",
            "p99 ratio",
            f"p99 ≤ {TARGET_RATIO}× floor",
            "pod-trips missing",
        ],
        summary_rows,
    )
    parts = [
        "## Trip propagation across pods, against a bare `PUBLISH`",
        header(),
        machine(),
        "Libraries: " + library_versions(),
        "Per fleet: the listening pods in worker processes (own Redis client and pub/sub "
        "connection per pod) + the tripping pod in the main process; "
        f"{args.trips} timed trips after {args.warmup} warm-up trips. Private redis-server "
        "on loopback. Latency = `time.monotonic_ns()` in each pod's `open` handler minus the "
        "stamp taken just before the tripping call. After each trip, the main process "
        "`PUBLISH`es on a plain channel every pod also subscribes to with a plain redis-py "
        "`PubSub`: the floor, measured the same way by the same processes.",
        summary,
    ]
    for fleet in fleets:
        parts += [
            f"### {fleet.pods} pods in {fleet.workers} processes ({fleet.elapsed:.1f} s)",
            fleet.table(),
        ]
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--fleets",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[5, 20, 50],
        help="listening pods per fleet, comma-separated (default 5,20,50)",
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--trips", type=int, default=200, help="timed trips (default 200)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed trips first (default 3)")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also stamp the report leaving and each broadcast's receipt",
    )
    parser.add_argument(
        "--read-only-pods",
        action="store_true",
        help="listening pods stamp a broadcast as they read it and follow nothing (a bound)",
    )
    parser.add_argument(
        "--slowlog",
        action="store_true",
        help="also report Redis' own time for each trip's script and each bare PUBLISH",
    )
    args = parser.parse_args()
    print(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
