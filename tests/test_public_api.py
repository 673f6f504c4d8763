"""The public surface of distributed_opossum: names, exceptions, states, properties."""

from __future__ import annotations

import asyncio
import copy
import inspect
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
from helpers import Boom, Gate, Recorder, Sleeper

import distributed_opossum
from distributed_opossum import (
    CircuitBreaker,
    CircuitBreakerError,
    CircuitTimeoutError,
    OpenCircuitError,
    SemaphoreLockedError,
    ShutdownError,
    State,
    Stats,
)
from distributed_opossum.testing import FakeClock

API_NAMES = (
    "CircuitBreaker",
    "circuit_breaker",
    "State",
    "CircuitBreakerError",
    "OpenCircuitError",
    "CircuitTimeoutError",
    "SemaphoreLockedError",
    "ShutdownError",
    "DistributedOptions",
    "Cause",
)

PERCENTILE_POINTS = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 1.0)

COUNTERS = (
    "fires",
    "successes",
    "failures",
    "timeouts",
    "rejects",
    "fallbacks",
    "semaphore_rejections",
    "cache_hits",
    "cache_misses",
    "coalesce_cache_hits",
    "coalesce_cache_misses",
)


async def call_service(amount: int) -> str:
    """The seed README's service call."""
    return f"charged {amount}"


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", API_NAMES)
def test_api_name_is_importable(name: str) -> None:
    """Every name of API.md is an attribute of the package and listed in ``__all__``."""
    assert getattr(distributed_opossum, name) is not None
    assert name in distributed_opossum.__all__


def test_all_is_sorted() -> None:
    """``__all__`` is sorted."""
    assert list(distributed_opossum.__all__) == sorted(distributed_opossum.__all__)


def test_all_has_no_duplicates() -> None:
    """``__all__`` lists each name once."""
    assert len(set(distributed_opossum.__all__)) == len(distributed_opossum.__all__)


def test_all_is_complete_and_public() -> None:
    """``__all__`` is exactly the public, non-module names of the package."""
    public = {
        name
        for name, value in vars(distributed_opossum).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and type(value).__module__ != "__future__"  # ``from __future__ import annotations``
    }
    assert set(distributed_opossum.__all__) == public
    assert not [name for name in distributed_opossum.__all__ if name.startswith("_")]


def test_all_names_resolve() -> None:
    """Every name in ``__all__`` resolves, and ``import *`` gives exactly them."""
    namespace: dict[str, Any] = {}
    exec("from distributed_opossum import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(distributed_opossum.__all__)


# --------------------------------------------------------------------------- exceptions


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        (OpenCircuitError, "EOPENBREAKER"),
        (CircuitTimeoutError, "ETIMEDOUT"),
        (SemaphoreLockedError, "ESEMLOCKED"),
        (ShutdownError, "ESHUTDOWN"),
    ],
)
def test_error_codes_and_base(error_type: type[CircuitBreakerError], code: str) -> None:
    """Each breaker error derives from ``CircuitBreakerError`` and carries opossum's code."""
    assert issubclass(error_type, CircuitBreakerError)
    assert issubclass(CircuitBreakerError, Exception)
    assert error_type.code == code


def test_timeout_error_is_a_builtin_timeout_error() -> None:
    """``CircuitTimeoutError`` is also a built-in ``TimeoutError``."""
    assert issubclass(CircuitTimeoutError, TimeoutError)
    assert not issubclass(OpenCircuitError, TimeoutError)


async def test_open_error_carries_retry_after() -> None:
    """An open breaker rejects with ``OpenCircuitError`` whose ``retry_after`` counts down."""
    clock = FakeClock()
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(Recorder(), reset_timeout=30.0, clock=clock)
    breaker.open()
    with pytest.raises(OpenCircuitError) as first:
        await breaker.fire()
    assert first.value.code == "EOPENBREAKER"
    assert first.value.retry_after == pytest.approx(30.0)
    await clock.advance(10.0)
    with pytest.raises(OpenCircuitError) as second:
        await breaker.fire()
    assert second.value.retry_after == pytest.approx(20.0)
    assert isinstance(second.value, CircuitBreakerError)


async def test_forced_open_error_has_no_retry_after() -> None:
    """A forced-open breaker rejects with ``retry_after`` None."""
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(Recorder(), clock=FakeClock())
    await breaker.force_open()
    with pytest.raises(OpenCircuitError) as caught:
        await breaker.fire()
    assert caught.value.retry_after is None


async def test_timeout_raises_circuit_timeout_error_catchable_as_timeout_error() -> None:
    """A call over ``timeout`` raises ``CircuitTimeoutError``, caught by ``except TimeoutError``."""
    clock = FakeClock()
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(
        Sleeper(clock, 5.0), timeout=1.0, clock=clock
    )
    task = asyncio.ensure_future(breaker.fire())
    await clock.advance(1.0)
    with pytest.raises(TimeoutError) as caught:
        await task
    assert isinstance(caught.value, CircuitTimeoutError)
    assert caught.value.code == "ETIMEDOUT"
    assert (breaker.stats.timeouts, breaker.stats.failures) == (1, 1)


