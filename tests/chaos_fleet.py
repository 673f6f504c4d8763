"""A fleet of pods in several OS processes, under load, steered from the test.

:class:`Fleet` starts ``processes`` copies of chaos_pod_process.py, each
hosting ``pods_per_process`` pods (breakers of one name, each with a client of
its own), and talks to them over their stdin/stdout. The downstream they call
is a :class:`~chaos_downstream.DownstreamSwitch` the test flips. The test
injects faults into Redis meanwhile, then collects every record as
:class:`~chaos_records.FleetResults`.

Example::

    async with Fleet(tmp_path, client=url_client(server.url), options=FAST) as fleet:
        await fleet.start_load()
        fleet.switch.fail()
        ...
        waited = await fleet.wait_converged(admin, within=0.5)
        results = await fleet.results()
    assert_invariants(results, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import redis.asyncio as aioredis
from chaos_downstream import DownstreamSwitch
from chaos_records import FleetResults
from services import AsyncService

from distributed_opossum._redis.keys import BreakerKeys

__all__ = [
    "ClientSpec",
    "Fleet",
    "PodView",
    "consistent",
    "sentinel_client",
    "url_client",
]

POD_SCRIPT = Path(__file__).with_name("chaos_pod_process.py")
_READY_TIMEOUT_S = 20.0
_REPLY_TIMEOUT_S = 15.0
_LINE_LIMIT = 64 * 1024 * 1024  # the results line holds every record

ClientSpec = dict[str, Any]
"""How a pod makes its Redis client (JSON): see :func:`url_client`, :func:`sentinel_client`."""


def url_client(url: str, **options: Any) -> ClientSpec:
    """``redis.asyncio.Redis.from_url(url, **options)`` (options must be JSON-able)."""
    return {"kind": "url", "url": url, "options": options}


def sentinel_client(sentinels: list[tuple[str, int]], service: str, **options: Any) -> ClientSpec:
    """``Sentinel(sentinels).master_for(service, **options)``."""
    return {
        "kind": "sentinel",
        "sentinels": [list(a) for a in sentinels],
        "service": service,
        "options": options,
    }


@dataclass(frozen=True)
class PodView:
    """One pod's state and its view of the shared state, at one moment."""

    instance: str
    state: str
    gen: str | None
    epoch: int
    shared: str
    down: bool
    subscribed: bool


_FOLLOWS = {
    "closed": {"closed"},
    "open": {"open", "half_open"},
    "half_open": {"open", "half_open"},
    "forced_open": {"forced_open"},
}


def consistent(view: PodView, shared: dict[str, str]) -> bool:
    """Whether a pod agrees with the shared state hash (same gen and epoch, a matching state)."""
    if not shared or view.gen != shared.get("gen"):
        return False
    if str(view.epoch) != shared.get("epoch"):
        return False
    return view.state in _FOLLOWS.get(shared.get("state", ""), set())


