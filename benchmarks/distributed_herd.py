"""Half-open herd: how many of a burst of calls at the end of the open period reach the
downstream, across many pods.

``--workers`` worker processes (multiprocessing ``spawn``) run ``--pods-per-worker`` pods
each: breakers named ``payments`` with ``half_open_max_calls=1``, each with its own Redis
client (own coordinator and pub/sub connection). A controller pod in the main process,
which takes no part in the burst, trips the shared breaker with one failing call; every
pod follows it open. When a pod's open period ends it emits ``half_open``, and its
handler starts ``--calls`` / pods concurrent ``fire()`` calls at once, so the whole burst
of ``--calls`` calls arrives just as the open period ends, spread over all pods.

The downstream counts every call that reaches it with an ``INCR`` on a key of its own
(through a separate Redis client of the worker), then takes ``--trial-latency`` seconds
and fails (``--trial-outcome fail``: the downstream is still sick, the shared breaker
re-opens) or succeeds (``succeed``: the shared breaker closes). After each round the
cluster is reset and every pod must report ``close`` before the next round.
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
    join_workers,
    library_versions,
    new_client,
    next_record,
    private_redis,
    send_record,
)
from _harness import header, machine, md_table, verdict
from helpers import Boom, fail

from distributed_opossum import CircuitBreaker, OpenCircuitError

NAME = "payments"
HALF_OPEN_MAX_CALLS = 1

# Records, worker -> main.
READY, ARMED, OPEN, CLOSE, HALF, RAN, REJECTED, OTHER, DONE = range(1, 10)
# Commands, main -> worker.
ARM, STOP = 1, 2


def counter_key(round_no: int) -> str:
    return f"bench:herd:downstream:{round_no}"


# ------------------------------------------------------------------------------ worker side


class Pods:
    """The pods of one worker process and their burst."""

    def __init__(self, args: argparse.Namespace, port: int, worker: int, events: Connection):
        self.args = args
        self.events = events
        self.counter = new_client(port)  # the downstream's own connection
        self.key = ""
        self.armed: set[int] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        pods = args.pods_per_worker
        self.calls_per_pod = args.calls // (args.workers * pods)
        self.clients = [new_client(port) for _ in range(pods)]
        self.breakers: list[CircuitBreaker[[], int]] = []
        for index, client in enumerate(self.clients):
            pod = worker * pods + index
            breaker: CircuitBreaker[[], int] = CircuitBreaker(
                self.downstream,
                name=NAME,
                reset_timeout=args.reset_timeout,
                half_open_max_calls=HALF_OPEN_MAX_CALLS,
                timeout=5.0,
                distributed={"client": client, "instance_id": f"w{worker}p{index}"},
            )
            breaker.on("open", self.stamp(OPEN, pod))
            breaker.on("close", self.stamp(CLOSE, pod))
            breaker.on("half_open", self.on_half_open(breaker, pod))
            self.breakers.append(breaker)

    async def downstream(self) -> int:
        await self.counter.incr(self.key)
        await asyncio.sleep(self.args.trial_latency)
        if self.args.trial_outcome == "fail":
            raise Boom
        return 1

    def stamp(self, kind: int, pod: int) -> Callable[..., None]:
        def handler(*_: Any) -> None:
            send_record(self.events, kind, pod, time.monotonic_ns())

        return handler

    def on_half_open(self, breaker: CircuitBreaker[[], int], pod: int) -> Callable[..., None]:
        def handler(*_: Any) -> None:
            send_record(self.events, HALF, pod, time.monotonic_ns())
            if pod in self.armed:
                self.armed.discard(pod)
                task = asyncio.get_running_loop().create_task(self.burst(breaker, pod))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

        return handler

    async def burst(self, breaker: CircuitBreaker[[], int], pod: int) -> None:
        spread = self.args.arrival_spread

        async def call() -> int:
            if spread > 0:
                await asyncio.sleep(random.uniform(0.0, spread))
            try:
                await breaker.fire()
            except OpenCircuitError:
                return REJECTED
            except Boom:
                return RAN
            except Exception:
                return OTHER
            return RAN

        # Every call is started before any of them runs: a burst of concurrent callers.
        calls = [asyncio.ensure_future(call()) for _ in range(self.calls_per_pod)]
        outcomes = await asyncio.gather(*calls)
        for kind in (RAN, REJECTED, OTHER):
            send_record(self.events, kind, pod, outcomes.count(kind))
        send_record(self.events, DONE, pod, 0)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for breaker in self.breakers:
            await breaker.shutdown()
        await asyncio.sleep(0.05)
        for client in [*self.clients, self.counter]:
            await client.aclose()


async def worker_async(
    args: argparse.Namespace, port: int, worker: int, events: Connection, control: Connection
) -> None:
    pods = Pods(args, port, worker, events)
    await first_sync(pods.breakers)
    send_record(events, READY, worker, 0)
    while True:
        command, round_no, _ = await next_record(control)
        if command == STOP:
            break
        pods.key = counter_key(round_no)
        pods.armed = set(range(worker * args.pods_per_worker, (worker + 1) * args.pods_per_worker))
        send_record(events, ARMED, worker, round_no)
    await pods.close()


def worker_main(
    args: argparse.Namespace, port: int, worker: int, events: Connection, control: Connection
) -> None:
    asyncio.run(worker_async(args, port, worker, events, control))


# ------------------------------------------------------------------------------ main side


Records = list[tuple[int, int, int, int]]


def last_state(records: Records, pods: int) -> dict[int, int]:
    state: dict[int, int] = {}
    for _, kind, pod, _ in records:
        if kind in (OPEN, CLOSE) and pod < pods:
            state[pod] = kind
    return state


class Controller:
    def __init__(self, port: int, args: argparse.Namespace, inbox: Inbox) -> None:
        self.client = new_client(port)
        self.inbox = inbox
        self.pods = args.workers * args.pods_per_worker
        self.breaker: CircuitBreaker[[], str] = CircuitBreaker(
            fail,
            name=NAME,
            reset_timeout=args.reset_timeout,
            half_open_max_calls=HALF_OPEN_MAX_CALLS,
            volume_threshold=1,
            error_threshold_percentage=50,
            distributed={"client": self.client, "instance_id": "controller"},
        )
        self.reset_fallbacks = 0

    async def trip(self) -> None:
        with contextlib.suppress(Boom):
            await self.breaker.fire()

    async def reset(self, prior: Records) -> None:
        """Close the cluster; every pod must report ``close`` (``prior``: records seen before)."""

        def all_closed(records: Records) -> bool:
            state = last_state(prior + records, self.pods)
            return len(state) == self.pods and all(k == CLOSE for k in state.values())

        if self.reset_fallbacks == 0:
            await self.breaker.reset()
            if await self.inbox.wait_for(all_closed, limit_s=2.0):
                return
            self.reset_fallbacks += 1
        link = self.breaker._link
        assert link is not None
        await link.reset()
        if not await self.inbox.wait_for(all_closed, limit_s=5.0):
            raise RuntimeError("the pods did not close within 5 s of a cluster reset")

    async def close(self) -> None:
        await self.breaker.shutdown()
        await asyncio.sleep(0.05)
        await self.client.aclose()


async def one_round(
    round_no: int, controller: Controller, controls: list[Connection], args: argparse.Namespace
) -> list[str]:
    inbox, pods = controller.inbox, controller.pods
    inbox.take()  # the close records of the last reset: every pod is closed
    for control in controls:
        send_record(control, ARM, round_no, 0)
    armed = await inbox.wait_for(
        lambda rs: sum(1 for r in rs if r[1] == ARMED and r[3] == round_no) >= len(controls),
        limit_s=10.0,
    )
    if not armed:
        raise RuntimeError("the workers did not arm")
    await controller.trip()
    done = await inbox.wait_for(
        lambda rs: len({r[2] for r in rs if r[1] == DONE}) >= pods,
        limit_s=args.reset_timeout + 10.0,
    )
    await asyncio.sleep(0.05)  # the last records of the burst
    records = inbox.take()
    counted = await controller.client.get(counter_key(round_no))
    reached = int(counted or 0)
    first_half: dict[int, int] = {}
    for _, kind, pod, value in records:
        if kind == HALF:
            first_half.setdefault(pod, value)
    halves = list(first_half.values())
    spread = (max(halves) - min(halves)) / 1e9 if halves else 0.0
    ran = sum(v for _, kind, _, v in records if kind == RAN)
    rejected = sum(v for _, kind, _, v in records if kind == REJECTED)
    other = sum(v for _, kind, _, v in records if kind == OTHER)
    pods_done = len({pod for _, kind, pod, _ in records if kind == DONE})
    await controller.reset(records)
    return [
        str(round_no + 1),
        f"{pods_done}/{pods}" + ("" if done else " (timed out)"),
        fmt_ms(spread),
        f"{ran + rejected + other:,}",
        str(reached),
        str(ran),
        f"{rejected:,}",
        str(other),
        verdict(reached == HALF_OPEN_MAX_CALLS),
    ]


async def main_async(args: argparse.Namespace) -> str:
    context = multiprocessing.get_context("spawn")
    pods = args.workers * args.pods_per_worker
    rows: list[list[str]] = []
    with private_redis() as server:
        pipes = [
            (context.Pipe(duplex=False), context.Pipe(duplex=False)) for _ in range(args.workers)
        ]
        processes = [
            context.Process(
                target=worker_main, args=(args, server.port, w, events_w, control_r), daemon=True
            )
            for w, ((_, events_w), (control_r, _)) in enumerate(pipes)
        ]
        for process in processes:
            process.start()
        controls = [control_w for _, (_, control_w) in pipes]
        inbox = Inbox([events_r for (events_r, _), _ in pipes])
        controller: Controller | None = None
        try:
            ready = await inbox.wait_for(
                lambda rs: sum(1 for r in rs if r[1] == READY) >= args.workers, limit_s=60.0
            )
            if not ready:
                raise RuntimeError("the worker processes did not get ready within 60 s")
            inbox.take()
            controller = Controller(server.port, args, inbox)
            await first_sync([controller.breaker])
            for round_no in range(args.rounds):
                rows.append(await one_round(round_no, controller, controls, args))
        finally:
            for control in controls:
                with contextlib.suppress(OSError):
                    send_record(control, STOP, 0, 0)
            fallbacks = controller.reset_fallbacks if controller is not None else 0
            if controller is not None:
                await controller.close()
            inbox.close()
            join_workers(processes)
    reached = [int(row[4]) for row in rows]
    fallback = (
        ""
        if fallbacks == 0
        else " **`await breaker.reset()` on the controller did not close the other pods within "
        "2 s** (it closed the local breaker only), so rounds were ended with the link's "
        "cluster reset (`breaker._link.reset()`)."
    )
    table = md_table(
        [
            "round",
            "pods done",
            "half_open spread ms",
            "calls",
            "reached downstream (INCR)",
            "ran (seen by callers)",
            "rejected",
            "other errors",
            f"== {HALF_OPEN_MAX_CALLS}",
        ],
        rows,
    )
    targets = md_table(
        ["target", "measured", "verdict"],
        [
            [
                f"calls reaching the downstream per round == `half_open_max_calls` "
                f"({HALF_OPEN_MAX_CALLS})",
                ", ".join(str(r) for r in reached) or "n/a",
                verdict(
                    bool(reached) and all(r == HALF_OPEN_MAX_CALLS for r in reached)
                    if reached
                    else None
                ),
            ]
        ],
    )
    spread = (
        f", each delayed by a uniform 0-{args.arrival_spread * 1000:g} ms"
        if args.arrival_spread > 0
        else ""
    )
    return "\n\n".join(
        [
            "## Half-open herd across pods",
            header(),
            machine(),
            "Libraries: " + library_versions(),
            f"{pods} pods in {args.workers} worker processes ({args.pods_per_worker} each, own "
            f"Redis client per pod), `half_open_max_calls={HALF_OPEN_MAX_CALLS}`, "
            f"`reset_timeout={args.reset_timeout:g}` s; {args.calls:,} calls per round "
            f"({args.calls // pods} per pod, all started at once in the pod's `half_open` "
            f"handler{spread}); the downstream takes {args.trial_latency * 1000:g} ms and "
            f"{'fails' if args.trial_outcome == 'fail' else 'succeeds'}. `half_open spread` = "
            "time between the first and the last pod turning half-open. `reached downstream` "
            "is the downstream's Redis counter; `ran` is what the callers saw (the action "
            "returned or raised its own error)." + fallback,
            table,
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
    parser.add_argument("--calls", type=int, default=1000, help="calls per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument(
        "--reset-timeout", type=float, default=1.0, help="open period in s (default 1)"
    )
    parser.add_argument(
        "--trial-latency", type=float, default=0.05, help="downstream latency in s (default 0.05)"
    )
    parser.add_argument(
        "--arrival-spread",
        type=float,
        default=0.0,
        help="spread each pod's calls uniformly over this many s after half_open (default 0)",
    )
    parser.add_argument(
        "--trial-outcome",
        choices=("fail", "succeed"),
        default="fail",
        help="what the downstream does (default fail)",
    )
    args = parser.parse_args()
    print(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