async def test_capacity_raises_semaphore_locked_error() -> None:
    """Over ``capacity`` a call raises ``SemaphoreLockedError``."""
    gate = Gate()
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(gate, capacity=1, clock=FakeClock())
    first = asyncio.ensure_future(breaker.fire())
    await asyncio.sleep(0)
    with pytest.raises(SemaphoreLockedError) as caught:
        await breaker.fire()
    assert caught.value.code == "ESEMLOCKED"
    assert breaker.stats.semaphore_rejections == 1
    gate.release()
    assert await first == "ok"


async def test_shutdown_raises_shutdown_error() -> None:
    """After ``shutdown()`` a call raises ``ShutdownError``."""
    action = Recorder()
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(action, clock=FakeClock())
    await breaker.shutdown()
    with pytest.raises(ShutdownError) as caught:
        await breaker.fire()
    assert caught.value.code == "ESHUTDOWN"
    assert action.calls == []


async def test_action_exception_propagates_unchanged() -> None:
    """The action's own exception reaches the caller as the very same object."""
    error = Boom("no")
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(Recorder(error=error), clock=FakeClock())
    with pytest.raises(Boom) as caught:
        await breaker.fire()
    assert caught.value is error
    assert not isinstance(caught.value, CircuitBreakerError)


# --------------------------------------------------------------------------- State


@pytest.mark.parametrize(
    ("member", "value"),
    [
        (State.CLOSED, "closed"),
        (State.OPEN, "open"),
        (State.HALF_OPEN, "half_open"),
        (State.FORCED_OPEN, "forced_open"),
    ],
)
def test_state_string_values(member: State, value: str) -> None:
    """``State`` members are the strings of API.md and compare equal to them."""
    assert member.value == value
    assert member == value
    assert State(value) is member
    assert str(member) == value


def test_state_has_exactly_four_members() -> None:
    """``State`` has the four members of API.md and no more."""
    assert {member.value for member in State} == {"closed", "open", "half_open", "forced_open"}


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("state", State),
        ("opened", bool),
        ("closed", bool),
        ("half_open", bool),
        ("is_shutdown", bool),
        ("enabled", bool),
        ("warm_up", bool),
        ("volume_threshold", int),
        ("name", str),
        ("group", str),
        ("stats", Stats),
    ],
)
def test_property_exists_with_type(name: str, kind: type) -> None:
    """Every property of API.md is a read-only property returning the right type."""
    assert isinstance(inspect.getattr_static(CircuitBreaker, name), property)
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(Recorder(), clock=FakeClock())
    assert isinstance(getattr(breaker, name), kind)


def test_properties_of_a_fresh_breaker() -> None:
    """A new breaker is closed, enabled, not shut down, not warming up."""
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(
        Recorder(), name="svc", group="grp", clock=FakeClock()
    )
    assert breaker.state is State.CLOSED
    assert (breaker.closed, breaker.opened, breaker.half_open) == (True, False, False)
    assert (breaker.is_shutdown, breaker.enabled, breaker.warm_up) == (False, True, False)
    assert (breaker.name, breaker.group, breaker.volume_threshold) == ("svc", "grp", 0)


def test_property_cannot_be_assigned() -> None:
    """Properties are read-only."""
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(Recorder(), clock=FakeClock())
    with pytest.raises(AttributeError):
        breaker.name = "other"  # type: ignore[misc]


def test_stats_fields_and_types() -> None:
    """``stats`` has every counter of API.md as an int, a float mean and the percentiles."""
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(Recorder(), clock=FakeClock())
    stats = breaker.stats
    for counter in COUNTERS:
        value = getattr(stats, counter)
        assert isinstance(value, int)
        assert not isinstance(value, bool)
        assert value == 0
    assert isinstance(stats.latency_mean, float)
    assert isinstance(stats.percentiles, dict)
    assert tuple(stats.percentiles) == PERCENTILE_POINTS
    assert all(isinstance(v, float) for v in stats.percentiles.values())


@pytest.mark.parametrize(
    ("name", "is_coroutine"),
    [
        ("fire", True),
        ("force_open", True),
        ("reset", True),
        ("shutdown", True),
        ("open", False),
        ("close", False),
        ("disable", False),
        ("enable", False),
        ("fallback", False),
        ("health_check", False),
        ("clear_cache", False),
        ("on", False),
        ("off", False),
        ("to_json", False),
    ],
)
def test_methods_exist_sync_or_async(name: str, is_coroutine: bool) -> None:
    """Every method of API.md exists; the awaited ones are coroutine functions."""
    method = getattr(CircuitBreaker, name)
    assert callable(method)
    assert inspect.iscoroutinefunction(method) is is_coroutine


def test_breaker_is_an_async_context_manager() -> None:
    """``async with breaker:`` is supported."""
    assert inspect.iscoroutinefunction(CircuitBreaker.__aenter__)
    assert inspect.iscoroutinefunction(CircuitBreaker.__aexit__)


