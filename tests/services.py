"""Bases of the tests' own servers, proxies and processes: ``with`` starts and stops them.

A subclass writes ``start()`` (which returns the started object) and ``close()``; the
context-manager protocol comes from here, so each is used the same way::

    with RedisServer() as server, ChaosProxy(server.port) as proxy: ...
    async with LocalHttpServer() as http: ...
"""

from __future__ import annotations

from typing import Self

__all__ = ["AsyncService", "Service"]


class Service:
    """Something started with ``start()`` and stopped with ``close()``, or by ``with``."""

    def start(self) -> Self:
        """Start; return self."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop, and release what was held."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncService:
    """Like :class:`Service`, started and closed with ``await``, or by ``async with``."""

    async def start(self) -> Self:
        """Start; return self."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop, and release what was held."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
