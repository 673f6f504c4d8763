"""Breaker options: validated once at construction, frozen afterwards.

Every option of opossum is here in Python naming (snake_case, seconds).
Unknown names are refused (a typo must not be silently ignored) and every
error names the option it is about. The caller's dict is copied, never mutated.
"""

from __future__ import annotations

import difflib
import math
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

from ._checks import check_int
from ._clock import SYSTEM_CLOCK, Clock
from ._names import MAX_NAME_LENGTH, check_name, default_name
from ._redis.client import check_client

__all__ = [
    "MAX_INSTANCE_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_ROLLING_COUNT_BUCKETS",
    "MIN_SYNC_INTERVAL",
    "BreakerOptions",
    "DistributedOptions",
    "parse_options",
]

COALESCE_OUTCOMES = frozenset({"error", "success", "timeout"})

MAX_ROLLING_COUNT_BUCKETS = 1000
"""Most buckets in a window: each bucket is an object with its own counters and
latency samples, so a window of 10**9 buckets would exhaust memory."""
MIN_SYNC_INTERVAL = 0.01
"""Shortest report interval of a distributed breaker, in seconds: every report is
a script call on Redis. A shorter bucket interval still reports this often."""
MIN_TRIAL_LEASE = 1.0
"""Shortest life of a trial permit, in seconds (API.md's 1 s floor)."""
TRIAL_GRACE = 1.0
"""How long a trial permit outlives the trial's timeout, in seconds."""
MAX_INSTANCE_ID_LENGTH = 200
"""Longest ``instance_id``: it travels in every report and broadcast."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DistributedOptions:
    """How a breaker shares its state with the breakers of the same name elsewhere.

    Attributes:
        client: a ``redis.asyncio.Redis`` (or cluster / sentinel-managed) client.
        prefix: namespace of every key and channel.
        instance_id: this pod's identity in the shared stats.
        quorum: ``None`` (any pod's trip opens the cluster), an ``int`` ≥ 1
            (that many pods must vote) or a ``float`` in (0, 1] (that fraction
            of the pods that reported calls in the window).
        min_pod_volume: calls a pod needs in the window before its own rate
            is a vote; ``None`` means ``max(volume_threshold, 1)``.
        sync_interval: seconds between reports; ``None`` means the bucket interval.
    """

    client: Any
    prefix: str = "dopossum"
    instance_id: str = field(default_factory=lambda: default_instance_id())  # noqa: PLW0108 (defined below)
    quorum: int | float | None = None
    min_pod_volume: int | None = None
    sync_interval: float | None = None

    def __post_init__(self) -> None:
        check_client("distributed: 'client'", self.client)
        if not isinstance(self.prefix, str) or not self.prefix:
            raise ValueError(f"distributed: 'prefix' must be a non-empty str, got {self.prefix!r}")
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"distributed: 'prefix' must not contain braces, got {self.prefix!r}")
        if not isinstance(self.instance_id, str) or not self.instance_id:
            raise ValueError(
                f"distributed: 'instance_id' must be a non-empty str, got {self.instance_id!r}"
            )
        if len(self.instance_id) > MAX_INSTANCE_ID_LENGTH:
            raise ValueError(
                f"distributed: 'instance_id' must be at most {MAX_INSTANCE_ID_LENGTH} "
                f"characters, got {len(self.instance_id)}"
            )
        quorum = self.quorum
        if quorum is not None:
            if isinstance(quorum, bool) or not isinstance(quorum, int | float):
                raise TypeError(f"distributed: 'quorum' must be an int or a float, got {quorum!r}")
            if isinstance(quorum, int) and quorum < 1:
                raise ValueError(f"distributed: 'quorum' as a pod count must be >= 1, got {quorum}")
            if isinstance(quorum, float) and not 0.0 < quorum <= 1.0:
                raise ValueError(
                    f"distributed: 'quorum' as a fraction must be in (0, 1], got {quorum}"
                )
        if self.min_pod_volume is not None:
            check_int("distributed: 'min_pod_volume'", self.min_pod_volume, minimum=0)
        if self.sync_interval is not None:
            interval = _duration("distributed: 'sync_interval'", self.sync_interval, positive=True)
            if interval < MIN_SYNC_INTERVAL:
                raise ValueError(
                    f"distributed: 'sync_interval' must be >= {MIN_SYNC_INTERVAL} seconds "
                    f"(every report is a Redis call), got {interval}"
                )
            object.__setattr__(self, "sync_interval", interval)

    @classmethod
    def parse(cls, value: object) -> DistributedOptions:
        """Accept a ``DistributedOptions`` or a dict of its fields."""
        if isinstance(value, DistributedOptions):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"'distributed' must be a dict or DistributedOptions, got {type(value).__name__}"
            )
        known = {f.name for f in fields(cls)}
        _refuse_unknown(value.keys(), known, where="distributed option")
        return cls(**dict(value))


def default_instance_id() -> str:
    """``host:pid:random`` — unique per process, readable in the shared stats."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerOptions:
    """The validated options of one breaker (see ``CircuitBreaker`` for their meaning)."""

    name: str
    group: str
    timeout: float | None = 10.0
    error_threshold_percentage: float = 50.0
    volume_threshold: int = 0
    reset_timeout: float = 30.0
    reset_timeout_multiplier: float = 1.0
    max_reset_timeout: float | None = None
    reset_timeout_jitter: float = 0.0
    half_open_max_calls: int = 1
    rolling_count_timeout: float = 10.0
    rolling_count_buckets: int = 10
    rolling_percentiles_enabled: bool = True
    capacity: int | None = None
    error_filter: Callable[..., bool] | None = None
    cache: bool = False
    cache_ttl: float | None = None
    cache_size: int | None = None
    cache_get_key: Callable[..., Any] | None = None
    cache_transport: Any = None
    coalesce: bool = False
    coalesce_ttl: float | None = None
    coalesce_size: int | None = None
    coalesce_reset_on: frozenset[str] = frozenset()
    allow_warm_up: bool = False
    enabled: bool = True
    enable_snapshots: bool = True
    state: Mapping[str, Any] | None = None
    distributed: DistributedOptions | None = None
    clock: Clock = SYSTEM_CLOCK

    @property
    def bucket_interval(self) -> float:
        """Length of one bucket of the rolling window, in seconds."""
        return self.rolling_count_timeout / self.rolling_count_buckets

    @property
    def report_interval(self) -> float:
        """Seconds between a distributed breaker's reports (never below MIN_SYNC_INTERVAL)."""
        given = self.distributed.sync_interval if self.distributed is not None else None
        return max(given or self.bucket_interval, MIN_SYNC_INTERVAL)

    @property
    def trial_lease(self) -> float:
        """How long a trial permit lives before it expires (a hung trial ends).

        At least a second (so ``reset_timeout=0`` with ``timeout=None`` does not
        make every call a trial), and a second past the timeout: a trial that
        times out returns its permit with its failure before the permit can
        expire, so the failure re-opens the breaker rather than being dropped.
        """
        timed = self.timeout + TRIAL_GRACE if self.timeout is not None else 0.0
        return max(timed, self.reset_timeout, MIN_TRIAL_LEASE)


_OPTION_NAMES = frozenset(f.name for f in fields(BreakerOptions))


def parse_options(action: Callable[..., Any] | None, given: Mapping[str, Any]) -> BreakerOptions:
    """Validate the keyword options of ``CircuitBreaker(action, **given)``.

    Raises:
        TypeError: an unknown option name or a value of the wrong type.
        ValueError: a value out of range; the message names the option.
    """
    _refuse_unknown(given.keys(), _OPTION_NAMES, where="option")
    raw = dict(given)  # a copy: the caller's dict is never touched
    name = raw.pop("name", None)
    if name is None:
        if raw.get("distributed") is not None:
            raise TypeError(
                "'name' is required with 'distributed': breakers of one name share their "
                "state across pods, and a default taken from the callable could merge "
                "unrelated downstreams"
            )
        if action is None:
            raise TypeError("'name' is required for a breaker without an action")
        name = default_name(action)
    name = check_name("'name'", name)
    group = check_name("'group'", raw.pop("group", None) or name)
    values: dict[str, Any] = {"name": name, "group": group}

    if "timeout" in raw:
        values["timeout"] = _timeout(raw.pop("timeout"))
    for key in ("reset_timeout", "rolling_count_timeout"):
        if key in raw:
            values[key] = _duration(
                f"'{key}'", raw.pop(key), positive=key == "rolling_count_timeout"
            )
    for key in ("max_reset_timeout", "cache_ttl", "coalesce_ttl"):
        if key in raw and raw[key] is not None:
            values[key] = _duration(f"'{key}'", raw.pop(key), positive=True)
        raw.pop(key, None)
    if "error_threshold_percentage" in raw:
        pct = _number("'error_threshold_percentage'", raw.pop("error_threshold_percentage"))
        if not 0 <= pct <= 100:
            raise ValueError(f"'error_threshold_percentage' must be within 0..100, got {pct}")
        values["error_threshold_percentage"] = float(pct)
    if "reset_timeout_multiplier" in raw:
        mult = _number("'reset_timeout_multiplier'", raw.pop("reset_timeout_multiplier"))
        if mult < 1:
            raise ValueError(f"'reset_timeout_multiplier' must be >= 1, got {mult}")
        values["reset_timeout_multiplier"] = float(mult)
    if "reset_timeout_jitter" in raw:
        jitter = _number("'reset_timeout_jitter'", raw.pop("reset_timeout_jitter"))
        if not 0 <= jitter < 1:
            raise ValueError(f"'reset_timeout_jitter' must be within [0, 1), got {jitter}")
        values["reset_timeout_jitter"] = float(jitter)
    for key, minimum in (
        ("volume_threshold", 0),
        ("half_open_max_calls", 1),
        ("rolling_count_buckets", 1),
    ):
        if key in raw:
            values[key] = check_int(f"'{key}'", raw.pop(key), minimum=minimum)
    if values.get("rolling_count_buckets", 0) > MAX_ROLLING_COUNT_BUCKETS:
        raise ValueError(
            f"'rolling_count_buckets' must be <= {MAX_ROLLING_COUNT_BUCKETS}, "
            f"got {values['rolling_count_buckets']}"
        )
    for key in ("capacity", "cache_size", "coalesce_size"):
        if key in raw and raw[key] is not None:
            values[key] = check_int(f"'{key}'", raw.pop(key), minimum=1)
        raw.pop(key, None)
    for key in (
        "rolling_percentiles_enabled",
        "cache",
        "coalesce",
        "allow_warm_up",
        "enabled",
        "enable_snapshots",
    ):
        if key in raw:
            flag = raw.pop(key)
            if not isinstance(flag, bool):
                raise TypeError(f"'{key}' must be a bool, got {flag!r}")
            values[key] = flag
    for key in ("error_filter", "cache_get_key"):
        if key in raw and raw[key] is not None:
            fn = raw.pop(key)
            if not callable(fn):
                raise TypeError(f"'{key}' must be callable, got {fn!r}")
            values[key] = fn
        raw.pop(key, None)
    if raw.get("cache_transport") is not None:
        transport = raw.pop("cache_transport")
        missing = [m for m in ("get", "set", "flush") if not callable(getattr(transport, m, None))]
        if missing:
            raise TypeError(f"'cache_transport' lacks method(s) {', '.join(missing)}")
        values["cache_transport"] = transport
    raw.pop("cache_transport", None)
    if "coalesce_reset_on" in raw:
        values["coalesce_reset_on"] = _coalesce_reset_on(raw.pop("coalesce_reset_on"))
    if raw.get("state") is not None:
        state = raw.pop("state")
        if not isinstance(state, Mapping):
            raise TypeError(f"'state' must be a dict (from to_json()['state']), got {state!r}")
        values["state"] = dict(state)
    raw.pop("state", None)
    if raw.get("distributed") is not None:
        values["distributed"] = DistributedOptions.parse(raw.pop("distributed"))
    raw.pop("distributed", None)
    if "clock" in raw:
        clock = raw.pop("clock")
        if not isinstance(clock, Clock):
            raise TypeError(f"'clock' must implement the Clock protocol, got {clock!r}")
        values["clock"] = clock
    assert not raw, f"unparsed options {sorted(raw)}"
    return BreakerOptions(**values)


def _refuse_unknown(names: Any, known: frozenset[str] | set[str], *, where: str) -> None:
    for key in names:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"unknown {where} {key!r}{hint}")


def _number(label: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{label} must be a number, got {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{label} must be finite, got {value!r}")
    return float(value)


def _duration(label: str, value: object, *, positive: bool) -> float:
    """Seconds from a number or a ``timedelta``; negative is always refused."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    seconds = _number(label, value)
    if seconds < 0 or (positive and seconds == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{label} must be {bound} seconds, got {seconds}")
    return seconds


def _timeout(value: object) -> float | None:
    """``None``, ``0`` and ``False`` disable the timeout; ``True`` is refused."""
    if value is None or value is False:
        return None
    if value is True:
        raise TypeError("'timeout' must be seconds or None/0/False to disable it, got True")
    seconds = _duration("'timeout'", value, positive=False)
    return seconds or None


def _coalesce_reset_on(value: object) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple | set | frozenset):
        raise TypeError(f"'coalesce_reset_on' must be a list of outcomes, got {value!r}")
    outcomes = frozenset(value)
    unknown = outcomes - COALESCE_OUTCOMES
    if unknown:
        accepted = sorted(COALESCE_OUTCOMES)
        raise ValueError(f"'coalesce_reset_on' accepts {accepted}, got {sorted(map(str, unknown))}")
    return outcomes
