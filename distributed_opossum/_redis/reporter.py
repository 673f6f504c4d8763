"""The ticker of a coordinator: every due breaker's report, pipelined per Redis node.

Once per report interval each breaker of the coordinator is *due*. A due
breaker with news (counts in its finished buckets, a trip vote, a local
close, a check asked for, no sync yet) sends its report, and so does one whose
own window (the entries it delivered, see :meth:`.link.SharedLink.pod_window`)
still holds calls, or has just emptied: its field in the windows hash is what
the tally counts of it, so it stays current, and young, until it goes. An idle
breaker (nothing in its window, nothing local to tell) sends nothing.

How a report goes. A breaker that knows the shared state and has no trip to
tell reports in plain commands (:mod:`.plain`): its entry, its window, and the
tally lease, whose snapshot of the last tally is the reply. A trip, a first
report, and any report after the breaker lost track of the state go by script
(``report_window.lua``), which judges a trip at once. The breakers that won
the tally lease in this round trip tally next (:mod:`.tallier`): with plain
commands when nothing opens, else by script, in one more round trip.

Idle breakers are swept instead: every ``SWEEP_INTERVAL`` seconds (the first
sweep after a breaker's first sync at a random point of it, so breakers made
together are not all swept in one tick), one cheap script call per idle
breaker (``touch_state.lua``: read the state hash, renew the keys' TTLs),
pipelined like the reports; and the coordinator PINGs each node with idle
breakers due once a tick (one command whatever their number), so that outages
and returns are noticed as soon as before. An idle pod's pooled view
(``cluster_view``: volume, failures, pods reporting) is as of its last report;
its ``age`` says so.

The sweep interval. Broadcasts carry every change at once, the reply to each
report carries the shared state, and a lost subscription re-reads every
breaker when it comes back: the sweep is only for what none of them covers
(a message lost while the subscription stayed up, a change that needs no
broadcast, such as Redis losing the state). So a lost broadcast costs an idle
breaker at most ``SWEEP_INTERVAL``, a busy one a report interval or two (the
next tally's snapshot shows the new epoch).
At 10 s, an idle pod×breaker pair costs Redis one small script call per 10 s
(BENCHMARKS.md: Idle breakers), instead of one report per second. The keys
live ``key_ttl_ms`` (at least 60 s) past the last report or sweep of any pod,
so they outlive any idle period: five sweeps in a row may fail before a key
expires, and then only when no pod holding the breaker reached Redis
meanwhile.

Redis Cluster. The due breakers are grouped by the master owning their keys'
slot (the client's slot map, no round trip) and each node gets its own
pipeline, all sent concurrently; an error of one node's round trip makes only
that node's breakers ``registry_down``. A MOVED reply points its slot at the
node it names; a node that cannot be reached and a slot no master covers make
the slot map be read again (at most once per ``SLOT_REFRESH_MIN``); the
breakers concerned (ASK and TRYAGAIN included) report again at the next tick.
Each node's results are applied as they come. A node found down is asked in
the background from then on (its breakers wait for its answer, the ticks do
not), so a frozen (not dead) master delays the others once, by up to
``ROUND_TRIP_LIMIT``, when it is found down; the slot map is read in the
background too (the node asked first may be that one).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import AskError, MovedError, RedisError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

from distributed_opossum._logs import Throttle, logger

from .client import NodeRoute, follow_moved, is_cluster, ready, refresh_slots, route_of
from .errors import REGISTRY_ERRORS, describe
from .failover import CHECK_INTERVAL, MasterWatch
from .scripts import BatchResult, PlainReply, PodWindow, SharedState, WindowReport, scripts_for
from .tallier import plain_tallies

if TYPE_CHECKING:
    from .coordinator import Coordinator
    from .link import SharedLink

__all__ = [
    "BATCH_SIZE",
    "RECONNECT_MIN",
    "ROUND_TRIP_LIMIT",
    "SLOT_REFRESH_MIN",
    "SWEEP_INTERVAL",
    "Reporter",
]

ROUND_TRIP_LIMIT = 2.0
"""A round trip taking longer than this counts as Redis (that node) being down."""
BATCH_SIZE = 1000
"""Calls per pipelined round trip: large enough for one round trip per tick in
most processes, small enough that a round trip stays far below ROUND_TRIP_LIMIT."""
SWEEP_INTERVAL = 10.0
"""Seconds between two sweeps of an idle breaker (see the module's docstring)."""
SLOT_REFRESH_MIN = 1.0
"""Seconds between two reads of a cluster's slot map."""
RECONNECT_MIN = 0.05
"""Shortest pause between two ticks while Redis (a node) is down."""

_REDIRECTS = (MovedError, AskError, TryAgainError)


@dataclass(slots=True, frozen=True)
class _Report:
    """One breaker's report of this tick: its finished buckets and its window."""

    bucket: WindowReport
    window: PodWindow
    epoch: int
    """The epoch the pod knew when it took the report (-1 before its first sync)."""


_Calls = list[tuple["SharedLink", _Report | None]]
"""A round trip's calls: a report, or None for a sweep."""


@dataclass(slots=True)
class _NodeWork:
    """What one tick sends to one node: reports, then sweeps."""

    route: NodeRoute
    reporting: list[SharedLink] = field(default_factory=list)
    reports: list[_Report] = field(default_factory=list)
    sweeping: list[SharedLink] = field(default_factory=list)


class Reporter:
    """The ticker of one coordinator (started and stopped by it)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.loop = coordinator.loop
        self.client = coordinator.client
        self.stats = coordinator.stats
        self._cluster = is_cluster(self.client)
        self._wake = asyncio.Event()
        self._throttle = Throttle()
        self._master = MasterWatch.of(self.client)
        self._master_checked = 0.0
        self._slots_stale = False
        self._slots_read = float("-inf")
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._refresh: asyncio.Task[None] | None = None
        """Round trips to cluster nodes that are down, not waited for by the ticks."""

    def wake(self) -> None:
        """Tick now (a breaker became due, or the coordinator is closing)."""
        self._wake.set()

    async def run(self) -> None:
        """Tick whenever a breaker is due, until the coordinator closes.

        Cancellation propagates; every other error is logged (now and then),
        counted, and the ticker goes on.
        """
        coordinator = self.coordinator
        try:
            while not coordinator.closed:
                try:
                    await self._tick()
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # the ticker never dies: say it (now and then), go on
                    self.stats["tick_errors"] += 1
                    self._throttle.log(
                        logging.ERROR,
                        f"tick:{type(error).__name__}",
                        "distributed_opossum: report tick failed: %s",
                        describe(error),
                    )
                    await asyncio.sleep(RECONNECT_MIN)
                await self._sleep_until_due()
        finally:
            probes = list(self._probes.values())
            if self._refresh is not None:
                probes.append(self._refresh)
            for probe in probes:
                probe.cancel()
            if probes:
                await asyncio.wait(probes)

    async def _sleep_until_due(self) -> None:
        coordinator = self.coordinator
        links = list(coordinator.links)
        if not links:
            delay = None
        else:
            delay = max(0.0, min(link.next_due for link in links) - self.loop.time())
            if coordinator.down is not None:
                delay = max(delay, RECONNECT_MIN)
            if self._master is not None:
                next_check = self._master_checked + CHECK_INTERVAL - self.loop.time()
                delay = min(delay, max(next_check, 0.0))
        self._wake.clear()
        if coordinator.closed:
            return
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass

    # -- one tick ----------------------------------------------------------------------------

    async def _tick(self) -> None:
        """Every due breaker's report or sweep, one pipeline per node, nodes concurrently."""
        coordinator = self.coordinator
        if self._master is not None and self.loop.time() >= self._master_checked + CHECK_INTERVAL:
            await self._check_master(self._master)
        now = self.loop.time()
        due = [link for link in list(coordinator.links) if link.next_due <= now]
        if not due:
            return
        self.stats["ticks"] += 1
        if self._cluster and not await self._slot_map(due):
            return
        work: dict[str, _NodeWork] = {}
        idle: dict[str, NodeRoute] = {}
        unrouted: list[tuple[SharedLink, _Report | None]] = []
        for link in due:
            # On a grid of the interval, so breakers made at different times
            # still share their ticks (and round trips).
            link.next_due = (now // link.interval + 1) * link.interval
            try:
                route: NodeRoute | None = route_of(self.client, link.keys.state)
            except REGISTRY_ERRORS:  # no master serves the slot (yet)
                route = None
            if route is not None and route.name in self._probes:
                continue  # its node, down, has not answered the last tick yet: next tick
            bucket = link.take_report()
            local_news = link.take_local_news()  # (forgets a local close: taken now)
            window = link.pod_window(bucket)
            report = _Report(bucket, window, link.epoch if link.gen is not None else -1)
            news = (
                link.window_news(window)
                or local_news
                or not bucket.is_empty
                or link.gen is None
                or link.window_holds_calls()
            )
            if route is None:
                self._slots_stale = True
                unrouted.append((link, report if news else None))
                continue
            if not news and now < link.next_sweep:
                idle[route.name] = route  # nothing to send
                continue
            # Breakers made together would all be swept in one tick: the
            # first sweep after the first sync is spread over the interval.
            spread = random.random() if link.gen is None else 1.0
            link.next_sweep = now + SWEEP_INTERVAL * spread
            node = work.get(route.name)
            if node is None:
                node = work[route.name] = _NodeWork(route)
            if news:
                node.reporting.append(link)
                node.reports.append(report)
            else:
                node.sweeping.append(link)
        if unrouted:
            self._unrouted(unrouted)
        sends = {name: self._send_node(node) for name, node in work.items()}
        # A node with only idle breakers due still hears from this pod once a
        # tick (a PING, whatever the number of breakers): its outages and
        # returns are noticed as soon as they were with a report per breaker.
        sends.update({name: self._ping(r) for name, r in idle.items() if name not in work})
        waited = []
        for name, send in sends.items():
            if self._cluster and self.coordinator.down_on(name) is not None:
                # A master that is down may hang (frozen, or its address gone):
                # the other masters' reports must not wait for it every tick.
                self._probe(name, send)
            else:
                waited.append(send)
        if len(waited) == 1:
            # One node (a single Redis): no task to spawn, nor a turn of the loop
            # to wait for before the pipeline goes (a trip's report, among them).
            await waited[0]
        elif waited:
            await asyncio.gather(*waited)

    def _probe(self, name: str, send: Coroutine[Any, Any, None]) -> None:
        """Send to a node that is down without waiting; its breakers wait for the answer."""
        task = self.loop.create_task(send)
        self._probes[name] = task

        def done(task: asyncio.Task[None]) -> None:
            if self._probes.get(name) is task:
                del self._probes[name]
            error = None if task.cancelled() else task.exception()
            if error is not None:
                self.stats["tick_errors"] += 1
                self._throttle.log(
                    logging.ERROR,
                    "probe",
                    "distributed_opossum: report tick failed: %s",
                    describe(error),
                )

        task.add_done_callback(done)

    async def _slot_map(self, due: list[SharedLink]) -> bool:
        """Make sure the cluster client knows its slots; False when no node answers.

        A slot map found stale is read again in the background: the node
        asked first may be the one that hangs.
        """
        try:
            await ready(self.client)
        except REGISTRY_ERRORS as error:  # asyncio's TimeoutError is an OSError
            self.stats["tick_errors"] += 1
            for link in due:
                link.next_due = self.loop.time() + RECONNECT_MIN
            self.coordinator.mark_down(error)
            return False
        now = self.loop.time()
        idle = self._refresh is None or self._refresh.done()
        if self._slots_stale and idle and now >= self._slots_read + SLOT_REFRESH_MIN:
            self._slots_read = now
            self._refresh = self.loop.create_task(self._refresh_slots())
        return True

    async def _refresh_slots(self) -> None:
        try:
            async with asyncio.timeout(ROUND_TRIP_LIMIT):
                await refresh_slots(self.client)
        except REGISTRY_ERRORS as error:  # the reports tell which nodes are down
            self._throttle.log(
                logging.WARNING,
                "slots",
                "distributed_opossum: reading the cluster's slot map failed: %s",
                describe(error),
            )
            return
        self._slots_stale = False

    def _unrouted(self, links: list[tuple[SharedLink, _Report | None]]) -> None:
        """No master serves these breakers' slots now: down until one does."""
        error = RedisError("no master serves the slot of these breakers' keys")
        for link, report in links:
            if report is not None:
                self._lost([link], [report])
            else:
                link.next_sweep = self.loop.time()
            self.coordinator.mark_down(error, link=link)

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
                describe(error),
            )
            return
        if switched is None:
            return
        logger.warning(
            "distributed_opossum: the Redis master moved from %s to %s; reading every "
            "breaker's state from the new master",
            *switched,
        )
        self.coordinator.master_switched()

    # -- one node ----------------------------------------------------------------------------

    async def _ping(self, route: NodeRoute) -> None:
        """One PING to ``route``'s node: is it (still, again) there?"""
        coordinator = self.coordinator
        try:
            async with asyncio.timeout(ROUND_TRIP_LIMIT):
                try:
                    await self._send_ping(route)
                except RedisConnectionError:
                    if coordinator.down_on(route.name) is not None:
                        raise
                    await self._send_ping(route)  # a connection left over from a restart
        except REGISTRY_ERRORS as error:  # asyncio's TimeoutError is an OSError
            self.stats["tick_errors"] += 1
            self._slots_stale = self._cluster
            coordinator.mark_down(error, node=route.name)
            return
        self.stats["pings"] += 1
        coordinator.mark_up(route.name)

    async def _send_ping(self, route: NodeRoute) -> None:
        if route.node is not None:
            await route.node.execute_command("PING")
        else:
            await self.client.ping()

    async def _send_node(self, node: _NodeWork) -> None:
        """This tick's calls to one node, ``BATCH_SIZE`` per round trip."""
        calls: _Calls = [
            *zip(node.reporting, node.reports, strict=True),
            *((link, None) for link in node.sweeping),
        ]
        for start in range(0, len(calls), BATCH_SIZE):
            if not await self._round_trip(node.route, calls[start : start + BATCH_SIZE]):
                # The node is down: the rest would only time out too.
                rest = calls[start + BATCH_SIZE :]
                self._lost(
                    [link for link, report in rest if report is not None],
                    [report for _, report in rest if report is not None],
                )
                return

    async def _round_trip(self, route: NodeRoute, calls: _Calls, *, tally: bool = False) -> bool:
        """One pipelined round trip to ``route``'s node; False when it could not be used."""
        coordinator = self.coordinator
        links = [link for link, _ in calls]
        reports = [report for _, report in calls]
        try:
            try:
                results = await self._send(route, calls, tally=tally)
            except RedisConnectionError:
                if coordinator.down_on(route.name) is not None:
                    raise
                # A pooled connection left over from before a Redis restart fails
                # once; the pipeline was not taken, so one retry on a fresh
                # connection tells a dead Redis from a dead connection.
                results = await self._send(route, calls, tally=tally)
        except REGISTRY_ERRORS as error:  # asyncio's TimeoutError is an OSError
            # Nothing is buffered: what happened meanwhile stays local history,
            # but a trip vote is kept for the next report.
            self.stats["tick_errors"] += 1
            self._lost_calls(calls)
            self._slots_stale = self._cluster
            coordinator.mark_down(error, node=route.name)
            return False
        # A tally's round trip is counted apart: the reports' stay one per tick.
        self.stats["tally_round_trips" if tally else "round_trips"] += 1
        self.stats["reports"] += 0 if tally else sum(report is not None for report in reports)
        self.stats["sweeps"] += sum(report is None for report in reports)
        refused = [r for r in results if isinstance(r, ResponseError)]
        if refused and len(refused) == len(results) and not isinstance(refused[0], _REDIRECTS):
            # Redis answered but ran none of them (out of memory, read-only,
            # no rights, cluster down, ...): it cannot be used, as if it were down.
            self.stats["tick_errors"] += 1
            self._lost_calls(calls)
            self._slots_stale = self._cluster
            coordinator.mark_down(refused[0], node=route.name)
            return False
        coordinator.mark_up(route.name)
        moved: list[MovedError] = []
        tallies: _Calls = []
        for link, report, result in zip(links, reports, results, strict=True):
            if isinstance(result, _REDIRECTS):
                # The slot moved (resharding, failover) or is moving: send this
                # one again at the next tick, to the node MOVED names.
                self.stats["redirects"] += 1
                if isinstance(result, MovedError):
                    moved.append(result)
                self._lost_calls([(link, report)])
                link.verify()
                continue
            if isinstance(result, Exception):
                self.stats["script_errors"] += 1
                self._lost_calls([(link, report)])
                self._throttle.log(
                    logging.ERROR,
                    f"report:{link.keys.name}",
                    "distributed_opossum: report of %r failed: %s (it decides locally meanwhile)",
                    link.keys.name,
                    describe(result),
                    circuit=link.keys.name,
                    redis_error=describe(result),
                )
                continue
            if isinstance(result, PlainReply):
                self.stats["plain_reports"] += 1
                if result.tally:
                    tallies.append((link, report))
                link.apply_plain(result)
            elif not isinstance(result, SharedState):
                raise TypeError(f"a report or sweep answered {result!r:.80}")  # a bug: loud
            elif report is None and not result.exists:
                # Swept, and the state hash is gone (expired, flushed, a
                # failover lost it): a report makes it again, as before.
                link.verify()
            else:
                link.apply(result, own=report is not None)
            if report is not None and not tally:
                # (After the reply: a first report learns its epoch from it.)
                link.delivered(report.bucket, report.epoch)
        for redirect in moved:
            try:
                await follow_moved(self.client, redirect)
            except REGISTRY_ERRORS:  # a node unknown so far, say: read the whole map
                self._slots_stale = True
        if tallies:
            # The pods that won the tally lease tally now: with plain commands
            # when nothing opens, else by script.
            self.stats["tallies"] += len(tallies)
            try:
                by_script = await plain_tallies(
                    scripts_for(self.client),
                    route if self._cluster else None,
                    tallies,
                    time_limit=ROUND_TRIP_LIMIT,
                )
            except REGISTRY_ERRORS as error:  # the leases expire: the next interval tallies
                self.stats["tick_errors"] += 1
                self._throttle.log(
                    logging.WARNING,
                    "tally",
                    "distributed_opossum: a tally failed: %s",
                    describe(error),
                )
                return True
            self.stats["plain_tallies"] += len(tallies) - len(by_script)
            if by_script:
                return await self._round_trip(route, by_script, tally=True)
        return True

    async def _send(
        self, route: NodeRoute, calls: _Calls, *, tally: bool = False
    ) -> list[BatchResult]:
        batch = scripts_for(self.client).batch(route if self._cluster else None)
        for link, report in calls:
            if report is None:
                batch.touch_state(link.keys, key_ttl_ms=link.params.key_ttl_ms)
            elif not tally and link.plain_ok(report.bucket):
                batch.plain_report(
                    link.keys,
                    report.bucket,
                    instance=link.instance,
                    gen=link.gen or "",
                    epoch=max(link.epoch, 0),
                    window=report.window,
                    redis_ms=link.redis_ms(),
                    lease_ms=link.tally_lease_ms,
                    snapshot=link.snapshot,
                )
            else:
                batch.report_window(
                    link.keys,
                    WindowReport() if tally else report.bucket,
                    instance=link.instance,
                    known_epoch=max(link.epoch, 0),
                    known_gen=link.gen or "",
                    params=link.params,
                    jitter=link.jitter(),
                    window=report.window,
                    holds_lease=tally,
                    lease_ms=link.tally_lease_ms,
                    window_written=tally,
                )
        async with asyncio.timeout(ROUND_TRIP_LIMIT):
            return await batch.execute()

    def _lost_calls(self, calls: _Calls) -> None:
        sent = [(link, report) for link, report in calls if report is not None]
        self._lost([link for link, _ in sent], [report for _, report in sent])
        for link, report in calls:
            if report is None:
                link.next_sweep = self.loop.time()  # sweep again at the next tick

    @staticmethod
    def _lost(links: list[SharedLink], reports: list[_Report]) -> None:
        """These reports did not run: keep their trip votes, and any check asked for."""
        for link, report in zip(links, reports, strict=True):
            link.window_lost()
            if report.bucket.local_open:
                link.keep_vote()
            if link.verifying:
                link.verify()
