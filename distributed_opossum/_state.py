"""The breaker's state machine: pure, no I/O, no clock reads (``now`` is an argument).

Transition table (local breaker):

=============  ===========================  =============  ================
from           event                        to             cause
=============  ===========================  =============  ================
CLOSED         failure over the threshold   OPEN           ``local``
CLOSED/HALF    ``open()``                   OPEN           ``manual``
OPEN           open period over             HALF_OPEN      ``timer``
HALF_OPEN      N trials succeeded           CLOSED         ``trial``
HALF_OPEN      a trial failed               OPEN           ``trial``
any but CLOSED ``close()`` / ``reset()``    CLOSED         ``manual``
any            ``force_open()``             FORCED_OPEN    ``manual``
=============  ===========================  =============  ================

Every transition bumps ``epoch`` and stamps ``changed_at``; a call that
started before ``changed_at`` never flips the newer state with its late result.
Trial permits (``half_open_max_calls`` of them) expire after a lease, so a hung
trial cannot hold the breaker half-open.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Cause", "State", "StateMachine", "Transition", "exceeds_threshold"]


class State(enum.StrEnum):
    """The state of a breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"


class Cause(enum.StrEnum):
    """Why a state changed: the argument of ``open``, ``close`` and ``half_open`` events."""

    LOCAL = "local"
    """This breaker's own window crossed the threshold."""
    TRIAL = "trial"
    """A trial call's outcome."""
    TIMER = "timer"
    """The open period ended."""
    MANUAL = "manual"
    """``open()``, ``close()``, ``force_open()`` or ``reset()``."""
    HEALTH_CHECK = "health_check"
    """The health check failed."""
    CLUSTER = "cluster"
    """The shared decision over every pod's stats."""
    REMOTE = "remote"
    """Another pod changed the shared state."""
    RESTORED = "restored"
    """Imported with the ``state`` option."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, for the breaker to announce."""

    previous: State
    state: State
    cause: Cause


def exceeds_threshold(
    successes: int, failures: int, volume_threshold: int, error_threshold_percentage: float
) -> bool:
    """The open rule: volume ≥ threshold and failure rate strictly above the percentage."""
    volume = successes + failures
    if volume == 0 or volume < volume_threshold:
        return False
    return failures * 100.0 > error_threshold_percentage * volume


