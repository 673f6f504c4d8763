"""Option validation and defaults: every bad value is refused at construction, naming the option."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from helpers import Recorder, Sleeper

from distributed_opossum import CircuitBreaker, DistributedOptions
from distributed_opossum.testing import FakeClock


async def call_service() -> str:
    """A module-level action (its ``__qualname__`` is its name)."""
    return "ok"


class Service:
    """Holds a method used as an action."""

    async def call(self) -> str:
        """A method action."""
        return "ok"


def build(**options: Any) -> CircuitBreaker[[], str]:
    """A breaker around ``call_service`` on a fake clock."""
    options.setdefault("clock", FakeClock())
    if "distributed" in options:
        options.setdefault("name", "svc")  # a distributed breaker needs one
    return CircuitBreaker(call_service, **options)


def client() -> aioredis.Redis:
    """A redis client that is never connected (validation happens before any I/O)."""
    return aioredis.Redis()


# --------------------------------------------------------------------------- defaults


def test_defaults_equal_the_api_table() -> None:
    """Every option's default is the value of API.md's table."""
    opts = build().options
    assert opts.timeout == 10.0
    assert opts.error_threshold_percentage == 50
    assert opts.volume_threshold == 0
    assert opts.reset_timeout == 30.0
    assert opts.reset_timeout_multiplier == 1.0
    assert opts.max_reset_timeout is None
    assert opts.reset_timeout_jitter == 0.0
    assert opts.half_open_max_calls == 1
    assert opts.rolling_count_timeout == 10.0
    assert opts.rolling_count_buckets == 10
    assert opts.rolling_percentiles_enabled is True
    assert opts.capacity is None
    assert opts.error_filter is None
    assert opts.cache is False
    assert opts.coalesce is False
    assert opts.allow_warm_up is False
    assert opts.enabled is True
    assert opts.enable_snapshots is True
    assert opts.state is None
    assert opts.distributed is None


def test_default_name_is_the_qualname() -> None:
    """``name`` defaults to the action's ``__qualname__`` and ``group`` to the name."""
    breaker = build()
    assert breaker.name == "call_service"
    assert breaker.group == "call_service"


def test_default_name_of_a_nested_function_and_a_method() -> None:
    """Nested functions and bound methods are named by their ``__qualname__`` plus a
    suffix unique in the process: another call of the enclosing function, or
    another instance, may stand for another downstream."""

    async def inner() -> None:
        return None

    nested: CircuitBreaker[[], None] = CircuitBreaker(inner)
    again: CircuitBreaker[[], None] = CircuitBreaker(inner)
    method: CircuitBreaker[[], str] = CircuitBreaker(Service().call)
    assert nested.name.startswith(f"{inner.__qualname__}#")
    assert again.name != nested.name
    assert method.name.startswith("Service.call#")


def test_group_defaults_to_an_explicit_name() -> None:
    """With an explicit ``name`` and no ``group``, the group is the name."""
    breaker = build(name="payments")
    assert (breaker.name, breaker.group) == ("payments", "payments")
    assert build(name="payments", group="billing").group == "billing"


def test_public_properties_reflect_defaults() -> None:
    """The properties of a default breaker agree with the defaults."""
    breaker = build()
    assert breaker.volume_threshold == 0
    assert breaker.enabled is True
    assert breaker.warm_up is False


# --------------------------------------------------------------------------- bad values


BAD_VALUES: list[tuple[str, Any, type[Exception]]] = [
    ("timeout", -1, ValueError),
    ("timeout", -0.001, ValueError),
    ("timeout", True, TypeError),
    ("timeout", "3", TypeError),
    ("timeout", float("nan"), ValueError),
    ("timeout", float("inf"), ValueError),
    ("timeout", timedelta(seconds=-1), ValueError),
    ("error_threshold_percentage", -0.1, ValueError),
    ("error_threshold_percentage", 100.5, ValueError),
    ("error_threshold_percentage", 150, ValueError),
    ("error_threshold_percentage", "50", TypeError),
    ("volume_threshold", -1, ValueError),
    ("volume_threshold", 1.5, TypeError),
    ("reset_timeout", -1.0, ValueError),
    ("reset_timeout", "30", TypeError),
    ("reset_timeout_multiplier", 0.5, ValueError),
    ("reset_timeout_multiplier", 0, ValueError),
    ("max_reset_timeout", 0, ValueError),
    ("max_reset_timeout", -5.0, ValueError),
    ("reset_timeout_jitter", -0.1, ValueError),
    ("reset_timeout_jitter", 1.0, ValueError),
    ("reset_timeout_jitter", 1.5, ValueError),
    ("half_open_max_calls", 0, ValueError),
    ("half_open_max_calls", 2.0, TypeError),
    ("rolling_count_timeout", 0, ValueError),
    ("rolling_count_timeout", -10.0, ValueError),
    ("rolling_count_buckets", 0, ValueError),
    ("rolling_count_buckets", -1, ValueError),
    ("rolling_count_buckets", 2.5, TypeError),
    ("rolling_count_buckets", 10.0, TypeError),
    ("rolling_count_buckets", "10", TypeError),
    ("rolling_count_buckets", True, TypeError),
    ("capacity", 0, ValueError),
    ("capacity", -3, ValueError),
    ("capacity", True, TypeError),
    ("capacity", False, TypeError),
    ("capacity", 1.5, TypeError),
    ("cache_size", 0, ValueError),
    ("coalesce_size", 0, ValueError),
    ("cache_ttl", -1.0, ValueError),
    ("coalesce_ttl", 0, ValueError),
    ("rolling_percentiles_enabled", "yes", TypeError),
    ("cache", 1, TypeError),
    ("coalesce", "true", TypeError),
    ("allow_warm_up", None, TypeError),
    ("enabled", 0, TypeError),
    ("enable_snapshots", "no", TypeError),
    ("error_filter", 5, TypeError),
    ("cache_get_key", "key", TypeError),
    ("cache_transport", object(), TypeError),
    ("coalesce_reset_on", ["eror"], ValueError),
    ("coalesce_reset_on", 5, TypeError),
    ("state", "open", TypeError),
    ("clock", object(), TypeError),
    ("name", 5, TypeError),
    ("name", "", ValueError),
]


