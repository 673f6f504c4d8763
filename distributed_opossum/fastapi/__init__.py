"""FastAPI integration: an app's breakers, injected, guarding endpoints, answered as HTTP.

Install with the ``fastapi`` extra (``pip install "distributed-opossum[fastapi]"``).

- :class:`Breakers` owns the app's breakers: made once per name from shared
  defaults, local or distributed through one Redis client, re-made for every
  lifespan (``FastAPI(lifespan=breakers.lifespan)``);
- ``Depends(breakers.dependency(name))`` injects a breaker;
  ``dependencies=[breakers.guard(name)]`` runs the whole endpoint inside
  ``async with breaker:``;
- a client's ``HTTPException`` (4xx) is not a failure of the downstream, a 5xx is;
- :func:`install_exception_handlers` answers an open breaker with 503 and
  ``Retry-After``, a timeout with 504;
- ``breakers.status_router()`` serves the breakers' state as JSON.

Example::

    from typing import Annotated, Any

    from fastapi import Depends, FastAPI

    from distributed_opossum import CircuitBreaker
    from distributed_opossum.fastapi import Breakers, install_exception_handlers

    breakers = Breakers(timeout=3.0, reset_timeout=10.0)  # redis=... or url=... to share them
    app = FastAPI(lifespan=breakers.lifespan)
    install_exception_handlers(app)
    app.include_router(breakers.status_router("/breakers"))

    @app.get("/stock/{sku}", dependencies=[breakers.guard("inventory")])
    async def stock(sku: str) -> dict[str, int]:
        return {"count": await inventory.count(sku)}
"""

from __future__ import annotations

from ._breakers import Breakers
from ._guard import BreakerGuard
from ._handlers import install_exception_handlers

__all__ = ["BreakerGuard", "Breakers", "install_exception_handlers"]
