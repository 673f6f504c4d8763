"""What one broadcast costs each pod that receives it, in CPU instructions, against a
plain redis-py subscriber of the same channel.

A subscriber process runs under ``valgrind --tool=callgrind`` and receives the real
broadcasts of a tripping pod in this process (a trip, then a reset: two broadcasts a
round, ``--gap`` seconds apart so the slowed-down subscriber keeps up). It runs twice,
with ``--rounds`` and with four times as many; the difference in instructions, divided
by the extra broadcasts, is the cost of one broadcast to one subscriber: its read off
the socket, and for a pod the decoding, the checks, following the state, its timers
and events (a handler that counts them).

Three subscribers are compared, each ``--subscribers`` in one process:

* ``pod``: breakers holding the breaker (each its own client, pub/sub connection and
  listener), as a replica of a service would;
* ``pod, reading only``: the same, with the listener's work on a broadcast replaced by
  counting it (what reading off the connection costs);
* ``plain subscriber``: redis-py's ``PubSub.listen()``, counting messages (the floor
  of the propagation benchmark).

Instructions are not time (a cold cache costs time the count does not show), but they
do not move with the machine's load, and propagation on a busy machine is bounded by
the CPU every receiver needs at the same instant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import sys

from _distributed import first_sync, library_versions, private_redis
from _harness import header, machine, md_table
from helpers import Boom, fail

from distributed_opossum import CircuitBreaker

NAME = "payments"
CHANNEL = f"dopossum:{{{NAME}}}:events"
KINDS = {
    "pod": "pods holding the breaker",
    "reading": "pods holding the breaker, reading only",
    "plain": "plain redis-py subscribers (`PubSub.listen()`)",
}
_COLLECTED = re.compile(rb"Collected : (\d+)")


# ------------------------------------------------------------------------------ subscriber


async def subscriber(port: int, kind: str, count: int, expected: int) -> None:
    """``count`` subscribers of ``kind``; exits once each got ``expected`` broadcasts."""
    import redis.asyncio as aioredis  # noqa: PLC0415  (the child imports what it needs)

    received = 0
    done = asyncio.Event()

    def got(*_: object) -> None:
        nonlocal received
        received += 1
        if received >= expected * count:
            done.set()

    keep: list[object] = []
    if kind in ("pod", "reading"):

        async def healthy() -> int:
            return 1

        breakers = []
        for index in range(count):
            client = aioredis.Redis(host="127.0.0.1", port=port)
            breaker: CircuitBreaker[[], int] = CircuitBreaker(
                healthy,
                name=NAME,
                reset_timeout=600.0,
                # No report tick during the run: only broadcasts are counted.
                distributed={"client": client, "instance_id": f"r{index}", "sync_interval": 60.0},
            )
            breaker.on("open", got)
            breaker.on("close", got)
            breakers.append(breaker)
        await first_sync(breakers)  # (it counts the subscriptions' confirmations)
        if kind == "reading":
            from distributed_opossum._redis import listener  # noqa: PLC0415

            def count_only(self: object, message: dict[str, object]) -> None:
                if message.get("type") == "message":
                    got()

            setattr(listener.Listener, "_on_message", count_only)  # noqa: B010
        keep.append(breakers)
    else:

        async def listen() -> None:
            pubsub = aioredis.Redis(host="127.0.0.1", port=port).pubsub()
            await pubsub.subscribe(CHANNEL)
            async for message in pubsub.listen():
                if message["type"] == "message":
                    got()

        keep.extend(asyncio.create_task(listen()) for _ in range(count))
    await asyncio.sleep(1.0)  # every subscription confirmed
    print("ready", flush=True)
    await done.wait()
    print("done", flush=True)


# ------------------------------------------------------------------------------ main side


async def measured(
    port: int, kind: str, count: int, rounds: int, gap: float, tripper: CircuitBreaker[..., str]
) -> int:
    """Instructions of one subscriber process receiving ``2 * rounds`` broadcasts."""
    process = await asyncio.create_subprocess_exec(
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--subscriber",
        kind,
        str(port),
        str(count),
        str(2 * rounds),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 300)
    if line.strip() != b"ready":
        raise RuntimeError(f"the {kind} subscriber did not start: {line!r}")
    for _ in range(rounds):
        with contextlib.suppress(Boom):
            await tripper.fire()
        await asyncio.sleep(gap)
        await tripper.reset()
        await asyncio.sleep(gap)
    _, err = await asyncio.wait_for(process.communicate(), 600)
    match = _COLLECTED.search(err)
    if match is None:
        raise RuntimeError(f"no instruction count from valgrind: {err[-400:]!r}")
    return int(match.group(1))


async def main_async(args: argparse.Namespace) -> str:
    rows = []
    with private_redis() as server:
        import redis.asyncio as aioredis  # noqa: PLC0415

        client = aioredis.Redis(host="127.0.0.1", port=server.port)
        tripper: CircuitBreaker[..., str] = CircuitBreaker(
            fail,
            name=NAME,
            reset_timeout=600.0,
            volume_threshold=1,
            distributed={"client": client, "instance_id": "tripper"},
        )
        try:
            per: dict[str, float] = {}
            for kind in KINDS:
                counts = [
                    await measured(server.port, kind, args.subscribers, rounds, args.gap, tripper)
                    for rounds in (args.rounds, 4 * args.rounds)
                ]
                low, high = counts
                per[kind] = (high - low) / (2 * 3 * args.rounds) / args.subscribers
            for kind, label in KINDS.items():
                rows.append(
                    [
                        label,
                        f"{per[kind]:,.0f}",
                        f"{per[kind] / per['plain']:.2f}×",
                    ]
                )
        finally:
            await tripper.shutdown()
            await client.aclose()
    table = md_table(
        ["subscriber", "instructions per broadcast", "÷ plain subscriber"],
        rows,
    )
    return "\n\n".join(
        [
            "## What one broadcast costs each subscriber (instructions)",
            header(),
            machine(),
            "Libraries: " + library_versions(),
            f"{args.subscribers} subscribers in one process under callgrind; "
            f"{2 * args.rounds} and {8 * args.rounds} broadcasts (trip, reset), "
            f"{args.gap * 1000:.0f} ms apart; the difference per extra broadcast and subscriber.",
            table,
        ]
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--subscriber":
        kind, port, count, expected = sys.argv[2], *map(int, sys.argv[3:6])
        asyncio.run(subscriber(port, kind, count, expected))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--subscribers", type=int, default=1, help="per process (default 1)")
    parser.add_argument("--rounds", type=int, default=20, help="trip+reset rounds (default 20)")
    parser.add_argument(
        "--gap", type=float, default=0.1, help="seconds between broadcasts (default 0.1)"
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on PATH")
    print(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
