"""What the library logs: state changes with their fields, no per-call records, trouble now
and then."""

from __future__ import annotations

import logging

import pytest
from helpers import Boom, fail, succeed

from distributed_opossum import CircuitBreaker
from distributed_opossum._logs import Throttle, log_transition
from distributed_opossum._state import Cause, State, Transition
from distributed_opossum.testing import FakeClock


def test_the_library_logger_has_a_null_handler() -> None:
    """An application that configures no logging sees nothing (no 'no handler' warning)."""
    handlers = logging.getLogger("distributed_opossum").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


async def test_calls_are_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A hundred calls, successes and failures, make no record."""
    caplog.set_level(logging.DEBUG, logger="distributed_opossum")
    ok = CircuitBreaker(succeed, clock=FakeClock())
    failing = CircuitBreaker(fail, clock=FakeClock(), volume_threshold=1000)
    for _ in range(50):
        await ok.fire()
        with pytest.raises(Boom):
            await failing.fire()
    assert [r for r in caplog.records if r.name.startswith("distributed_opossum")] == []


async def test_a_state_change_is_one_record_with_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Opening is a warning and closing is info, with circuit, state, previous_state, cause."""
    caplog.set_level(logging.INFO, logger="distributed_opossum")
    clock = FakeClock()
    breaker = CircuitBreaker(fail, name="payments", clock=clock, reset_timeout=1.0)
    with pytest.raises(Boom):
        await breaker.fire()
    breaker.close()
    records = [r for r in caplog.records if hasattr(r, "circuit")]
    fields = [vars(r) for r in records]
    assert [(f["levelno"], f["state"], f["previous_state"], f["cause"]) for f in fields] == [
        (logging.WARNING, "open", "closed", "local"),
        (logging.INFO, "closed", "open", "manual"),
    ]
    assert all(f["circuit"] == "payments" for f in fields)
    assert "payments" in records[0].getMessage()


def test_throttle_lets_one_record_of_a_kind_through_per_interval() -> None:
    """The first record goes at once; the next one after the interval, with the count held."""
    now = [0.0]
    throttle = Throttle(interval=60.0, clock=lambda: now[0])
    assert throttle.allow("a") == 0
    assert throttle.allow("a") is None
    assert throttle.allow("b") == 0  # another kind is not held back
    now[0] = 59.0
    assert throttle.allow("a") is None
    now[0] = 60.0
    assert throttle.allow("a") == 2
    assert throttle.allow("a") is None


@pytest.mark.parametrize(
    ("state", "cause", "level"),
    [
        (State.OPEN, Cause.LOCAL, logging.WARNING),
        (State.OPEN, Cause.CLUSTER, logging.WARNING),
        (State.OPEN, Cause.HEALTH_CHECK, logging.WARNING),
        (State.FORCED_OPEN, Cause.MANUAL, logging.WARNING),
        (State.OPEN, Cause.REMOTE, logging.INFO),
        (State.FORCED_OPEN, Cause.REMOTE, logging.INFO),
        (State.CLOSED, Cause.REMOTE, logging.INFO),
    ],
)
def test_an_opening_is_a_warning_only_where_it_was_decided(
    caplog: pytest.LogCaptureFixture, state: State, cause: Cause, level: int
) -> None:
    """A fleet's incident is one warning (the pod that decided), not one per replica:
    pods that follow another pod's decision log it at info."""
    caplog.set_level(logging.INFO, logger="distributed_opossum")
    log_transition("payments", Transition(previous=State.CLOSED, state=state, cause=cause))
    (record,) = [r for r in caplog.records if hasattr(r, "circuit")]
    assert record.levelno == level
    assert vars(record)["cause"] == cause.value


def test_a_fleet_that_logs_warnings_makes_no_record_for_a_followed_opening(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At the usual WARNING level, following another pod's opening costs no record."""
    caplog.set_level(logging.WARNING, logger="distributed_opossum")
    log_transition(
        "payments", Transition(previous=State.CLOSED, state=State.OPEN, cause=Cause.REMOTE)
    )
    assert [r for r in caplog.records if r.name.startswith("distributed_opossum")] == []
