"""Every breaker of the process, and shutting them down together.

Breakers are held weakly: one that nobody references any more is gone from
:func:`breakers` without a ``shutdown()``. ``shutdown_all()`` is what an
application (or a test fixture, or a lifespan) calls at the end: it shuts
every breaker down (of one client, when given) and returns once their
background work and Redis connections are really closed.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._redis.coordinator import live_coordinators

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker

__all__ = ["ShutdownAll", "breakers", "shutdown_all", "track"]

# Keyed by creation order, so that listings are stable.
_breakers: weakref.WeakValueDictionary[int, CircuitBreaker[Any, Any]] = (
    weakref.WeakValueDictionary()
)
_order = itertools.count()


def track(breaker: CircuitBreaker[Any, Any]) -> None:
    """Count ``breaker`` among the process' breakers (from its constructor)."""
    _breakers[next(_order)] = breaker


def breakers(*, client: Any = None) -> list[CircuitBreaker[Any, Any]]:
    """The breakers of this process that are not shut down, oldest first.

    Args:
        client: only the distributed breakers on this Redis client.
    """
    found = []
    for _, breaker in sorted(_breakers.items()):
        distributed = breaker.options.distributed
        if not breaker.is_shutdown and (
            client is None or (distributed is not None and distributed.client is client)
        ):
            found.append(breaker)
    return found


class ShutdownAll:
    """What :func:`shutdown_all` returns: await it, or use it as ``async with``.

    ``await shutdown_all()`` shuts down now; ``async with shutdown_all():``
    shuts down when the block ends (however it ends).
    """

    def __init__(self, client: Any = None) -> None:
        self._client = client

    def __await__(self) -> Generator[Any, None, None]:
        return self._run().__await__()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._run()

    async def _run(self) -> None:
        client = self._client
        await asyncio.gather(*(breaker.shutdown() for breaker in breakers(client=client)))
        # Coordinators whose breakers were collected without a shutdown.
        for coordinator in live_coordinators(client):
            await coordinator.close()


def shutdown_all(*, client: Any = None) -> ShutdownAll:
    """Shut down every breaker of the process (or of one Redis client).

    Returns once their timers, background tasks and pub/sub connections are
    closed. Works as ``await shutdown_all()`` and as ``async with
    shutdown_all(): ...`` (shutting down when the block ends).

    Args:
        client: only the distributed breakers on this Redis client (and its
            coordinators); local breakers are left alone then.

    Example::

        @asynccontextmanager
        async def lifespan(app):
            async with shutdown_all():
                yield
    """
    return ShutdownAll(client)
