"""The pure state machine: transitions, backoff attempts, trial permits, the open rule."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_opossum._state import (
    Cause,
    State,
    StateMachine,
    Transition,
    exceeds_threshold,
)

T0 = 100.0


class Periods:
    """An open-period function that records the attempts it is asked about."""

    def __init__(self, base: float = 5.0) -> None:
        self.base = base
        self.asked: list[int] = []

    def __call__(self, attempts: int) -> float:
        self.asked.append(attempts)
        return self.base * 2.0 ** (attempts - 1)


def state_of(sm: StateMachine) -> State:
    """The machine's state, read afresh (keeps type checkers from over-narrowing)."""
    return sm.state


def machine(
    *, half_open_max_calls: int = 1, trial_lease: float = 10.0, periods: Periods | None = None
) -> StateMachine:
    """A closed machine: periods 5, 10, 20 s..., lease 10 s."""
    return StateMachine(
        half_open_max_calls=half_open_max_calls,
        trial_lease=trial_lease,
        period=periods if periods is not None else Periods(),
    )


def half_opened(
    *, half_open_max_calls: int = 1, trial_lease: float = 10.0, periods: Periods | None = None
) -> StateMachine:
    """A machine tripped at T0 and moved to half-open at T0 + 5."""
    sm = machine(half_open_max_calls=half_open_max_calls, trial_lease=trial_lease, periods=periods)
    sm.trip(T0, Cause.LOCAL)
    sm.half_open(T0 + 5.0, Cause.TIMER)
    sm.pending.clear()
    return sm


def in_state(state: State) -> StateMachine:
    """A machine brought to ``state`` by ordinary transitions (pending cleared)."""
    sm = machine()
    if state is State.OPEN:
        sm.trip(T0, Cause.LOCAL)
    elif state is State.HALF_OPEN:
        sm.trip(T0, Cause.LOCAL)
        sm.half_open(T0 + 5.0, Cause.TIMER)
    elif state is State.FORCED_OPEN:
        sm.force_open(T0)
    sm.pending.clear()
    return sm


# -- closed --------------------------------------------------------------------------------------


def test_new_machine_is_closed_and_admits_normal_calls() -> None:
    """A new machine is closed, has no attempts, and admits calls as non-trials (0)."""
    sm = machine()
    assert sm.state is State.CLOSED
    assert sm.admit(T0) == 0
    assert sm.attempts == 0
    assert sm.opened_at is None
    assert sm.epoch == 0
    assert sm.pending == []
    assert sm.permits == {}


def test_closed_retry_after_is_zero() -> None:
    """A closed machine says a call may go now."""
    assert machine().retry_after(T0) == 0.0


# -- CLOSED -> OPEN ------------------------------------------------------------------------------


def test_trip_opens_as_first_attempt() -> None:
    """trip() opens: attempt 1, period(1), opened_at and changed_at stamped, one transition."""
    periods = Periods()
    sm = machine(periods=periods)
    assert sm.trip(T0, Cause.LOCAL) is True
    assert sm.state is State.OPEN
    assert sm.attempts == 1
    assert periods.asked == [1]
    assert sm.open_until == T0 + 5.0
    assert sm.opened_at == T0
    assert sm.changed_at == T0
    assert sm.epoch == 1
    assert sm.pending == [Transition(State.CLOSED, State.OPEN, Cause.LOCAL)]


def test_open_rejects_until_the_period_ends() -> None:
    """While open and before open_until, admission is refused and the state stays open."""
    sm = in_state(State.OPEN)
    assert sm.admit(T0) < 0
    assert sm.admit(T0 + 4.999) < 0
    assert sm.state is State.OPEN
    assert sm.pending == []


def test_open_retry_after_counts_down_to_zero() -> None:
    """retry_after while open is the time left of the period, never negative."""
    sm = in_state(State.OPEN)
    assert sm.retry_after(T0) == pytest.approx(5.0)
    assert sm.retry_after(T0 + 2.0) == pytest.approx(3.0)
    assert sm.retry_after(T0 + 5.0) == 0.0
    assert sm.retry_after(T0 + 50.0) == 0.0


