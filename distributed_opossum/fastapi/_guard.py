"""``breakers.guard(name)``: ``async with breaker:`` around a whole endpoint.

A guard is a dependency with ``yield``. FastAPI throws the endpoint's
exception into it before the app's exception handlers see it (checked on
0.165, and by ``tests/test_fastapi_guard.py``), so the breaker records the
failure and the exception then goes on, unchanged, to the handlers (a
``CircuitTimeoutError`` to the 504 handler, an ``HTTPException`` to
FastAPI's). The guard asks for ``scope="function"``: the
block ends when the endpoint function returns, before the response is sent,
so a slow client reading a large response never counts against the
downstream, nor runs into the breaker's timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import params

from distributed_opossum._breaker import CircuitBreaker

__all__ = ["BreakerGuard"]


class BreakerGuard(params.Depends):
    """A ready ``Depends`` that runs the endpoint inside ``async with breaker:``.

    Made by :meth:`Breakers.guard`. Use it as it is, in ``dependencies=[...]``
    or as the metadata of an ``Annotated`` parameter (which then receives the
    breaker). Wrapped in ``Depends(...)`` it works too, with FastAPI's default
    scope for dependencies with ``yield``: the block then ends after the
    response is sent.

    Example::

        @app.post("/charge", dependencies=[breakers.guard("payments")])
        async def charge(order: Order) -> Receipt:
            return await payments_api.charge(order)

    Attributes:
        name: the name of the breaker it guards with.
    """

    name: str
    _breaker: Callable[[], CircuitBreaker[..., Any]]

    def __init__(self, name: str, breaker: Callable[[], CircuitBreaker[..., Any]]) -> None:
        async def guard() -> AsyncIterator[CircuitBreaker[..., Any]]:
            async with breaker() as guarding:
                yield guarding

        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_breaker", breaker)
        super().__init__(dependency=guard, scope="function")

    async def __call__(self) -> AsyncIterator[CircuitBreaker[..., Any]]:
        """The same guard, for ``Depends(breakers.guard(name))``."""
        async with self._breaker() as guarding:
            yield guarding

    def __repr__(self) -> str:
        return f"BreakerGuard({self.name!r})"
