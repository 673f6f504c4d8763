"""The decorator, ``to_json()`` and state import, health checks, enable/disable, empty stats."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import json
from typing import Any

import pytest
from helpers import Boom, EventLog, Recorder, Sleeper, breaker_on, settle

from distributed_opossum import (
    Cause,
    CircuitBreaker,
    OpenCircuitError,
    ShutdownError,
    State,
    Stats,
    circuit_breaker,
)
from distributed_opossum.testing import FakeClock

STATE_KEYS = {
    "name",
    "enabled",
    "closed",
    "open",
    "half_open",
    "forced_open",
    "warm_up",
    "shutdown",
    "opened_at",
    "attempts",
}
PERCENTILE_POINTS = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 1.0)


# --------------------------------------------------------------------------- decorator


async def test_decorated_calls_go_through_the_breaker() -> None:
    """Calls of a decorated coroutine function are fires of its breaker."""

    @circuit_breaker(name="payments", timeout=2.0, clock=FakeClock())
    async def charge(order: int, *, currency: str = "EUR") -> str:
        return f"{order} {currency}"

    assert await charge(5, currency="USD") == "5 USD"
    assert charge.breaker.stats.fires == 1
    assert charge.breaker.stats.successes == 1
    charge.breaker.open()
    with pytest.raises(OpenCircuitError):
        await charge(6)
    assert charge.breaker.stats.rejects == 1


def test_decorator_exposes_the_breaker_with_its_options() -> None:
    """``.breaker`` is the ``CircuitBreaker`` built from the decorator's options."""

    @circuit_breaker(name="payments", timeout=2.0)
    async def charge(order: int) -> str:
        return str(order)

    assert isinstance(charge.breaker, CircuitBreaker)
    assert charge.breaker.name == "payments"
    assert charge.breaker.options.timeout == 2.0


def test_decorator_keeps_function_metadata() -> None:
    """``functools.wraps``: name, qualname, doc, module and ``__wrapped__`` are the function's."""

    async def charge(order: int) -> str:
        """Charge an order."""
        return str(order)

    decorated = circuit_breaker(name="payments")(charge)
    assert decorated.__name__ == "charge"  # type: ignore[attr-defined]
    assert decorated.__qualname__ == charge.__qualname__  # type: ignore[attr-defined]
    assert decorated.__doc__ == "Charge an order."
    assert decorated.__module__ == __name__
    assert decorated.__wrapped__ is charge  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(decorated)
    assert inspect.signature(decorated) == inspect.signature(charge)


def test_decorator_default_name_is_the_qualname() -> None:
    """Without ``name`` the breaker is named after the function's ``__qualname__``
    (with a unique suffix for a function defined inside another)."""

    @circuit_breaker(timeout=1.0)
    async def lookup() -> None:
        return None

    assert lookup.breaker.name.startswith(f"{lookup.__qualname__}#")  # type: ignore[attr-defined]
    assert "<locals>.lookup#" in lookup.breaker.name


async def test_decorated_failure_uses_breaker_semantics() -> None:
    """The function's error propagates unchanged and counts as a failure."""
    error = Boom("declined")

    @circuit_breaker(name="charge", volume_threshold=5, clock=FakeClock())
    async def charge() -> None:
        raise error

    with pytest.raises(Boom) as caught:
        await charge()
    assert caught.value is error
    assert charge.breaker.stats.failures == 1


async def test_decorated_method() -> None:
    """A decorated method receives ``self``; its breaker is named after the method."""

    class Gateway:
        def __init__(self, fee: int) -> None:
            self.fee = fee

        @circuit_breaker(clock=FakeClock())
        async def charge(self, amount: int) -> int:
            return amount + self.fee

    # Typed as Any: the static typing of decorated methods is checked in test_public_api.
    first: Any = Gateway(2)
    second: Any = Gateway(3)
    assert await first.charge(40) == 42
    assert await second.charge(40) == 43
    assert "Gateway.charge" in Gateway.charge.breaker.name
    assert Gateway.charge.breaker.stats.fires == 2


def test_decorator_rejects_bad_options_at_decoration() -> None:
    """Bad options raise when decorating, naming the option."""
    with pytest.raises(ValueError, match="timeout"):

        @circuit_breaker(timeout=-1.0)
        async def never() -> None:
            return None