# -- OPEN -> HALF_OPEN ---------------------------------------------------------------------------


def test_admit_at_open_until_moves_to_half_open_and_grants_a_permit() -> None:
    """The first admission at open_until half-opens (cause timer) and returns a trial permit."""
    sm = in_state(State.OPEN)
    permit = sm.admit(T0 + 5.0)
    assert permit > 0
    assert sm.state is State.HALF_OPEN
    assert sm.pending == [Transition(State.OPEN, State.HALF_OPEN, Cause.TIMER)]
    assert permit in sm.permits


def test_half_open_method_moves_open_to_half_open() -> None:
    """half_open() on an open machine moves it to half-open with the given cause."""
    sm = in_state(State.OPEN)
    sm.half_open(T0 + 5.0, Cause.TIMER)
    assert sm.state is State.HALF_OPEN
    assert sm.changed_at == T0 + 5.0
    assert sm.pending == [Transition(State.OPEN, State.HALF_OPEN, Cause.TIMER)]
    assert sm.attempts == 1


@pytest.mark.parametrize("state", [State.CLOSED, State.HALF_OPEN, State.FORCED_OPEN])
def test_half_open_is_a_noop_unless_open(state: State) -> None:
    """half_open() changes nothing in any state but OPEN."""
    sm = in_state(state)
    epoch = sm.epoch
    sm.half_open(T0 + 100.0, Cause.TIMER)
    assert sm.state is state
    assert sm.epoch == epoch
    assert sm.pending == []


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_half_open_admits_exactly_max_calls_trials(n: int) -> None:
    """Half-open grants exactly half_open_max_calls distinct permits, then refuses."""
    sm = half_opened(half_open_max_calls=n)
    permits = [sm.admit(T0 + 5.0) for _ in range(n)]
    assert all(p > 0 for p in permits)
    assert len(set(permits)) == n
    assert sm.admit(T0 + 5.0) < 0
    assert sm.admit(T0 + 6.0) < 0
    assert sm.state is State.HALF_OPEN


def test_half_open_retry_after_is_zero_while_a_permit_is_free() -> None:
    """With a free trial slot, retry_after is 0."""
    sm = half_opened(half_open_max_calls=2)
    sm.admit(T0 + 5.0)
    assert sm.retry_after(T0 + 5.0) == 0.0


def test_half_open_retry_after_is_time_to_earliest_permit_expiry_when_full() -> None:
    """With every slot taken, retry_after is the time until the oldest permit's lease ends."""
    sm = half_opened(half_open_max_calls=2, trial_lease=10.0)
    sm.admit(T0 + 5.0)
    sm.admit(T0 + 7.0)
    assert sm.retry_after(T0 + 8.0) == pytest.approx(7.0)
    assert sm.retry_after(T0 + 15.0) == 0.0


# -- HALF_OPEN -> CLOSED -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3])
def test_n_trial_successes_close(n: int) -> None:
    """The machine closes on the n-th trial success (cause trial), not before."""
    sm = half_opened(half_open_max_calls=n)
    permits = [sm.admit(T0 + 5.0) for _ in range(n)]
    for permit in permits[:-1]:
        sm.trial_succeeded(T0 + 6.0, permit)
        assert state_of(sm) is State.HALF_OPEN
    sm.trial_succeeded(T0 + 6.0, permits[-1])
    assert state_of(sm) is State.CLOSED
    assert sm.pending == [Transition(State.HALF_OPEN, State.CLOSED, Cause.TRIAL)]
    assert sm.attempts == 0
    assert sm.opened_at is None
    assert sm.permits == {}
    assert sm.admit(T0 + 6.0) == 0


