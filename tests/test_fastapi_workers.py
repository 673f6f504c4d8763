"""One outage, two uvicorn workers: what one worker sees, both answer.

``uvicorn --workers 2`` serves ``fastapi_worker_app.py`` on loopback, each
worker with its own ``Breakers`` on a private redis-server. The downstream
fails for one worker only; its breaker trips, and the other worker, which
never saw a failure, answers 503 with ``Retry-After`` too. When the
downstream heals, one trial closes the cluster and both serve 200 again. At
shutdown every worker's lifespan closes its connections.

Requests are spread over the workers by the kernel (each on a new
connection), so every phase polls until it has heard from both.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer, free_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TESTS = Path(__file__).resolve().parent
RESET_TIMEOUT = 2.0
"""Long enough to hear the open state from both workers before a trial may go."""


class Uvicorn:
    """``uvicorn --workers 2`` in a session (a process group) of its own."""

    def __init__(self, redis_url: str, sick_file: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        env = {
            **os.environ,
            "DOPOSSUM_TEST_REDIS_URL": redis_url,
            "DOPOSSUM_TEST_SICK_FILE": str(sick_file),
            "DOPOSSUM_TEST_RESET_TIMEOUT": str(RESET_TIMEOUT),
        }
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "uvicorn", "fastapi_worker_app:app",
                    "--app-dir", str(TESTS), "--host", "127.0.0.1", "--port", str(self.port),
                    "--workers", "2", "--log-level", "warning",
                ],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def group_alive(self) -> bool:
        """True while any process of the server's group (parent or worker) exists."""
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> int:
        """SIGTERM (a graceful shutdown, lifespans included); SIGKILL to the group if stuck."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        deadline = time.monotonic() + 5
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.group_alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode


@pytest.fixture
def server(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Uvicorn, Path]]:
    sick_file = tmp_path / "sick"
    uvicorn = Uvicorn(redis_server.url, sick_file, tmp_path / "uvicorn.log")
    try:
        yield uvicorn, sick_file
    finally:
        uvicorn.stop()
        assert not uvicorn.group_alive()


async def poll(
    http: httpx.AsyncClient,
    until: dict[int, set[int]],
    *,
    within: float,
    log: str,
    path: str = "/pay",
) -> list[tuple[int, int, dict[str, str]]]:
    """GET ``path`` in bursts until every worker in ``until`` answered one of its statuses.

    ``until`` maps a pid to the statuses wanted from it; an empty map waits for
    two workers to answer anything. Returns every ``(pid, status, headers)`` seen.
    """
    seen: list[tuple[int, int, dict[str, str]]] = []
    deadline = time.monotonic() + within

    def done() -> bool:
        if not until:
            return len({pid for pid, _, _ in seen}) >= 2
        return all(
            any(pid == p and status in wanted for p, status, _ in seen)
            for pid, wanted in until.items()
        )

    while not done():
        if time.monotonic() >= deadline:
            log_text = await asyncio.to_thread(Path(log).read_text)
            raise AssertionError(f"not answered in time: {seen[-10:]}\n{log_text}")
        try:
            responses = await asyncio.gather(*(http.get(path) for _ in range(4)))
        except httpx.TransportError:  # not listening yet
            await asyncio.sleep(0.1)
            continue
        for response in responses:
            pid = int(response.headers["X-Worker-Pid"])
            seen.append((pid, response.status_code, dict(response.headers)))
        await asyncio.sleep(0.02)
    return seen


async def test_an_outage_seen_by_one_worker_opens_both(
    server: tuple[Uvicorn, Path], redis_server: RedisServer
) -> None:
    """One worker's failures open the breaker of both (503 + Retry-After), then one
    trial after the downstream heals closes both."""
    uvicorn, sick_file = server
    log = str(uvicorn.log)
    limits = httpx.Limits(max_keepalive_connections=0)  # a new connection per request
    async with httpx.AsyncClient(base_url=uvicorn.url, limits=limits, timeout=10) as http:
        # Which workers are there: asked of the status route, so that no call
        # lands in a breaker's window before the outage.
        started = await poll(http, {}, within=30, log=log, path="/breakers")
        sick, healthy = sorted({pid for pid, _, _ in started})
        assert all(status == 200 for _, status, _ in started)

        sick_file.write_text(str(sick))
        outage = await poll(http, {sick: {503}, healthy: {503}}, within=RESET_TIMEOUT, log=log)
        assert any(pid == sick and status == 502 for pid, status, _ in outage)
        assert not any(pid == healthy and status == 502 for pid, status, _ in outage)
        for pid in (sick, healthy):
            retry_after = next(h["retry-after"] for p, s, h in outage if p == pid and s == 503)
            assert 1 <= int(retry_after) <= RESET_TIMEOUT, outage

        sick_file.unlink()
        await poll(http, {sick: {200}, healthy: {200}}, within=RESET_TIMEOUT + 5, log=log)
        # Closed for good: a new round from both workers is all 200 (the round that
        # saw the trial may hold a 503 that raced it).
        after = await poll(http, {}, within=10, log=log)
        assert {status for _, status, _ in after} == {200}, after
        status = (await http.get("/breakers")).json()["breakers"][0]
        assert (status["name"], status["state"], status["cluster"]["state"]) == (
            "payments", "closed", "closed",
        )  # fmt: skip

    assert uvicorn.stop() == 0
    # Every worker's lifespan shut its breakers down and closed its client.
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        own = await admin.client_id()
        deadline = time.monotonic() + 2.0
        while left := [c for c in await admin.client_list() if int(c["id"]) != own]:
            assert time.monotonic() < deadline, f"connections left: {left}"
            await asyncio.sleep(0.01)
    finally:
        await admin.aclose()
