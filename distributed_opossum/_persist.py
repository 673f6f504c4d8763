"""A breaker's state as JSON: ``to_json()["state"]`` and the ``state=`` option, both pure.

:func:`export_state` turns what a breaker is into the dict; :func:`parse_state`
turns such a dict back into a :class:`RestoredState`, which the breaker
applies. Instants cross processes as wall-clock epoch seconds; inside a
breaker they are monotonic, so the breaker converts them with its own clock.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._backoff import open_period
from ._options import BreakerOptions
from ._state import State

__all__ = ["STATE_KEYS", "RestoredState", "export_state", "parse_state"]

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

_FLAGS = ("enabled", "closed", "open", "half_open", "forced_open", "warm_up", "shutdown")


@dataclass(frozen=True, slots=True)
class RestoredState:
    """What a ``state=`` dict says, for the breaker to apply.

    Attributes:
        state: the state to resume in.
        attempts: consecutive openings (the backoff's position).
        remaining: seconds left of the open period (an open state with
            ``opened_at``), else None.
        enabled: None when the dict does not say.
        shutdown: True for a breaker exported after its shutdown.
    """

    state: State
    attempts: int
    remaining: float | None
    enabled: bool | None
    shutdown: bool


def export_state(
    *,
    name: str,
    enabled: bool,
    state: State,
    warm_up: bool,
    shutdown: bool,
    opened_at: float | None,
    attempts: int,
) -> dict[str, Any]:
    """``to_json()["state"]``; ``opened_at`` in wall-clock epoch seconds, or None."""
    return {
        "name": name,
        "enabled": enabled,
        "closed": state is State.CLOSED,
        "open": state is State.OPEN,
        "half_open": state is State.HALF_OPEN,
        "forced_open": state is State.FORCED_OPEN,
        "warm_up": warm_up,
        "shutdown": shutdown,
        "opened_at": opened_at,
        "attempts": attempts,
    }


def parse_state(data: Mapping[str, Any], options: BreakerOptions, wall: float) -> RestoredState:
    """Validate an exported state (partial dicts allowed, unknown keys refused).

    Args:
        data: ``to_json()["state"]`` of a breaker, or a part of it.
        options: the options of the breaker importing it (the open period's length).
        wall: the current wall-clock time, epoch seconds.

    Raises:
        ValueError: an unknown key, or a value out of range.
        TypeError: a flag that is not a bool.
    """
    for key in data:
        if key not in STATE_KEYS:
            close = difflib.get_close_matches(str(key), sorted(STATE_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"'state': unknown key {key!r}{hint} (it takes to_json()['state'], "
                f"keys {', '.join(sorted(STATE_KEYS))})"
            )
    for flag in _FLAGS:
        if flag in data and not isinstance(data[flag], bool):
            raise TypeError(f"'state': {flag!r} must be a bool, got {data[flag]!r}")
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
            reset_timeout=options.reset_timeout,
            multiplier=options.reset_timeout_multiplier,
            max_reset_timeout=options.max_reset_timeout,
        )
        remaining = opened_at + period - wall
    enabled = data.get("enabled")
    return RestoredState(
        state=state,
        attempts=attempts,
        remaining=remaining,
        enabled=enabled,
        shutdown=bool(data.get("shutdown")),
    )