def test_trial_success_keeps_its_slot_for_the_period() -> None:
    """A trial that succeeded used its slot: never more than N trials in one period."""
    sm = half_opened(half_open_max_calls=2)
    first = sm.admit(T0 + 5.0)
    second = sm.admit(T0 + 5.0)
    assert sm.admit(T0 + 5.0) < 0
    sm.trial_succeeded(T0 + 6.0, first)
    assert sm.admit(T0 + 6.0) < 0
    sm.trial_succeeded(T0 + 7.0, second)
    assert sm.state is State.CLOSED


def test_expired_trial_frees_its_slot() -> None:
    """A trial permit that expired (a hung trial) lets another trial go."""
    sm = half_opened(half_open_max_calls=1, trial_lease=10.0)
    assert sm.admit(T0 + 5.0) > 0
    assert sm.admit(T0 + 14.0) < 0
    assert sm.admit(T0 + 15.0) > 0


# -- HALF_OPEN -> OPEN ---------------------------------------------------------------------------


def test_trial_failure_reopens_with_one_more_attempt() -> None:
    """A failed trial re-opens (cause trial) with attempts + 1 and the next period."""
    periods = Periods()
    sm = half_opened(periods=periods)
    permit = sm.admit(T0 + 5.0)
    sm.trial_failed(T0 + 6.0, permit)
    assert sm.state is State.OPEN
    assert sm.attempts == 2
    assert periods.asked == [1, 2]
    assert sm.open_until == T0 + 6.0 + 10.0
    assert sm.opened_at == T0 + 6.0
    assert sm.pending == [Transition(State.HALF_OPEN, State.OPEN, Cause.TRIAL)]
    assert sm.permits == {}


def test_trial_failure_after_some_successes_reopens() -> None:
    """Any trial failure re-opens, even after other trials succeeded."""
    sm = half_opened(half_open_max_calls=3)
    a, b, c = (sm.admit(T0 + 5.0) for _ in range(3))
    sm.trial_succeeded(T0 + 6.0, a)
    sm.trial_succeeded(T0 + 6.0, b)
    sm.trial_failed(T0 + 6.0, c)
    assert sm.state is State.OPEN
    assert sm.attempts == 2


def test_successes_do_not_carry_over_to_the_next_half_open() -> None:
    """Trial successes of an earlier half-open do not count towards the next one."""
    sm = half_opened(half_open_max_calls=2)
    a, b = sm.admit(T0 + 5.0), sm.admit(T0 + 5.0)
    sm.trial_succeeded(T0 + 6.0, a)
    sm.trial_failed(T0 + 6.0, b)
    sm.half_open(T0 + 30.0, Cause.TIMER)
    c = sm.admit(T0 + 30.0)
    sm.trial_succeeded(T0 + 31.0, c)
    assert sm.state is State.HALF_OPEN
    sm.trial_succeeded(T0 + 31.0, sm.admit(T0 + 31.0))
    assert state_of(sm) is State.CLOSED


def test_consecutive_failed_trials_grow_the_period() -> None:
    """Each failed trial asks for the period of the next attempt."""
    periods = Periods()
    sm = machine(periods=periods)
    now = T0
    sm.trip(now, Cause.LOCAL)
    for _ in range(3):
        now = sm.open_until
        sm.trial_failed(now, sm.admit(now))
    assert periods.asked == [1, 2, 3, 4]
    assert sm.attempts == 4
    assert sm.open_until == now + 40.0


# -- close / reset -------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.OPEN, State.HALF_OPEN, State.FORCED_OPEN])
def test_close_from_every_other_state(state: State) -> None:
    """close() from open, half-open and forced open closes and forgets the attempts."""
    sm = in_state(state)
    epoch = sm.epoch
    sm.close(T0 + 7.0, Cause.MANUAL)
    assert sm.state is State.CLOSED
    assert sm.attempts == 0
    assert sm.opened_at is None
    assert sm.epoch == epoch + 1
    assert sm.changed_at == T0 + 7.0
    assert sm.pending == [Transition(state, State.CLOSED, Cause.MANUAL)]
    assert sm.admit(T0 + 7.0) == 0