class _Child:
    """One pod process and its command channel."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, stderr: Path) -> None:
        self.name = name
        self.process = process
        self.stderr = stderr
        self._lock = asyncio.Lock()

    def stderr_tail(self, lines: int = 30) -> str:
        text = self.stderr.read_text(errors="replace") if self.stderr.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def read_reply(self, within: float) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(within):
                raw = await stdout.readline()
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no reply within {within} s\n{self.stderr_tail()}"
            ) from None
        if not raw:
            await self.process.wait()
            raise AssertionError(
                f"{self.name} exited (code {self.process.returncode})\n{self.stderr_tail()}"
            )
        reply: dict[str, Any] = json.loads(raw)
        return reply

    async def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        async with self._lock:
            stdin = self.process.stdin
            assert stdin is not None
            stdin.write(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
            await stdin.drain()
            reply = await self.read_reply(_REPLY_TIMEOUT_S)
        assert reply.get("reply") == cmd, f"{self.name}: {reply} in answer to {cmd}"
        return reply

    async def finish(self) -> None:
        if self.process.returncode is None:
            try:
                stdin = self.process.stdin
                assert stdin is not None
                stdin.write(b'{"cmd": "quit"}\n')
                await stdin.drain()
                stdin.close()
                async with asyncio.timeout(10.0):
                    await self.process.wait()
            except (TimeoutError, ConnectionError):
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        # Drain what is left so the transport closes cleanly.
        stdout = self.process.stdout
        if stdout is not None:
            with contextlib.suppress(Exception):
                await stdout.read()


class Fleet(AsyncService):
    """K pod processes × M pods of one breaker name, under load.

    Args:
        workdir: a private directory (configurations, the downstream switch, logs).
        client: how each pod makes its client; a spec for all, or a function of
            the pod's instance name (pods behind a proxy, others direct).
        options: breaker options (JSON-able) of every pod.
        distributed: ``distributed`` options besides client, prefix and instance.
        processes: pod processes (K).
        pods_per_process: pods in each (M).
        rate: calls per second of each pod while the load runs.
        name: the breaker name.
        prefix: the key prefix.
        downstream_latency: seconds each downstream call takes.
        wait_sync: whether the processes wait for a first sync before "ready".
    """

    def __init__(
        self,
        workdir: Path,
        *,
        client: ClientSpec | Callable[[str], ClientSpec],
        options: dict[str, Any],
        distributed: dict[str, Any] | None = None,
        processes: int = 3,
        pods_per_process: int = 2,
        rate: float = 200.0,
        name: str = "chaos",
        prefix: str = "chaos",
        downstream_latency: float = 0.0,
        wait_sync: bool = True,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client = client
        self.options = options
        self.distributed = distributed or {}
        self.rate = rate
        self.name = name
        self.prefix = prefix
        self.downstream_latency = downstream_latency
        self.wait_sync = wait_sync
        self.keys = BreakerKeys.for_breaker(prefix, name)
        self.switch = DownstreamSwitch.create(workdir / "downstream")
        self.layout = {
            f"proc{k}": [f"proc{k}-pod{m}" for m in range(pods_per_process)]
            for k in range(processes)
        }
        self.load_started: float | None = None
        self._children: list[_Child] = []

    @property
    def instances(self) -> list[str]:
        """Every pod's instance name."""
        return [pod for pods in self.layout.values() for pod in pods]

    def _spec(self, instance: str) -> ClientSpec:
        return self.client(instance) if callable(self.client) else self.client

    async def start(self) -> Self:
        """Start every process; return once all are ready."""
        try:
            await asyncio.gather(*(self._spawn(p, pods) for p, pods in self.layout.items()))
        except BaseException:
            await self.close()
            raise
        return self

    async def _spawn(self, process: str, pods: list[str]) -> None:
        config = {
            "process": process,
            "name": self.name,
            "prefix": self.prefix,
            "pods": [{"instance": i, "client": self._spec(i)} for i in pods],
            "options": self.options,
            "distributed": self.distributed,
            "rate": self.rate,
            "switch": str(self.switch.path),
            "downstream_latency": self.downstream_latency,
            "wait_sync": self.wait_sync,
        }
        path = self.workdir / f"{process}.json"
        path.write_text(json.dumps(config))
        stderr = self.workdir / f"{process}.stderr"
        with stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(POD_SCRIPT),
                str(path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                limit=_LINE_LIMIT,
            )
        child = _Child(process, proc, stderr)
        self._children.append(child)
        reply = await child.read_reply(_READY_TIMEOUT_S)
        assert reply.get("reply") == "ready", f"{process}: {reply}"

    async def _all(self, cmd: str, **fields: Any) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(c.request(cmd, **fields) for c in self._children)))

    def _child_of(self, instance: str) -> tuple[_Child, int]:
        for child in self._children:
            pods = self.layout[child.name]
            if instance in pods:
                return child, pods.index(instance)
        raise KeyError(instance)

    async def start_load(self) -> float:
        """Every pod starts calling; returns when (monotonic)."""
        self.load_started = time.monotonic()
        await self._all("start")
        return self.load_started

    async def stop_load(self) -> None:
        """Every pod stops calling."""
        await self._all("stop")

    async def snapshot(self) -> list[PodView]:
        """Every pod's state and view of the shared state, now."""
        replies = await self._all("snapshot")
        return [PodView(**pod) for reply in replies for pod in reply["pods"]]

    async def force_open(self, instance: str) -> dict[str, Any]:
        """``await breaker.force_open()`` on one pod; its reply (``error`` on failure)."""
        child, index = self._child_of(instance)
        return await child.request("force_open", pod=index)

    async def reset(self, instance: str) -> dict[str, Any]:
        """``await breaker.reset()`` on one pod; its reply (``error`` on failure)."""
        child, index = self._child_of(instance)
        return await child.request("reset", pod=index)

    async def shared_state(self, admin: aioredis.Redis) -> dict[str, str]:
        """The shared state hash, decoded (empty when missing)."""
        raw = await admin.hgetall(self.keys.state)
        return {_text(k): _text(v) for k, v in raw.items()}

    async def converged(self, admin: aioredis.Redis) -> tuple[bool, str]:
        """Whether every pod agrees with Redis now, and a description of the disagreement."""
        shared, views = await asyncio.gather(self.shared_state(admin), self.snapshot())
        odd = [v for v in views if not consistent(v, shared)]
        if not odd:
            return True, ""
        core = {k: shared.get(k) for k in ("gen", "epoch", "state")}
        pods = [(v.instance, v.state, v.gen, v.epoch, v.shared, v.down) for v in odd]
        return False, f"redis={core} pods={pods}"

    async def wait_converged(
        self, admin: aioredis.Redis, *, within: float, interval: float = 0.02
    ) -> float:
        """Wait until every pod agrees with Redis; seconds waited (fails after ``within``)."""
        start = time.monotonic()
        while True:
            try:
                ok, odd = await self.converged(admin)
            except (OSError, aioredis.RedisError) as error:  # Redis not back yet
                ok, odd = False, repr(error)
            if ok:
                return time.monotonic() - start
            if time.monotonic() - start > within:
                raise AssertionError(f"pods did not converge within {within:.2f} s: {odd}")
            await asyncio.sleep(interval)

    async def results(self) -> FleetResults:
        """Stop the load and collect every process's records."""
        await self.stop_load()
        return FleetResults.merge(await self._all("results"))

    async def close(self) -> None:
        """Quit every process (killed if it does not quit in time)."""
        children, self._children = self._children, []
        await asyncio.gather(*(c.finish() for c in children), return_exceptions=True)
        self.switch.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
