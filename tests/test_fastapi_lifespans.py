"""FastAPI's TestClient twice in one process, with distributed breakers on a private Redis.

Each ``with TestClient(app):`` block runs the lifespan on an event loop of its
own. The object must make fresh breakers in each, they must follow the
cluster, and at the end of each block the client it made must leave no
connection behind on the server.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from distributed_support import PREFIX
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from fastapi_support import from_another_pod, status_becomes
from redis_server import RedisServer

from distributed_opossum import CircuitBreaker
from distributed_opossum.fastapi import Breakers, install_exception_handlers

pytestmark = pytest.mark.redis


async def charge() -> str:
    return "charged"


def other_connections(admin: redis.Redis) -> list[dict[str, Any]]:
    """The server's connections other than ``admin``'s own."""
    own = admin.client_id()
    return [c for c in admin.client_list() if int(c["id"]) != own]


def no_connection_left(admin: redis.Redis, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while left := other_connections(admin):
        assert time.monotonic() < deadline, f"connections left: {left}"
        time.sleep(0.01)


def test_two_testclient_blocks_with_distributed_breakers(redis_server: RedisServer) -> None:
    """Both lifespans serve through fresh breakers that follow the cluster; each ends
    with the breakers shut down and the object's client closed on the server."""
    made = Breakers(url=redis_server.url, prefix=PREFIX, sync_interval=0.05, reset_timeout=30.0)
    made.get("payments", charge)
    app = FastAPI(lifespan=made.lifespan)
    install_exception_handlers(app)
    used: list[CircuitBreaker[..., Any]] = []  # the breaker each request got

    @app.post("/pay")
    async def pay(
        payments: CircuitBreaker[..., Any] = Depends(made.dependency("payments")),  # noqa: B008
    ) -> str:
        used.append(payments)
        result: str = await payments.fire()
        return result

    admin = redis.Redis.from_url(redis_server.url)
    per_block: list[list[CircuitBreaker[..., Any]]] = []
    try:
        for _ in range(2):
            used.clear()
            with TestClient(app) as client:
                assert client.post("/pay").json() == "charged"
                assert len(other_connections(admin)) >= 1  # the object's client is connected
                from_another_pod(redis_server.url, "force_open")
                headers = status_becomes(client, 503)
                assert "retry-after" not in headers  # forced open: no time to come back
                from_another_pod(redis_server.url, "reset")
                status_becomes(client, 200)
            per_block.append(list(used))
            assert all(b is used[0] for b in used)  # one breaker for the whole lifespan
            assert used[0].is_shutdown
            no_connection_left(admin)
        assert per_block[0][0] is not per_block[1][0]  # a fresh one for the next lifespan
    finally:
        admin.close()
