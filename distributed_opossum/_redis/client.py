"""The Redis client a distributed breaker is given: what is accepted, and noticing its close.

Only asyncio clients are accepted: a synchronous ``redis.Redis`` would block the
event loop on every report, and anything else would fail on every tick. The
check happens at construction, so the mistake is an error, not a log line a
second, forever.

redis-py keeps no "closed" flag: a closed client silently opens new connections
when used again. So the first coordinator on a client wraps that client's
``aclose()`` (on the instance only): when the application closes the client,
every coordinator on it stops before its connections go, the breakers keep
deciding locally, and this is logged once. Without it, the listener would see
its connection drop, announce a false ``registry_down``, reconnect on the
closed client (``registry_up``) and leak that socket at exit.

A client counts as closed on the loop that closed it. On a later loop (the
next ``TestClient`` block, the next test, the next ``asyncio.run``) the
application may use it again, as redis-py allows, and so do the breakers: a
lifespan that closes a module-level client does not cost the next lifespan
its shared breakers.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import redis.asyncio

from distributed_opossum._logs import logger

__all__ = [
    "CloseWatcher",
    "NodeRoute",
    "check_client",
    "follow_moved",
    "is_closed",
    "is_cluster",
    "ready",
    "refresh_slots",
    "route_of",
    "watch_close",
]


_ASYNC_CLIENTS = (redis.asyncio.Redis, redis.asyncio.RedisCluster)
_closed_on: weakref.WeakKeyDictionary[Any, weakref.ref[asyncio.AbstractEventLoop]] = (
    weakref.WeakKeyDictionary()
)
_watchers: weakref.WeakKeyDictionary[Any, weakref.WeakSet[CloseWatcher]] = (
    weakref.WeakKeyDictionary()
)


def check_client(label: str, client: object) -> object:
    """``client`` if it is an asyncio Redis client, else a TypeError saying what to pass."""
    if isinstance(client, _ASYNC_CLIENTS):
        return client
    expected = "a redis.asyncio.Redis, RedisCluster or Sentinel-managed client"
    if isinstance(client, str):
        raise TypeError(
            f"{label} must be {expected}, got the string {client!r:.80}; "
            "make one with redis.asyncio.Redis.from_url(url)"
        )
    if isinstance(client, redis.Redis | redis.RedisCluster):
        raise TypeError(
            f"{label} must be {expected}; the synchronous {type(client).__name__} "
            "blocks the event loop on every call: use redis.asyncio instead"
        )
    raise TypeError(f"{label} must be {expected}, got {type(client).__name__} {client!r:.80}")


class CloseWatcher(Protocol):
    """What :func:`watch_close` calls when the application closes the client."""

    @property
    def serving(self) -> bool:
        """True while breakers use the client through this watcher."""

    async def client_closed(self) -> None:
        """Stop using the client (before its connections go)."""


def is_closed(client: Any, loop: asyncio.AbstractEventLoop) -> bool:
    """True when the application closed ``client`` on ``loop`` (see :func:`watch_close`)."""
    closed_on = _closed_on.get(client)
    return closed_on is not None and closed_on() is loop


def watch_close(client: Any, watcher: CloseWatcher) -> None:
    """Call ``watcher.client_closed()`` when the application closes ``client``, before it closes.

    Watchers are held weakly: one that is gone needs no unregistering.
    """
    watchers = _watchers.get(client)
    if watchers is None:
        watchers = _watchers[client] = weakref.WeakSet()
        _wrap_aclose(client)
    watchers.add(watcher)


def _wrap_aclose(client: Any) -> None:
    original = client.aclose

    @functools.wraps(original)
    async def aclose(*args: Any, **kwargs: Any) -> None:
        loop = asyncio.get_running_loop()
        if not is_closed(client, loop):
            _closed_on[client] = weakref.ref(loop)
            watchers = list(_watchers.get(client, ()))
            if any(watcher.serving for watcher in watchers):
                logger.warning(
                    "distributed_opossum: the Redis client %r was closed while breakers use "
                    "it; they decide locally from now on (shut breakers down before closing "
                    "their client)",
                    client,
                )
            for watcher in watchers:
                try:
                    await watcher.client_closed()
                except Exception:  # the client's own close must still happen
                    logger.exception("distributed_opossum: stopping a coordinator failed")
        await original(*args, **kwargs)

    client.aclose = aclose


# -- Redis Cluster: where a breaker's keys live ----------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeRoute:
    """The server a breaker's keys live on.

    Attributes:
        name: ``host:port`` of the cluster master owning the keys' slot; ``""``
            for a plain (or Sentinel-managed) client, whose one server holds
            every key.
        node: redis-py's ``ClusterNode`` for ``name``, None for a plain client.
    """

    name: str
    node: Any = None


_SINGLE = NodeRoute("")


def is_cluster(client: Any) -> bool:
    """True for a ``redis.asyncio.RedisCluster``."""
    return isinstance(client, redis.asyncio.RedisCluster)


async def ready(client: Any) -> None:
    """Make a cluster client read its slot map, once (no round trip afterwards).

    redis-py reads it lazily on the first command, but the per-node pipelines
    and the pub/sub connection look nodes up before sending anything.
    """
    if is_cluster(client):
        await client.initialize()


def route_of(client: Any, key: str) -> NodeRoute:
    """The node serving ``key`` according to the client's slot map (no round trip).

    Raises:
        redis.exceptions.SlotNotCoveredError: no master serves the key's slot
            (a shard whose master died and has no replica to take over).
    """
    if not is_cluster(client):
        return _SINGLE
    node = client.get_node_from_key(key)
    return NodeRoute(node.name, node)


async def follow_moved(client: Any, error: Any) -> None:
    """Point the slot of a MOVED reply (``error``) at the node it names (no round trip)."""
    if is_cluster(client):
        await client.nodes_manager.move_slot(error)


async def refresh_slots(client: Any) -> None:
    """Read the cluster's slot map again (after a MOVED, a dead master, a failover).

    Connections to nodes that stay are recycled lazily; those to nodes gone
    are closed. Raises redis-py's errors when no node answers.
    """
    if is_cluster(client):
        await client.nodes_manager.initialize()
