"""The app ``test_fastapi_workers.py`` serves with ``uvicorn --workers 2``.

Every worker imports this module and so has its own ``Breakers`` on its own
Redis client: the breaker "payments" of each worker is one pod of the cluster.
The downstream is fake and per worker: it fails while the file named by
``DOPOSSUM_TEST_SICK_FILE`` holds this worker's pid, so the test can make one
worker, and one only, see an outage.

Environment: ``DOPOSSUM_TEST_REDIS_URL``, ``DOPOSSUM_TEST_SICK_FILE``,
``DOPOSSUM_TEST_RESET_TIMEOUT`` (seconds).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from helpers import Boom

from distributed_opossum import CircuitBreaker
from distributed_opossum.fastapi import Breakers, install_exception_handlers

SICK_FILE = Path(os.environ["DOPOSSUM_TEST_SICK_FILE"])


def _sick_pid() -> int | None:
    try:
        return int(SICK_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return None


async def call_downstream() -> str:
    """Fails while the sick file names this worker."""
    if await asyncio.to_thread(_sick_pid) == os.getpid():
        raise Boom(f"downstream down for worker {os.getpid()}")
    return "paid"


breakers = Breakers(
    url=os.environ["DOPOSSUM_TEST_REDIS_URL"],
    prefix="dtest-workers",
    sync_interval=0.05,
    timeout=5.0,
    reset_timeout=float(os.environ["DOPOSSUM_TEST_RESET_TIMEOUT"]),
)
breakers.get("payments", call_downstream)

app = FastAPI(lifespan=breakers.lifespan)
install_exception_handlers(app)
app.include_router(breakers.status_router())

Payments = Annotated[CircuitBreaker[..., Any], Depends(breakers.dependency("payments"))]


@app.middleware("http")
async def say_which_worker(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.exception_handler(Boom)
async def downstream_down(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=502)


@app.get("/pay")
async def pay(payments: Payments) -> dict[str, str]:
    return {"result": await payments.fire()}