def test_each_decorated_function_has_its_own_breaker() -> None:
    """Two functions decorated with the same options get distinct breakers."""
    decorate = circuit_breaker(timeout=1.0)

    async def one() -> None:
        return None

    async def two() -> None:
        return None

    first, second = decorate(one), decorate(two)
    assert first.breaker is not second.breaker
    assert first.breaker.name.startswith(one.__qualname__)
    assert second.breaker.name.startswith(two.__qualname__)


# --------------------------------------------------------------------------- to_json


async def test_to_json_is_serialisable_with_the_documented_keys() -> None:
    """``to_json()`` is ``{"state", "status"}``, JSON-serialisable, with exactly the state keys."""
    clock = FakeClock()
    breaker = breaker_on(clock, name="svc", volume_threshold=10)
    await breaker.fire()
    data = breaker.to_json()
    assert set(data) == {"state", "status"}
    assert set(data["state"]) == STATE_KEYS
    assert json.loads(json.dumps(data))["state"] == data["state"]
    assert set(data["status"]) == {field.name for field in dataclasses.fields(Stats)}


async def test_to_json_status_holds_the_stats() -> None:
    """``status`` carries the counters and latency figures of ``stats``."""
    clock = FakeClock()
    action = Recorder()
    breaker = breaker_on(clock, action, volume_threshold=10)
    await breaker.fire()
    action.error = Boom()
    with pytest.raises(Boom):
        await breaker.fire()
    status = json.loads(json.dumps(breaker.to_json()))["status"]
    stats = breaker.stats
    for field in dataclasses.fields(Stats):
        if field.name != "percentiles":
            assert status[field.name] == getattr(stats, field.name)
    assert status["fires"] == 2
    assert status["failures"] == 1
    assert len(status["percentiles"]) == len(PERCENTILE_POINTS)


def test_to_json_state_of_a_closed_breaker() -> None:
    """A closed breaker's state: closed, enabled, no opening, no attempts."""
    state = breaker_on(FakeClock(), name="svc").to_json()["state"]
    assert state == {
        "name": "svc",
        "enabled": True,
        "closed": True,
        "open": False,
        "half_open": False,
        "forced_open": False,
        "warm_up": False,
        "shutdown": False,
        "opened_at": None,
        "attempts": 0,
    }


async def test_to_json_warm_up_flag() -> None:
    """``warm_up`` is True during the first window when ``allow_warm_up`` is set."""
    clock = FakeClock()
    breaker = breaker_on(clock, allow_warm_up=True, rolling_count_timeout=10.0)
    assert breaker.to_json()["state"]["warm_up"] is True
    await clock.advance(10.0)
    assert breaker.to_json()["state"]["warm_up"] is False


async def test_to_json_opened_at_is_the_time_of_opening() -> None:
    """``opened_at`` is the wall-clock time the breaker opened, not its creation time."""
    clock = FakeClock()
    breaker = breaker_on(clock)
    await clock.advance(100.0)
    breaker.open()
    opened_wall = clock.wall()
    await clock.advance(5.0)
    state = breaker.to_json()["state"]
    assert state["open"] is True
    assert state["closed"] is False
    assert state["opened_at"] == pytest.approx(opened_wall)
    assert state["attempts"] == 1
    json.dumps(breaker.to_json())


async def test_to_json_forced_open_and_half_open() -> None:
    """Forced open and half-open are reported by their own flags."""
    clock = FakeClock()
    breaker = breaker_on(clock, reset_timeout=1.0)
    await breaker.force_open()
    forced = breaker.to_json()["state"]
    assert (forced["forced_open"], forced["open"], forced["closed"]) == (True, False, False)
    await breaker.reset()
    breaker.open()
    await clock.advance(1.0)
    half = breaker.to_json()["state"]
    assert (half["half_open"], half["open"], half["closed"]) == (True, False, False)


async def test_to_json_after_shutdown() -> None:
    """After shutdown the state says ``shutdown`` and not enabled."""
    breaker = breaker_on(FakeClock())
    await breaker.shutdown()
    state = breaker.to_json()["state"]
    assert (state["shutdown"], state["enabled"]) == (True, False)


# --------------------------------------------------------------------------- state import


