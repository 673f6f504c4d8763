"""A private Redis Sentinel set-up: 1 master, 1 replica, 3 sentinels, on free ports.

Every process is a :class:`RedisServer` (sentinels run ``redis-server
<config> --sentinel``), so the usual kill/pause/restart helpers apply to each.
Sentinel's timers are short (master down after 1 s), so a failover after a
kill takes a few seconds.

Example::

    with SentinelTopology() as topology:
        sentinel = redis.asyncio.sentinel.Sentinel(topology.sentinel_addresses)
        client = sentinel.master_for(topology.service)
        old, new = await topology.failover()       # SENTINEL FAILOVER, waits for the switch
        old, new = await topology.kill_master()    # kill -9, waits for the switch
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis
import redis.asyncio as aioredis
from redis_server import RedisServer, RedisServerError, Topology, server_at

__all__ = ["SentinelTopology"]

Address = tuple[str, int]

_DOWN_AFTER_MS = 1000
_FAILOVER_TIMEOUT_MS = 10_000
_SETTLE_TIMEOUT_S = 20.0


def _info(server: RedisServer, section: str) -> dict[str, str]:
    with redis.Redis(host=server.host, port=server.port, socket_timeout=1.0) as client:
        info = client.info(section)
    return {str(key): str(value) for key, value in info.items()}


def _wait(what: str, predicate: Callable[[], bool], timeout: float = _SETTLE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise RedisServerError(f"sentinel topology: {what} not within {timeout:.0f} s")
        time.sleep(0.05)


class SentinelTopology(Topology):
    """One master, one replica and three sentinels watching them (quorum 2).

    Args:
        service: the name the sentinels know the master by.
    """

    def __init__(self, service: str = "mymaster") -> None:
        self.service = service
        self.master = RedisServer()
        self.replica = RedisServer()
        self.sentinels: list[RedisServer] = []

    @property
    def sentinel_addresses(self) -> list[Address]:
        """``(host, port)`` of every sentinel, for ``Sentinel(...)``."""
        return [s.address for s in self.sentinels]

    @property
    def servers(self) -> list[RedisServer]:
        """The two data servers (master and replica, in start order)."""
        return [self.master, self.replica]

    @property
    def processes(self) -> list[RedisServer]:
        """The sentinels and the data servers."""
        return [*self.sentinels, self.master, self.replica]

    def server_at(self, address: Address) -> RedisServer:
        """The data server listening on ``address``."""
        return server_at(self.servers, address)

    def _start(self) -> None:
        """Start master, replica and sentinels; wait until every sentinel sees all of them."""
        # Full syncs at once (Redis 7 waits 5 s for more replicas by default).
        fast_sync = ("--repl-diskless-sync-delay", "0")
        self.master.extra_args = fast_sync
        self.master.start()
        self.replica.extra_args = (
            *fast_sync,
            "--replicaof", self.master.host, str(self.master.port),
        )  # fmt: skip
        self.replica.start()
        _wait(
            "replication link up",
            lambda: _info(self.replica, "replication").get("master_link_status") == "up",
        )
        host, port = self.master.address
        config = (
            f"sentinel monitor {self.service} {host} {port} 2\n"
            f"sentinel down-after-milliseconds {self.service} {_DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {self.service} {_FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {self.service} 1\n"
        )
        for _ in range(3):
            sentinel = RedisServer(config=config, extra_args=("--sentinel",))
            self.sentinels.append(sentinel)
            sentinel.start()
        _wait("sentinels agreeing on the set-up", self._settled)

    def _settled(self) -> bool:
        for sentinel in self.sentinels:
            with redis.Redis(host=sentinel.host, port=sentinel.port, socket_timeout=1.0) as client:
                master = client.sentinel_master(self.service)
                if int(master.get("num-other-sentinels", 0)) < 2:
                    return False
                if int(master.get("num-slaves", 0)) < 1:
                    return False
                replicas = client.sentinel_slaves(self.service)
                if not any(r.get("master-link-status") == "ok" for r in replicas):
                    return False
        return True

    # -- what the sentinels say ------------------------------------------------------------

    async def master_address(self) -> Address:
        """The master's address as the first sentinel that answers reports it."""
        for sentinel in self.sentinels:
            try:
                return await self._master_seen_by(sentinel)
            except (redis.RedisError, OSError):
                continue
        raise RedisServerError("no sentinel answered")

    async def _master_seen_by(self, sentinel: RedisServer) -> Address:
        client = aioredis.Redis(host=sentinel.host, port=sentinel.port, socket_timeout=1.0)
        try:
            reply = await client.sentinel_get_master_addr_by_name(self.service)
        finally:
            await client.aclose()
        if not isinstance(reply, tuple | list) or len(reply) != 2:
            raise RedisServerError(f"{sentinel.address} does not know {self.service}: {reply!r}")
        host, port = reply
        return (host.decode() if isinstance(host, bytes) else str(host)), int(port)

    async def _role(self, address: Address) -> str:
        client = aioredis.Redis(host=address[0], port=address[1], socket_timeout=1.0)
        try:
            reply = await client.execute_command("ROLE")  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()
        role = reply[0]
        return role.decode() if isinstance(role, bytes) else str(role)

    async def wait_for_switch(self, old: Address, *, within: float = _SETTLE_TIMEOUT_S) -> Address:
        """Wait until every sentinel names a master other than ``old`` and it acts as master.

        Returns:
            The new master's address.
        """
        deadline = time.monotonic() + within
        while True:
            try:
                seen = {await self._master_seen_by(s) for s in self.sentinels if s.running}
                if len(seen) == 1 and old not in seen:
                    new = seen.pop()
                    if await self._role(new) == "master":
                        return new
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise RedisServerError(f"no master switch away from {old} within {within:.0f} s")
            await asyncio.sleep(0.05)

    async def wait_until_replica(
        self, address: Address, *, within: float = _SETTLE_TIMEOUT_S
    ) -> None:
        """Wait until the server at ``address`` is a replica with its link to the master up."""
        deadline = time.monotonic() + within
        server = self.server_at(address)
        while True:
            try:
                info = await asyncio.to_thread(_info, server, "replication")
                if info.get("role") == "slave" and info.get("master_link_status") == "up":
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise RedisServerError(f"{address} did not become a replica within {within:.0f} s")
            await asyncio.sleep(0.05)

    # -- faults ----------------------------------------------------------------------------

    async def failover(self) -> tuple[Address, Address]:
        """``SENTINEL FAILOVER``: a graceful switch; waits until it is visible everywhere.

        The old master stays alive and becomes a replica of the new one.

        Returns:
            ``(old, new)`` master addresses.
        """
        old = await self.master_address()
        sentinel = self.sentinels[0]
        client = aioredis.Redis(host=sentinel.host, port=sentinel.port, socket_timeout=2.0)
        try:
            await client.sentinel_failover(self.service)
        finally:
            await client.aclose()
        new = await self.wait_for_switch(old)
        await self.wait_until_replica(old)
        return old, new

    async def kill_master(self) -> tuple[Address, Address]:
        """kill -9 the master; waits until the sentinels promoted the replica.

        Returns:
            ``(old, new)`` master addresses (the old one is dead).
        """
        old = await self.master_address()
        self.server_at(old).kill()
        new = await self.wait_for_switch(old)
        return old, new
