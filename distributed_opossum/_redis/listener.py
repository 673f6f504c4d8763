"""The pub/sub side of a coordinator: one connection, the channel of each breaker it holds.

A coordinator (one per loop and client) holds breakers by name; each breaker's
state broadcasts go to its own channel (``<prefix>:{<name>}:events``). The
listener subscribes to exactly the channels of the breakers its coordinator
holds, counted by the coordinator's ``by_channel`` (channel -> links): the
first link of a channel subscribes it, the last one to leave unsubscribes it.
A pod that holds no breaker ``X`` receives nothing of ``X``, so Redis spends
nothing on it either. All of it on one connection per (loop, client): plain
``SUBSCRIBE`` on a single Redis, sharded ``SSUBSCRIBE`` on a Redis Cluster
(see :mod:`.subscription`).

Pub/sub is at-most-once. Whenever a subscription is (re)made, a broadcast may
have been missed just before, so every confirmation that comes back makes the
listener read the state of that channel's breakers: one cheap read each,
pipelined (:meth:`ScriptBatch.read_state`), followed like any reply. That
covers the first subscription (a broadcast between a breaker's first sync and
its subscription), redis-py's silent reconnect after a killed connection, a
new connection after an error, a failover and a slot move on a Cluster.

The listener never dies: it re-raises cancellation, and logs (throttled),
counts and backs off from anything else, then connects again. A lost
subscription is no outage (commands may work all along), so it announces
nothing; only failing commands make the registry "down".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from redis.asyncio.cluster import RedisCluster

from distributed_opossum._logs import Throttle, describe_error, logger

from .scripts import parse_broadcast, scripts_for
from .subscription import CLOSE_WAIT, LISTEN_POLL, Subscription, open_for

if TYPE_CHECKING:
    from .link import SharedLink

__all__ = ["LISTEN_POLL", "Listener", "ListenerHost"]

RECONNECT_MIN = 0.05
RECONNECT_MAX = 5.0
CHECK_LIMIT = 2.0
"""Longest the reads after a (re)subscription may take before the ticker checks instead."""
CHECK_BATCH = 1000
"""Reads per pipelined round trip."""
_DATA = frozenset(("message", "smessage"))
_CONFIRMED = frozenset(("subscribe", "ssubscribe"))


class ListenerHost(Protocol):
    """What the listener uses of its coordinator."""

    client: Any
    loop: asyncio.AbstractEventLoop
    stats: dict[str, int]

    @property
    def closed(self) -> bool:
        """True from the moment the coordinator begins closing."""

    @property
    def by_channel(self) -> dict[str, weakref.WeakSet[SharedLink]]:
        """The links held, by events channel."""


class Listener:
    """Subscribes to the channels of the breakers held, and hands their broadcasts over.

    Args:
        host: the coordinator it listens for.
    """

    def __init__(self, host: ListenerHost) -> None:
        self._host = host
        self._subscription: Subscription | None = None
        self._sent: set[str] = set()  # channels subscribed on the current subscription
        self._lock = asyncio.Lock()  # one subscription command at a time
        self._dirty = False
        self._moved: set[str] = set()  # channels a shard dropped: their slot moved away
        self._syncing: asyncio.Task[None] | None = None
        self._to_check: set[str] = set()
        self._checking: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._throttle = Throttle()
        host.stats.update(checks=0, confirmations=0)

    @property
    def subscribed(self) -> bool:
        """True while a subscription connection is open."""
        return self._subscription is not None and self._subscription.connected

    @property
    def channels(self) -> frozenset[str]:
        """The channels subscribed on the current connection (as far as sent)."""
        return frozenset(self._sent)

    # -- what to hold --------------------------------------------------------------------------

    def changed(self) -> None:
        """A channel got its first link or lost its last: (un)subscribe soon, in one command."""
        self._dirty = True
        if self._subscription is None:
            return  # the next connection subscribes whatever is wanted then
        if self._syncing is None or self._syncing.done():
            self._syncing = self._host.loop.create_task(self._sync(), name="dopossum-subscribe")

    def _wanted(self) -> set[str]:
        return {channel for channel, links in self._host.by_channel.items() if links}

    async def _sync(self) -> None:
        while self._dirty and not self._host.closed:
            self._dirty = False
            async with self._lock:
                subscription = self._subscription
                if subscription is None:
                    return  # the next connection subscribes what is wanted then
                wanted = self._wanted()
                gone = sorted(self._sent - wanted)
                new = sorted(wanted - self._sent)
                try:
                    if gone:
                        self._sent.difference_update(gone)
                        await subscription.unsubscribe(gone)
                    if new:
                        self._sent.update(new)
                        if self._moved.intersection(new):
                            self._moved.clear()
                            await subscription.resubscribe(new)  # on the slot's new owner
                        else:
                            await subscription.subscribe(new)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # a new connection subscribes everything
                    self._trouble(error, "subscribing")
                    self.lost()
                    return

    def _prune(self) -> None:
        """Unsubscribe channels whose breakers were dropped without a shutdown."""
        by_channel = self._host.by_channel
        if any(not by_channel.get(channel) for channel in self._sent):
            self.changed()

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Subscribe, and dispatch every message, until the coordinator closes.

        Raises:
            asyncio.CancelledError: when cancelled; nothing else ever leaves it.
        """
        backoff = RECONNECT_MIN
        host = self._host
        failed = False
        while not host.closed:
            try:
                subscription = await self._connect(refresh=failed)
                while not host.closed and self._subscription is subscription:
                    message = await subscription.get(LISTEN_POLL)
                    # Only a working subscription resets the backoff: a refused
                    # one (ACL) fails here, after subscribing seemed to succeed.
                    backoff = RECONNECT_MIN
                    failed = False
                    if message is None:
                        self._prune()
                    else:
                        self._on_message(message)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the listener never dies: say it, back off, retry
                if host.closed:
                    break  # closing (the client was closed, say): not an outage
                host.stats["listener_errors"] += 1
                failed = True
                self._trouble(error, "listening")
            await self._drop()
            if host.closed:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff * random.uniform(0.5, 1.5)):
                    await self._wake.wait()
            backoff = min(backoff * 2, RECONNECT_MAX)

    async def _connect(self, *, refresh: bool) -> Subscription:
        client = self._host.client
        if isinstance(client, RedisCluster):
            # An uninitialised cluster client knows no node yet (its pub/sub
            # would fail with a KeyError); it is a no-op once done.
            await client.initialize()
            if refresh:
                # After a failure the slot map may name a dead master (a failover
                # under way): read it again, so the channels go to the new owners.
                await client.nodes_manager.initialize()
        async with self._lock:
            subscription = self._subscription = open_for(client)
            self._sent = self._wanted()
            self._dirty = False
            if self._sent:
                await subscription.subscribe(sorted(self._sent))
        return subscription

    def _trouble(self, error: BaseException, doing: str) -> None:
        self._throttle.log(
            logging.WARNING,
            f"listener:{type(error).__name__}",
            "distributed_opossum: lost the pub/sub subscription while %s (%s); subscribing "
            "again (state changes arrive with the reports meanwhile)",
            doing,
            describe_error(error),
        )

    def wake(self) -> None:
        """Connect now rather than after the backoff (Redis answers again)."""
        self._wake.set()

    def lost(self) -> None:
        """Drop the subscription now (the listener subscribes again, and checks)."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            task = self._host.loop.create_task(_close_quietly(subscription))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self._wake.set()

    async def _drop(self) -> None:
        """Close the subscription connection (the loop makes a new one)."""
        subscription, self._subscription = self._subscription, None
        self._sent = set()
        if subscription is not None:
            await _close_quietly(subscription)

    async def close(self) -> None:
        """Stop everything but the loop (its task is the coordinator's to cancel)."""
        current = asyncio.current_task()
        tasks = [
            task
            for task in (self._syncing, self._checking)
            if task is not None and not task.done() and task is not current
        ]
        for task in tasks:
            task.cancel()
        await self._drop()
        tasks += self._closing  # closing connections are waited for, not cancelled
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT)

    # -- messages ------------------------------------------------------------------------------

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        if not isinstance(channel, str):
            return
        if kind in _DATA:
            self._on_broadcast(channel, message.get("data"))
        elif kind in _CONFIRMED:
            self._host.stats["confirmations"] += 1
            self._check_soon(channel)
        elif kind == "sunsubscribe" and channel in self._sent:
            # A shard dropped the channel (its slot moved away): subscribe it again
            # on the slot's new owner (the confirmation then makes us check).
            self._sent.discard(channel)
            self._moved.add(channel)
            self.changed()

    def _on_broadcast(self, channel: str, data: object) -> None:
        host = self._host
        host.stats["messages"] += 1
        links = host.by_channel.get(channel)
        if not links:
            return
        broadcast = parse_broadcast(data) if isinstance(data, bytes | str) else None
        if broadcast is None:
            host.stats["bad_messages"] += 1
            return
        for link in list(links):
            if broadcast.name == link.keys.name:
                link.apply(broadcast, own=False)

    # -- checks after a (re)subscription -------------------------------------------------------

    def _check_soon(self, channel: str) -> None:
        self._to_check.add(channel)
        if self._checking is None or self._checking.done():
            self._checking = self._host.loop.create_task(self._check(), name="dopossum-check")

    async def _check(self) -> None:
        """Read the state of every breaker whose subscription was (re)made, pipelined."""
        host = self._host
        while self._to_check and not host.closed:
            channels, self._to_check = self._to_check, set()
            links = [link for c in channels for link in list(host.by_channel.get(c, ()))]
            for start in range(0, len(links), CHECK_BATCH):
                await self._read_states(links[start : start + CHECK_BATCH])

    async def _read_states(self, links: list[SharedLink]) -> None:
        batch = scripts_for(self._host.client).batch()
        for link in links:
            batch.read_state(link.keys)
        try:
            async with asyncio.timeout(CHECK_LIMIT):
                results = await batch.execute_states()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the ticker checks them instead (and judges Redis' health)
            self._throttle.log(
                logging.WARNING,
                f"check:{type(error).__name__}",
                "distributed_opossum: reading %d breaker states after subscribing failed (%s); "
                "their next reports check them",
                len(links),
                describe_error(error),
            )
            for link in links:
                link.verify()
            return
        self._host.stats["checks"] += len(links)
        held = self._host.by_channel
        for link, result in zip(links, results, strict=True):
            if link not in held.get(link.keys.events, ()):
                continue  # it left meanwhile
            if isinstance(result, Exception):
                link.verify()
            else:
                # Followed like any reply: what a lost broadcast said is in a newer
                # epoch (or another gen), and a pod's own trip under quorum, whose
                # vote Redis has not counted yet, stays open.
                link.apply(result, own=False)


async def _close_quietly(subscription: Subscription) -> None:
    try:
        await subscription.aclose()
    except Exception:  # closing a broken connection may fail again; nothing to do
        logger.debug("distributed_opossum: closing pub/sub failed", exc_info=True)