async def test_import_open_state_resumes_the_remaining_period() -> None:
    """An imported open state stays open for what was left of its period, then goes half-open."""
    clock = FakeClock()
    original = breaker_on(clock, name="svc", reset_timeout=30.0)
    original.open()
    await clock.advance(10.0)
    exported = json.loads(json.dumps(original.to_json()["state"]))
    restored = breaker_on(clock, name="svc", reset_timeout=30.0, state=exported)
    log = EventLog().attach(restored, "half_open")
    assert restored.opened
    assert restored.retry_after == pytest.approx(20.0)
    with pytest.raises(OpenCircuitError):
        await restored.fire()
    await clock.advance(19.9)
    assert restored.opened
    await clock.advance(0.1)
    assert restored.half_open
    assert log.names == ["half_open"]
    assert await restored.fire() == "ok"
    assert restored.closed


async def test_import_open_state_whose_period_is_over_is_half_open() -> None:
    """An open state exported longer ago than its period imports as ready for a trial."""
    clock = FakeClock()
    state = {"open": True, "closed": False, "opened_at": clock.wall() - 40.0, "attempts": 1}
    breaker = breaker_on(clock, reset_timeout=30.0, state=state)
    assert breaker.half_open
    assert await breaker.fire() == "ok"
    assert breaker.closed


async def test_import_keeps_attempts_for_the_backoff() -> None:
    """Imported ``attempts`` drive the next open period."""
    clock = FakeClock()
    state = {"open": True, "opened_at": clock.wall(), "attempts": 3}
    breaker = breaker_on(clock, reset_timeout=1.0, reset_timeout_multiplier=2.0, state=state)
    assert breaker.attempts == 3
    assert breaker.retry_after == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({}, State.CLOSED),
        ({"closed": True}, State.CLOSED),
        ({"open": True}, State.OPEN),
        ({"half_open": True}, State.HALF_OPEN),
        ({"forced_open": True}, State.FORCED_OPEN),
    ],
)
def test_import_partial_dict(state: dict[str, Any], expected: State) -> None:
    """A partial state dict is accepted; missing keys take their defaults."""
    breaker = breaker_on(FakeClock(), reset_timeout=30.0, state=state)
    assert breaker.state is expected
    assert breaker.enabled
    assert not breaker.is_shutdown


def test_import_open_without_opened_at_gets_a_full_period() -> None:
    """``{"open": True}`` alone is open for a whole ``reset_timeout``."""
    breaker = breaker_on(FakeClock(), reset_timeout=30.0, state={"open": True})
    assert breaker.retry_after == pytest.approx(30.0)


async def test_import_disabled_state() -> None:
    """``enabled: False`` imports a disabled breaker."""
    action = Recorder()
    breaker = breaker_on(FakeClock(), action, state={"enabled": False, "open": True})
    assert not breaker.enabled
    assert await breaker.fire() == "ok"
    assert len(action.calls) == 1


async def test_import_shutdown_state() -> None:
    """``shutdown: True`` imports a shut-down breaker: calls raise ``ShutdownError``."""
    action = Recorder()
    breaker = breaker_on(FakeClock(), action, state={"shutdown": True})
    assert breaker.is_shutdown
    assert not breaker.enabled
    with pytest.raises(ShutdownError):
        await breaker.fire()
    assert action.calls == []


async def test_round_trip_of_every_state_key() -> None:
    """Exporting, then importing, gives a breaker that exports the same state."""
    clock = FakeClock()
    original = breaker_on(clock, name="svc")
    original.open()
    exported = original.to_json()["state"]
    restored = breaker_on(clock, name="svc", state=exported)
    assert restored.to_json()["state"] == exported


@pytest.mark.parametrize(
    ("state", "key"),
    [
        ({"attempts": "2"}, "attempts"),
        ({"attempts": -1}, "attempts"),
        ({"attempts": 1.5}, "attempts"),
        ({"open": True, "opened_at": "yesterday"}, "opened_at"),
        ({"open": True, "opened_at": True}, "opened_at"),
        ({"open": "false"}, "open"),
        ({"enabled": "no"}, "enabled"),
        ({"shutdown": 1}, "shutdown"),
        ({"forced_open": "yes"}, "forced_open"),
    ],
)
def test_import_bad_types_raise_a_clear_error(state: dict[str, Any], key: str) -> None:
    """A state value of the wrong type is refused with an error naming the key."""
    with pytest.raises((TypeError, ValueError), match=key):
        breaker_on(FakeClock(), state=state)


