"""The dependency and the guard, through the real ASGI stack (local breakers).

The guard is a dependency with ``yield``: the endpoint's exception must reach
the breaker (as a failure) and then still reach the app's exception handlers.

Apps made inside a test declare dependencies as default values (hence the
``noqa: B008``): with
``from __future__ import annotations`` FastAPI resolves an ``Annotated``
annotation from the module's globals, where a test's local objects are not.
The ``Annotated`` forms are tested on an app made at module level.
"""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi_support import served
from helpers import Boom

from distributed_opossum import CircuitBreaker
from distributed_opossum.fastapi import Breakers, install_exception_handlers

AnyBreaker = CircuitBreaker[..., Any]


pytestmark = pytest.mark.usefixtures("no_breaker_left")


def make_app(made: Breakers) -> FastAPI:
    app = FastAPI(lifespan=made.lifespan)
    install_exception_handlers(app)
    return app


async def test_dependency_injects_the_breaker() -> None:
    """Depends(breakers.dependency(name)) gives every request the object's breaker."""
    made = Breakers()

    async def charge(order: int) -> str:
        return f"charged {order}"

    made.get("payments", charge)
    app = make_app(made)

    @app.post("/orders/{order}")
    async def pay(
        order: int,
        payments: AnyBreaker = Depends(made.dependency("payments")),  # noqa: B008
    ) -> dict[str, Any]:
        return {"result": await payments.fire(order), "breaker": id(payments)}

    async with served(app) as client:
        first = await client.post("/orders/1")
        second = await client.post("/orders/2")
        breaker = made.get("payments")
    assert first.json() == {"result": "charged 1", "breaker": id(breaker)}
    assert second.json() == {"result": "charged 2", "breaker": id(breaker)}
    assert made.dependency("payments") is made.dependency("payments")


async def test_dependency_can_be_overridden() -> None:
    """The dependency is one callable per name, so dependency_overrides replaces it."""
    made = Breakers()
    app = make_app(made)
    stand_in = CircuitBreaker(name="stand-in")

    @app.get("/which")
    async def which(
        payments: AnyBreaker = Depends(made.dependency("payments")),  # noqa: B008
    ) -> dict[str, str]:
        return {"name": payments.name}

    app.dependency_overrides[made.dependency("payments")] = lambda: stand_in
    async with served(app) as client:
        assert (await client.get("/which")).json() == {"name": "stand-in"}


async def test_guard_counts_the_failure_before_the_handler_runs() -> None:
    """An endpoint's exception is the breaker's failure first, then the app's handler answers."""
    made = Breakers(volume_threshold=100)
    app = make_app(made)
    failures_seen_by_handler: list[int] = []

    @app.exception_handler(Boom)
    async def boom(request: Request, error: Exception) -> JSONResponse:
        failures_seen_by_handler.append(made.get("ledger").stats.failures)
        return JSONResponse({"detail": "ledger down"}, status_code=502)

    @app.get("/balance", dependencies=[made.guard("ledger")])
    async def balance() -> dict[str, int]:
        raise Boom("ledger down")

    async with served(app) as client:
        response = await client.get("/balance")
        stats = made.get("ledger").stats
    assert (response.status_code, response.json()) == (502, {"detail": "ledger down"})
    assert failures_seen_by_handler == [1]
    assert (stats.fires, stats.failures, stats.successes) == (1, 1, 0)


async def test_guard_judges_http_exceptions_by_status() -> None:
    """4xx from a guarded endpoint is not a failure, 5xx is; FastAPI still answers both."""
    made = Breakers(volume_threshold=100)
    app = make_app(made)

    @app.get("/orders/{status}", dependencies=[made.guard("orders")])
    async def order(status: int) -> dict[str, int]:
        if status != 200:
            raise HTTPException(status, detail=f"status {status}")
        return {"status": status}

    async with served(app) as client:
        answers = [(await client.get(f"/orders/{s}")).status_code for s in (200, 404, 409, 503)]
        stats = made.get("orders").stats
    assert answers == [200, 404, 409, 503]
    assert (stats.fires, stats.successes, stats.failures) == (4, 3, 1)


