"""Noticing that a Sentinel-managed client's master changed.

After a failover (``SENTINEL FAILOVER``, or a master that died) redis-py's
Sentinel pool keeps handing out the connections it already has, to the old
master, until something asks Sentinel again: a pod may write its reports to
a demoted master, whose writes are dropped when it resyncs, and read its
state from both. The coordinator asks :meth:`MasterWatch.switched` once a
second; on a switch it drops its pub/sub connection and re-reads every
breaker's state from the new master.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHECK_INTERVAL", "MasterWatch"]

CHECK_INTERVAL = 1.0
"""Seconds between two questions to Sentinel about the master's address."""


class MasterWatch:
    """Watches the master address of one Sentinel-managed client (``None`` for others)."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self.address: Any = getattr(pool, "master_address", None)

    @classmethod
    def of(cls, client: Any) -> MasterWatch | None:
        """A watch for ``client`` if Sentinel manages its connections, else None."""
        pool = getattr(client, "connection_pool", None)
        if pool is None or not callable(getattr(pool, "get_master_address", None)):
            return None
        if not getattr(pool, "is_master", False):
            return None
        return cls(pool)

    async def switched(self) -> tuple[Any, Any] | None:
        """``(old, new)`` address when the master moved since the last call, else None.

        Asking Sentinel also makes the pool drop its idle connections to the
        old master, so that the next commands go to the new one.
        """
        new = await self._pool.get_master_address()
        old, self.address = self.address, new
        if old is None or old == new:
            return None
        return old, new
