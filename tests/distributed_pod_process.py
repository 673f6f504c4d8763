"""A pod in a process of its own, for the multi-process tests.

Builds one distributed breaker and prints its state changes as JSON lines on
stdout; takes commands, one per line, on stdin:

``trip``
    fail calls until the breaker opens; prints ``{"event": "tripped", ...}``
``call``
    one successful call; prints ``{"event": "call", "outcome": ...}``
``quit``
    shut down and exit

Prints ``{"event": "ready"}`` once the first sync with Redis is done.

Usage::

    python distributed_pod_process.py URL NAME INSTANCE PREFIX RESET_TIMEOUT SYNC_INTERVAL

A URL ``cluster://HOST:PORT`` makes a ``RedisCluster`` client of the cluster
that node belongs to.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import redis.asyncio as aioredis
from helpers import Downstream, outcome_of

from distributed_opossum import CircuitBreaker

EVENTS = ("open", "close", "half_open", "registry_down", "registry_up")


def say(event: str, **fields: Any) -> None:
    """Print one JSON line and flush it."""
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


async def main(argv: list[str]) -> int:
    """Run the pod until ``quit`` or end of input."""
    url, name, instance, prefix, reset_timeout, sync_interval = argv
    client: aioredis.Redis | aioredis.RedisCluster
    if url.startswith("cluster://"):
        host, _, port = url.removeprefix("cluster://").rpartition(":")
        client = aioredis.RedisCluster(host=host, port=int(port), client_name=instance)
    else:
        client = aioredis.Redis.from_url(url, client_name=instance)
    downstream = Downstream()
    breaker: CircuitBreaker[[], str] = CircuitBreaker(
        downstream.action,
        name=name,
        reset_timeout=float(reset_timeout),
        rolling_count_timeout=1.0,
        distributed={
            "client": client,
            "instance_id": instance,
            "prefix": prefix,
            "sync_interval": float(sync_interval),
        },
    )
    for event in EVENTS:
        breaker.on(
            event,
            lambda *args, event=event: say(
                event, cause=str(args[0]) if args else "", state=breaker.state.value
            ),
        )
    link = breaker._link
    assert link is not None
    for _ in range(2000):  # the first sync, within 10 s
        if link.gen is not None:
            break
        await asyncio.sleep(0.005)
    else:
        raise SystemExit("no first sync with Redis within 10 s")
    say("ready")

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line == "trip":
            downstream.mode = "fail"
            calls = 0
            while not breaker.opened and calls < 1000:
                await outcome_of(breaker)
                calls += 1
            say("tripped", calls=calls, state=breaker.state.value)
        elif line == "call":
            downstream.mode = "ok"
            say("call", outcome=await outcome_of(breaker), state=breaker.state.value)
        elif line == "quit":
            break
        else:
            say("error", message=f"unknown command {line!r}")
    coordinator = link.coordinator
    await breaker.shutdown()
    for _ in range(1000):  # the coordinator closes in the background, within 5 s
        if coordinator is None or coordinator.closed:
            break
        await asyncio.sleep(0.005)
    await client.aclose()
    say("bye")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