async def test_guard_spares_request_validation_errors() -> None:
    """A 422 raised by FastAPI after the guard admitted the request is not a failure."""
    made = Breakers(volume_threshold=100)
    app = make_app(made)

    @app.get("/stock", dependencies=[made.guard("inventory")])
    async def stock(count: int) -> dict[str, int]:
        return {"count": count}

    async with served(app) as client:
        bad = await client.get("/stock", params={"count": "many"})
        good = await client.get("/stock", params={"count": 3})
        stats = made.get("inventory").stats
    assert (bad.status_code, good.status_code) == (422, 200)
    assert (stats.failures, stats.successes) == (0, 2)


async def test_open_guard_rejects_before_the_endpoint() -> None:
    """An open breaker answers 503 without running the endpoint."""
    made = Breakers(reset_timeout=30.0)
    app = make_app(made)
    ran: list[str] = []

    @app.get("/stock", dependencies=[made.guard("inventory")])
    async def stock() -> dict[str, int]:
        ran.append("stock")
        return {"count": 1}

    async with served(app) as client:
        made.get("inventory").open()
        response = await client.get("/stock")
    assert response.status_code == 503
    assert response.json()["breaker"] == "inventory"
    assert 29 <= int(response.headers["Retry-After"]) <= 30
    assert ran == []


module_breakers = Breakers(volume_threshold=100)
module_app = make_app(module_breakers)
Ledger = Annotated[AnyBreaker, Depends(module_breakers.dependency("ledger"))]
GuardedLedger = Annotated[AnyBreaker, module_breakers.guard("ledger")]


@module_app.get("/injected")
async def injected(ledger: Ledger) -> dict[str, Any]:
    return {"name": ledger.name, "fires": ledger.stats.fires}


@module_app.get("/guarded")
async def guarded(ledger: GuardedLedger) -> dict[str, Any]:
    return {"name": ledger.name, "fires": ledger.stats.fires}


async def test_annotated_forms() -> None:
    """Annotated[CircuitBreaker, Depends(breakers.dependency(name))] injects the breaker;
    Annotated[CircuitBreaker, breakers.guard(name)] guards and injects it."""
    async with served(module_app) as client:
        assert (await client.get("/injected")).json() == {"name": "ledger", "fires": 0}
        assert (await client.get("/guarded")).json() == {"name": "ledger", "fires": 1}
        assert (await client.get("/injected")).json() == {"name": "ledger", "fires": 1}


async def test_guard_wrapped_in_depends_works_too() -> None:
    """Depends(breakers.guard(name)) guards as well (FastAPI's default scope)."""
    made = Breakers(volume_threshold=100)
    app = make_app(made)

    @app.get("/fail", dependencies=[Depends(made.guard("ledger"))])
    async def fail() -> None:
        raise HTTPException(500)

    @app.get("/ok")
    async def ok(ledger: AnyBreaker = Depends(made.guard("ledger"))) -> str:  # noqa: B008
        return ledger.name

    async with served(app) as client:
        assert (await client.get("/fail")).status_code == 500
        assert (await client.get("/ok")).json() == "ledger"
        stats = made.get("ledger").stats
    assert (stats.fires, stats.failures, stats.successes) == (2, 1, 1)
    assert made.guard("ledger") is made.guard("ledger")
    assert repr(made.guard("ledger")) == "BreakerGuard('ledger')"


async def test_one_guard_twice_on_an_endpoint_enters_once() -> None:
    """The guard in dependencies=[...] and as a parameter is one block (FastAPI caches it)."""
    made = Breakers(volume_threshold=100)
    app = make_app(made)

    @app.get("/both", dependencies=[made.guard("ledger")])
    async def both(ledger: Any = made.guard("ledger")) -> int:  # noqa: B008
        fires: int = ledger.stats.fires
        return fires

    async with served(app) as client:
        assert (await client.get("/both")).json() == 1
