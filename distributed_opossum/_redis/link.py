"""One breaker's tie to the cluster: what it reports, what it learns, its trial leases.

The breaker's state machine mirrors the shared state: a shared open opens the
local breaker (cause ``cluster`` when this pod's report decided it, ``remote``
when another pod did), a shared close closes it. The one local-only state is a
local trip under ``quorum``: it is this pod's vote, and it stays local until the
votes reach the quorum.

Nothing here runs on the plain call path: the coordinator calls
:meth:`SharedLink.take_report` and :meth:`SharedLink.apply` once per tick, and
the breaker asks for a trial lease only when the cluster's open period is over.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from distributed_opossum._cluster_view import ClusterView
from distributed_opossum._errors import RegistryError
from distributed_opossum._options import BreakerOptions, DistributedOptions
from distributed_opossum._state import Cause, State
from distributed_opossum._window import RollingWindow

from .coordinator import coordinator_for
from .delivered import DeliveredEntries
from .errors import REGISTRY_ERRORS
from .keys import BreakerKeys
from .scripts import (
    Broadcast,
    DecisionParams,
    PlainReply,
    PodWindow,
    PooledWindow,
    ProtocolError,
    SharedState,
    TrialGrant,
    TrialOutcome,
    WindowReport,
    scripts_for,
)

if TYPE_CHECKING:
    from .coordinator import Coordinator

__all__ = ["SharedLink", "TrialLease"]


LEASE_WAIT = 0.5
"""Longest a caller waits for a cluster trial lease (or ``timeout``, if shorter)."""
WITHOUT_SNAPSHOT_LIMIT = 3
"""Plain reports in a row that may find the tally lease without a snapshot (a
tally under way) before the next report goes by script, which replaces a
lease that is not ours."""
COMMAND_WAIT = 5.0
"""Longest ``force_open()``/``reset()`` wait for Redis before raising."""
COMMAND_ERRORS: tuple[type[Exception], ...] = (*REGISTRY_ERRORS, ProtocolError)
"""Anything the Redis layer answers instead of the new state (refused rights included)."""


@dataclass(slots=True)
class _LeaseAnswer:
    """Redis' answer to one lease request (``grant`` None: Redis could not be used)."""

    holder: str
    grant: TrialGrant | None
    claimed: bool = False


@dataclass(frozen=True, slots=True)
class _Spare:
    """A permit granted after its caller left, kept briefly for the next caller."""

    holder: str
    epoch: int


@dataclass(frozen=True, slots=True)
class TrialLease:
    """Answer of :meth:`SharedLink.acquire_trial`.

    ``granted`` None means Redis cannot be reached: the local half-open rule applies.
    """

    granted: bool | None
    retry_after: float | None = None


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def decision_params(options: BreakerOptions, distributed: DistributedOptions) -> DecisionParams:
    """The script parameters of a breaker's options."""
    window = options.rolling_count_timeout
    return DecisionParams(
        window_ms=_ms(window),
        volume_threshold=options.volume_threshold,
        error_threshold_percentage=options.error_threshold_percentage,
        quorum=distributed.quorum,
        min_pod_volume=(
            distributed.min_pod_volume
            if distributed.min_pod_volume is not None
            else max(options.volume_threshold, 1)
        ),
        reset_timeout_ms=max(0, round(options.reset_timeout * 1000)),
        reset_timeout_multiplier=options.reset_timeout_multiplier,
        max_reset_timeout_ms=(
            None if options.max_reset_timeout is None else _ms(options.max_reset_timeout)
        ),
        half_open_max_calls=options.half_open_max_calls,
        # The local permit's life: a trial with a timeout has ended (and sent
        # its outcome) a second before it, a hung one has lost it.
        lease_ttl_ms=_ms(options.trial_lease),
        # Keys outlive every pod by a few windows; each report refreshes them.
        key_ttl_ms=_ms(max(3 * window, 60.0)),
        # A pod writes one entry per report, plus one per trip reported at
        # once: twice a window's reports bounds it with room to spare.
        pod_entries=2 * math.ceil(window / options.report_interval) + 8,
    )