def test_close_when_closed_announces_nothing() -> None:
    """close() on a closed machine is not a transition."""
    sm = machine()
    sm.close(T0, Cause.MANUAL)
    assert sm.state is State.CLOSED
    assert sm.pending == []
    assert sm.epoch == 0


def test_close_resets_the_backoff() -> None:
    """After a close, the next trip is attempt 1 again."""
    periods = Periods()
    sm = machine(periods=periods)
    sm.trip(T0, Cause.LOCAL)
    sm.trial_failed(T0 + 5.0, sm.admit(T0 + 5.0))
    assert sm.attempts == 2
    sm.close(T0 + 6.0, Cause.MANUAL)
    sm.trip(T0 + 7.0, Cause.LOCAL)
    assert sm.attempts == 1
    assert periods.asked[-1] == 1
    assert sm.open_until == T0 + 12.0


# -- FORCED_OPEN ---------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.CLOSED, State.OPEN, State.HALF_OPEN])
def test_force_open_admits_nothing_ever(state: State) -> None:
    """Forced open refuses every call however long it waits; retry_after is None."""
    sm = in_state(state)
    sm.force_open(T0 + 1.0)
    assert sm.state is State.FORCED_OPEN
    assert sm.pending == [Transition(state, State.FORCED_OPEN, Cause.MANUAL)]
    for now in (T0 + 1.0, T0 + 100.0, T0 + 1e9):
        assert sm.admit(now) < 0
        assert sm.retry_after(now) is None
    assert sm.state is State.FORCED_OPEN


def test_force_open_drops_trial_permits() -> None:
    """Forcing open a half-open machine invalidates the permits in flight."""
    sm = half_opened()
    permit = sm.admit(T0 + 5.0)
    sm.force_open(T0 + 6.0)
    sm.trial_succeeded(T0 + 7.0, permit)
    assert sm.state is State.FORCED_OPEN


def test_force_open_twice_is_one_transition() -> None:
    """A second force_open() changes nothing."""
    sm = machine()
    sm.force_open(T0)
    sm.force_open(T0 + 1.0)
    assert len(sm.pending) == 1
    assert sm.changed_at == T0


def test_force_open_stamps_opened_at_only_when_not_already_open() -> None:
    """Forced open from closed stamps opened_at; from open it keeps the opening time."""
    closed = machine()
    closed.force_open(T0 + 3.0)
    assert closed.opened_at == T0 + 3.0
    opened = in_state(State.OPEN)
    opened.force_open(T0 + 3.0)
    assert opened.opened_at == T0


def test_trip_while_forced_open_is_a_noop() -> None:
    """trip() cannot turn forced open into an ordinary open."""
    sm = in_state(State.FORCED_OPEN)
    assert sm.trip(T0 + 1.0, Cause.LOCAL) is False
    assert sm.state is State.FORCED_OPEN
    assert sm.attempts == 0
    assert sm.pending == []


# -- open on open --------------------------------------------------------------------------------


def test_trip_on_open_is_a_noop() -> None:
    """trip() while open neither re-arms the period nor adds an attempt."""
    periods = Periods()
    sm = machine(periods=periods)
    sm.trip(T0, Cause.LOCAL)
    sm.pending.clear()
    assert sm.trip(T0 + 3.0, Cause.MANUAL) is False
    assert sm.state is State.OPEN
    assert sm.attempts == 1
    assert sm.open_until == T0 + 5.0
    assert sm.opened_at == T0
    assert sm.changed_at == T0
    assert sm.epoch == 1
    assert sm.pending == []
    assert periods.asked == [1]


def test_trip_from_half_open_adds_an_attempt() -> None:
    """open() during half-open is a new opening: attempts + 1."""
    sm = half_opened()
    assert sm.trip(T0 + 6.0, Cause.MANUAL) is True
    assert sm.state is State.OPEN
    assert sm.attempts == 2
    assert sm.pending == [Transition(State.HALF_OPEN, State.OPEN, Cause.MANUAL)]


# -- trial leases --------------------------------------------------------------------------------


