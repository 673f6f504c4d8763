"""Helpers for the FastAPI tests: an app served through the real ASGI stack, lifespan included.

``served(app)`` runs the app's lifespan (as a server would: startup, then
shutdown when the block ends) and yields an ``httpx.AsyncClient`` whose every
request goes through ``httpx.ASGITransport`` into the app, on the test's own
event loop, so a ``FakeClock`` drives the breakers' timers.

Example::

    async with served(app) as client:
        assert (await client.get("/pay")).status_code == 200
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import redis.asyncio as aioredis
from distributed_support import PREFIX
from fastapi import FastAPI
from fastapi.testclient import TestClient
from helpers import succeed

from distributed_opossum import CircuitBreaker

__all__ = ["from_another_pod", "served", "status_becomes"]


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan entered, and a client whose requests go into it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


def from_another_pod(url: str, command: str) -> None:
    """``force_open()`` or ``reset()`` the cluster's "payments" (prefix PREFIX) through a pod
    of its own, on an event loop of its own."""

    async def run() -> None:
        client = aioredis.Redis.from_url(url)
        other = CircuitBreaker(
            succeed, name="payments", distributed={"client": client, "prefix": PREFIX}
        )
        try:
            await getattr(other, command)()
        finally:
            await other.shutdown()
            await client.aclose()

    asyncio.run(run())


def status_becomes(
    client: TestClient, status: int, *, method: str = "POST", within: float = 2.0
) -> dict[str, str]:
    """Poll ``/pay`` until it answers ``status``; the headers of that answer."""
    deadline = time.monotonic() + within
    while (response := client.request(method, "/pay")).status_code != status:
        assert time.monotonic() < deadline, f"/pay answered {response.status_code}, not {status}"
        time.sleep(0.02)
    return dict(response.headers)