class StateMachine:
    """State, backoff attempts and trial permits of one breaker.

    Transitions are appended to ``pending``; the owner drains and announces them.
    """

    __slots__ = (
        "_next_permit",
        "_period",
        "attempts",
        "changed_at",
        "epoch",
        "half_open_max_calls",
        "open_until",
        "opened_at",
        "pending",
        "permits",
        "state",
        "trial_lease",
        "trial_successes",
    )

    def __init__(
        self,
        *,
        half_open_max_calls: int,
        trial_lease: float,
        period: Callable[[int], float],
    ) -> None:
        self.state = State.CLOSED
        self.epoch = 0
        self.changed_at = float("-inf")
        self.attempts = 0
        self.opened_at: float | None = None
        self.open_until = 0.0
        self.half_open_max_calls = half_open_max_calls
        self.trial_lease = trial_lease
        self.trial_successes = 0
        # permit id -> expiry; permit ids are positive so 0 means "not a trial".
        self.permits: dict[int, float] = {}
        self._next_permit = 0
        self._period = period
        self.pending: list[Transition] = []

    # -- admission ---------------------------------------------------------------------------

    def admit(self, now: float) -> int:
        """Whether a call may run now: 0 = a normal call, > 0 = a trial permit, < 0 = rejected."""
        state = self.state
        if state is State.CLOSED:
            return 0
        if state is State.OPEN and now >= self.open_until:
            self.half_open(now, Cause.TIMER)
            state = self.state
        if state is State.HALF_OPEN:
            self._expire_permits(now)
            # A trial that succeeded used its permit for the period: never
            # more than N trials between two transitions.
            if len(self.permits) + self.trial_successes < self.half_open_max_calls:
                self._next_permit += 1
                self.permits[self._next_permit] = now + self.trial_lease
                return self._next_permit
        return -1

    def retry_after(self, now: float) -> float | None:
        """Seconds until a trial may be admitted; ``None`` when forced open."""
        if self.state is State.FORCED_OPEN:
            return None
        if self.state is State.OPEN:
            return max(0.0, self.open_until - now)
        if self.state is State.HALF_OPEN and self.permits:
            self._expire_permits(now)
            if len(self.permits) + self.trial_successes >= self.half_open_max_calls:
                return max(0.0, min(self.permits.values()) - now)
        return 0.0

    def _expire_permits(self, now: float) -> None:
        expired = [permit for permit, expiry in self.permits.items() if expiry <= now]
        for permit in expired:
            del self.permits[permit]

    # -- outcomes ----------------------------------------------------------------------------

    def trial_succeeded(self, now: float, permit: int) -> None:
        """A trial returned successfully; N successes close the breaker."""
        if self.permits.pop(permit, None) is None:
            return  # expired, or from before the latest transition
        self.trial_successes += 1
        if self.trial_successes >= self.half_open_max_calls:
            self.close(now, Cause.TRIAL)

    def trial_failed(self, now: float, permit: int) -> None:
        """A trial failed: open again with the next backoff period."""
        if self.permits.pop(permit, None) is None:
            return
        self.trip(now, Cause.TRIAL)

    def release(self, permit: int) -> None:
        """Give a trial permit back without an outcome (the caller was cancelled)."""
        self.permits.pop(permit, None)

    # -- transitions -------------------------------------------------------------------------

    def trip(self, now: float, cause: Cause) -> bool:
        """Open (a no-op when already open or forced open). Returns whether it opened."""
        previous = self.state
        if previous is State.OPEN or previous is State.FORCED_OPEN:
            return False
        self.attempts += 1
        self.open_until = now + self._period(self.attempts)
        self.opened_at = now
        self._move(now, State.OPEN, cause)
        return True

    def half_open(self, now: float, cause: Cause) -> None:
        """The open period is over: admit trials."""
        if self.state is State.OPEN:
            self._move(now, State.HALF_OPEN, cause)

    def close(self, now: float, cause: Cause) -> None:
        """Close and forget the backoff attempts."""
        self.attempts = 0
        self.opened_at = None
        if self.state is not State.CLOSED:
            self._move(now, State.CLOSED, cause)

    def force_open(self, now: float, cause: Cause = Cause.MANUAL) -> None:
        """Open with no trials, until :meth:`close`."""
        if self.state is State.FORCED_OPEN:
            return
        if self.opened_at is None:
            self.opened_at = now
        self._move(now, State.FORCED_OPEN, cause)

    def follow_open(
        self, now: float, open_until: float, attempts: int, cause: Cause, *, new_opening: bool
    ) -> None:
        """Take a new opening of the cluster (``open_until`` in local time) as this breaker's.

        Already open: only the deadline and attempts change (every pod agrees).
        An echo of an opening already followed (``new_opening`` False) changes
        nothing: it must not cut a later local opening short, nor re-open a
        breaker that a trial has just closed.
        """
        if not new_opening:
            return
        self.attempts = max(attempts, 1)
        self.open_until = open_until
        if self.state is State.OPEN:
            return
        if self.opened_at is None:
            self.opened_at = now
        self._move(now, State.OPEN, cause)

    def restore(self, state: State, *, now: float, attempts: int, remaining: float | None) -> None:
        """Take an imported state as the starting point (no transition is announced).

        ``remaining`` is what is left of the open period (``None``: a full period).
        """
        self.state = state
        self.attempts = attempts
        self.changed_at = now
        if state is State.CLOSED:
            self.attempts = 0
            return
        if state is State.OPEN or state is State.HALF_OPEN:
            self.attempts = max(attempts, 1)
        self.opened_at = now
        if state is State.OPEN:
            left = self._period(self.attempts) if remaining is None else remaining
            self.open_until = now + max(0.0, left)

    def started_before_change(self, start: float) -> bool:
        """Whether a call that started at ``start`` predates the latest transition."""
        return start < self.changed_at

    def _move(self, now: float, state: State, cause: Cause) -> None:
        previous = self.state
        self.state = state
        self.epoch += 1
        self.changed_at = now
        self.permits.clear()
        self.trial_successes = 0
        self.pending.append(Transition(previous, state, cause))
