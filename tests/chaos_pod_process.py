"""A process hosting several pods under load, for the chaos tests (see chaos_fleet.py).

Each pod is a distributed :class:`CircuitBreaker` with a Redis client of its
own; every pod of every process shares the breaker name. Under load, each pod
calls its breaker ``rate`` times a second; the guarded action is a fake
downstream whose health the test flips through a shared switch
(chaos_downstream.py). The process records, for the test:

- every exception that reached a caller of ``fire()``, by type;
- every call that reached the downstream while the pod's breaker was not
  closed (a trial call), with the pod's view of the shared state then;
- every state and registry event (open, close, half_open, registry_down,
  registry_up) with its cause;
- warnings and errors the library logged;
- RSS and event-loop lag over time, and fire() latencies.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, shared by every process on
the machine), so the test can line records of several processes up.

Protocol: one JSON object per line on stdin (``{"cmd": ...}``), one JSON
reply per line on stdout (``{"reply": <cmd>, ...}``). Commands: ``start``
and ``stop`` (the load), ``snapshot`` (each pod's state and view of the
shared state), ``force_open`` / ``reset`` (``"pod": <index>``), ``results``
(every record), ``quit``. Before the first command it prints
``{"reply": "ready"}`` once every pod has synced with Redis (unless the
configuration says not to wait).

Usage::

    python chaos_pod_process.py CONFIG.json
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import sys
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from chaos_downstream import DownstreamSwitch
from helpers import Boom
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from distributed_opossum import CircuitBreaker, CircuitTimeoutError, OpenCircuitError, State

RECORDED_EVENTS = ("open", "close", "half_open", "registry_down", "registry_up")
_PAGE = resource.getpagesize()
_LAG_PROBE_S = 0.005
_ERROR_SAMPLES = 3


def rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


def make_client(spec: dict[str, Any], instance: str) -> Any:
    """A Redis client as ``spec`` describes it (see chaos_fleet.ClientSpec)."""
    options = dict(spec.get("options", {}))
    kind = spec["kind"]
    if kind == "url":
        return aioredis.Redis.from_url(spec["url"], client_name=instance, **options)
    if kind == "sentinel":
        sentinels = [tuple(address) for address in spec["sentinels"]]
        sentinel = Sentinel(sentinels, **spec.get("sentinel_options", {}))  # type: ignore[no-untyped-call]
        return sentinel.master_for(spec["service"], client_name=instance, **options)
    raise ValueError(f"unknown client kind {kind!r}")


class LogRecorder(logging.Handler):
    """Keeps what the library logs at WARNING and above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[list[Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(
            [time.monotonic(), record.levelname, record.getMessage()[:300], record.name]
        )


class Pod:
    """One breaker with its own client, its load loop and its records."""

    def __init__(self, process: PodProcess, instance: str, client: Any) -> None:
        self.process = process
        self.instance = instance
        self.client = client
        config = process.config
        self.breaker: CircuitBreaker[[], str] = CircuitBreaker(
            self.action,
            name=config["name"],
            **config.get("options", {}),
            distributed={
                **config.get("distributed", {}),
                "client": client,
                "instance_id": instance,
                "prefix": config["prefix"],
            },
        )
        self.outcomes: Counter[str] = Counter()
        self.downstream_calls = 0
        for event in RECORDED_EVENTS:
            self.breaker.on(event, self._recorder(event))

    def _recorder(self, event: str) -> Any:
        def record(*args: Any) -> None:
            detail = ""
            if args:
                first = args[0]
                detail = repr(first)[:200] if isinstance(first, BaseException) else str(first)
            self.process.events.append(
                [time.monotonic(), self.instance, event, detail, self.breaker.state.value]
            )

        return record

    @property
    def link(self) -> Any:
        """The breaker's distributed link."""
        return self.breaker._link

    async def action(self) -> str:
        """The fake downstream; records calls made while the breaker is not closed."""
        if self.breaker.state is not State.CLOSED:
            link = self.link
            self.process.trials.append(
                [
                    time.monotonic(),
                    self.instance,
                    link.gen,
                    link.epoch,
                    link.registry_down,
                    link.shared,
                    self.breaker.state.value,
                ]
            )
        self.downstream_calls += 1
        latency = self.process.downstream_latency
        if latency:
            await asyncio.sleep(latency)
        if self.process.switch.failing:
            raise Boom("downstream failed")
        return "ok"

    async def call(self) -> None:
        """One call through the breaker, its outcome and latency recorded."""
        start = time.monotonic()
        try:
            await self.breaker.fire()
            outcome = "ok"
        except OpenCircuitError:
            outcome = "rejected"
        except Boom:
            outcome = "failed"
        except CircuitTimeoutError:
            outcome = "timeout"
        except Exception as error:  # what the tests look for: nothing else may get here
            outcome = "error"
            self.process.record_error(self.instance, error)
        self.process.latencies.append(time.monotonic() - start)
        self.outcomes[outcome] += 1

    async def load(self, rate: float) -> None:
        """Call ``rate`` times a second; a late call is not made up for (no bursts)."""
        period = 1.0 / rate
        due = time.monotonic()
        while True:
            await self.call()
            due += period
            now = time.monotonic()
            if due < now:
                due = now
            await asyncio.sleep(due - now)

    def snapshot(self) -> dict[str, Any]:
        """This pod's state and its view of the shared state."""
        link = self.link
        coordinator = link.coordinator
        return {
            "instance": self.instance,
            "state": self.breaker.state.value,
            "gen": link.gen,
            "epoch": link.epoch,
            "shared": link.shared,
            "down": link.registry_down,
            "subscribed": bool(coordinator is not None and coordinator.listener.subscribed),
        }


class PodProcess:
    """The pods of this process, their load and their shared records."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.switch = DownstreamSwitch.open(Path(config["switch"]))
        self.downstream_latency = float(config.get("downstream_latency", 0.0))
        self.events: list[list[Any]] = []
        self.trials: list[list[Any]] = []
        self.errors: dict[str, dict[str, Any]] = {}
        self.latencies = array("d")
        self.rss: list[list[float]] = []
        self.lags: list[list[float]] = []
        self.max_lag = 0.0
        self.logs = LogRecorder()
        logging.getLogger("distributed_opossum").addHandler(self.logs)
        self.pods = [
            Pod(self, p["instance"], make_client(p["client"], p["instance"]))
            for p in config["pods"]
        ]
        self._load: list[asyncio.Task[None]] = []
        self._monitors: list[asyncio.Task[None]] = []

    def record_error(self, instance: str, error: BaseException) -> None:
        """Count an exception that reached a caller."""
        kind = f"{type(error).__module__}.{type(error).__qualname__}"
        entry = self.errors.setdefault(
            kind, {"count": 0, "redis": isinstance(error, RedisError), "samples": []}
        )
        entry["count"] += 1
        if len(entry["samples"]) < _ERROR_SAMPLES:
            entry["samples"].append(f"{instance}: {error!r}"[:300])

    async def ready(self) -> None:
        """Wait (at most 10 s) until every pod synced once, unless told not to wait."""
        if not self.config.get("wait_sync", True):
            return
        deadline = time.monotonic() + 10.0
        while not all(p.link.gen is not None for p in self.pods):
            if time.monotonic() > deadline:
                raise SystemExit("no first sync with Redis within 10 s")
            await asyncio.sleep(0.005)

    async def _sample(self) -> None:
        interval = float(self.config.get("sample_interval", 0.1))
        while True:
            self.rss.append([time.monotonic(), rss_bytes()])
            await asyncio.sleep(interval)

    async def _probe_lag(self) -> None:
        while True:
            start = time.monotonic()
            cpu_start = time.thread_time()
            await asyncio.sleep(_LAG_PROBE_S)
            # A stall is time the loop spent *running* something else: on a
            # loaded machine the process may also wait for a CPU, which no
            # code of ours can cause or avoid, so the wall-clock lag is capped
            # by the CPU time the loop's thread used meanwhile.
            wall_lag = time.monotonic() - start - _LAG_PROBE_S
            lag = min(wall_lag, time.thread_time() - cpu_start)
            if lag > self.max_lag:
                self.max_lag = lag
            if lag > 0.02:
                self.lags.append([start, lag])

    def start_monitors(self) -> None:
        """Sample RSS and event-loop lag from now on."""
        loop = asyncio.get_running_loop()
        self._monitors = [loop.create_task(self._sample()), loop.create_task(self._probe_lag())]

    def start_load(self) -> None:
        """Every pod calls at the configured rate."""
        if self._load:
            return
        loop = asyncio.get_running_loop()
        rate = float(self.config.get("rate", 200.0))
        self._load = [loop.create_task(pod.load(rate)) for pod in self.pods]

    async def stop_load(self) -> None:
        """Stop calling (calls in flight are cancelled)."""
        tasks, self._load = self._load, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def results(self) -> dict[str, Any]:
        """Every record, JSON-ready."""
        ordered = sorted(self.latencies)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

        return {
            "process": self.config["process"],
            "pid": os.getpid(),
            "events": self.events,
            "trials": self.trials,
            "errors": self.errors,
            "outcomes": {p.instance: dict(p.outcomes) for p in self.pods},
            "downstream_calls": {p.instance: p.downstream_calls for p in self.pods},
            "coordinator_stats": {
                p.instance: dict(p.link.coordinator.stats) if p.link.coordinator else {}
                for p in self.pods
            },
            "latency": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0), "n": len(ordered)},
            "rss": self.rss,
            "max_lag": self.max_lag,
            "lags": self.lags,
            "logs": self.logs.records,
        }

    async def command(self, message: dict[str, Any]) -> dict[str, Any]:
        """Carry out one command; its reply."""
        cmd = message.get("cmd")
        if cmd == "start":
            self.start_load()
            return {}
        if cmd == "stop":
            await self.stop_load()
            return {}
        if cmd == "snapshot":
            return {"t": time.monotonic(), "pods": [p.snapshot() for p in self.pods]}
        if cmd in ("force_open", "reset"):
            breaker = self.pods[int(message.get("pod", 0))].breaker
            try:
                await (breaker.force_open() if cmd == "force_open" else breaker.reset())
            except Exception as error:  # reported to the test, which decides
                return {"error": f"{type(error).__qualname__}: {error}"[:300]}
            return {"t": time.monotonic()}
        if cmd == "results":
            return self.results()
        return {"error": f"unknown command {cmd!r}"}

    async def shutdown(self) -> None:
        """Stop the load and the monitors, shut the breakers down, close the clients."""
        await self.stop_load()
        for task in self._monitors:
            task.cancel()
        await asyncio.gather(*self._monitors, return_exceptions=True)
        coordinators = [p.link.coordinator for p in self.pods]
        for pod in self.pods:
            await pod.breaker.shutdown()
        deadline = time.monotonic() + 5.0
        while any(c is not None and not c.closed for c in coordinators):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        for pod in self.pods:
            await pod.client.aclose()
        self.switch.close()


def reply(name: str, body: dict[str, Any]) -> None:
    """Write one reply line."""
    sys.stdout.write(json.dumps({"reply": name, **body}) + "\n")
    sys.stdout.flush()


async def main(config: dict[str, Any]) -> int:
    """Serve commands until ``quit`` or the end of input."""
    process = PodProcess(config)
    process.start_monitors()
    await process.ready()
    reply("ready", {"t": time.monotonic()})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := (await reader.readline()).strip():
            message = json.loads(line)
            if message.get("cmd") == "quit":
                break
            reply(str(message.get("cmd")), await process.command(message))
    finally:
        await process.shutdown()
    reply("bye", {})
    return 0


if __name__ == "__main__":
    # Read before the loop starts: no blocking file access inside it.
    config = json.loads(Path(sys.argv[1]).read_text())
    sys.exit(asyncio.run(main(config)))