def test_permit_expires_after_the_lease() -> None:
    """A trial that never reports cannot hold half-open: its permit ends after the lease."""
    sm = half_opened(trial_lease=10.0)
    first = sm.admit(T0 + 5.0)
    assert sm.admit(T0 + 14.999) < 0
    second = sm.admit(T0 + 15.0)
    assert second > 0
    assert second != first
    assert sm.state is State.HALF_OPEN


def test_late_success_of_an_expired_permit_is_ignored() -> None:
    """The success of a trial whose lease ended neither counts nor closes."""
    sm = half_opened(trial_lease=10.0)
    first = sm.admit(T0 + 5.0)
    second = sm.admit(T0 + 15.0)
    sm.trial_succeeded(T0 + 16.0, first)
    assert sm.state is State.HALF_OPEN
    assert sm.trial_successes == 0
    assert second in sm.permits
    sm.trial_succeeded(T0 + 16.0, second)
    assert state_of(sm) is State.CLOSED


def test_late_failure_of_an_expired_permit_is_ignored() -> None:
    """The failure of a trial whose lease ended does not re-open."""
    sm = half_opened(trial_lease=10.0)
    first = sm.admit(T0 + 5.0)
    sm.admit(T0 + 15.0)
    sm.trial_failed(T0 + 16.0, first)
    assert sm.state is State.HALF_OPEN
    assert sm.attempts == 1
    assert sm.pending == []


def test_permit_of_an_earlier_half_open_is_ignored() -> None:
    """A permit from before the latest transition has no say in the new half-open."""
    sm = half_opened()
    old = sm.admit(T0 + 5.0)
    sm.trip(T0 + 6.0, Cause.MANUAL)
    sm.half_open(T0 + 20.0, Cause.TIMER)
    sm.pending.clear()
    sm.trial_succeeded(T0 + 21.0, old)
    assert sm.state is State.HALF_OPEN
    sm.trial_failed(T0 + 21.0, old)
    assert sm.state is State.HALF_OPEN
    assert sm.pending == []


def test_results_for_unknown_permits_are_ignored_when_closed() -> None:
    """Trial outcomes after the machine closed change nothing."""
    sm = half_opened(half_open_max_calls=2)
    a, b = sm.admit(T0 + 5.0), sm.admit(T0 + 5.0)
    sm.close(T0 + 6.0, Cause.MANUAL)
    sm.pending.clear()
    sm.trial_failed(T0 + 7.0, a)
    sm.trial_succeeded(T0 + 7.0, b)
    assert sm.state is State.CLOSED
    assert sm.pending == []


def test_release_returns_the_permit() -> None:
    """A released permit frees its slot and is no longer a trial."""
    sm = half_opened()
    permit = sm.admit(T0 + 5.0)
    assert sm.admit(T0 + 5.0) < 0
    sm.release(permit)
    again = sm.admit(T0 + 5.0)
    assert again > 0
    sm.trial_succeeded(T0 + 6.0, permit)
    assert sm.state is State.HALF_OPEN


def test_release_of_non_trial_is_harmless() -> None:
    """release(0) and release of an unknown permit change nothing."""
    sm = half_opened()
    permit = sm.admit(T0 + 5.0)
    sm.release(0)
    sm.release(permit + 100)
    assert list(sm.permits) == [permit]


# -- started_before_change -----------------------------------------------------------------------


def test_started_before_change() -> None:
    """Calls started before the latest transition are recognised; later or equal ones are not."""
    sm = machine()
    assert not sm.started_before_change(-1e12)
    sm.trip(T0, Cause.LOCAL)
    assert sm.started_before_change(T0 - 0.001)
    assert not sm.started_before_change(T0)
    assert not sm.started_before_change(T0 + 1.0)
    sm.close(T0 + 10.0, Cause.MANUAL)
    assert sm.started_before_change(T0 + 9.0)
    assert not sm.started_before_change(T0 + 10.0)


