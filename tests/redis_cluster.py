"""A private Redis Cluster: 3 masters and 3 replicas on free ports.

Each node is a :class:`RedisServer` started with ``--cluster-enabled yes``;
``redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`` joins
them. The node timeout is short (1 s), so a replica takes over a killed
master within a few seconds.

Example::

    with RedisClusterTopology() as topology:
        client = redis.asyncio.RedisCluster(host="127.0.0.1", port=topology.nodes[0].port)
        killed, promoted = await topology.kill_master_of(b"some-key")
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import time

import redis
import redis.asyncio as aioredis
from redis_server import RedisServer, RedisServerError, Topology, server_at

__all__ = ["RedisClusterTopology", "cluster_client", "redis_cli_binary"]

Address = tuple[str, int]

_NODE_TIMEOUT_MS = 1000
_SETTLE_TIMEOUT_S = 30.0


def redis_cli_binary() -> str | None:
    """Path of ``redis-cli`` (beside ``redis-server``), or None."""
    return shutil.which("redis-cli")


def _cluster_info(address: Address) -> dict[str, str]:
    with redis.Redis(host=address[0], port=address[1], socket_timeout=1.0) as client:
        raw = client.execute_command("CLUSTER INFO")
    if isinstance(raw, dict):  # parsed by redis-py's response callback
        return {str(key): str(value) for key, value in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, value in pairs}


def _replica_synced(address: Address) -> bool:
    """True for a master, or a replica whose link to its master is up."""
    with redis.Redis(host=address[0], port=address[1], socket_timeout=1.0) as client:
        info = client.info("replication")
    return bool(info.get("role") == "master" or info.get("master_link_status") == "up")


def _slot_owner(address: Address, slot: int) -> Address | None:
    """Which master serves ``slot``, according to the node at ``address``."""
    with redis.Redis(host=address[0], port=address[1], socket_timeout=1.0) as client:
        ranges = client.execute_command("CLUSTER", "SLOTS")
    for entry in ranges:
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        if start <= slot <= end:
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            return host, int(master[1])
    return None


class RedisClusterTopology(Topology):
    """Six cluster nodes: three masters, each with one replica.

    Args:
        masters: number of masters (3 at least; Redis Cluster needs three).
        replicas_per_master: replicas of each master.
    """

    def __init__(self, masters: int = 3, replicas_per_master: int = 1) -> None:
        if masters < 3:
            raise ValueError("Redis Cluster needs at least 3 masters")
        self.replicas_per_master = replicas_per_master
        args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(_NODE_TIMEOUT_MS),
            "--cluster-require-full-coverage", "no",
            # A replica takes over however old its data (and syncs at once).
            "--cluster-replica-validity-factor", "0",
            "--repl-diskless-sync-delay", "0",
        )  # fmt: skip
        count = masters * (1 + replicas_per_master)
        self.nodes = [RedisServer(extra_args=args) for _ in range(count)]

    @property
    def addresses(self) -> list[Address]:
        """``(host, port)`` of every node, running or not."""
        return [node.address for node in self.nodes]

    @property
    def startup_nodes(self) -> list[Address]:
        """Addresses of the nodes that run now (for a cluster client)."""
        return [node.address for node in self.nodes if node.running]

    @property
    def processes(self) -> list[RedisServer]:
        """Every node."""
        return self.nodes

    def node_at(self, address: Address) -> RedisServer:
        """The node listening on ``address``."""
        return server_at(self.nodes, address)

    def _start(self) -> None:
        """Start the nodes, create the cluster, wait until it is ok and the replicas synced."""
        cli = redis_cli_binary()
        if cli is None:
            raise RedisServerError("redis-cli is not on PATH")
        for node in self.nodes:
            _start_below_bus_limit(node)
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"{host}:{port}" for host, port in self.addresses),
                "--cluster-replicas",
                str(self.replicas_per_master),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise RedisServerError(f"redis-cli --cluster create failed:\n{created.stdout}")
        deadline = time.monotonic() + _SETTLE_TIMEOUT_S
        while not self._all_ok():
            if time.monotonic() >= deadline:
                raise RedisServerError("the cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def _all_ok(self) -> bool:
        try:
            infos = [_cluster_info(a) for a in self.startup_nodes]
        except (redis.RedisError, OSError):
            return False
        return all(
            i.get("cluster_state") == "ok"
            and i.get("cluster_slots_assigned") == "16384"
            and int(i.get("cluster_known_nodes", 0)) == len(self.nodes)
            for i in infos
        ) and all(_replica_synced(a) for a in self.startup_nodes)

    # -- faults ----------------------------------------------------------------------------

    async def master_of(self, key: bytes | str) -> Address:
        """The master serving ``key``'s slot, according to a running node."""
        slot = _key_slot(key)
        for address in self.startup_nodes:
            try:
                owner = await asyncio.to_thread(_slot_owner, address, slot)
            except (redis.RedisError, OSError):
                continue
            if owner is not None:
                return owner
        raise RedisServerError(f"no node knows the owner of slot {slot}")

    async def kill_master_of(
        self, key: bytes | str, *, within: float = _SETTLE_TIMEOUT_S
    ) -> tuple[Address, Address]:
        """kill -9 the master of ``key``'s slot; wait until a replica serves it.

        Returns:
            ``(killed, promoted)`` addresses.
        """
        slot = _key_slot(key)
        old = await self.master_of(key)
        self.node_at(old).kill()
        deadline = time.monotonic() + within
        while True:
            try:
                owners = {
                    await asyncio.to_thread(_slot_owner, address, slot)
                    for address in self.startup_nodes
                }
                infos = [
                    await asyncio.to_thread(_cluster_info, address)
                    for address in self.startup_nodes
                ]
                if (
                    len(owners) == 1
                    and old not in owners
                    and None not in owners
                    and all(i.get("cluster_state") == "ok" for i in infos)
                ):
                    new = owners.pop()
                    assert new is not None
                    return old, new
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise RedisServerError(f"no failover of slot {slot} within {within:.0f} s")
            await asyncio.sleep(0.05)

    async def move_slot_of(self, key: bytes | str) -> tuple[Address, Address]:
        """Move ``key``'s slot, with its keys, to another master (a resharding step:
        SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE on every master).

        Returns:
            ``(from, to)`` addresses.
        """
        slot = _key_slot(key)
        source = await self.master_of(key)
        await asyncio.to_thread(self._move_slot, slot, source)
        return source, await self.master_of(key)

    def _move_slot(self, slot: int, source: Address) -> None:
        masters = [a for a in self.startup_nodes if _role(a) == "master"]
        target = next(a for a in masters if a != source)
        ids = {a: _node_id(a) for a in masters}
        with (
            redis.Redis(host=source[0], port=source[1]) as src,
            redis.Redis(host=target[0], port=target[1]) as dst,
        ):
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", target[0], target[1], "", 0, 5000, "KEYS", *keys)
        for address in masters:
            with redis.Redis(host=address[0], port=address[1]) as node:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])