@pytest.mark.parametrize("state", ["open", 5, ["open"]])
def test_import_state_not_a_dict(state: Any) -> None:
    """A ``state`` that is not a dict is refused, naming the option."""
    with pytest.raises(TypeError, match="state"):
        breaker_on(FakeClock(), state=state)


# --------------------------------------------------------------------------- health check


async def test_health_check_runs_at_once_then_every_interval() -> None:
    """``health_check(fn, interval)`` runs ``fn`` immediately and then each interval."""
    clock = FakeClock()
    breaker = breaker_on(clock)
    runs: list[float] = []

    async def check() -> None:
        runs.append(clock.monotonic())

    start = clock.monotonic()
    breaker.health_check(check, 5.0)
    await settle()
    assert runs == [start]
    await clock.advance(4.9)
    assert len(runs) == 1
    await clock.advance(0.1)
    assert len(runs) == 2
    await clock.advance(10.0)
    assert runs == [start, start + 5.0, start + 10.0, start + 15.0]
    assert breaker.closed
    await breaker.shutdown()


async def test_health_check_default_interval_is_five_seconds() -> None:
    """Without an interval the check runs every 5 s."""
    clock = FakeClock()
    breaker = breaker_on(clock)
    runs: list[float] = []
    breaker.health_check(lambda: runs.append(clock.monotonic()))
    await clock.advance(10.0)
    assert [run - runs[0] for run in runs] == [0.0, 5.0, 10.0]
    await breaker.shutdown()


async def test_sync_health_check_function() -> None:
    """A sync health-check function is accepted."""
    clock = FakeClock()
    breaker = breaker_on(clock)
    runs: list[int] = []
    breaker.health_check(lambda: runs.append(1), 1.0)
    await clock.advance(2.0)
    assert len(runs) == 3
    await breaker.shutdown()


async def test_failed_health_check_emits_and_opens() -> None:
    """A failing check emits ``health_check_failed(error)`` and opens the breaker."""
    clock = FakeClock()
    breaker = breaker_on(clock, reset_timeout=30.0)
    log = EventLog().attach(breaker, "health_check_failed", "open")
    error = Boom("db down")
    healthy = True

    async def check() -> None:
        if not healthy:
            raise error

    breaker.health_check(check, 5.0)
    await settle()
    assert breaker.closed
    healthy = False
    await clock.advance(5.0)
    assert breaker.opened
    assert log.entries == [("health_check_failed", (error,)), ("open", (Cause.HEALTH_CHECK,))]
    with pytest.raises(OpenCircuitError):
        await breaker.fire()
    await breaker.shutdown()


async def test_repeated_health_check_failures_open_once() -> None:
    """Every failed check is reported, but an open breaker is not re-opened."""
    clock = FakeClock()
    breaker = breaker_on(clock, reset_timeout=30.0)
    log = EventLog().attach(breaker, "health_check_failed", "open")

    def check() -> None:
        raise Boom()

    breaker.health_check(check, 1.0)
    await clock.advance(3.0)
    assert log.names.count("health_check_failed") == 4
    assert log.names.count("open") == 1
    assert breaker.attempts == 1
    await breaker.shutdown()


async def test_health_check_keeps_running_after_a_failure() -> None:
    """A failed check does not stop later checks."""
    clock = FakeClock()
    breaker = breaker_on(clock)
    runs: list[int] = []

    def check() -> None:
        runs.append(1)
        raise Boom()

    breaker.health_check(check, 1.0)
    await clock.advance(3.0)
    assert len(runs) == 4
    await breaker.shutdown()


@pytest.mark.parametrize("fn", [None, "check", 5])
async def test_health_check_needs_a_callable(fn: Any) -> None:
    """A non-callable ``fn`` raises ``TypeError``."""
    with pytest.raises(TypeError):
        breaker_on(FakeClock()).health_check(fn, 5.0)


@pytest.mark.parametrize("interval", [0, -1, -0.5, 0.0])
async def test_health_check_needs_a_positive_interval(interval: float) -> None:
    """A non-positive interval raises ``ValueError``."""
    with pytest.raises(ValueError, match="interval"):
        breaker_on(FakeClock()).health_check(lambda: None, interval)


async def test_health_check_stopped_by_shutdown() -> None:
    """``shutdown()`` stops the health check: no more runs, no timer left."""
    clock = FakeClock()
    breaker = breaker_on(clock, timeout=None)
    runs: list[int] = []
    breaker.health_check(lambda: runs.append(1), 1.0)
    await clock.advance(1.0)
    assert len(runs) == 2
    await breaker.shutdown()
    assert clock.pending == 0
    await clock.advance(10.0)
    assert len(runs) == 2


