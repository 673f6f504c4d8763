"""One pod of the demo, in an OS process of its own.

Run by the demo as ``python -m distributed_opossum._demo.pod CONFIG_JSON``. The
pod has its own Redis client and three breakers around the same HTTP call to
the payments API:

- ``payments``: distributed, shared by every pod (phases 1-4);
- ``payments-quorum``: distributed with ``quorum`` (phase 5);
- a local, non-distributed breaker that gets a copy of the ``payments``
  traffic, so the demo can measure what independent breakers would have done.

It reports on stdout, one JSON line each (see ``records``), and takes commands
on stdin, one per line: ``go`` (start calling), ``quorum`` (call through
``payments-quorum`` from now on, without the copy), ``stop``. End of input,
SIGTERM and SIGINT stop it too, so it never outlives the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from distributed_opossum import CircuitBreaker, OpenCircuitError

__all__ = ["main"]

_STATE_OF_EVENT = {"open": "open", "half_open": "half_open", "close": "closed"}


_demo_gone = False


def say(kind: str, **fields: Any) -> None:
    """Print one report line and flush it at once (the demo reads it live)."""
    if _demo_gone:
        return
    try:
        sys.stdout.write(json.dumps({"e": kind, **fields}) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # the demo is gone: its end of the pipe closed
        demo_gone()


def demo_gone() -> None:
    """The demo died: stop talking (no one listens) and wind down quietly."""
    global _demo_gone  # noqa: PLW0603 (one flag for the whole process)
    _demo_gone = True
    logging.getLogger("distributed_opossum").setLevel(logging.CRITICAL)
    with contextlib.suppress(OSError):  # no "Exception ignored" on the closed pipe at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


class ApiError(Exception):
    """The payments API answered something other than 200."""


async def call_api(host: str, port: int, pod: str, breaker: str, sent: Callable[[], None]) -> str:
    """One ``GET /charge`` to the payments API, on a connection of its own.

    ``sent`` is called once the request is on its way: the call reached the API.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET /charge HTTP/1.1\r\nHost: {host}:{port}\r\nX-Pod: {pod}\r\n"
            f"X-Breaker: {breaker}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        sent()
        status_line = await reader.readline()
    finally:
        writer.close()
    parts = status_line.split()
    if len(parts) < 2:
        raise ApiError("no answer")
    if parts[1] != b"200":
        raise ApiError(f"HTTP {parts[1].decode(errors='replace')}")
    return "charged"


class Route:
    """One breaker of this pod and the running totals of the calls through it."""

    def __init__(self, label: str, config: dict[str, Any]) -> None:
        self.label = label
        self.pod: str = config["pod"]
        self.host: str = config["api_host"]
        self.port: int = config["api_port"]
        self.breaker: CircuitBreaker[[], str] | None = None
        self.sent = self.reached = self.ok = self.failed = self.rejected = 0

    def bind(self, breaker: CircuitBreaker[[], str]) -> CircuitBreaker[[], str]:
        """Attach the breaker built around :meth:`action` and report its state changes."""
        self.breaker = breaker
        for event, state in _STATE_OF_EVENT.items():
            breaker.on(event, lambda cause, state=state: self._state_changed(state, str(cause)))
        return breaker

    def _state_changed(self, state: str, cause: str) -> None:
        breaker = self.breaker
        assert breaker is not None
        stats = breaker.stats
        say(
            "state",
            t=time.monotonic(),
            b=self.label,
            state=state,
            cause=cause,
            attempts=breaker.attempts,
            retry_after=breaker.retry_after,
            failures=stats.failures,
            successes=stats.successes,
        )

    async def action(self) -> str:
        """The guarded call. A call admitted while half-open is a trial: report it."""
        breaker = self.breaker
        assert breaker is not None
        trial = breaker.half_open
        if trial:
            say("trial", t=time.monotonic(), b=self.label)
        ok, outcome = False, "timed out"  # what a cancellation by the breaker's timeout means
        try:
            result = await call_api(self.host, self.port, self.pod, self.label, self._reached)
            ok, outcome = True, "succeeded"
            return result
        except (ApiError, OSError) as error:
            outcome = str(error) or type(error).__name__
            raise
        finally:
            if trial:
                say("trial_end", t=time.monotonic(), b=self.label, ok=ok, outcome=outcome)

    def _reached(self) -> None:
        self.reached += 1

    async def fire(self) -> None:
        """One call through the breaker, counted."""
        breaker = self.breaker
        assert breaker is not None
        self.sent += 1
        try:
            await breaker.fire()
        except OpenCircuitError:
            self.rejected += 1
        except Exception:  # ApiError, OSError, CircuitTimeoutError: the call failed
            self.failed += 1
        else:
            self.ok += 1

    def report(self) -> None:
        """Print the running totals."""
        say(
            "calls",
            b=self.label,
            sent=self.sent,
            reached=self.reached,
            ok=self.ok,
            failed=self.failed,
            rejected=self.rejected,
        )


