"""One pub/sub connection's worth of channels: plain on a single Redis, sharded on a Cluster.

The listener (:mod:`.listener`) decides which channels to hold and what a
message means; a subscription only carries them, in one of two ways:

* :class:`PlainSubscription`, on a single Redis (Sentinel-managed included):
  ``SUBSCRIBE``/``UNSUBSCRIBE`` on one connection.
* :class:`ShardedSubscription`, on a Redis Cluster: ``SSUBSCRIBE`` through
  redis-py's ``ClusterPubSub``, which keeps one connection per shard that holds
  a channel of ours, so a broadcast (``SPUBLISH``) never leaves its shard. It
  reads every shard's connection in a task of its own, so a message on one
  shard waits for no other shard's poll. When a shard's connection fails it
  refreshes the slot map and subscribes that shard's channels again, on
  whichever node owns their slots now (a failover, a slot move): the
  confirmations that come back tell the listener which breakers to check.

Both deliver redis-py's message dicts, subscription confirmations included
(``subscribe``/``ssubscribe``): a confirmation is the one sign that a
subscription was (re)made, since redis-py reconnects and resubscribes by
itself when a connection drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from distributed_opossum._logs import logger

__all__ = ["LISTEN_POLL", "PlainSubscription", "ShardedSubscription", "Subscription", "open_for"]

LISTEN_POLL = 1.0
"""Longest one read waits for a message before the listener looks around (closing, ...)."""
CLOSE_WAIT = 2.0
ORPHAN_RETRY_MIN = 0.1
ORPHAN_RETRY_MAX = 5.0
"""Longest a close waits for the shard readers it cancelled."""


class PlainSubscription:
    """Channels of a single Redis on one pub/sub connection."""

    def __init__(self, client: Any) -> None:
        self._pubsub = client.pubsub(push_handler_func=pass_push)
        self._opened = asyncio.Event()  # nothing to read before the first SUBSCRIBE

    @property
    def connected(self) -> bool:
        """True once a subscription command went out on the connection."""
        return self._pubsub.connection is not None

    async def subscribe(self, channels: Sequence[str]) -> None:
        """``SUBSCRIBE`` to ``channels`` (their confirmations come with the messages)."""
        await self._pubsub.subscribe(*channels)
        self._opened.set()

    async def unsubscribe(self, channels: Sequence[str]) -> None:
        """``UNSUBSCRIBE`` from ``channels``."""
        await self._pubsub.unsubscribe(*channels)

    async def resubscribe(self, channels: Sequence[str]) -> None:
        """Subscribe ``channels`` again (a single Redis has no slots to move)."""
        await self.subscribe(channels)

    async def get(self, wait: float) -> dict[str, Any] | None:
        """The next message or confirmation, or None after ``wait`` seconds."""
        if not self._opened.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._opened.wait()
            return None
        pubsub = self._pubsub
        connection = pubsub.connection
        if connection is None or not connection.is_connected or connection.health_check_interval:
            # redis-py's own read connects first, or pings for its health checks.
            return await _redis_py_read(pubsub, wait)
        try:
            response = await connection.read_response(
                timeout=wait, disconnect_on_error=False, push_request=True
            )
        except (RedisConnectionError, RedisTimeoutError):
            # The connection dropped: redis-py's read reconnects and subscribes
            # again (the confirmations make the listener check), as it always did.
            return await _redis_py_read(pubsub, wait)
        if response is None:
            return None
        # A broadcast goes straight to the listener: redis-py's message handling
        # (its bookkeeping and metrics hooks) costs more than the listener's own
        # work, for every pod at every change. The rest is redis-py's to handle
        # (an unsubscribe confirmation updates what it subscribes again, say).
        if isinstance(response, list) and len(response) == 3 and response[0] in _MESSAGE:
            return {"type": "message", "pattern": None, "channel": response[1], "data": response[2]}
        message: dict[str, Any] | None = await pubsub.handle_message(response, False)
        return message

    async def aclose(self) -> None:
        """Close the connection."""
        await self._pubsub.aclose()


_MESSAGE = (b"message", "message")
"""A plain broadcast's first element (bytes, or text on a client that decodes replies)."""


async def _redis_py_read(pubsub: Any, wait: float) -> dict[str, Any] | None:
    """One message read the way redis-py reads it (connecting, reconnecting, health checks)."""
    message: dict[str, Any] | None = await pubsub.get_message(
        ignore_subscribe_messages=False, timeout=wait
    )
    return message


class _ShardLost(Exception):
    """The connection to one shard failed for good (after redis-py's own retries)."""

    def __init__(self, node: str, error: BaseException) -> None:
        super().__init__(node, error)
        self.node = node
        self.error = error


