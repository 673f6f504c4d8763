"""A shop API with two distributed breakers: run it with several workers, break one, watch all.

Two downstreams, each behind a breaker shared by every worker through Redis:

- ``payments``: ``POST /orders`` fires ``charge()`` through the breaker, which
  the endpoint gets from ``Depends(breakers.dependency("payments"))``;
- ``inventory``: ``GET /stock/{sku}`` runs whole inside the breaker
  (``dependencies=[breakers.guard("inventory")]``); an unknown SKU's 404 is
  the client's mistake and does not count against the inventory service.

The downstreams are simulated in each worker; ``PUT /simulate/{downstream}/down``
breaks one *in the worker that handles the request*, which is enough to open
its breaker on every worker.

Run (Redis on 127.0.0.1:6379, or set REDIS_URL)::

    uvicorn examples.fastapi_app:app --workers 2
    ORDER='{"sku": "apple", "quantity": 2}'
    curl -X POST localhost:8000/orders -H 'content-type: application/json' -d "$ORDER"
    curl -X PUT localhost:8000/simulate/payments/down    # one worker's payments API fails
    curl -i -X POST localhost:8000/orders -H 'content-type: application/json' -d "$ORDER"
    curl localhost:8000/breakers    # state, stats and cluster view of both breakers
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from distributed_opossum import CircuitBreaker
from distributed_opossum.fastapi import Breakers, install_exception_handlers


class Order(BaseModel):
    """What a client orders."""

    sku: str
    quantity: int


class SimulatedService:
    """A downstream of this worker that can be switched down (a stand-in for an HTTP API)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True

    async def call(self) -> None:
        await asyncio.sleep(0.005)  # the round trip
        if not self.up:
            raise ConnectionError(f"{self.name} service unreachable")


payments_service = SimulatedService("payments")
inventory_service = SimulatedService("inventory")
STOCK = {"apple": 12, "pear": 0}


async def charge(order: Order) -> dict[str, Any]:
    """Charge an order at the payments service."""
    await payments_service.call()
    return {"sku": order.sku, "quantity": order.quantity, "status": "charged"}


breakers = Breakers(
    url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"),  # no connection until used
    prefix="shop",
    timeout=2.0,  # defaults of every breaker...
    reset_timeout=5.0,
    volume_threshold=3,
)
breakers.get("payments", charge)  # ...and what each is made of
breakers.get("inventory", timeout=0.5)  # no action: it guards endpoints


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's own start and end, inside the breakers' (made before, shut down after)."""
    print(f"worker {os.getpid()}: breakers {[b['name'] for b in breakers.status()['breakers']]}")
    yield


app = FastAPI(title="shop", lifespan=breakers.lifespan(lifespan))
install_exception_handlers(app)  # open → 503 + Retry-After, timeout → 504
app.include_router(breakers.status_router("/breakers"))

Payments = Annotated[
    CircuitBreaker[[Order], dict[str, Any]], Depends(breakers.dependency("payments"))
]


@app.exception_handler(ConnectionError)
async def downstream_unreachable(request: Request, error: Exception) -> JSONResponse:
    """A downstream that failed (and was counted): 502."""
    return JSONResponse({"detail": str(error)}, status_code=502)


@app.post("/orders")
async def place_order(order: Order, payments: Payments) -> dict[str, Any]:
    """Charge the order through the breaker "payments"."""
    return await payments.fire(order)


@app.get("/stock/{sku}", dependencies=[breakers.guard("inventory")])
async def stock(sku: str) -> dict[str, Any]:
    """The whole endpoint runs inside the breaker "inventory"."""
    await inventory_service.call()
    if sku not in STOCK:
        raise HTTPException(404, detail=f"no such sku {sku!r}")  # not an inventory failure
    return {"sku": sku, "count": STOCK[sku]}


@app.put("/simulate/{downstream}/{health}")
async def simulate(
    downstream: Literal["payments", "inventory"], health: Literal["up", "down"]
) -> dict[str, Any]:
    """Switch a simulated downstream of the worker that handles this request."""
    service = payments_service if downstream == "payments" else inventory_service
    service.up = health == "up"
    return {"worker": os.getpid(), downstream: health}