async def test_shutdown_leaves_no_timer_behind() -> None:
    """After calls, a health check and an opening, ``shutdown()`` leaves no timer pending."""
    clock = FakeClock()
    breaker = breaker_on(clock, timeout=5.0)
    await breaker.fire()
    breaker.health_check(lambda: None, 1.0)
    breaker.on("snapshot", lambda stats: None)
    breaker.open()
    await settle()
    await breaker.shutdown()
    assert clock.pending == 0


# --------------------------------------------------------------------------- enable / disable


async def test_disable_lets_calls_through_even_when_open() -> None:
    """A disabled breaker calls the action directly; ``enable()`` restores protection."""
    action = Recorder()
    breaker = breaker_on(FakeClock(), action)
    breaker.open()
    breaker.disable()
    assert breaker.enabled is False
    assert await breaker.fire() == "ok"
    breaker.enable()
    assert breaker.enabled is True
    with pytest.raises(OpenCircuitError):
        await breaker.fire()
    assert len(action.calls) == 1


async def test_disabled_breaker_counts_fires_only() -> None:
    """Disabled: fires are counted; successes, failures and fallbacks are not."""
    action = Recorder(error=Boom())
    breaker = breaker_on(FakeClock(), action).fallback(lambda *args: "fb")
    breaker.disable()
    with pytest.raises(Boom):
        await breaker.fire()
    action.error = None
    await breaker.fire()
    stats = breaker.stats
    assert (stats.fires, stats.successes, stats.failures, stats.fallbacks) == (2, 0, 0, 0)
    assert breaker.closed


def test_enabled_false_option() -> None:
    """``enabled=False`` builds a disabled breaker."""
    breaker = breaker_on(FakeClock(), enabled=False)
    assert breaker.enabled is False
    breaker.enable()
    assert breaker.enabled is True


# --------------------------------------------------------------------------- stats without samples


def test_stats_without_samples() -> None:
    """No samples: ``latency_mean`` 0.0 and every percentile 0.0."""
    stats = breaker_on(FakeClock()).stats
    assert stats.latency_mean == 0.0
    assert stats.percentiles == dict.fromkeys(PERCENTILE_POINTS, 0.0)


async def test_stats_without_percentiles() -> None:
    """``rolling_percentiles_enabled=False``: mean and percentiles are -1, with or without calls."""
    breaker = breaker_on(FakeClock(), rolling_percentiles_enabled=False)
    assert breaker.stats.latency_mean == -1
    assert breaker.stats.percentiles == dict.fromkeys(PERCENTILE_POINTS, -1)
    await breaker.fire()
    assert breaker.stats.latency_mean == -1
    assert set(breaker.stats.percentiles.values()) == {-1}
    assert breaker.stats.successes == 1


async def test_stats_with_samples_measure_latency() -> None:
    """With samples the mean is exact and the percentiles are within the 1/32 bin error."""
    clock = FakeClock()
    breaker = breaker_on(clock, Sleeper(clock, 2.0))
    task = asyncio.ensure_future(breaker.fire())
    await clock.advance(2.0)
    await task
    stats = breaker.stats
    assert stats.latency_mean == pytest.approx(2.0)
    assert stats.percentiles[0.5] == pytest.approx(2.0, rel=0.04)
    assert stats.percentiles[1.0] == pytest.approx(2.0, rel=0.04)


def test_stats_is_a_snapshot() -> None:
    """``stats`` is a frozen snapshot, not a live view."""
    breaker = breaker_on(FakeClock())
    stats = breaker.stats
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.fires = 3  # type: ignore[misc]


async def test_stats_snapshot_does_not_change_with_later_calls() -> None:
    """A snapshot taken earlier keeps its numbers."""
    breaker = breaker_on(FakeClock())
    before = breaker.stats
    await breaker.fire()
    assert before.fires == 0
    assert breaker.stats.fires == 1


def test_functools_partial_action_gets_a_name() -> None:
    """An action without ``__qualname__`` (a partial) still gets a non-empty name."""
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(
        functools.partial(Recorder()), clock=FakeClock()
    )
    assert isinstance(breaker.name, str)
    assert breaker.name