_MAX_CLUSTER_PORT = 65535 - 10000
"""A cluster node also listens on its port + 10000 (the cluster bus)."""


def _start_below_bus_limit(node: RedisServer) -> None:
    """Start ``node`` on a free port whose bus port (+10000) exists too.

    The OS hands out free ports up to 60999 and near each other, so a
    port picked by the OS may be refused again and again by a cluster node.
    """
    for _ in range(20):
        node.port = random.randint(20000, _MAX_CLUSTER_PORT)
        try:
            node.start()
        except RedisServerError:
            continue  # taken meanwhile
        return
    raise RedisServerError(f"no free port for a cluster node:\n{node.log}")


def _role(address: Address) -> str:
    with redis.Redis(host=address[0], port=address[1], socket_timeout=1.0) as client:
        return str(client.info("replication").get("role"))


def _node_id(address: Address) -> str:
    with redis.Redis(host=address[0], port=address[1], socket_timeout=1.0) as client:
        raw = client.execute_command("CLUSTER", "MYID")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _key_slot(key: bytes | str) -> int:
    """The cluster slot of ``key`` (hash tags honoured)."""
    from redis.crc import key_slot  # noqa: PLC0415 (redis-py's own implementation)

    return int(key_slot(key.encode() if isinstance(key, str) else key))


async def cluster_client(topology: RedisClusterTopology) -> aioredis.RedisCluster:
    """A ``redis.asyncio.RedisCluster`` client of ``topology`` (initialised)."""
    host, port = topology.startup_nodes[0]
    client = aioredis.RedisCluster(host=host, port=port)
    await client.initialize()
    return client
