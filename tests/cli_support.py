"""Helpers for the CLI tests: run the CLI, and make breakers that have reported.

:func:`run_cli` drives ``main(argv)`` in-process (in a thread: it runs its own
event loop) and returns what it printed; :func:`run_process` runs it as an
operator would, in a subprocess. :func:`reported_breakers` builds real
distributed breakers on several "pods" (a client each), fires calls and waits
until Redis holds their reports.

Example::

    async with reported_breakers(url, {"payments": (0, 4)}) as pods:
        ran = await run_cli(capsys, "--url", url, "status")
        assert ran.code == 0
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from helpers import Boom, as_told
from waiting import eventually_async

from distributed_opossum import CircuitBreaker
from distributed_opossum._redis.fleet import read_windows
from distributed_opossum._redis.keys import DEFAULT_PREFIX, BreakerKeys
from distributed_opossum.cli import main

__all__ = [
    "ROOT",
    "Cli",
    "Ran",
    "console_script",
    "pending",
    "reported_and_tallied",
    "reported_breakers",
    "run_cli",
    "run_process",
]

ROOT = Path(__file__).resolve().parent.parent
"""The repository (where the README is, and the working directory of subprocesses)."""

BREAKER_OPTIONS: dict[str, Any] = {
    "reset_timeout": 30.0,
    "volume_threshold": 5,
    "error_threshold_percentage": 50,
    # 0.2 s buckets, reported as they finish; a 10 s window keeps the entries
    # (and the pods' windows) in place for the length of a test.
    "rolling_count_timeout": 10.0,
    "rolling_count_buckets": 50,
}
"""Options of the breakers :func:`reported_breakers` makes."""


@dataclass(frozen=True)
class Cli:
    """The CLI aimed at one redis-server (``--url``), run in-process, its output captured."""

    url: str
    admin: aioredis.Redis
    capsys: pytest.CaptureFixture[str]

    async def __call__(self, *argv: str) -> Ran:
        """``dopossum --url URL *argv``."""
        return await run_cli(self.capsys, "--url", self.url, *argv)

    async def tallied(self, *argv: str, within: float = 5.0) -> Ran:
        """``dopossum --url URL *argv``, run again until nothing it shows is pending.

        The pooled figures of a breaker whose pods report are the last tally's,
        and the tally's lease, which holds them, ends a little before the next
        report tallies again (for about a tenth of each report interval): a
        read then shows them pending, and the next one, as an operator's next
        refresh, shows them again. Returns the last run (pending or not after
        ``within`` seconds, or failed).
        """
        deadline = time.monotonic() + within
        while True:
            ran = await self(*argv)
            if ran.code != 0 or not pending(ran) or time.monotonic() >= deadline:
                return ran
            await asyncio.sleep(0.01)

    def reported(
        self, calls: Mapping[str, tuple[int, int]], **options: Any
    ) -> AbstractAsyncContextManager[list[CircuitBreaker[Any, Any]]]:
        """:func:`reported_breakers` on this server."""
        return reported_breakers(self.url, calls, **options)


@dataclass(frozen=True)
class Ran:
    """What one run of the CLI returned and printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout as one JSON document."""
        return json.loads(self.out)


def pending(ran: Ran) -> bool:
    """Whether what the CLI printed shows a breaker's pooled figures pending.

    In JSON, a pending figure is a ``null`` volume of a breaker with no problem
    (a ``null`` with a problem is unreadable data); in text, the word.
    """
    if not ran.out.startswith("{"):
        return "pending" in ran.out
    for line in ran.out.splitlines():
        document = json.loads(line)
        breakers = document.get("breakers", [document["breaker"]] if "breaker" in document else [])
        if any(b["window"]["volume"] is None and not b["problems"] for b in breakers):
            return True
    return False


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Ran:
    """``main(argv)`` in-process; ``asyncio.run`` needs a thread of its own."""
    capsys.readouterr()  # drop what came before
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return Ran(code, out, err)


def console_script() -> Path:
    """The ``dopossum`` script installed beside this interpreter."""
    script = Path(sys.executable).parent / "dopossum"
    assert script.is_file(), f"{script} missing: reinstall the package (pip install -e .)"
    return script


def run_process(*command: str | Path, env: Mapping[str, str] | None = None) -> Ran:
    """Run a command as an operator's shell would (REDIS_URL unset unless given)."""
    environment = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run(
        [str(c) for c in command],
        cwd=ROOT,
        env=environment | dict(env or {}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def _opens(volume: int, failures: int) -> bool:
    """Whether a pooled window of ``volume`` calls, ``failures`` failed, opens the breakers."""
    threshold: int = BREAKER_OPTIONS["error_threshold_percentage"]
    least: int = BREAKER_OPTIONS["volume_threshold"]
    return volume >= least and failures * 100 > threshold * volume


async def reported_and_tallied(
    admin: aioredis.Redis, prefix: str, name: str, pods: int, successes: int, failures: int
) -> bool:
    """Whether Redis holds the reports of ``pods`` pods that fired ``(successes, failures)``
    each, and a tally of all of them.

    Reported: the stats list's entries count every call. Tallied: a breaker
    those calls open is open (the tally that saw them all opened it: no
    snapshot is left); any other shows the full volume in the tally's
    snapshot (which is up to one report interval behind the pods' windows),
    every pod's own window too.
    """
    keys = BreakerKeys.for_breaker(prefix, name)
    entries = [json.loads(entry) for entry in await admin.lrange(keys.stats, 0, -1)]
    calls = sum(entry["successes"] + entry["failures"] for entry in entries)
    if calls != pods * (successes + failures):
        return False
    if _opens(pods * (successes + failures), pods * failures):
        return await admin.hget(keys.state, "state") == b"open"
    ((window, problems),) = await read_windows(admin, [keys])
    assert problems == (), problems
    each = [(pod.volume, pod.failures) for pod in window.pods]
    return (window.volume, window.failures, window.reporting) == (
        calls,
        pods * failures,
        pods,
    ) and each == [(successes + failures, failures)] * pods


async def _fire(breaker: CircuitBreaker[Any, Any], successes: int, failures: int) -> None:
    for _ in range(successes):
        await breaker.fire(True)
    for _ in range(failures):
        with suppress(Boom):
            await breaker.fire(False)


@asynccontextmanager
async def reported_breakers(
    url: str,
    calls: Mapping[str, tuple[int, int]],
    *,
    pods: int = 2,
    prefix: str = DEFAULT_PREFIX,
) -> AsyncIterator[list[CircuitBreaker[Any, Any]]]:
    """Breakers of each name on ``pods`` pods, each of which fired ``(successes, failures)``.

    Yields every breaker, still running (so they follow a force-open), once
    Redis holds all their reports and a tally of them (see
    :func:`reported_and_tallied`); shuts them down on exit.
    """
    clients = [aioredis.Redis.from_url(url) for _ in range(pods)]
    breakers: list[CircuitBreaker[Any, Any]] = []
    admin = aioredis.Redis.from_url(url)
    try:
        for i, client in enumerate(clients):
            for name in calls:
                distributed = {
                    "client": client,
                    "sync_interval": 0.05,
                    "instance_id": f"pod-{i}",
                    "prefix": prefix,
                }
                breakers.append(
                    CircuitBreaker(as_told, name=name, distributed=distributed, **BREAKER_OPTIONS)
                )
        for breaker in breakers:
            successes, failures = calls[breaker.name]
            await _fire(breaker, successes, failures)

        async def all_reported() -> bool:
            for name, (successes, failures) in calls.items():
                if not await reported_and_tallied(admin, prefix, name, pods, successes, failures):
                    return False
            return True

        await eventually_async(
            all_reported, within=5.0, what="every pod's report in Redis, and tallied"
        )
        yield breakers
    finally:
        for breaker in breakers:
            await breaker.shutdown()
        for client in clients:
            await client.aclose()
        await admin.aclose()