class Pod:
    """The pod: its client, its three routes, its traffic and its commands."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.client = aioredis.Redis.from_url(config["redis_url"], client_name=config["pod"])
        options = config["options"]
        distributed = {
            "client": self.client,
            "instance_id": config["pod"],
            "prefix": config["prefix"],
            "sync_interval": config["sync_interval"],
        }
        self.shared = Route(config["breaker"], config)
        self.quorum = Route(config["quorum_breaker"], config)
        self.local = Route(config["independent"], config)
        self.shared.bind(
            CircuitBreaker(
                self.shared.action, name=self.shared.label, distributed=distributed, **options
            )
        )
        self.quorum.bind(
            CircuitBreaker(
                self.quorum.action,
                name=self.quorum.label,
                distributed={**distributed, "quorum": config["quorum"]},
                **options,
            )
        )
        self.local.bind(CircuitBreaker(self.local.action, name=config["breaker"], **options))
        assert self.shared.breaker is not None
        self.shared.breaker.on("registry_down", lambda error: self._registry(False, error))
        self.shared.breaker.on("registry_up", lambda: self._registry(True, None))
        self.routes = [self.shared, self.local]  # what each tick calls through
        self.calls: set[asyncio.Task[None]] = set()

    @staticmethod
    def _registry(up: bool, error: object) -> None:
        say("registry", t=time.monotonic(), up=up, error="" if error is None else str(error))

    async def traffic(self) -> None:
        """Call the API at this pod's rate, each call a task of its own (slow calls overlap)."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / float(self.config["rate"])
        await asyncio.sleep(random.uniform(0.0, interval))  # pods out of step, as real ones
        due = loop.time()
        while True:
            for route in self.routes:
                task = loop.create_task(route.fire())
                self.calls.add(task)
                task.add_done_callback(self.calls.discard)
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def reports(self) -> None:
        """Running totals once a second."""
        while True:
            await asyncio.sleep(1.0)
            self.report()

    def report(self) -> None:
        """Print the totals of every route."""
        for route in (self.shared, self.quorum, self.local):
            route.report()

    async def close(self) -> None:
        """Let calls in flight finish (briefly), then release every breaker and the client."""
        if self.calls:
            _, pending = await asyncio.wait(set(self.calls), timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self.report()
        for route in (self.shared, self.quorum, self.local):
            assert route.breaker is not None
            await route.breaker.shutdown()
        await self.client.aclose()


async def commands(stop: asyncio.Event, pod: Pod, started: list[asyncio.Task[None]]) -> None:
    """Follow the demo's commands on stdin; end of input means the demo is gone."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while raw := await reader.readline():
        line = raw.decode().strip()
        if line == "go" and not started:
            started.append(loop.create_task(pod.traffic()))
            started.append(loop.create_task(pod.reports()))
        elif line == "quorum":
            pod.routes = [pod.quorum]
        elif line == "stop":
            break
    else:
        demo_gone()  # end of input without "stop": the demo died
    stop.set()


async def run(config: dict[str, Any]) -> int:
    """Build the pod, say ready, follow commands until told to stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
    pod = Pod(config)
    try:
        await asyncio.wait_for(pod.client.ping(), timeout=10.0)
    except Exception as error:  # the message is the report; nothing to recover here
        say("error", message=f"cannot reach Redis: {error}")
        await pod.close()
        return 1
    say("ready", pid=os.getpid())
    started: list[asyncio.Task[None]] = []
    listener = loop.create_task(commands(stop, pod, started))
    await stop.wait()
    for task in (*started, listener):
        task.cancel()
    await asyncio.gather(*started, listener, return_exceptions=True)
    await pod.close()
    say("bye")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the pod process: ``CONFIG_JSON`` is its one argument."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m distributed_opossum._demo.pod CONFIG_JSON", file=sys.stderr)
        return 2
    return asyncio.run(run(json.loads(args[0])))


if __name__ == "__main__":
    sys.exit(main())
