"""The breaker's errors as HTTP responses: 503 with ``Retry-After``, 504, 503.

A rejected call is the server's temporary unavailability, not a crash, so the
client gets a 503 that says when to come back (``Retry-After`` in whole
seconds, rounded up so that a client that obeys it does not arrive before
the trial may go) and a body naming the breaker. A forced-open breaker has
no such time: the header is left out. A timeout is the downstream's slowness
seen through this server: 504.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse

from distributed_opossum._errors import CircuitTimeoutError, OpenCircuitError, SemaphoreLockedError

__all__ = ["install_exception_handlers"]


def _body(error: Exception, **fields: Any) -> dict[str, Any]:
    return {"detail": str(error), "breaker": getattr(error, "breaker_name", None), **fields}


async def _open_circuit(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, OpenCircuitError)
    retry_after = error.retry_after
    headers = {} if retry_after is None else {"Retry-After": str(math.ceil(retry_after))}
    body = _body(error, retry_after=None if retry_after is None else round(retry_after, 3))
    return JSONResponse(body, status_code=503, headers=headers)


async def _timed_out(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, CircuitTimeoutError)
    return JSONResponse(_body(error, timeout=error.timeout), status_code=504)


async def _semaphore_locked(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, SemaphoreLockedError)
    return JSONResponse(_body(error, capacity=error.capacity), status_code=503)


def install_exception_handlers(app: Starlette) -> None:
    """Answer the breakers' errors with HTTP responses, in one call.

    - ``OpenCircuitError`` → 503, ``Retry-After: ceil(retry_after)`` (left out when
      the breaker is forced open), body ``{"detail", "breaker", "retry_after"}``;
    - ``CircuitTimeoutError`` → 504, body ``{"detail", "breaker", "timeout"}``;
    - ``SemaphoreLockedError`` → 503, body ``{"detail", "breaker", "capacity"}``.

    Works for every breaker of the app, made by :class:`Breakers` or not. A
    handler the app registers later for one of these classes replaces this one.

    Example::

        app = FastAPI(lifespan=breakers.lifespan)
        install_exception_handlers(app)
    """
    app.add_exception_handler(OpenCircuitError, _open_circuit)
    app.add_exception_handler(CircuitTimeoutError, _timed_out)
    app.add_exception_handler(SemaphoreLockedError, _semaphore_locked)
