"""One coordinator per (event loop, Redis client): the ticker and the listener.

All breakers of a process that share a client share its coordinator: ONE
pub/sub connection (the channel of each breaker held, see :mod:`.listener`), ONE ticker task
that pipelines the reports of every breaker that is due into one round trip,
and one view of Redis' health (``registry_down`` / ``registry_up``).

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

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from distributed_opossum._logs import Throttle, describe_error, logger

from .client import is_closed, watch_close
from .failover import CHECK_INTERVAL, MasterWatch
from .listener import Listener
from .scripts import SharedState, WindowReport, scripts_for

if TYPE_CHECKING:
    from .link import SharedLink

__all__ = [
    "REDIS_ERRORS",
    "REGISTRY_ERRORS",
    "Coordinator",
    "coordinator_for",
    "live_coordinators",
]

REDIS_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,  # the builtin ConnectionError and TimeoutError included
)
"""Errors that mean "Redis cannot be reached" (as opposed to a bad reply)."""
REGISTRY_ERRORS: tuple[type[Exception], ...] = (
    *REDIS_ERRORS,
    RedisError,
    RedisClusterException,  # the cluster client's own root, not a RedisError
)
"""Everything the Redis layer raises when Redis cannot be used: unreachable, or
refusing (out of memory, read-only, no rights, cluster down, ...)."""

ROUND_TRIP_LIMIT = 2.0
"""A round trip taking longer than this counts as Redis being down."""
BATCH_SIZE = 1000
"""Reports per pipelined round trip: large enough for one round trip per tick in
most processes, small enough that a round trip stays far below ROUND_TRIP_LIMIT."""
RECONNECT_MIN = 0.05
RECONNECT_MAX = 5.0
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
        self.down: BaseException | None = None
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
        }
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._throttle = Throttle()
        self.listener = Listener(self)
        """The pub/sub side: subscribes to the channel of each breaker held."""
        self._master = MasterWatch.of(client)
        self._master_checked = 0.0

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
        if self._ticker is None:
            self._ticker = self.loop.create_task(self._tick_forever(), name="dopossum-ticker")
            self._listener = self.loop.create_task(self._listen_forever(), name="dopossum-listener")
        self._wake.set()

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
        self._wake.set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any], what: str) -> None:
        """Run a one-off Redis call in the background; failures are logged, never raised."""

        async def guarded() -> None:
            try:
                await coroutine
            except REGISTRY_ERRORS as error:
                self.mark_down(error)
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
        self._wake.set()
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

    def mark_down(self, error: BaseException) -> None:
        """Redis cannot be reached: announce ``registry_down`` once per outage."""
        if self.down is not None or self.closed:
            return
        self.down = error
        # Refused (no rights, a wrong password, out of memory) needs someone to
        # act; unreachable usually passes by itself.
        level = logging.ERROR if isinstance(error, ResponseError) else logging.WARNING
        logger.log(
            level,
            "distributed_opossum: Redis cannot be used (%s); deciding locally until it can",
            _describe(error),
            extra={
                "registry": "down",
                "redis_error": _describe(error),
                "breakers": len(self.links),
            },
        )
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            # Drop the idle connections now, so that none left over from before a
            # Redis restart fails the first calls after it (a false second outage).
            self.spawn(pool.disconnect(inuse_connections=False), "reset connections")
        for link in list(self.links):
            link.emit("registry_down", error)

    def _tell_down(self, link: SharedLink) -> None:
        if self.down is not None and link in self.links:
            link.emit("registry_down", self.down)

    def mark_up(self) -> None:
        """Redis answers again: announce ``registry_up`` and reconcile every breaker."""
        if self.down is None or self.closed:
            return
        self.down = None
        logger.info("distributed_opossum: Redis answers again", extra={"registry": "up"})
        for link in list(self.links):
            link.verify()  # due now: what it decided locally meets Redis' state
            link.emit("registry_up")
        self._wake.set()
        self.listener.wake()  # subscribe now rather than after its backoff

    # -- the ticker --------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while not self.closed:
            try:
                await self._tick()
            except asyncio.CancelledError:
                self._retire()
                raise
            except Exception as error:  # the ticker never dies: say it (now and then), go on
                self.stats["tick_errors"] += 1
                self._throttle.log(
                    logging.ERROR,
                    f"tick:{type(error).__name__}",
                    "distributed_opossum: report tick failed: %s",
                    _describe(error),
                )
                await asyncio.sleep(RECONNECT_MIN)
            try:
                await self._sleep_until_due()
            except asyncio.CancelledError:
                self._retire()
                raise

    async def _sleep_until_due(self) -> None:
        links = list(self.links)
        if not links:
            delay = None
        else:
            delay = max(0.0, min(link.next_due for link in links) - self.loop.time())
            if self.down is not None:
                delay = max(delay, RECONNECT_MIN)
            if self._master is not None:
                next_check = self._master_checked + CHECK_INTERVAL - self.loop.time()
                delay = min(delay, max(next_check, 0.0))
        self._wake.clear()
        if self.closed:
            return
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _tick(self) -> None:
        """Every due breaker's report, pipelined: one round trip per ``BATCH_SIZE`` breakers."""
        if self._master is not None and self.loop.time() >= self._master_checked + CHECK_INTERVAL:
            await self._check_master(self._master)
        now = self.loop.time()
        due = [link for link in list(self.links) if link.next_due <= now]
        if not due:
            return
        self.stats["ticks"] += 1
        for link in due:
            # On a grid of the interval, so breakers made at different times
            # still share their ticks (and round trips).
            link.next_due = (now // link.interval + 1) * link.interval
        for start in range(0, len(due), BATCH_SIZE):
            if not await self._report(due[start : start + BATCH_SIZE]):
                return  # Redis is down: the rest would only time out too

    async def _check_master(self, watch: MasterWatch) -> None:
        """Follow a Sentinel master switch: new connections, every state read again."""
        self._master_checked = self.loop.time()
        try:
            switched = await watch.switched()
        except Exception as error:  # Sentinel unreachable: the reports will tell
            self._throttle.log(
                logging.WARNING,
                "sentinel",
                "distributed_opossum: asking Sentinel failed: %s",
                _describe(error),
            )
            return
        if switched is None:
            return
        logger.warning(
            "distributed_opossum: the Redis master moved from %s to %s; reading every "
            "breaker's state from the new master",
            *switched,
        )
        self.listener.lost()
        for link in list(self.links):
            link.verify()

    async def _report(self, due: list[SharedLink]) -> bool:
        """One pipelined round trip for ``due``; False when Redis could not be used."""
        reports = [link.take_report() for link in due]
        try:
            try:
                results = await self._send_reports(due, reports)
            except RedisConnectionError:
                if self.down is not None:
                    raise
                # A pooled connection left over from before a Redis restart fails
                # once; the pipeline was not taken, so one retry on a fresh
                # connection tells a dead Redis from a dead connection.
                results = await self._send_reports(due, reports)
        except REGISTRY_ERRORS as error:  # asyncio's TimeoutError is an OSError
            # Nothing is buffered: what happened meanwhile stays local history,
            # but a trip vote is kept for the next report.
            self.stats["tick_errors"] += 1
            self._lost(due, reports)
            self.mark_down(error)
            return False
        self.stats["round_trips"] += 1
        self.stats["reports"] += len(due)
        refused = [r for r in results if isinstance(r, ResponseError)]
        if refused and len(refused) == len(results):
            # Redis answered but ran none of them (out of memory, read-only,
            # no rights, ...): it cannot be used, as if it were down.
            self.stats["tick_errors"] += 1
            self._lost(due, reports)
            self.mark_down(refused[0])
            return False
        self.mark_up()
        for link, report, result in zip(due, reports, results, strict=True):
            if isinstance(result, Exception):
                self.stats["script_errors"] += 1
                self._lost([link], [report])
                self._throttle.log(
                    logging.ERROR,
                    f"report:{link.keys.name}",
                    "distributed_opossum: report of %r failed: %s (it decides locally meanwhile)",
                    link.keys.name,
                    _describe(result),
                    circuit=link.keys.name,
                    redis_error=_describe(result),
                )
                continue
            link.apply(result, own=True)
        return True

    @staticmethod
    def _lost(links: list[SharedLink], reports: list[WindowReport]) -> None:
        """These reports did not run: keep their trip votes, and any check asked for."""
        for link, report in zip(links, reports, strict=True):
            if report.local_open:
                link.keep_vote()
            if link.verifying:
                link.verify()

    async def _send_reports(
        self, due: list[SharedLink], reports: list[WindowReport]
    ) -> list[SharedState | Exception]:
        batch = scripts_for(self.client).batch()
        for link, report in zip(due, reports, strict=True):
            batch.report_window(
                link.keys,
                report,
                instance=link.instance,
                known_epoch=max(link.epoch, 0),
                known_gen=link.gen or "",
                params=link.params,
                jitter=link.jitter(),
            )
        async with asyncio.timeout(ROUND_TRIP_LIMIT):
            return await batch.execute()

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


_describe = describe_error