class ShardedSubscription:
    """Shard channels of a Redis Cluster: one connection per shard, each read by its own task."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._pubsub: Any = client.pubsub(push_handler_func=pass_push)
        self._inbox: asyncio.Queue[dict[str, Any] | _ShardLost] = asyncio.Queue()
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._node_of: dict[str, str] = {}  # channel -> node it was subscribed on
        self._orphans: set[str] = set()  # channels of a lost shard, not subscribed again yet
        self._retry_at = 0.0
        self._retry_wait = ORPHAN_RETRY_MIN
        self.recovered = 0
        """Channels subscribed again after their shard's connection failed."""

    @property
    def connected(self) -> bool:
        """True while at least one shard's connection carries a channel."""
        return bool(self._pubsub.node_pubsub_mapping)

    async def subscribe(self, channels: Sequence[str]) -> None:
        """``SSUBSCRIBE`` to ``channels``, each on the node that owns its slot now."""
        await self._pubsub.ssubscribe(*channels)
        for channel in channels:
            with contextlib.suppress(Exception):  # a slot not covered: known after a refresh
                node = self._client.get_node_from_key(channel)
                if node is not None:
                    self._node_of[channel] = node.name
        self._start_readers()

    async def unsubscribe(self, channels: Sequence[str]) -> None:
        """``SUNSUBSCRIBE`` from ``channels``."""
        await self._pubsub.sunsubscribe(*channels)
        for channel in channels:
            self._node_of.pop(channel, None)

    async def resubscribe(self, channels: Sequence[str]) -> None:
        """Subscribe ``channels`` again on their slots' owners, after a fresh slot map.

        For channels a shard dropped (its slot moved away) or lost (its
        connection died for good).
        """
        await self._refresh()
        await self.subscribe(channels)

    async def get(self, wait: float) -> dict[str, Any] | None:
        """The next message or confirmation of any shard, or None after ``wait`` seconds."""
        await self._adopt_orphans()
        self._start_readers()
        if self._orphans:  # come back in time to try them again
            wait = min(wait, max(self._retry_at - asyncio.get_running_loop().time(), 0.0))
        try:
            async with asyncio.timeout(wait):
                item = await self._inbox.get()
        except TimeoutError:
            return None
        if isinstance(item, _ShardLost):
            await self._recover(item)
            return None
        return item

    async def aclose(self) -> None:
        """Stop reading and close every shard's connection."""
        readers = list(self._readers.values())
        self._readers.clear()
        for reader in readers:
            reader.cancel()
        self._orphans.clear()
        if readers:
            await asyncio.wait(readers, timeout=CLOSE_WAIT)
        await self._pubsub.aclose()

    # -- reading -----------------------------------------------------------------------------

    def _start_readers(self) -> None:
        """One reader per shard connection that ClusterPubSub holds now (it adds and drops
        them as channels come, go and move)."""
        # Only connections that carry a channel of ours: one whose channels all
        # moved away (its node died) is left alone until ClusterPubSub drops it.
        held = set(self._pubsub.node_pubsub_mapping) & set(self._node_of.values())
        for name in [n for n in self._readers if n not in held]:
            self._readers.pop(name).cancel()
        for name in held:
            reader = self._readers.get(name)
            if reader is not None and not reader.done():
                continue
            node = self._client.get_node(node_name=name)
            if node is not None:
                self._readers[name] = asyncio.get_running_loop().create_task(
                    self._read(node), name=f"dopossum-shard-reader {name}"
                )

    async def _read(self, node: Any) -> None:
        try:
            while True:
                message = await self._pubsub.get_sharded_message(
                    ignore_subscribe_messages=False, timeout=LISTEN_POLL, target_node=node
                )
                if message is not None:
                    self._inbox.put_nowait(message)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # handed to the listener's task, which recovers
            self._inbox.put_nowait(_ShardLost(node.name, error))

    async def _recover(self, lost: _ShardLost) -> None:
        """A shard's connection failed: its channels go to whoever owns their slots now
        (the other shards' subscriptions stay as they are)."""
        channels = [c for c, node in self._node_of.items() if node == lost.node]
        logger.warning(
            "distributed_opossum: the pub/sub connection to %s failed (%s: %s); "
            "subscribing its %d channel(s) again on their slots' owners",
            lost.node,
            type(lost.error).__name__,
            lost.error,
            len(channels),
        )
        self._readers.pop(lost.node, None)
        for channel in channels:
            del self._node_of[channel]
        self._orphans.update(channels)
        self._retry_at = 0.0
        self._retry_wait = ORPHAN_RETRY_MIN
        await self._adopt_orphans()

    async def _adopt_orphans(self) -> None:
        """Subscribe a lost shard's channels again, once their slots have an owner that
        answers (a failover takes the cluster a few seconds): retried with backoff."""
        loop = asyncio.get_running_loop()
        if not self._orphans or loop.time() < self._retry_at:
            return
        channels = sorted(self._orphans)
        try:
            await self.resubscribe(channels)
        except Exception as error:  # the new owner is not there yet: later
            logger.debug("distributed_opossum: subscribing again failed: %s", error)
            self._retry_at = loop.time() + self._retry_wait * random.uniform(0.5, 1.5)
            self._retry_wait = min(self._retry_wait * 2, ORPHAN_RETRY_MAX)
            return
        self._orphans.difference_update(channels)
        self.recovered += len(channels)

    async def _refresh(self) -> None:
        """Read the slot map again (ClusterPubSub moves channels whose owner changed)."""
        await self._client.nodes_manager.initialize()


Subscription = PlainSubscription | ShardedSubscription
"""Either kind; the listener uses only what both have."""


def open_for(client: Any) -> Subscription:
    """A new, empty subscription of the right kind for ``client``."""
    if isinstance(client, RedisCluster):
        return ShardedSubscription(client)
    return PlainSubscription(client)


async def pass_push(response: Any) -> Any:
    """The pub/sub push handler: the message as it came.

    redis-py's default handler formats every message into a debug log line,
    whether debug logging is on or not: a 1 MB message (anyone with access
    to the channel can send one) cost the event loop several milliseconds.
    """
    return response