@pytest.mark.parametrize(
    ("option", "value", "error_type"),
    BAD_VALUES,
    ids=[f"{option}={value!r}" for option, value, _ in BAD_VALUES],
)
def test_bad_value_is_refused_naming_the_option(
    option: str, value: Any, error_type: type[Exception]
) -> None:
    """A bad value raises the right error at construction, and the message names the option."""
    with pytest.raises(error_type, match=re.escape(option)):
        build(**{option: value})


def test_timeout_true_is_a_type_error() -> None:
    """``timeout=True`` is refused with ``TypeError`` (True is not a number of seconds)."""
    with pytest.raises(TypeError, match="'timeout'"):
        build(timeout=True)


@pytest.mark.parametrize("value", [None, 0, 0.0, False])
def test_timeout_falsy_disables(value: Any) -> None:
    """``timeout`` None, 0 and False all disable the timeout."""
    assert build(timeout=value).options.timeout is None


async def test_disabled_timeout_lets_a_long_call_finish() -> None:
    """With ``timeout=0`` a call that takes 1000 s succeeds."""
    clock = FakeClock()
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(
        Sleeper(clock, 1000.0, result="late"), timeout=0, clock=clock
    )
    task = asyncio.ensure_future(breaker.fire())
    await clock.advance(1000.0)
    assert await task == "late"
    assert breaker.stats.timeouts == 0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("error_threshold_percentage", 0),
        ("error_threshold_percentage", 100),
        ("reset_timeout_jitter", 0.0),
        ("reset_timeout_jitter", 0.999),
        ("reset_timeout_multiplier", 1),
        ("capacity", 1),
        ("capacity", None),
        ("rolling_count_buckets", 1),
        ("reset_timeout", 0),
        ("rolling_count_timeout", 0.001),
        ("half_open_max_calls", 5),
        ("volume_threshold", 0),
        ("max_reset_timeout", None),
        ("coalesce_reset_on", ["error", "success", "timeout"]),
        ("coalesce_reset_on", ()),
    ],
)
def test_edge_values_are_accepted(option: str, value: Any) -> None:
    """Values on the edge of each range are valid."""
    build(**{option: value})


def test_buckets_need_not_divide_the_window() -> None:
    """There is no divisibility rule: 10 s in 3 buckets is fine."""
    breaker = build(rolling_count_timeout=10.0, rolling_count_buckets=3)
    assert breaker.options.rolling_count_buckets == 3
    assert breaker.options.bucket_interval == pytest.approx(10.0 / 3)


def test_int_durations_become_floats() -> None:
    """Durations given as ints are stored as float seconds."""
    opts = build(timeout=3, reset_timeout=30).options
    assert opts.timeout == 3.0
    assert isinstance(opts.timeout, float)
    assert isinstance(opts.reset_timeout, float)


@pytest.mark.parametrize(
    "option",
    [
        "timeout",
        "reset_timeout",
        "rolling_count_timeout",
        "max_reset_timeout",
        "cache_ttl",
        "coalesce_ttl",
    ],
)
def test_timedelta_durations_are_accepted(option: str) -> None:
    """Every duration option accepts a ``timedelta`` and stores float seconds."""
    opts = build(**{option: timedelta(seconds=2, milliseconds=500)}).options
    value = getattr(opts, option)
    assert value == 2.5
    assert isinstance(value, float)


# --------------------------------------------------------------------------- unknown names


