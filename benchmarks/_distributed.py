"""Helpers of the distributed benchmarks: a private ``redis-server``, Redis counters,
percentiles and the pipe protocol between a benchmark and its worker processes.

Every distributed benchmark starts its own ``redis-server`` (from ``PATH``, or
``$REDIS_SERVER``) on a free localhost port with persistence off, with the tests' launcher
(``tests/redis_server.py``), and stops it at the end, so nothing else on the machine is
touched and nothing is left behind.
"""

from __future__ import annotations

import asyncio
import math
import re
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from _harness import versions
from redis_server import RedisServer, redis_server_binary


def private_redis() -> RedisServer:
    """A ``redis-server`` of this benchmark only; use it as a context manager."""
    if redis_server_binary() is None:
        raise SystemExit("redis-server is not on PATH (or set $REDIS_SERVER)")
    return RedisServer()


def redis_server_version() -> str:
    binary = redis_server_binary()
    if binary is None:
        return "redis-server not found"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"v=(\S+)", out)
    return f"redis-server {match.group(1) if match else 'unknown'}"


def library_versions() -> str:
    return f"{versions(['distributed-opossum', 'redis', 'hiredis'])}, {redis_server_version()}"


def new_client(port: int) -> Any:
    """A fresh ``redis.asyncio.Redis`` on the private server (its own connection pool)."""
    import redis.asyncio  # noqa: PLC0415  (imported late: worker processes import it themselves)

    return redis.asyncio.Redis(host="127.0.0.1", port=port)


async def command_calls(client: Any) -> dict[str, int]:
    """``INFO commandstats`` as ``{command: calls}`` (``cmdstat_`` prefix removed)."""
    info: dict[str, Any] = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in info.items()
        if isinstance(value, dict) and "calls" in value
    }


def calls_delta(
    before: dict[str, int], after: dict[str, int], exclude: Sequence[str] = ("info",)
) -> dict[str, int]:
    """Per-command call counts between two ``command_calls`` snapshots, ``exclude`` left out."""
    delta = {name: after[name] - before.get(name, 0) for name in after if name not in exclude}
    return {name: count for name, count in delta.items() if count}


async def server_cpu_seconds(client: Any) -> float:
    """CPU seconds the redis-server process used so far (user + system, all threads)."""
    info: dict[str, Any] = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class CommandTap:
    """Counts the commands Redis runs, telling client-sent commands from those a Lua
    script runs inside itself (``INFO commandstats`` counts both alike).

    Reads ``MONITOR`` on a connection of its own. Counting starts at the first
    ``INFO commandstats`` sent by ``marker_client`` after :meth:`start`, and stops at
    the next one, so the counts cover exactly the interval of two ``command_calls``
    snapshots taken with ``marker_client``.
    """

    _LINE = re.compile(r'^\S+ \[\d+ (?P<who>[^\]]*)\] "(?P<cmd>[^"]*)"')

    def __init__(self, port: int) -> None:
        self._port = port
        self._monitor: Any = None
        self._task: asyncio.Task[None] | None = None
        self._marker_addr = ""
        self._marks = 0
        self.client_sent: dict[str, int] = {}
        self.in_scripts: dict[str, int] = {}
        self._done = asyncio.Event()

    async def start(self, marker_client: Any) -> None:
        info: dict[str, Any] = await marker_client.client_info()
        self._marker_addr = str(info["addr"])
        self._monitor = new_client(self._port).monitor()
        await self._monitor.__aenter__()
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        connection = self._monitor.connection
        while True:
            raw = await connection.read_response()
            line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            match = self._LINE.match(line)
            if match is None:
                continue
            who, cmd = match.group("who"), match.group("cmd").lower()
            if who == self._marker_addr and cmd == "info":
                self._marks += 1
                if self._marks == 2:
                    self._done.set()
                    return
                continue
            if self._marks != 1:
                continue
            table = self.in_scripts if who == "lua" else self.client_sent
            table[cmd] = table.get(cmd, 0) + 1

    async def finish(self, limit_s: float = 5.0) -> None:
        """Wait (at most ``limit_s``) for the closing marker, then stop monitoring."""
        try:
            async with asyncio.timeout(limit_s):
                await self._done.wait()
        finally:
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            if self._monitor is not None:
                await self._monitor.__aexit__(None, None, None)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


# --------------------------------------------------------------------------- worker pipes
# Messages between a benchmark's main process and its workers are small fixed-size
# records: (kind, pod, value), packed, so a worker's event handler only does one write.

_RECORD = struct.Struct("<iiq")


def send_record(conn: Connection, kind: int, pod: int, value: int) -> None:
    conn.send_bytes(_RECORD.pack(kind, pod, value))


def read_records(conn: Connection) -> list[tuple[int, int, int]]:
    """Every record already waiting on ``conn`` (never blocks)."""
    records = []
    while conn.poll():
        kind, pod, value = _RECORD.unpack(conn.recv_bytes())
        records.append((kind, pod, value))
    return records


def join_workers(processes: Sequence[Any]) -> None:
    """Wait for the worker processes to end (told to stop), terminating laggards."""
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)


class Inbox:
    """The records of many worker pipes, read by the event loop as they arrive."""

    def __init__(self, conns: Sequence[Connection]) -> None:
        self._conns = list(conns)
        self._loop = asyncio.get_running_loop()
        self._records: list[tuple[int, int, int, int]] = []  # worker, kind, pod, value
        self._changed = asyncio.Event()
        self.closed: set[int] = set()
        for index, conn in enumerate(self._conns):
            self._loop.add_reader(conn.fileno(), self._on_readable, index)

    def _on_readable(self, index: int) -> None:
        conn = self._conns[index]
        try:
            for kind, pod, value in read_records(conn):
                self._records.append((index, kind, pod, value))
        except (EOFError, OSError):
            self._loop.remove_reader(conn.fileno())
            self.closed.add(index)
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[list[tuple[int, int, int, int]]], bool], limit_s: float
    ) -> bool:
        """Wait until ``predicate(records)`` holds; False after ``limit_s`` or on a dead worker."""
        try:
            async with asyncio.timeout(limit_s):
                while not predicate(self._records):
                    if self.closed:
                        return False
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def take(self) -> list[tuple[int, int, int, int]]:
        records, self._records = self._records, []
        return records

    def close(self) -> None:
        for index, conn in enumerate(self._conns):
            if index not in self.closed:
                self._loop.remove_reader(conn.fileno())


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def next_record(conn: Connection) -> tuple[int, int, int]:
    """The next record on ``conn``, awaited without blocking the event loop."""
    loop = asyncio.get_running_loop()
    while not conn.poll():
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(conn.fileno())
    kind, pod, value = _RECORD.unpack(conn.recv_bytes())
    return kind, pod, value


async def first_sync(breakers: Sequence[Any], limit_s: float = 10.0) -> None:
    """Wait until every distributed breaker's coordinator made a round trip and subscribed."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        coordinators = [
            b._link.coordinator for b in breakers if b._link is not None and b._link.coordinator
        ]
        if len(coordinators) == len(breakers) and all(
            c.stats["round_trips"] > 0 and c.stats["confirmations"] > 0 for c in coordinators
        ):
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"the breakers made no first sync with Redis within {limit_s} s")
