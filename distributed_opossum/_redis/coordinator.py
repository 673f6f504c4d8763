"""One coordinator per (event loop, Redis client): the ticker and the listener.

All breakers of a process that share a client share its coordinator: ONE
pub/sub connection (the channel of each breaker held, see :mod:`.listener`), ONE ticker task
(:mod:`.reporter`) that pipelines the reports of every breaker that is due
into one round trip per node, and one view of Redis' health
(``registry_down`` / ``registry_up``), judged per node on a Redis Cluster.

Both tasks are supervised: they re-raise cancellation, log and count every
other error, reconnect with capped, jittered backoff, and never die silently.
Nothing here is on a breaker's call path.

Lifecycle. A coordinator belongs to one loop. It closes when its last breaker
leaves (and that breaker's ``shutdown()`` waits for it), when the application
closes the client (``_redis_client.watch_close``), or when its loop ends: the
loop's teardown (``asyncio.run``, pytest-asyncio, ``TestClient``) cancels its
tasks, and a coordinator cancelled by anyone but itself *retires*: it closes its
pub/sub connection while the loop still runs, and tells its breakers, which
join a new coordinator on the loop of their next call. A closing coordinator is
never handed out again, so a breaker made right after another one's shutdown
gets a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from distributed_opossum._logs import Throttle, logger

from .client import is_closed, route_of, watch_close
from .errors import REDIS_ERRORS, REGISTRY_ERRORS
from .errors import describe as _describe
from .listener import Listener
from .reporter import RECONNECT_MIN, Reporter

if TYPE_CHECKING:
    from .link import SharedLink

__all__ = [
    "RECONNECT_MIN",
    "REDIS_ERRORS",
    "REGISTRY_ERRORS",
    "Coordinator",
    "coordinator_for",
    "live_coordinators",
]

CLOSE_WAIT = 2.0

_coordinators: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Coordinator]] = (
    weakref.WeakKeyDictionary()
)


def coordinator_for(client: Any, loop: asyncio.AbstractEventLoop) -> Coordinator | None:
    """The coordinator of ``client`` on ``loop``, created on first use; None once the
    application closed the client."""
    if is_closed(client, loop):
        return None
    per_loop = _coordinators.setdefault(loop, {})
    coordinator = per_loop.get(id(client))
    if coordinator is None or coordinator.client is not client or coordinator.closed:
        coordinator = per_loop[id(client)] = Coordinator(client, loop)
        watch_close(client, coordinator)
    return coordinator


def live_coordinators(client: Any = None) -> list[Coordinator]:
    """Every coordinator not closing yet (of ``client`` only, when given), on any loop."""
    return [
        coordinator
        for per_loop in list(_coordinators.values())
        for coordinator in list(per_loop.values())
        if not coordinator.closed and (client is None or coordinator.client is client)
    ]


class Coordinator:
    """Reports, listens and reconciles for every breaker on one client and loop.

    Attributes:
        down: the error of the current outage, or None while Redis answers.
        stats: counters for operators and tests (ticks, round trips, errors, ...).
    """

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.links: weakref.WeakSet[SharedLink] = weakref.WeakSet()
        self.by_channel: dict[str, weakref.WeakSet[SharedLink]] = {}
        self._down_nodes: dict[str, BaseException] = {}
        self._down_links: weakref.WeakKeyDictionary[SharedLink, BaseException] = (
            weakref.WeakKeyDictionary()
        )
        self.closed = False
        """True from the moment closing begins: never handed out again, loops stop."""
        self.stats: dict[str, int] = {
            "ticks": 0,
            "round_trips": 0,
            "reports": 0,
            "tick_errors": 0,
            "listener_errors": 0,
            "messages": 0,
            "bad_messages": 0,
            "script_errors": 0,
            "sweeps": 0,
            "pings": 0,
            "plain_reports": 0,
            "tallies": 0,
            "plain_tallies": 0,
            "tally_round_trips": 0,
            "redirects": 0,
        }
        self._reporter = Reporter(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._throttle = Throttle()
        self.listener = Listener(self)
        """The pub/sub side: subscribes to the channel of each breaker held."""

    # -- membership --------------------------------------------------------------------------

    def register(self, link: SharedLink) -> None:
        """Start serving ``link`` (and the background tasks, on the first one)."""
        self.links.add(link)
        members = self.by_channel.get(link.keys.events)
        if not members:  # the channel's first link: subscribe it
            members = self.by_channel[link.keys.events] = weakref.WeakSet()
            self.listener.changed()
        members.add(link)
        if self.down is not None:
            # It joins an outage in progress: tell it once its owner had a chance
            # to listen (breakers register from their constructor).
            self.loop.call_soon(self._tell_down, link)
        link.next_due = self.loop.time()  # first sync at once: learn an open cluster
        link.next_sweep = link.next_due
        if self._ticker is None:
            self._ticker = self.loop.create_task(self._run_reporter(), name="dopossum-ticker")
            self._listener = self.loop.create_task(self._listen_forever(), name="dopossum-listener")
        self._reporter.wake()

    def unregister(self, link: SharedLink) -> bool:
        """Stop serving ``link``; True when it was the last one (then :meth:`close` it)."""
        self.links.discard(link)
        members = self.by_channel.get(link.keys.events)
        if members is not None:
            members.discard(link)
            if not members:  # its last link left: unsubscribe it
                del self.by_channel[link.keys.events]
                self.listener.changed()
        if self.links or self.closed:
            return False
        self._begin_close()
        return True

    @property
    def serving(self) -> bool:
        """True while breakers use the client through this coordinator."""
        return not self.closed and bool(self.links)

    async def client_closed(self) -> None:
        """The application closed the client: stop before its connections go."""
        for link in list(self.links):
            link.coordinator_lost(self, client_closed=True)
        await self.close()

    def report_soon(self, link: SharedLink) -> None:
        """Make ``link`` due now (a local trip is reported at once)."""
        link.next_due = self.loop.time()
        self._reporter.wake()

    def spawn(
        self, coroutine: Coroutine[Any, Any, Any], what: str, link: SharedLink | None = None
    ) -> None:
        """Run a one-off Redis call in the background; failures are logged, never raised.

        Redis trouble makes ``link``'s node down (every node, without ``link``).
        """

        async def guarded() -> None:
            try:
                await coroutine
            except REGISTRY_ERRORS as error:
                self.mark_down(error, link=link)
            except Exception as error:
                self.stats["script_errors"] += 1
                self._throttle.log(
                    logging.ERROR,
                    f"spawn:{what}",
                    "distributed_opossum: %s failed: %s",
                    what,
                    _describe(error),
                )

        task = self.loop.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop the ticker and the listener and close the pub/sub connection.

        Every caller waits until that is done; called from another loop than
        the coordinator's, it only starts the close there (or gives the
        coordinator up, when that loop is closed).
        """
        self._begin_close()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self.loop:
            self._close_elsewhere()
            return
        if self._closing is None:
            self._closing = self.loop.create_task(self._finish_close())
        await asyncio.shield(self._closing)

    def spawn_close(self) -> None:
        """Start closing without waiting for it (from any loop)."""
        self._begin_close()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._start_close()
        else:
            self._close_elsewhere()

    def _begin_close(self) -> None:
        """From now on nobody is handed this coordinator, and its loops stop."""
        if self.closed:
            return
        self.closed = True
        self._reporter.wake()
        per_loop = _coordinators.get(self.loop)
        if per_loop is not None and per_loop.get(id(self.client)) is self:
            del per_loop[id(self.client)]

    def _close_elsewhere(self) -> None:
        if self.loop.is_closed():
            return  # its tasks died with the loop; nothing left to await
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self.loop.call_soon_threadsafe(self._start_close)

    def _start_close(self) -> None:
        if self._closing is None:
            self._closing = self.loop.create_task(self._finish_close())

    async def _finish_close(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in (self._ticker, self._listener, *self._tasks) if t is not None]
        tasks = [t for t in tasks if t is not current and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a Redis client stuck on a frozen server must not hang shutdown
            # (the loops also stop on ``closed`` should a client swallow the cancel).
            await asyncio.wait(tasks, timeout=CLOSE_WAIT)
        await self.listener.close()

    def _retire(self) -> None:
        """Cancelled by someone else (the loop is ending): let the breakers go.

        Each breaker joins a new coordinator on the loop of its next call.
        """
        if self.closed:
            return
        self._begin_close()
        for link in list(self.links):
            link.coordinator_lost(self)

    async def _release_connections(self) -> None:
        """Close what this loop opened on the client while the loop still runs.

        The other tasks were cancelled with this one: once they are done, the
        connections they used are back in the pool and can be closed too, so
        that none bound to this loop is handed out on the next one.
        """
        current = asyncio.current_task()
        others = [t for t in (self._ticker, *self._tasks) if t is not None and t is not current]
        if others:
            await asyncio.wait(others, timeout=CLOSE_WAIT)
        await self.listener.close()
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            try:
                await pool.disconnect(inuse_connections=False)
            except Exception:  # a broken connection may fail to close; nothing to do
                logger.debug("distributed_opossum: dropping idle connections failed", exc_info=True)

    # -- health ------------------------------------------------------------------------------

    @property
    def down(self) -> BaseException | None:
        """The error of an outage in progress (of any node, on a cluster), or None."""
        return next(iter(self._down_nodes.values()), None)

    def down_on(self, node: str) -> BaseException | None:
        """The error of ``node``'s outage in progress (``""``: a plain client's server)."""
        return self._down_nodes.get(node)

    def is_down(self, link: SharedLink) -> bool:
        """True while ``link`` was told ``registry_down`` and not ``registry_up`` yet."""
        return link in self._down_links

    def _node_of(self, link: SharedLink) -> str | None:
        """The node serving ``link``'s keys now; None when no master serves them."""
        try:
            return route_of(self.client, link.keys.state).name
        except REGISTRY_ERRORS:
            return None

    def mark_down(
        self, error: BaseException, *, node: str | None = None, link: SharedLink | None = None
    ) -> None:
        """Redis cannot be used: announce ``registry_down`` once per outage per breaker.

        ``node`` names the cluster node that failed (its breakers are down),
        ``link`` a breaker whose call failed (the breakers of its node are
        down); with neither, every breaker of the client is. A plain client
        has one node, ``""``: every breaker is down whatever is given.
        """
        if self.closed:
            return
        if node is None and link is not None:
            node = self._node_of(link)
            if node is None:  # no master serves its slot: that breaker alone
                self._tell_down(link, error)
                return
        links = [
            other
            for other in list(self.links)
            if other not in self._down_links and (node is None or self._node_of(other) == node)
        ]
        first = (node or "") not in self._down_nodes
        self._down_nodes.setdefault(node or "", error)
        if first:
            # Refused (no rights, a wrong password, out of memory) needs someone to
            # act; unreachable usually passes by itself.
            level = logging.ERROR if isinstance(error, ResponseError) else logging.WARNING
            where = f" at {node}" if node else ""
            logger.log(
                level,
                "distributed_opossum: Redis%s cannot be used (%s); deciding locally until it can",
                where,
                _describe(error),
                extra={
                    "registry": "down",
                    "redis_error": _describe(error),
                    "redis_node": node or None,
                    "breakers": len(links),
                },
            )
            pool = getattr(self.client, "connection_pool", None)
            if pool is not None:
                # Drop the idle connections now, so that none left over from before a
                # Redis restart fails the first calls after it (a false second outage).
                self.spawn(pool.disconnect(inuse_connections=False), "reset connections")
        for other in links:
            self._tell_down(other, error)

    def _tell_down(self, link: SharedLink, error: BaseException | None = None) -> None:
        if link not in self.links or link in self._down_links or self.closed:
            return
        if error is None:
            # It joined while its node was down: tell it once its owner had a
            # chance to listen (breakers register from their constructor).
            node = self._node_of(link)
            error = self._down_nodes.get(node or "") or self._down_nodes.get("")
            if error is None:
                return
        self._down_links[link] = error
        link.emit("registry_down", error)

    def mark_up(self, node: str = "") -> None:
        """``node`` answers again: ``registry_up`` and a check for each of its breakers.

        On a cluster, a breaker told ``registry_down`` when its keys lived on
        another node (a failover moved them since) is up once its keys' node answers.
        """
        if self.closed or (node not in self._down_nodes and not self._down_links):
            return
        if self._down_nodes.pop(node, None) is not None:
            where = f" at {node}" if node else ""
            logger.info(
                "distributed_opossum: Redis%s answers again",
                where,
                extra={"registry": "up", "redis_node": node or None},
            )
        back = [link for link in list(self._down_links) if self._node_of(link) == node]
        for link in back:
            del self._down_links[link]
            link.verify()  # due now: what it decided locally meets Redis' state
            link.emit("registry_up")
        if not self._down_links:
            self._down_nodes.clear()  # every breaker of a node gone elsewhere is up
        self._reporter.wake()
        self.listener.wake()  # subscribe now rather than after its backoff

    def master_switched(self) -> None:
        """A Sentinel master switch: subscribe again and read every breaker's state."""
        self.listener.lost()
        for link in list(self.links):
            link.verify()

    async def _run_reporter(self) -> None:
        try:
            await self._reporter.run()
        except asyncio.CancelledError:
            self._retire()
            raise

    # -- the listener ------------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        """Run the listener (see :mod:`.listener`); retire when the loop cancels it."""
        try:
            await self.listener.run()
        except asyncio.CancelledError:
            if self._closing is None:  # not our close: the loop is ending
                self._retire()
                await self._release_connections()
            raise
