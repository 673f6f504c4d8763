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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from distributed_opossum import breakers

__all__ = ["Boom", "Gate", "breakers_made_here_shut_down", "served"]


class Boom(Exception):
    """What the test endpoints and actions raise."""


class Gate:
    """Holds an endpoint until the test opens it, and tells the test it got there."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def pass_through(self) -> None:
        """Called by the endpoint: say it arrived, then wait to be let through."""
        self.reached.set()
        await self.opened.wait()


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan entered, and a client whose requests go into it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


@asynccontextmanager
async def breakers_made_here_shut_down() -> AsyncIterator[None]:
    """Shut down, when the block ends, the breakers made in it (and only those: other
    test modules keep module-level breakers alive across tests)."""
    before = breakers()
    try:
        yield
    finally:
        await asyncio.gather(*(b.shutdown() for b in breakers() if b not in before))
