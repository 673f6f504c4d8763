"""A breaker's state as JSON: ``to_json()`` and the ``state=`` option that re-imports it.

Instants cross processes as wall-clock epoch seconds; inside a breaker they
are monotonic, so both directions convert through the breaker's clock.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from ._backoff import open_period
from ._state import State

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker

__all__ = ["STATE_KEYS", "restore", "to_json"]

STATE_KEYS = frozenset(
    {
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
)
"""The keys of ``to_json()["state"]``: the only ones ``state=`` accepts."""


def to_json(breaker: CircuitBreaker[Any, Any]) -> dict[str, Any]:
    """``{"state": {...}, "status": {...}}``, JSON-serialisable; ``state`` re-imports."""
    state = breaker.state
    opened_at = breaker._core.opened_at
    return {
        "state": {
            "name": breaker.name,
            "enabled": breaker._enabled,
            "closed": state is State.CLOSED,
            "open": state is State.OPEN,
            "half_open": state is State.HALF_OPEN,
            "forced_open": state is State.FORCED_OPEN,
            "warm_up": breaker.warm_up,
            "shutdown": breaker._shutdown,
            "opened_at": None
            if opened_at is None
            else breaker._clock.wall() - (breaker._monotonic() - opened_at),
            "attempts": breaker._core.attempts,
        },
        "status": breaker.stats.to_dict(),
    }


def restore(breaker: CircuitBreaker[Any, Any], data: Any, now: float) -> None:
    """Import ``to_json()["state"]`` (partial dicts allowed, unknown keys refused)."""
    for key in data:
        if key not in STATE_KEYS:
            close = difflib.get_close_matches(str(key), sorted(STATE_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"'state': unknown key {key!r}{hint} (it takes to_json()['state'], "
                f"keys {', '.join(sorted(STATE_KEYS))})"
            )
    for flag in (
        "enabled",
        "closed",
        "open",
        "half_open",
        "forced_open",
        "warm_up",
        "shutdown",
    ):
        if flag in data and not isinstance(data[flag], bool):
            raise TypeError(f"'state': {flag!r} must be a bool, got {data[flag]!r}")
    if "enabled" in data:
        breaker._enabled = data["enabled"]
    attempts = data.get("attempts") or 0
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise ValueError(f"'state': 'attempts' must be an int >= 0, got {attempts!r}")
    if data.get("forced_open"):
        state = State.FORCED_OPEN
    elif data.get("open"):
        state = State.OPEN
    elif data.get("half_open"):
        state = State.HALF_OPEN
    else:
        state = State.CLOSED
    remaining = None
    opened_at = data.get("opened_at")
    if state is State.OPEN and opened_at is not None:
        if isinstance(opened_at, bool) or not isinstance(opened_at, int | float):
            raise ValueError(f"'state': 'opened_at' must be epoch seconds, got {opened_at!r}")
        period = open_period(
            max(attempts, 1),
            reset_timeout=breaker._options.reset_timeout,
            multiplier=breaker._options.reset_timeout_multiplier,
            max_reset_timeout=breaker._options.max_reset_timeout,
        )
        remaining = opened_at + period - breaker._clock.wall()
    breaker._core.restore(state, now=now, attempts=attempts, remaining=remaining)
    if state is State.OPEN:
        breaker._apply_open_deadline(now)
    if data.get("shutdown"):
        breaker._shutdown = True
        breaker._enabled = False