def test_every_transition_bumps_epoch_and_changed_at() -> None:
    """Each transition increments epoch and stamps changed_at; no-ops do not."""
    sm = machine()
    steps: list[tuple[float, Callable[[float], object]]] = [
        (1.0, lambda now: sm.trip(now, Cause.LOCAL)),
        (2.0, lambda now: sm.trip(now, Cause.LOCAL)),  # no-op
        (6.0, lambda now: sm.half_open(now, Cause.TIMER)),
        (7.0, sm.force_open),
        (8.0, lambda now: sm.close(now, Cause.MANUAL)),
        (9.0, lambda now: sm.close(now, Cause.MANUAL)),  # no-op
    ]
    seen: list[tuple[int, float]] = []
    for at, step in steps:
        step(at)
        seen.append((sm.epoch, sm.changed_at))
    assert seen == [(1, 1.0), (1, 1.0), (2, 6.0), (3, 7.0), (4, 8.0), (4, 8.0)]


# -- exceeds_threshold ---------------------------------------------------------------------------


def opens(successes: int, failures: int, volume_threshold: int, percentage: float) -> bool:
    """``exceeds_threshold`` with the tables' argument order."""
    return exceeds_threshold(
        successes,
        failures,
        volume_threshold=volume_threshold,
        error_threshold_percentage=percentage,
    )


@pytest.mark.parametrize(
    ("successes", "failures", "volume_threshold", "percentage", "expected"),
    [
        (0, 0, 0, 50, False),  # nothing to judge
        (1, 1, 0, 50, False),  # exactly 50 %: not strictly above
        (5, 5, 0, 50, False),
        (1, 2, 0, 50, True),
        (4, 6, 0, 50, True),
        (0, 1, 0, 50, True),
        (9, 1, 0, 0, True),  # 0 %: any failure opens
        (10, 0, 0, 0, False),
        (0, 10, 0, 100, False),  # 100 %: never strictly above
        (0, 2, 3, 50, False),  # volume 2 < 3
        (1, 2, 3, 50, True),  # volume counts successes too
        (0, 3, 3, 50, True),  # volume == threshold is enough
        (3, 7, 10, 69.5, True),
        (3, 7, 10, 70, False),
    ],
)
def test_exceeds_threshold_table(
    successes: int, failures: int, volume_threshold: int, percentage: float, expected: bool
) -> None:
    """Open when volume (successes + failures) ≥ threshold and failure % strictly above."""
    assert opens(successes, failures, volume_threshold, percentage) is expected


@given(
    successes=st.integers(0, 10_000),
    failures=st.integers(0, 10_000),
    volume_threshold=st.integers(0, 200),
    percentage=st.integers(0, 200).map(lambda half: half / 2),
)
def test_exceeds_threshold_matches_exact_rule(
    successes: int, failures: int, volume_threshold: int, percentage: float
) -> None:
    """The rule equals its exact rational definition."""
    volume = successes + failures
    expected = (
        volume > 0
        and volume >= volume_threshold
        and Fraction(failures * 100, volume) > Fraction(percentage)
    )
    assert opens(successes, failures, volume_threshold, percentage) is expected


# -- restore -------------------------------------------------------------------------------------


def test_restore_open_resumes_the_remaining_period() -> None:
    """An imported open state admits a trial once the remaining time has passed."""
    sm = machine()
    sm.restore(State.OPEN, now=T0, attempts=3, remaining=2.5)
    assert sm.state is State.OPEN
    assert sm.attempts == 3
    assert sm.open_until == T0 + 2.5
    assert sm.opened_at == T0
    assert sm.pending == []
    assert sm.admit(T0 + 2.4) < 0
    assert sm.admit(T0 + 2.5) > 0


def test_restore_open_without_remaining_takes_a_full_period() -> None:
    """remaining=None means a whole period of the imported attempt."""
    periods = Periods()
    sm = machine(periods=periods)
    sm.restore(State.OPEN, now=T0, attempts=2, remaining=None)
    assert periods.asked == [2]
    assert sm.open_until == T0 + 10.0