class Follow(Protocol):
    """How the breaker mirrors a shared state (see ``CircuitBreaker._follow_shared``)."""

    def __call__(
        self,
        state: str,
        *,
        deadline: float,
        attempts: int,
        new_opening: bool,
        same_gen: bool,
        cause: Cause,
    ) -> None:
        """Follow ``state`` (an open one until the local monotonic ``deadline``)."""


@dataclass(frozen=True, slots=True)
class BreakerPort:
    """What the link may read of its breaker, and the calls it may make on it.

    Attributes:
        window: the rolling window the reports are taken from.
        monotonic: the breaker's clock.
        local_state: the breaker's own state now.
        follow: mirror a shared state.
        emit: announce an event on the breaker (``registry_down``, ``registry_up``).
        coordinator_changed: the link joined or lost its coordinator.
    """

    window: RollingWindow
    monotonic: Callable[[], float]
    local_state: Callable[[], State]
    follow: Follow
    emit: Callable[..., None]
    coordinator_changed: Callable[[], None]


class SharedLink:
    """The distributed side of one breaker, reached through its :class:`BreakerPort`."""

    def __init__(
        self,
        breaker: BreakerPort,
        options: BreakerOptions,
        distributed: DistributedOptions,
    ) -> None:
        self.breaker = breaker
        self.client = distributed.client
        self.keys = BreakerKeys.for_breaker(distributed.prefix, options.name)
        self.prefix = distributed.prefix
        self.instance = distributed.instance_id
        self.params = decision_params(options, distributed)
        self.interval = options.report_interval
        self.jitter_fraction = options.reset_timeout_jitter
        self.lease_wait = min(LEASE_WAIT, options.timeout or LEASE_WAIT)
        self.next_due = 0.0
        self.next_sweep = 0.0
        """When an idle breaker is swept next (coordinator's loop time)."""
        self.gen: str | None = None
        self.epoch = -1
        self.shared = "closed"
        self.coordinator: Coordinator | None = None
        self.client_closed = False
        """True once the application closed the client on this loop: the breaker
        stays local until it is used on another loop."""
        self._reported_seq = -1
        self._vote = False
        self._tripped = False  # open because of this pod's own trip
        self._closed_news = False  # closed locally since the last report
        self._verifying = False  # the next reply is followed whatever it says
        self._known_ms = 0  # Redis' clock when the state this pod follows was read or sent
        self._stale_check = False  # a check older than the news was already asked again
        self._holders: dict[int, tuple[str, int]] = {}  # local permit -> (holder, epoch)
        self._deadline = 0.0  # local monotonic end of the shared open period
        self._attempts = 0
        self._holder_ids = itertools.count(1)
        self._window: PooledWindow | None = None  # the pooled sums, from the last report
        self._delivered = DeliveredEntries()  # this pod's entries in the window
        self._window_written = False  # this pod's field in the windows hash is not empty
        self._offset_ms: float | None = None  # Redis' clock minus ours, from the last reply
        self._without_snapshot = 0  # plain reports in a row that found no tally's snapshot
        self.snapshot: str | None = None
        """The last tally's snapshot this pod read or wrote, without its holder."""
        self._window_at = 0.0
        self._lease_request: asyncio.Task[_LeaseAnswer] | None = None
        self._lease_waiters = 0
        self._spare: _Spare | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Join the coordinator of the client on ``loop`` (the running one by default).

        False when no loop runs or the client was closed. A coordinator of
        another loop, or one that is closing, is left first.
        """
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False
        current = self.coordinator
        if current is not None:
            if current.loop is loop and not current.closed:
                return True
            self._leave(current)
        coordinator = coordinator_for(self.client, loop)
        self.client_closed = coordinator is None
        if coordinator is None:
            return False
        self._reported_seq = self.breaker.window.head_seq - 1
        self.coordinator = coordinator
        coordinator.register(self)
        return True

    async def detach(self) -> None:
        """Leave the coordinator (at shutdown); the last one out waits for its close."""
        coordinator = self.coordinator
        if coordinator is not None:
            self.coordinator = None
            if coordinator.unregister(self):
                await coordinator.close()

    def _leave(self, coordinator: Coordinator) -> None:
        """Leave a coordinator of another loop, or a closing one, without waiting."""
        self.coordinator = None
        if coordinator.unregister(self):
            coordinator.spawn_close()

    def coordinator_lost(self, coordinator: Coordinator, *, client_closed: bool = False) -> None:
        """``coordinator`` stopped serving (its loop ended, or the client was closed)."""
        if self.coordinator is coordinator:
            self.coordinator = None
        self.client_closed = self.client_closed or client_closed
        self.breaker.coordinator_changed()

    def view(self) -> ClusterView:
        """What this pod knows of the cluster's breaker (no round trip)."""
        now = self.breaker.monotonic()
        if self.gen is None:
            state = "unknown"
            retry_after: float | None = None
        else:
            state = self.shared
            if state == "forced_open":
                retry_after = None
            elif state == "open":
                retry_after = max(0.0, self._deadline - now)
            else:
                retry_after = 0.0
        window = self._window
        return ClusterView(
            state=state,
            epoch=None if self.gen is None else self.epoch,
            attempts=self._attempts,
            retry_after=retry_after,
            registry_down=self.registry_down or self.client_closed,
            pods_reporting=None if window is None else window.reporting,
            volume=None if window is None else window.volume,
            failures=None if window is None else window.failures,
            failure_rate=(
                None
                if window is None or window.volume == 0
                else 100.0 * window.failures / window.volume
            ),
            votes=None if window is None else window.votes,
            age=None if window is None else now - self._window_at,
        )

    @property
    def registry_down(self) -> bool:
        """True while the coordinator cannot reach Redis (the node of this breaker's keys)."""
        return self.coordinator is not None and self.coordinator.is_down(self)

    # -- reporting (coordinator side) --------------------------------------------------------

    def vote(self) -> None:
        """This pod opened on its own evidence: report it now rather than at the next tick."""
        self._vote = True
        self._tripped = True
        if self.coordinator is not None:
            self.coordinator.report_soon(self)

    def closed_locally(self) -> None:
        """This pod's breaker closed: its own trip is history."""
        self._tripped = False
        self._closed_news = True

    def window_holds_calls(self) -> bool:
        """True while this pod's rolling window holds completed calls.

        Their buckets become entries as they finish: the breaker keeps
        reporting (the reply carries the pooled view) until its window is empty.
        """
        successes, failures = self.breaker.window.totals(self.breaker.monotonic())
        return successes + failures > 0

    def take_local_news(self) -> bool:
        """True when this breaker must report though its buckets are empty.

        A check asked for (it stays asked until a reply comes), or a local
        close since the last report (forgotten by this call).
        """
        closed, self._closed_news = self._closed_news, False
        return closed or self._verifying

    def keep_vote(self) -> None:
        """A report carrying this pod's trip vote was lost: send the vote again next time."""
        self._vote = True

    def take_report(self) -> WindowReport:
        """The finished buckets not reported yet, summed, plus a pending trip vote."""
        now = self.breaker.monotonic()
        window = self.breaker.window
        finished = window.finished_since(self._reported_seq, now)
        self._reported_seq = window.head_seq - 1
        # A kept vote is void once this pod has closed again.
        vote = self._vote and self.breaker.local_state() is not State.CLOSED
        self._vote = False
        report = WindowReport(
            fires=sum(b.fires for b in finished),
            successes=sum(b.successes for b in finished),
            failures=sum(b.failures - b.late_failures for b in finished),
            timeouts=sum(b.timeouts for b in finished),
            rejects=sum(b.rejects for b in finished),
            local_open=vote,
        )
        return report

    def pod_window(self, bucket: WindowReport) -> PodWindow:
        """This pod's delivered entries of the epoch it knows within the window, and
        ``bucket`` (about to be sent), summed.

        What the tally counts of this pod (its field in the windows hash):
        entries of other epochs are history (every close is a new epoch), and
        older ones have left the window. A report that never reached Redis is
        no entry: its trip vote, if any, is sent again while it holds.
        """
        delivered = self._delivered
        delivered.forget_until(self.breaker.monotonic() - self.params.window_ms / 1000.0)
        volume, failures, trips = delivered.sums(self.epoch if self.gen is not None else -1)
        return PodWindow(
            volume=volume + bucket.successes + bucket.failures,
            failures=failures + bucket.failures,
            trips=trips + (1 if bucket.local_open else 0),
        )

    def delivered(self, bucket: WindowReport, epoch: int) -> None:
        """``bucket``, sent under ``epoch`` (-1: before the first sync), reached Redis:
        it is an entry of this pod's window from now on."""
        if bucket.is_empty:
            return
        self._delivered.add(
            at=self.breaker.monotonic(),
            volume=bucket.successes + bucket.failures,
            failures=bucket.failures,
            trip=bucket.local_open,
            # Sent before the first sync: Redis counted it in its epoch then.
            epoch=self.epoch if epoch < 0 else epoch,
        )

    def window_lost(self) -> None:
        """A report did not reach Redis: write the window next time, even an empty one."""
        self._window_written = True

    @property
    def tally_lease_ms(self) -> int:
        """How long this pod's tally lease lasts: nine tenths of a report interval,
        so that the report a whole interval later finds it over."""
        return max(1, round(self.interval * 900))

    def window_news(self, window: PodWindow) -> bool:
        """True when ``window`` must be written: it holds something, or it just emptied."""
        written, self._window_written = self._window_written, not window.is_empty
        return written or not window.is_empty

    def plain_ok(self, report: WindowReport) -> bool:
        """True when this report may go as plain commands rather than by script.

        It needs the shared state known (gen, epoch, Redis' clock) and no check
        asked for, and carries no trip: a trip is judged at once, by script.
        """
        return (
            self.gen is not None
            and self._offset_ms is not None
            and not self._verifying
            and not report.local_open
            and self._without_snapshot < WITHOUT_SNAPSHOT_LIMIT
        )

    def redis_ms(self) -> int:
        """This pod's estimate of Redis' clock now (ms), from the last reply's."""
        offset = self._offset_ms or 0.0
        return max(0, round(self.breaker.monotonic() * 1000.0 + offset))

    def jitter(self) -> float:
        """The factor on an open period this pod's call might start."""
        j = self.jitter_fraction
        return random.uniform(1.0 - j, 1.0 + j) if j else 1.0

    def apply(
        self, state: SharedState | Broadcast, *, own: bool, cause: Cause | None = None
    ) -> None:
        """Follow a shared state if it is newer than what this pod knows.

        A script's reply (a :class:`SharedState`) was read from the state
        hash, which is authoritative; a :class:`Broadcast` is only news about
        it, which anyone with access to the channel could have forged. So a
        broadcast is followed only when it is the next step Redis can have
        taken from what this pod knows (same gen, epoch + 1); anything else
        (a jump, another gen, a far-future epoch) makes the pod read the state
        hash instead. A reply older than what the pod knows (the news came
        first, or the pod followed a forgery, or Redis lost writes in a
        failover) is checked the same way, and the check's answer is followed
        whatever it says.

        ``own`` is True for the reply to this pod's own call: a change it
        reports was decided here (cause ``cluster``), else by another pod.
        ``cause`` overrides both (``manual`` for this pod's force_open/reset).
        """
        if isinstance(state, Broadcast):
            if state.gen == self.gen and state.epoch <= self.epoch:
                return  # old news, or an echo of what this pod already follows
            if state.gen != self.gen or state.epoch != self.epoch + 1:
                self.verify()
                return
            changed_here = state.origin == self.instance
            self._take(
                state, new_opening=True, same_gen=True, changed_here=changed_here, cause=cause
            )
            return
        verified, self._verifying = self._verifying, False
        self._offset_ms = state.now_ms - self.breaker.monotonic() * 1000.0
        self._without_snapshot = 0
        if state.window is not None:
            self._window, self._window_at = state.window, self.breaker.monotonic()
        if not state.exists:
            if verified or self.gen is not None:
                # Redis holds no state (restarted empty, flushed, expired): this
                # pod's next report makes it again, and follows what it then says.
                self.verify()
            return
        same_gen = state.gen == self.gen
        if self.gen is not None and not same_gen:
            self._rolled_back(state)  # Redis lost the history this pod knew
            return
        if same_gen and state.epoch < self.epoch:
            if verified and not self._stale_check and state.now_ms <= self._known_ms:
                # The check was read before the news this pod follows was made, or in
                # the same ms (the news came first, on the other connection): no
                # rollback, ask again.
                # Once only, so that a forged broadcast's clock cannot hold a pod
                # off Redis' state for longer than one more round trip.
                self._stale_check = True
                self.verify()
            elif verified:
                self._rolled_back(state)
            else:
                self.verify()
            return
        # A check (after an outage, a lost subscription, a master switch) is
        # followed even at an epoch this pod knows: the pod may have decided
        # locally meanwhile, and Redis' state is the one every pod agrees on.
        new_opening = not same_gen or state.epoch > self.epoch or verified
        if verified and state.epoch == self.epoch and self._vote and state.state == "closed":
            # This pod tripped after the checked report left; its vote is on its way.
            self._remember(state)
            return
        changed_here = own and state.changed
        self._take(
            state,
            new_opening=new_opening,
            same_gen=same_gen or verified,
            changed_here=changed_here,
            cause=cause,
        )

    def apply_plain(self, reply: PlainReply) -> None:
        """Follow what a plain report learnt: the last tally's snapshot of the state.

        The snapshot is news, not the state: one newer than what this pod
        follows (a broadcast lost, Redis' state lost and made again) makes the
        pod read the state hash at the next tick.
        """
        self._offset_ms = reply.now_ms - self.breaker.monotonic() * 1000.0
        if reply.gen is None:
            if not reply.tally:
                # The lease holds no snapshot: a tally under way (a moment),
                # or a value that is not ours, which only a script replaces.
                self._without_snapshot += 1
            return
        self._without_snapshot = 0
        self.snapshot = reply.snapshot
        if reply.window is not None:
            self._window, self._window_at = reply.window, self.breaker.monotonic()
        if reply.epoch is not None and self._news(reply.gen, reply.epoch):
            self.verify()

    def apply_tally(
        self, gen: str, epoch: int, window: PooledWindow, now_ms: int, snapshot: str
    ) -> None:
        """Follow what this pod's plain tally read: the state's head, and the pooled window;
        ``snapshot`` is what it left in the lease (without its holder).

        As :meth:`apply_plain`: a head newer than what this pod follows makes
        it read the state hash at the next tick.
        """
        self._offset_ms = now_ms - self.breaker.monotonic() * 1000.0
        self._window, self._window_at = window, self.breaker.monotonic()
        self.snapshot = snapshot
        if self._news(gen, epoch):
            self.verify()

    def _news(self, gen: str, epoch: int) -> bool:
        """True when a snapshot shows a history or an epoch this pod has not followed.

        Every change of state but the start of a trial (open to half-open,
        which each pod works out on its own clock) is a new epoch; and a
        snapshot older than what the pod follows is old news, not a rollback
        (a rollback shows as another gen).
        """
        return gen != self.gen or epoch > self.epoch

    @property
    def verifying(self) -> bool:
        """True while the next reply is to be followed whatever it says."""
        return self._verifying

    def verify(self) -> None:
        """Read the state hash at the next tick and follow whatever it says."""
        self._verifying = True
        if self.coordinator is not None:
            self.coordinator.report_soon(self)

    def _take(
        self,
        state: SharedState | Broadcast,
        *,
        new_opening: bool,
        same_gen: bool,
        changed_here: bool,
        cause: Cause | None,
    ) -> None:
        self._remember(state)
        if cause is None:
            cause = Cause.CLUSTER if changed_here else Cause.REMOTE
        self._follow(new_opening=new_opening, same_gen=same_gen, cause=cause)

    def _remember(self, state: SharedState | Broadcast) -> None:
        self.gen, self.epoch, self.shared = state.gen, state.epoch, state.state
        self._known_ms, self._stale_check = state.now_ms, False
        self._attempts = state.attempts
        # Redis' clock never meets ours: only the time left travels.
        remaining = max(0, state.open_until_ms - state.now_ms) / 1000.0
        self._deadline = self.breaker.monotonic() + remaining

    def _rolled_back(self, state: SharedState) -> None:
        """Redis holds an older history than this pod followed (it lost its data, a
        failover dropped writes, or the pod had followed a forgery).

        A pod open because of its own trip votes again, so that the trip
        counts in the history Redis kept and opens every pod; every other pod
        follows what Redis holds.
        """
        self._remember(state)
        if self._tripped and self.breaker.local_state() is State.OPEN and state.state == "closed":
            self.keep_vote()
            if self.coordinator is not None:
                self.coordinator.report_soon(self)
            return
        self._follow(new_opening=True, same_gen=True, cause=Cause.REMOTE)

    def reapply(self) -> None:
        """Follow the last known shared state again (after a local ``close()``)."""
        if self.gen is not None:
            self._follow(new_opening=True, same_gen=False, cause=Cause.REMOTE)

    def _follow(self, *, new_opening: bool, same_gen: bool, cause: Cause) -> None:
        self.breaker.follow(
            self.shared,
            deadline=self._deadline,
            attempts=self._attempts,
            new_opening=new_opening,
            same_gen=same_gen,
            cause=cause,
        )

    def emit(self, event: str, *args: Any) -> None:
        """Announce a registry event on the breaker."""
        self.breaker.emit(event, *args)

    # -- trials (call path, only when the cluster's open period is over) ---------------------

    def needs_lease(self) -> bool:
        """Whether a half-open trial needs the cluster's permit (else the local rule)."""
        return self.shared != "closed" and self.coordinator is not None and not self.registry_down

    async def acquire_trial(self, permit: int) -> TrialLease:
        """Ask the cluster for a trial permit for the local ``permit``; bounded wait.

        One request at a time per pod, and a caller waits for it at most
        ``lease_wait``. The request itself is never cancelled: on a slow link
        a cancelled request costs its connection, and the next request a new
        connection's handshake, so that no request would ever finish in time.
        A permit granted after its caller left goes to this pod's next caller,
        or back to the cluster shortly after. Whatever the Redis layer raises
        is never the caller's: Redis that cannot be used means the local rule.
        """
        spare, self._spare = self._spare, None
        if spare is not None and spare.epoch == self.epoch:
            self._holders[permit] = (spare.holder, spare.epoch)
            return TrialLease(True)
        if spare is not None:
            self._give_back(spare.holder)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lease_wait
        while True:
            request = self._lease_request
            if request is None or request.done():
                request = self._lease_request = loop.create_task(self._request_lease())
            self._lease_waiters += 1
            try:
                async with asyncio.timeout_at(deadline):
                    answer = await asyncio.shield(request)
            except TimeoutError:
                if request.done() and not request.cancelled():
                    self._keep_unclaimed(request.result())  # it came as this caller gave up
                # Redis is slow, not gone: reject rather than let a herd of trials out.
                return TrialLease(False, self.lease_wait)
            finally:
                self._lease_waiters -= 1
            if answer.grant is None:
                return TrialLease(None)
            if not answer.grant.granted:
                retry = answer.grant.retry_after_ms
                return TrialLease(False, None if retry is None else retry / 1000.0)
            if not answer.claimed:
                answer.claimed = True
                self._holders[permit] = (answer.holder, answer.grant.state.epoch)
                return TrialLease(True)
            # Another caller of this pod took that permit: ask for one more.

    async def _request_lease(self) -> _LeaseAnswer:
        holder = f"{self.instance}#{next(self._holder_ids)}"
        try:
            grant = await scripts_for(self.client).acquire_trial(
                self.keys, holder=holder, params=self.params
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:  # whatever the Redis layer raised: never the caller's
            if self.coordinator is not None:
                self.coordinator.mark_down(error, link=self)
            return _LeaseAnswer(holder, None)
        answer = _LeaseAnswer(holder, grant)
        self.apply(grant.state, own=True)
        if not self._lease_waiters:
            self._keep_unclaimed(answer)  # every caller gave up: keep it for the next
        return answer

    def _keep_unclaimed(self, answer: _LeaseAnswer) -> None:
        if answer.claimed or answer.grant is None or not answer.grant.granted:
            return
        answer.claimed = True
        spare = _Spare(answer.holder, answer.grant.state.epoch)
        self._spare = spare
        asyncio.get_running_loop().call_later(self.lease_wait, self._expire_spare, spare)

    def _expire_spare(self, spare: _Spare) -> None:
        if self._spare is spare:
            self._spare = None
            self._give_back(spare.holder)

    def _give_back(self, holder: str) -> None:
        if self.coordinator is None:
            return

        async def release() -> None:
            state = await scripts_for(self.client).release_trial(self.keys, holder=holder)
            self.apply(state, own=True)

        self.coordinator.spawn(release(), f"release_trial {self.keys.name}", self)

    def trial_finished(self, permit: int, success: bool) -> None:
        """Tell the cluster how the trial of ``permit`` went (in the background)."""
        lease = self._holders.pop(permit, None)
        if lease is None or self.coordinator is None:
            return
        holder, epoch = lease
        outcome: TrialOutcome = "success" if success else "failure"

        async def finish() -> None:
            state = await scripts_for(self.client).finish_trial(
                self.keys,
                holder=holder,
                epoch=epoch,
                outcome=outcome,
                instance=self.instance,
                params=self.params,
                jitter=self.jitter(),
            )
            self.apply(state, own=True)

        self.coordinator.spawn(finish(), f"finish_trial {self.keys.name}", self)

    def trial_released(self, permit: int) -> None:
        """Give the cluster permit of ``permit`` back (its caller was cancelled)."""
        lease = self._holders.pop(permit, None)
        if lease is not None:
            self._give_back(lease[0])

    # -- manual control ----------------------------------------------------------------------

    async def force_open(self) -> None:
        """Force the cluster open; raises ``RegistryError`` (changing nothing) on failure."""
        scripts = scripts_for(self.client)
        state = await self._command(scripts.force_open(self.keys, instance=self.instance))
        self.apply(state, own=True, cause=Cause.MANUAL)

    async def reset(self) -> None:
        """Close the cluster; raises ``RegistryError`` (changing nothing) on failure."""
        scripts = scripts_for(self.client)
        command = scripts.reset(
            self.keys, instance=self.instance, key_ttl_ms=self.params.key_ttl_ms
        )
        state = await self._command(command)
        self.apply(state, own=True, cause=Cause.MANUAL)

    async def _command(self, command: Any) -> SharedState:
        try:
            async with asyncio.timeout(COMMAND_WAIT):
                state: SharedState = await command
        except COMMAND_ERRORS as error:  # asyncio's TimeoutError is an OSError
            raise RegistryError(
                f"breaker {self.keys.name!r}: Redis did not take the command ({error!r}); "
                "nothing was changed",
                breaker_name=self.keys.name,
            ) from error
        return state
