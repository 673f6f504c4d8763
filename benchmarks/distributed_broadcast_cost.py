"""Redis CPU per broadcast: pods holding the breaker, and pods that do not.

A broadcast is what the library's scripts send when a breaker's shared state changes
(here ``force_open`` and ``reset``, alternately: one EVALSHA and one PUBLISH each). Each
"pod" is one subscriber connection, as a coordinator holds one per (loop, client):

* per-breaker channels (this library): a pod holding the breaker SUBSCRIBEs its channel;
  a pod that does not hold it SUBSCRIBEs the channel of another breaker;
* one pattern per prefix (the previous layout): every pod PSUBSCRIBEs
  ``<prefix>:{*}:events`` and receives every breaker's broadcasts.

The subscribers are raw sockets drained by a thread, so Redis really writes every
message. Per case: ``--broadcasts`` broadcasts; Redis CPU from ``INFO cpu`` (user +
system: the command, the pattern matching and the socket writes) and from
``INFO commandstats`` (time inside PUBLISH and EVALSHA only), per broadcast, and as a
ratio to a trivial ``EVALSHA`` of ``return 1`` measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import selectors
import socket
import threading
import time
from typing import Any

from _distributed import library_versions, new_client, private_redis, server_cpu_seconds
from _harness import header, machine, md_table

from distributed_opossum._redis.keys import BreakerKeys, events_pattern
from distributed_opossum._redis.scripts import scripts_for

PREFIX = "dopossum"
NAME = "payments"


def _command(*words: str) -> bytes:
    out = [f"*{len(words)}\r\n".encode()]
    for word in words:
        raw = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class Subscribers:
    """Raw subscriber connections, drained by a thread until closed."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._sockets: list[socket.socket] = []
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self.received = 0

    def add(self, *command: str) -> None:
        """A new connection that sends ``command`` (SUBSCRIBE or PSUBSCRIBE ...)."""
        sock = socket.create_connection(("127.0.0.1", self._port))
        sock.sendall(_command(*command))
        sock.setblocking(False)
        self._sockets.append(sock)
        self._selector.register(sock, selectors.EVENT_READ)

    def start(self) -> None:
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                sock: Any = key.fileobj
                with contextlib.suppress(BlockingIOError):
                    self.received += len(sock.recv(65536))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for sock in self._sockets:
            self._selector.unregister(sock)
            sock.close()
        self._selector.close()


async def _stats(client: Any) -> dict[str, tuple[int, int]]:
    info: dict[str, Any] = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
        for name, v in info.items()
        if isinstance(v, dict) and "calls" in v
    }


def _per_call(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], cmd: str
) -> float:
    calls = after.get(cmd, (0, 0))[0] - before.get(cmd, (0, 0))[0]
    usec = after.get(cmd, (0, 0))[1] - before.get(cmd, (0, 0))[1]
    return usec / calls if calls else float("nan")


async def _subscribed(client: Any) -> int:
    """Connections that hold a channel or pattern subscription."""
    return sum(
        1
        for entry in await client.client_list()
        if int(entry.get("sub", 0)) or int(entry.get("psub", 0))
    )


async def trivial_evalsha_us(client: Any, calls: int) -> float:
    """Redis CPU (``INFO cpu``) per trivial EVALSHA, µs."""
    sha = await client.script_load("return 1")
    await client.evalsha(sha, 0)
    cpu = await server_cpu_seconds(client)
    for _ in range(calls):
        await client.evalsha(sha, 0)
    return (await server_cpu_seconds(client) - cpu) / calls * 1e6


async def one_case(
    client: Any, port: int, layout: str, holders: int, others: int, broadcasts: int
) -> dict[str, float]:
    keys = BreakerKeys.for_breaker(PREFIX, NAME)
    subscribers = Subscribers(port)
    for _ in range(holders):
        if layout == "pattern":
            subscribers.add("PSUBSCRIBE", events_pattern(PREFIX))
        else:
            subscribers.add("SUBSCRIBE", keys.events)
    for index in range(others):
        if layout == "pattern":
            subscribers.add("PSUBSCRIBE", events_pattern(PREFIX))
        else:
            subscribers.add("SUBSCRIBE", BreakerKeys.for_breaker(PREFIX, f"other-{index}").events)
    subscribers.start()
    try:
        deadline = time.monotonic() + 30
        while await _subscribed(client) < holders + others:
            if time.monotonic() > deadline:
                raise RuntimeError("subscribers did not subscribe within 30 s")
            await asyncio.sleep(0.01)
        scripts = scripts_for(client)
        await scripts.reset(keys, instance="bench", key_ttl_ms=600_000)
        before = await _stats(client)
        cpu = await server_cpu_seconds(client)
        for number in range(broadcasts):
            if number % 2:
                await scripts.reset(keys, instance="bench", key_ttl_ms=600_000)
            else:
                await scripts.force_open(keys, instance="bench")
        cpu = await server_cpu_seconds(client) - cpu
        after = await _stats(client)
    finally:
        subscribers.close()
    return {
        "cpu_us": cpu / broadcasts * 1e6,
        "publish_us": _per_call(before, after, "publish"),
        "evalsha_us": _per_call(before, after, "evalsha"),
    }


async def main_async(args: argparse.Namespace) -> str:
    with private_redis() as server:
        client = new_client(server.port)
        try:
            trivial = await trivial_evalsha_us(client, args.broadcasts)
            rows = []
            for layout in ("channels", "pattern"):
                for holders in args.holders:
                    for others in args.others:
                        result = await one_case(
                            client, server.port, layout, holders, others, args.broadcasts
                        )
                        rows.append(
                            [
                                "one channel per breaker (SUBSCRIBE)"
                                if layout == "channels"
                                else "one pattern per prefix (PSUBSCRIBE, before)",
                                f"{holders:,}",
                                f"{others:,}",
                                f"{result['cpu_us']:.1f}",
                                f"{result['cpu_us'] / trivial:.1f}×",
                                f"{result['publish_us']:.1f}",
                                f"{result['evalsha_us']:.1f}",
                            ]
                        )
            trivial_again = await trivial_evalsha_us(client, args.broadcasts)
        finally:
            await client.aclose()
    table = md_table(
        [
            "layout",
            "pods holding it",
            "pods not holding it",
            "Redis CPU µs / broadcast",
            "÷ trivial EVALSHA",
            "PUBLISH µs (commandstats)",
            "EVALSHA µs (commandstats, PUBLISH included)",
        ],
        rows,
    )
    return "\n\n".join(
        [
            "## Redis CPU per broadcast: pods holding the breaker, pods not holding it",
            header(),
            machine(),
            "Libraries: " + library_versions(),
            f"{args.broadcasts} broadcasts per case (`force_open` and `reset` alternately, "
            "each one EVALSHA that PUBLISHes once), every subscriber a raw connection "
            "drained by a thread. Redis CPU = `used_cpu_user + used_cpu_sys` of `INFO cpu` "
            "over the case, per broadcast (the socket writes included); a trivial "
            f"`EVALSHA` of `return 1` costs {trivial:.1f} µs measured the same way before "
            f"the cases and {trivial_again:.1f} µs after (the ratio uses the first).",
            table,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    numbers = lambda text: [int(n) for n in text.split(",")]  # noqa: E731
    parser.add_argument("--holders", type=numbers, default=[1, 10, 100])
    parser.add_argument("--others", type=numbers, default=[0, 100, 1000])
    parser.add_argument("--broadcasts", type=int, default=2000)
    args = parser.parse_args()
    print(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
