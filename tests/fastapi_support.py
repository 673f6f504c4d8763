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

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

__all__ = ["served"]


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan entered, and a client whose requests go into it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client
