"""The call engine: admission and outcomes of a breaker's calls, written once.

``fire()``, ``async with breaker:`` and the cluster link all go through this
one interface; none of them counts, judges or announces a call on its own:

- admission is synchronous (:meth:`CallEngine.admit` gives a permit, or a
  rejection, without awaiting; only the rare cluster trial lease awaits, and
  that is the breaker's business with its link);
- capacity (:meth:`CallEngine.take_slot`, :meth:`CallEngine.free_slot`);
- outcomes: :meth:`CallEngine.succeeded`, :meth:`CallEngine.failed` (the error
  filter included; a timeout is a failure that ``expired``),
  :meth:`CallEngine.released` (the caller's cancellation, or a permit given back
  without an outcome);
- the window, the trial permits, the open decision on each failure.

State changes land in the state machine's ``pending`` list; the engine hands
them to ``on_transitions`` (the breaker, which owns timers and the link).
Every method is plain and synchronous: the call paths that use them stay one
coroutine deep.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol

from ._errors import CircuitTimeoutError, OpenCircuitError, SemaphoreLockedError
from ._events import EventEmitter
from ._options import BreakerOptions
from ._state import Cause, State, StateMachine, exceeds_threshold
from ._window import RollingWindow

__all__ = ["CallEngine", "TrialListener"]

_CLOSED = State.CLOSED
_new_exception = BaseException.__new__


class TrialListener(Protocol):
    """Who hears how trial calls end (the cluster link: trial permits are cluster-wide)."""

    def trial_finished(self, permit: int, success: bool) -> None:
        """The trial of ``permit`` ended with an outcome."""

    def trial_released(self, permit: int) -> None:
        """The trial of ``permit`` ended without one (its caller was cancelled)."""


class CallEngine:
    """Admission, capacity, outcomes and the open decision of one breaker.

    Args:
        options: the breaker's validated options.
        window: the rolling window the outcomes go into.
        core: the state machine (state, attempts, trial permits).
        events: the breaker's emitter.
        monotonic: the breaker's clock.
        on_transitions: called whenever the state machine has pending transitions.
        warm_up_until: no opening before this time (``allow_warm_up``).
    """

    SLOTS_UNLIMITED = sys.maxsize
    """``capacity`` when the option is None."""

    __slots__ = (
        "capacity",
        "core",
        "error_filter",
        "error_threshold_percentage",
        "events",
        "in_flight",
        "monotonic",
        "name",
        "on_transitions",
        "timeout",
        "trials",
        "volume_threshold",
        "warm_up_until",
        "window",
    )

    def __init__(
        self,
        options: BreakerOptions,
        *,
        window: RollingWindow,
        core: StateMachine,
        events: EventEmitter,
        monotonic: Callable[[], float],
        on_transitions: Callable[[], None],
        warm_up_until: float,
    ) -> None:
        self.name = options.name
        self.window = window
        self.core = core
        self.events = events
        self.monotonic = monotonic
        self.on_transitions = on_transitions
        self.capacity = options.capacity if options.capacity is not None else self.SLOTS_UNLIMITED
        self.in_flight = 0
        self.error_filter = options.error_filter
        self.volume_threshold = options.volume_threshold
        self.error_threshold_percentage = options.error_threshold_percentage
        self.timeout = options.timeout
        self.warm_up_until = warm_up_until
        self.trials: TrialListener | None = None

    # -- admission -------------------------------------------------------------------------------

    def admit(self, now: float) -> int:
        """0: a normal call; > 0: a trial permit; < 0: rejected (see :meth:`retry_after`)."""
        core = self.core
        if core.state is _CLOSED:
            return 0
        permit = core.admit(now)
        if core.pending:
            self.on_transitions()
        return permit

    def retry_after(self, now: float) -> float | None:
        """Seconds until a trial may be admitted; None when forced open."""
        return self.core.retry_after(now)

    def reject(
        self, now: float, retry_after: float | None, fired: tuple[Any, ...] | None = None
    ) -> OpenCircuitError:
        """Count and announce a rejection; returns the error to raise (or to fall back on).

        ``fired``: the arguments of a ``fire()`` not counted yet, which an open
        breaker rejects at once; its fire is counted and announced here too, in
        one step (an outage makes this the hot path).
        """
        window = self.window
        bucket = window.head if now < window.bucket_end else window.roll(now)
        events = self.events
        if fired is not None:
            bucket.fires += 1
            if events.call_listened:
                events.emit("fire", fired)
        bucket.rejects += 1
        # Made without running __init__ (a Python frame): the same two attributes.
        error: OpenCircuitError = _new_exception(OpenCircuitError)
        error.breaker_name = self.name
        error.retry_after = retry_after
        if events.call_listened:
            events.emit("reject", error)
        return error

    # -- capacity --------------------------------------------------------------------------------

    def take_slot(self) -> bool:
        """Take one of ``capacity`` slots; False when all are taken."""
        if self.in_flight >= self.capacity:
            return False
        self.in_flight += 1
        return True

    def free_slot(self) -> None:
        """Give a slot back (the call ended, however)."""
        self.in_flight -= 1

    def locked(self, now: float, permit: int, args: tuple[Any, ...]) -> SemaphoreLockedError:
        """Every slot was taken: give ``permit`` back, count the rejection as a failure."""
        self.released(permit)
        self.window.roll(now).semaphore_rejections += 1
        error = SemaphoreLockedError(self.name, self.capacity)
        if self.events.call_listened:
            self.events.emit("semaphore_locked", error, 0.0)
        self.failed(error, now, now, 0, args, {}, False, False)
        return error

    # -- outcomes --------------------------------------------------------------------------------

    def succeeded(self, result: Any, start: float, end: float, permit: int) -> None:
        """The call returned ``result`` (or raised an error the filter let through)."""
        latency = end - start
        self.window.roll(end).ok.append(latency)
        if permit:
            trials = self.trials
            if trials is not None:
                trials.trial_finished(permit, True)
            core = self.core
            core.trial_succeeded(end, permit)
            if core.pending:
                self.on_transitions()
        if self.events.call_listened:
            self.events.emit("success", result, latency)

    def failed(
        self,
        error: BaseException,
        start: float,
        end: float,
        permit: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        expired: bool = False,
        ran: bool = True,
    ) -> bool:
        """The call raised ``error`` (a timeout when ``expired``; ``ran`` False: it was
        refused before it ran).

        Returns:
            True when it counts as a failure (the fallback may run); False when
            ``error_filter`` said it is none (then it counts as a success).
        """
        error_filter = self.error_filter
        if error_filter is not None and error_filter(error, *args, **kwargs):
            self.succeeded(error, start, end, permit)
            return False
        window = self.window
        bucket = window.head if end < window.bucket_end else window.roll(end)
        if expired:
            bucket.timeouts += 1
        bucket.failures += 1
        core = self.core
        # A call that began before the latest state change is a fact for the
        # stats, but the window's decision (local, and the cluster's through
        # the reports) belongs to the new state, which it must never flip.
        late = start < core.changed_at  # core.started_before_change, inlined
        if late:
            bucket.late_failures += 1
        if ran and window.percentiles_enabled:
            bucket.other.append(end - start)
        events = self.events
        if events.call_listened:
            if expired:
                events.emit("timeout", error, end - start, args)
            events.emit("failure", error, end - start, args)
        if permit:
            trials = self.trials
            if trials is not None:
                trials.trial_finished(permit, False)
            core.trial_failed(end, permit)
        elif (
            core.state is _CLOSED
            and not late
            and end >= self.warm_up_until
            and exceeds_threshold(
                window.earlier_successes + bucket.successes + len(bucket.ok),
                window.earlier_failures + bucket.failures - bucket.late_failures,
                self.volume_threshold,
                self.error_threshold_percentage,
            )
        ):
            core.trip(end, Cause.LOCAL)
        if core.pending:
            self.on_transitions()
        return True

    def timed_out(self) -> CircuitTimeoutError:
        """The error of a call that ran out of time."""
        return CircuitTimeoutError(breaker_name=self.name, timeout=self.timeout or 0.0)

    def released(self, permit: int) -> None:
        """Give a trial permit back without an outcome (the caller was cancelled)."""
        if permit:
            self.core.release(permit)
            trials = self.trials
            if trials is not None:
                trials.trial_released(permit)