def test_non_callable_action_is_refused() -> None:
    """A non-callable action raises ``TypeError``."""
    with pytest.raises(TypeError, match="callable"):
        CircuitBreaker("not a function")  # type: ignore[call-overload]


async def test_sync_action_value_is_accepted() -> None:
    """A sync action's return value is the result of ``fire``."""

    def add(a: int, b: int) -> int:
        return a + b

    breaker: CircuitBreaker[..., Any] = CircuitBreaker(add, clock=FakeClock())
    assert await breaker.fire(2, 3) == 5
    assert breaker.stats.successes == 1


async def test_fire_passes_args_and_kwargs() -> None:
    """``fire(*a, **kw)`` calls ``action(*a, **kw)``."""
    action = Recorder(result=42)
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(action, clock=FakeClock())
    assert await breaker.fire(1, "two", three=3) == 42
    assert action.calls == [((1, "two"), {"three": 3})]


# --------------------------------------------------------------------------- the README example


async def test_seed_readme_example_works_as_written() -> None:
    """The README's options dict and constructor call work, with the values they say."""
    options = {
        "timeout": 3.0,  # seconds; None disables
        "error_threshold_percentage": 50,
        "reset_timeout": 30.0,
    }
    breaker: CircuitBreaker[[int], str] = CircuitBreaker(call_service, name="payments", **options)
    assert await breaker.fire(12) == "charged 12"
    assert breaker.name == "payments"
    assert breaker.group == "payments"
    assert breaker.options.timeout == 3.0
    assert breaker.options.error_threshold_percentage == 50
    assert breaker.options.reset_timeout == 30.0
    assert breaker.stats.successes == 1


def test_options_dict_is_not_mutated() -> None:
    """The options dict given (and the dicts and lists inside it) is left exactly as it was."""
    state = {"open": True, "attempts": 1}
    reset_on = ["error"]
    options: dict[str, Any] = {
        "timeout": 3.0,
        "error_threshold_percentage": 50,
        "reset_timeout": 30.0,
        "coalesce": True,
        "coalesce_ttl": 5.0,
        "coalesce_reset_on": reset_on,
        "state": state,
    }
    before = copy.deepcopy(options)
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(
        call_service, name="payments", clock=FakeClock(), **options
    )
    breaker.close()
    breaker.open()
    breaker.to_json()
    assert options == before
    assert options["state"] is state
    assert state == {"open": True, "attempts": 1}
    assert reset_on == ["error"]


def test_options_changed_afterwards_do_not_reach_the_breaker() -> None:
    """Changing the caller's dicts after construction leaves the breaker's options alone."""
    state: dict[str, Any] = {"enabled": True}
    options: dict[str, Any] = {"timeout": 3.0, "state": state}
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(call_service, clock=FakeClock(), **options)
    options["timeout"] = 99.0
    state["enabled"] = False
    assert breaker.options.timeout == 3.0
    assert breaker.options.state is not None
    assert breaker.options.state["enabled"] is True


README_SNIPPET = """
from distributed_opossum import CircuitBreaker, circuit_breaker


async def call_service(order_id: int) -> str:
    return str(order_id)


options = {
    "timeout": 3.0,
    "error_threshold_percentage": 50,
    "reset_timeout": 30.0,
}
breaker = CircuitBreaker(call_service, name="payments", **options)


@circuit_breaker(name="charge", timeout=2.0)
async def charge(order: int) -> str:
    return str(order)


async def main() -> str:
    first: str = await breaker.fire(1)
    second: str = await charge(2)
    charge.breaker.open()
    return first + second
"""


METHOD_SNIPPET = """
from distributed_opossum import circuit_breaker


class Gateway:
    @circuit_breaker(name="gateway.charge", timeout=2.0)
    async def charge(self, amount: int) -> int:
        return amount


async def main() -> int:
    total: int = await Gateway().charge(40)
    return total
"""


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the type-checking tests of this module (the second run is warm)."""
    return tmp_path_factory.mktemp("mypy-cache")


def strict_mypy(source: str, directory: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """Run ``mypy --strict`` on ``source`` written to a file in ``directory``."""
    pytest.importorskip("mypy")
    path = directory / "example.py"
    path.write_text(textwrap.dedent(source))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(cache),
            str(path),
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )


def test_seed_readme_example_type_checks(tmp_path: Path, mypy_cache: Path) -> None:
    """The README's example, unannotated, passes ``mypy --strict`` (users type-check it)."""
    result = strict_mypy(README_SNIPPET, tmp_path, mypy_cache)
    assert result.returncode == 0, result.stdout + result.stderr


def test_decorated_method_type_checks(tmp_path: Path, mypy_cache: Path) -> None:
    """A method decorated with ``@circuit_breaker`` type-checks as a method (``mypy --strict``)."""
    result = strict_mypy(METHOD_SNIPPET, tmp_path, mypy_cache)
    assert result.returncode == 0, result.stdout + result.stderr