def test_misspelled_option_suggests_the_close_match() -> None:
    """A misspelt option is refused; the message names it and suggests the right spelling."""
    with pytest.raises((TypeError, ValueError)) as caught:
        build(error_treshold_percentage=50)
    message = str(caught.value)
    assert "error_treshold_percentage" in message
    assert "error_threshold_percentage" in message


@pytest.mark.parametrize("option", ["resetTimeout", "banana", "rolling_count_bucket"])
def test_unknown_option_is_refused_naming_it(option: str) -> None:
    """Unknown option names are never silently ignored."""
    with pytest.raises((TypeError, ValueError), match=re.escape(repr(option))):
        build(**{option: 1})


def test_close_match_for_a_singular_name() -> None:
    """``rolling_count_bucket`` suggests ``rolling_count_buckets``."""
    with pytest.raises((TypeError, ValueError), match="rolling_count_buckets"):
        build(rolling_count_bucket=10)


# --------------------------------------------------------------------------- distributed


def test_distributed_missing_client_is_refused() -> None:
    """A ``distributed`` dict without a client is refused, naming the client."""
    with pytest.raises((TypeError, ValueError)) as caught:
        build(distributed={"prefix": "svc"})
    assert "client" in str(caught.value)
    assert "distributed" in str(caught.value).lower()


def test_distributed_none_client_is_refused() -> None:
    """``client: None`` is refused, naming ``distributed`` and ``client``."""
    with pytest.raises(TypeError, match=r"distributed.*client"):
        build(distributed={"client": None})


@pytest.mark.parametrize(
    ("quorum", "error_type"),
    [
        ("2", TypeError),
        (True, TypeError),
        ([2], TypeError),
        (0, ValueError),
        (-1, ValueError),
        (0.0, ValueError),
        (1.5, ValueError),
        (-0.5, ValueError),
        (float("nan"), ValueError),
    ],
)
def test_distributed_bad_quorum_is_refused(quorum: Any, error_type: type[Exception]) -> None:
    """``quorum`` must be an int ≥ 1 or a float in (0, 1]; the message names it."""
    with pytest.raises(error_type, match="quorum"):
        build(distributed={"client": client(), "quorum": quorum})


@pytest.mark.parametrize("quorum", [None, 1, 3, 0.5, 1.0, 0.01])
def test_distributed_good_quorum_is_accepted(quorum: int | float | None) -> None:
    """Valid quorums are kept as given."""
    assert DistributedOptions.parse({"client": client(), "quorum": quorum}).quorum == quorum


def test_distributed_unknown_key_is_refused_with_suggestion() -> None:
    """An unknown ``distributed`` key is refused; the message names it and the close match."""
    with pytest.raises((TypeError, ValueError)) as caught:
        build(distributed={"client": client(), "quroum": 2})
    message = str(caught.value)
    assert "quroum" in message
    assert "'quorum'" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("prefix", ""),
        ("prefix", 5),
        ("instance_id", ""),
        ("min_pod_volume", -1),
        ("min_pod_volume", 1.5),
        ("sync_interval", 0),
        ("sync_interval", -1.0),
    ],
)
def test_distributed_bad_values_are_refused_naming_the_key(key: str, value: Any) -> None:
    """Every ``distributed`` key is validated; the message names it."""
    with pytest.raises((TypeError, ValueError), match=key):
        build(distributed={"client": client(), key: value})


@pytest.mark.parametrize("value", ["redis://127.0.0.1:6379", 5, ["client"]])
def test_distributed_of_the_wrong_type_is_refused(value: Any) -> None:
    """``distributed`` must be a dict or ``DistributedOptions``."""
    with pytest.raises(TypeError, match="distributed"):
        build(distributed=value)


def test_distributed_defaults() -> None:
    """The ``distributed`` defaults are those of API.md."""
    options = DistributedOptions.parse({"client": client()})
    assert options.prefix == "dopossum"
    assert options.quorum is None
    assert options.instance_id.count(":") >= 2
    assert options.sync_interval is None


def test_distributed_sync_interval_accepts_timedelta() -> None:
    """``sync_interval`` accepts a ``timedelta``."""
    options = DistributedOptions.parse({"client": client(), "sync_interval": timedelta(seconds=2)})
    assert options.sync_interval == 2.0


def test_distributed_dict_is_not_mutated() -> None:
    """The ``distributed`` dict given is copied, never changed."""
    given: dict[str, Any] = {"client": client(), "quorum": 2}
    options = DistributedOptions.parse(given)
    assert given.keys() == {"client", "quorum"}
    assert options.quorum == 2


def test_breaker_rejects_bad_options_before_using_the_action() -> None:
    """A refused option leaves the action uncalled."""
    action = Recorder()
    with pytest.raises(ValueError, match="capacity"):
        CircuitBreaker(action, capacity=0)
    assert action.calls == []