def test_restore_open_with_time_already_over_admits_at_once() -> None:
    """A negative remaining time (period ended while away) admits a trial immediately."""
    sm = machine()
    sm.restore(State.OPEN, now=T0, attempts=1, remaining=-30.0)
    assert sm.open_until == T0
    assert sm.admit(T0) > 0


@pytest.mark.parametrize("state", [State.OPEN, State.HALF_OPEN])
def test_restore_open_states_count_at_least_one_attempt(state: State) -> None:
    """Open and half-open imported with 0 attempts count as the first opening."""
    sm = machine()
    sm.restore(state, now=T0, attempts=0, remaining=1.0)
    assert sm.attempts == 1


def test_restore_half_open_admits_a_trial() -> None:
    """An imported half-open state admits a trial at once."""
    sm = machine()
    sm.restore(State.HALF_OPEN, now=T0, attempts=2, remaining=None)
    assert sm.state is State.HALF_OPEN
    assert sm.admit(T0) > 0
    assert sm.pending == []


def test_restore_closed_forgets_attempts() -> None:
    """An imported closed state has no attempts and no opening time."""
    sm = machine()
    sm.restore(State.CLOSED, now=T0, attempts=4, remaining=None)
    assert sm.state is State.CLOSED
    assert sm.attempts == 0
    assert sm.opened_at is None
    assert sm.admit(T0) == 0


def test_restore_forced_open_admits_nothing() -> None:
    """An imported forced-open state refuses calls and has no retry time."""
    sm = machine()
    sm.restore(State.FORCED_OPEN, now=T0, attempts=0, remaining=None)
    assert sm.admit(T0 + 1e6) < 0
    assert sm.retry_after(T0) is None


def test_restore_marks_older_calls_as_predating_the_state() -> None:
    """After an import, calls started earlier are from before the change."""
    sm = machine()
    sm.restore(State.OPEN, now=T0, attempts=1, remaining=None)
    assert sm.started_before_change(T0 - 1.0)
    assert not sm.started_before_change(T0)


# -- random walks --------------------------------------------------------------------------------

_OPS = st.sampled_from(
    ["admit", "succeed", "fail", "release", "trip", "half_open", "close", "force_open"]
)


@settings(max_examples=200)
@given(
    n=st.integers(1, 3),
    steps=st.lists(st.tuples(_OPS, st.floats(0.0, 8.0), st.integers(0, 5)), max_size=60),
)
def test_random_walk_keeps_invariants(n: int, steps: list[tuple[str, float, int]]) -> None:
    """Whatever happens, permits stay within bounds and state, attempts and events agree."""
    sm = machine(half_open_max_calls=n, trial_lease=6.0)
    now = T0
    permits: list[int] = []
    for op, dt, pick in steps:
        now += dt
        if op == "admit":
            permit = sm.admit(now)
            if permit > 0:
                assert sm.state is State.HALF_OPEN
                permits.append(permit)
        elif op in ("succeed", "fail", "release") and permits:
            permit = permits.pop(pick % len(permits))
            if op == "succeed":
                sm.trial_succeeded(now, permit)
            elif op == "fail":
                sm.trial_failed(now, permit)
            else:
                sm.release(permit)
        elif op == "trip":
            sm.trip(now, Cause.LOCAL)
        elif op == "half_open":
            sm.half_open(now, Cause.TIMER)
        elif op == "close":
            sm.close(now, Cause.MANUAL)
        elif op == "force_open":
            sm.force_open(now)
        assert len(sm.permits) <= n
        if sm.permits:
            assert sm.state is State.HALF_OPEN
        if sm.state is State.CLOSED:
            assert sm.attempts == 0
            assert sm.opened_at is None
        if sm.state in (State.OPEN, State.HALF_OPEN):
            assert sm.attempts >= 1
            assert sm.opened_at is not None
        assert sm.epoch == len(sm.pending)
        previous = State.CLOSED
        for transition in sm.pending:
            assert transition.previous is previous
            assert transition.state is not previous
            previous = transition.state
        assert previous is sm.state
