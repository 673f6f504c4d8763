"""Breakers through FastAPI lifespans: ``TestClient`` twice in one process.

Each ``with TestClient(app):`` block runs the app on an event loop of its own,
lifespan included. Both patterns the README gives must keep working from one
block to the next: module-level breakers (the lifespan closes only the Redis
client) and breakers made by the lifespan (shut down at its end).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis
from distributed_support import PREFIX
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from fastapi_support import from_another_pod, status_becomes
from redis_server import RedisServer

from distributed_opossum import CircuitBreaker, OpenCircuitError, shutdown_all

pytestmark = pytest.mark.redis


async def _charge() -> str:
    return "charged"


def _breaker(client: aioredis.Redis, instance: str) -> CircuitBreaker[[], str]:
    return CircuitBreaker(
        _charge,
        name="payments",
        reset_timeout=30.0,
        distributed={
            "client": client,
            "prefix": PREFIX,
            "instance_id": instance,
            "sync_interval": 0.05,
        },
    )


def _add_routes(app: FastAPI, breaker_of: Callable[[Request], CircuitBreaker[[], str]]) -> None:
    @app.exception_handler(OpenCircuitError)
    async def open_circuit(request: Request, error: OpenCircuitError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503)

    @app.get("/pay")
    async def pay(request: Request) -> dict[str, str]:
        return {"result": await breaker_of(request).fire()}


def _serve_twice(app: FastAPI, url: str) -> None:
    for _ in range(2):
        with TestClient(app) as client:
            assert client.get("/pay").json() == {"result": "charged"}
            from_another_pod(url, "force_open")
            status_becomes(client, 503, method="GET")
            from_another_pod(url, "reset")
            status_becomes(client, 200, method="GET")


def test_module_level_breaker_serves_two_lifespans(redis_server: RedisServer) -> None:
    """A module-level breaker follows the cluster in both TestClient blocks; the
    lifespan closes only the client."""
    redis_client = aioredis.Redis.from_url(redis_server.url)
    payments = _breaker(redis_client, "app-pod")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await redis_client.aclose()

    app = FastAPI(lifespan=lifespan)
    _add_routes(app, lambda request: payments)
    _serve_twice(app, redis_server.url)
    asyncio.run(payments.shutdown())


def test_lifespan_made_breakers_serve_two_lifespans(redis_server: RedisServer) -> None:
    """Breakers made by the lifespan and shut down at its end: the next lifespan makes
    new ones, which follow the cluster too."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis_client = aioredis.Redis.from_url(redis_server.url)
        app.state.payments = _breaker(redis_client, "app-pod")
        async with shutdown_all(client=redis_client):
            yield
        await redis_client.aclose()

    app = FastAPI(lifespan=lifespan)
    _add_routes(app, lambda request: request.app.state.payments)
    _serve_twice(app, redis_server.url)
