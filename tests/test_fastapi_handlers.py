"""The breakers' errors as HTTP answers: 503 + Retry-After, 504, 503 (local breakers)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi_support import served
from helpers import Gate

from distributed_opossum import CircuitBreaker
from distributed_opossum.fastapi import Breakers, install_exception_handlers
from distributed_opossum.testing import FakeClock

pytestmark = pytest.mark.usefixtures("no_breaker_left")


def guarded_app(made: Breakers, gate: Gate | None = None) -> FastAPI:
    """An app with GET /call guarded by the breaker "payments" (held at ``gate`` if given)."""
    app = FastAPI(lifespan=made.lifespan)
    install_exception_handlers(app)

    @app.get("/call", dependencies=[made.guard("payments")])
    async def call() -> dict[str, str]:
        if gate is not None:
            await gate()
        return {"result": "ok"}

    return app


async def test_open_breaker_answers_503_with_retry_after_rounded_up() -> None:
    """retry_after 2.1 s → Retry-After: 3; 0.9 s later → 2; the body names the breaker."""
    clock = FakeClock()
    made = Breakers(clock=clock, reset_timeout=2.1)
    async with served(guarded_app(made)) as client:
        made.get("payments").open()
        first = await client.get("/call")
        await clock.advance(0.9)
        later = await client.get("/call")
    assert first.status_code == 503
    assert first.headers["Retry-After"] == "3"
    assert first.json() == {
        "detail": "Breaker 'payments' is open; retry after 2.100 s",
        "breaker": "payments",
        "retry_after": 2.1,
    }
    assert (later.status_code, later.headers["Retry-After"]) == (503, "2")
    assert later.json()["retry_after"] == pytest.approx(1.2)


async def test_forced_open_answers_503_without_retry_after() -> None:
    """Forced open there is no time to come back: no Retry-After, retry_after null."""
    made = Breakers()
    async with served(guarded_app(made)) as client:
        await made.get("payments").force_open()
        response = await client.get("/call")
    assert response.status_code == 503
    assert "Retry-After" not in response.headers
    assert response.json() == {
        "detail": "Breaker 'payments' is open",
        "breaker": "payments",
        "retry_after": None,
    }


async def test_fired_open_breaker_answers_503_too() -> None:
    """The handler serves fire() as well as the guard."""
    made = Breakers(reset_timeout=10.0)
    app = FastAPI(lifespan=made.lifespan)
    install_exception_handlers(app)

    async def charge() -> str:
        return "charged"

    made.get("payments", charge)

    @app.post("/pay")
    async def pay() -> str:
        result: str = await made.get("payments").fire()
        return result

    async with served(app) as client:
        assert (await client.post("/pay")).json() == "charged"
        made.get("payments").open()
        response = await client.post("/pay")
    assert (response.status_code, response.headers["Retry-After"]) == (503, "10")


async def test_timeout_answers_504() -> None:
    """A guarded endpoint that outlives the breaker's timeout is cancelled: 504, one timeout."""
    clock = FakeClock()
    gate = Gate()
    made = Breakers(clock=clock, timeout=2.0, volume_threshold=100)
    async with served(guarded_app(made, gate)) as client:
        request = asyncio.create_task(client.get("/call"))
        await gate.reached.wait()
        await clock.advance(2.0)
        response = await request
        stats = made.get("payments").stats
    assert response.status_code == 504
    assert response.json() == {
        "detail": "Breaker 'payments' timed out after 2000 ms",
        "breaker": "payments",
        "timeout": 2.0,
    }
    assert (stats.timeouts, stats.failures) == (1, 1)


async def test_capacity_reached_answers_503() -> None:
    """One call over capacity gets 503 (without Retry-After) while the first goes on."""
    gate = Gate()
    made = Breakers(capacity=1, volume_threshold=100)
    async with served(guarded_app(made, gate)) as client:
        first = asyncio.create_task(client.get("/call"))
        await gate.reached.wait()
        second = await client.get("/call")
        gate.release()
        assert (await first).status_code == 200
    assert second.status_code == 503
    assert "Retry-After" not in second.headers
    assert second.json() == {
        "detail": "Breaker 'payments' semaphore locked: 1 calls in flight",
        "breaker": "payments",
        "capacity": 1,
    }


async def test_handlers_serve_breakers_made_elsewhere() -> None:
    """The handlers answer for any breaker of the app, not only the object's."""
    app = FastAPI()
    install_exception_handlers(app)
    other: CircuitBreaker[..., Any] = CircuitBreaker(name="other", reset_timeout=5.0)

    @app.get("/other")
    async def use_other() -> str:
        async with other:
            pass  # the downstream call
        return "ok"

    other.open()
    async with served(app) as client:
        response = await client.get("/other")
    assert (response.status_code, response.json()["breaker"]) == (503, "other")
    assert response.headers["Retry-After"] == "5"
