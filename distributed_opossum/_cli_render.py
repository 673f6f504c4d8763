"""What the CLI prints: tables for people, JSON documents for machines.

Pure functions of the dataclasses :mod:`._fleet` returns; no I/O. Every time
shown is computed from Redis' clock (the ``now_ms`` a script read returned),
never from this machine's.

The JSON shape (``"v": 1``) is a contract, documented in the README; unknown
values are ``null``. A breaker is::

    {"name": str, "state": "closed"|"open"|"half_open"|"forced_open"|null,
     "exists": bool, "epoch": int|null, "attempts": int|null, "reason": str|null,
     "now_ms": int|null, "open_until_ms": int|null, "retry_in_ms": int|null,
     "closed_at_ms": int|null, "lease_expires_ms": int|null,
     "window": {"volume", "failures", "failure_rate", "trips", "reporting", "votes",
                "entries", "latest_ms", "min_pod_volume", "error_threshold_percentage"},
     "pods": [{"instance", "volume", "failures", "trips"}], "problems": [str]}

The pooled figures (``volume``, ``failures``, ``failure_rate``, ``reporting``,
``votes``) are the last tally's. Between a change of state (or the end of a
tally lease) and the next report's tally they are pending: ``null``, with no
problem listed (a ``null`` with a problem is unreadable data). The vote rule
(``min_pod_volume``, ``error_threshold_percentage``) is a pod option Redis
does not hold: always ``null``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ._redis.fleet import BreakerStatus, WindowSums
from ._redis.replies import SharedState

__all__ = [
    "JSON_VERSION",
    "action_document",
    "action_text",
    "breaker_document",
    "cleanup_document",
    "cleanup_text",
    "detail_text",
    "printable",
    "status_document",
    "table_text",
]

JSON_VERSION = 1
"""Version of every JSON document the CLI prints."""

_UNKNOWN = "?"
_NONE = "-"
_PENDING = "..."
_PENDING_NOTE = f"{_PENDING} pooled figures pending: the next report tallies them"
_WINDOW_FIELDS = (
    "volume", "failures", "trips", "reporting", "votes", "entries", "latest_ms",
    "min_pod_volume", "error_threshold_percentage",
)  # fmt: skip
_POD_FIELDS = ("instance", "volume", "failures", "trips")
_COLUMNS = (
    "NAME", "STATE", "EPOCH", "RETRY IN", "ATTEMPTS", "PODS", "VOLUME", "FAILURES", "RATE",
    "VOTES",
)  # fmt: skip
_RIGHT = frozenset({"EPOCH", "ATTEMPTS", "PODS", "VOLUME", "FAILURES", "RATE"})


# --------------------------------------------------------------------------- JSON


def _retry_in_ms(state: SharedState) -> int | None:
    # Redis' clock on both sides: open_until and now come from one script call.
    return state.open_remaining_ms if state.state == "open" else None


def _state_json(state: SharedState | None) -> dict[str, Any]:
    if state is None:
        fields = ("state", "epoch", "attempts", "reason", "now_ms", "open_until_ms")
        more = ("retry_in_ms", "closed_at_ms", "lease_expires_ms")
        return {"exists": True} | dict.fromkeys(fields + more)
    return {
        "state": state.state,
        "exists": state.exists,
        "epoch": state.epoch,
        "attempts": state.attempts,
        "reason": state.reason,
        "now_ms": state.now_ms,
        "open_until_ms": state.open_until_ms,
        "retry_in_ms": _retry_in_ms(state),
        "closed_at_ms": state.closed_at_ms,
        "lease_expires_ms": state.lease_expires_ms,
    }


def _window_json(window: WindowSums) -> dict[str, Any]:
    # The documented fields only: pending and tallied_ms are for the text views.
    fields = {field: getattr(window, field) for field in _WINDOW_FIELDS}
    return fields | {"failure_rate": window.failure_rate}


def breaker_document(status: BreakerStatus) -> dict[str, Any]:
    """One breaker as JSON (the shape in this module's docstring)."""
    return {
        "name": status.name,
        **_state_json(status.state),
        "window": _window_json(status.window),
        "pods": [
            {field: getattr(pod, field) for field in _POD_FIELDS} for pod in status.window.pods
        ],
        "problems": list(status.problems),
    }


def status_document(prefix: str, statuses: Sequence[BreakerStatus]) -> dict[str, Any]:
    """``status`` (and each refresh of ``watch``): every breaker of the prefix."""
    breakers = [breaker_document(s) for s in statuses]
    return {"v": JSON_VERSION, "prefix": prefix, "breakers": breakers}


def action_document(command: str, name: str, state: SharedState) -> dict[str, Any]:
    """``force-open`` / ``reset``: the state the script left, and whether it changed."""
    fields = {"v": JSON_VERSION, "command": command, "name": name, "changed": state.changed}
    return fields | _state_json(state)


def cleanup_document(removed: dict[str, int]) -> dict[str, Any]:
    """``cleanup``: stats entries removed per breaker, and in all."""
    return {"v": JSON_VERSION, "removed": removed, "total": sum(removed.values())}


# --------------------------------------------------------------------------- text


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\x1b``, ``\\n``).

    A name or a reason comes from Redis or from the command line: it must
    never move the cursor or recolour the terminal.
    """
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _int(value: int | None) -> str:
    return _UNKNOWN if value is None else str(value)


def _seconds(ms: int) -> str:
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _redis_time(ms: int) -> str:
    """A Redis ``TIME`` in ms, as UTC (Redis' clock, not this machine's)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _retry_in(state: SharedState | None) -> str:
    if state is None:
        return _UNKNOWN
    if state.state == "open":
        remaining = state.open_remaining_ms
        return _seconds(remaining) if remaining else "due"
    return {"half_open": "trial", "forced_open": "reset"}.get(state.state, _NONE)


def _rate(window: WindowSums) -> str:
    rate = window.failure_rate
    if rate is None:
        return _UNKNOWN if window.volume is None else _NONE
    return f"{rate * 100:.1f}%"


def _votes(window: WindowSums) -> str:
    return f"{_int(window.votes)}/{_int(window.reporting)}"


def _row(status: BreakerStatus) -> tuple[str, ...]:
    state, window = status.state, status.window
    pooled = (_PENDING,) * 5
    if not window.pending:
        calls = (_int(window.reporting), _int(window.volume), _int(window.failures))
        pooled = (*calls, _rate(window), _votes(window))
    return (
        printable(status.name),
        _UNKNOWN if state is None else state.state,
        _UNKNOWN if state is None else str(state.epoch),
        _retry_in(state),
        _UNKNOWN if state is None else str(state.attempts),
        *pooled,
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[str]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in (header, *rows):
        cells = [
            cell.rjust(width) if title in right else cell.ljust(width)
            for cell, width, title in zip(row, widths, header, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def table_text(prefix: str, statuses: Sequence[BreakerStatus]) -> str:
    """``status``: one row per breaker, then a line per breaker with unreadable data
    (and one saying what ``...`` is, when a breaker's pooled figures are pending)."""
    if not statuses:
        return f"no breakers under prefix {printable(prefix)!r}"
    text = _table(_COLUMNS, [_row(s) for s in statuses], _RIGHT)
    notes = [f"{printable(s.name)}: {printable(p)}" for s in statuses for p in s.problems]
    if any(s.window.pending for s in statuses):
        notes.append(_PENDING_NOTE)
    return "\n".join([text, *notes])


def _state_lines(state: SharedState | None) -> list[tuple[str, str]]:
    if state is None:
        return [("state", "unknown (the state hash is unreadable)")]
    if not state.exists:
        return [("state", "closed (no shared state in Redis: pods read that as closed)")]
    lines = [
        ("state", f"{state.state} (epoch {state.epoch}, reason {printable(state.reason)})"),
        ("attempts", str(state.attempts)),
    ]
    if state.state == "open":
        until = f"open until {_redis_time(state.open_until_ms)}"
        lines.append(("retry in", f"{_retry_in(state)} ({until}, Redis clock)"))
    elif state.state == "forced_open":
        lines.append(("retry in", "never: forced open until reset"))
    if state.lease_expires_ms:
        left = _seconds(max(0, state.lease_expires_ms - state.now_ms))
        lines.append(("trial", f"a trial lease is held for {left} more"))
    if state.closed_at_ms:
        ago = _seconds(max(0, state.now_ms - state.closed_at_ms))
        lines.append(("closed at", f"{_redis_time(state.closed_at_ms)} ({ago} ago)"))
    return lines


def _ago(ms: int | None, now_ms: int | None) -> str | None:
    if not ms or now_ms is None:
        return None
    return f"{_seconds(max(0, now_ms - ms))} ago"


def _window_lines(window: WindowSums, now_ms: int | None) -> list[tuple[str, str]]:
    local = f"{_int(window.trips)} local trips, {_int(window.entries)} entries"
    if window.pending:
        return [
            ("window", f"pending: the next report tallies the pods' windows; {local}"),
            ("pods", f"{len(window.pods)} with a window in this epoch (below), votes pending"),
        ]
    calls = f"{_int(window.volume)} calls, {_int(window.failures)} failures ({_rate(window)})"
    lines = [
        ("window", f"{calls}, {local}"),
        ("pods", f"{_int(window.reporting)} reporting, {_int(window.votes)} voting to open"),
    ]
    tallied = _ago(window.tallied_ms, now_ms)
    if tallied is not None:
        lines.append(("tallied", tallied))
    return lines


def detail_text(prefix: str, status: BreakerStatus) -> str:
    """``status NAME``: the breaker's fields, then one row per reporting pod."""
    now_ms = status.state.now_ms if status.state is not None else None
    lines = [("breaker", f"{printable(status.name)} (prefix {printable(prefix)})")]
    lines += _state_lines(status.state) + _window_lines(status.window, now_ms)
    last = _ago(status.window.latest_ms, now_ms)
    if last is not None:
        lines.append(("reported", f"{last} (the latest pod window written)"))
    lines += [("problem", printable(problem)) for problem in status.problems]
    width = max(len(label) for label, _ in lines)
    text = "\n".join(f"{label.ljust(width)}  {value}" for label, value in lines)
    if not status.window.pods:
        return text
    header = ("POD", "VOLUME", "FAILURES", "RATE", "TRIPS", "AGE")
    rows = []
    for pod in status.window.pods:
        rate = _NONE
        if pod.volume is None or pod.failures is None:
            rate = _UNKNOWN
        elif pod.volume:
            rate = f"{pod.failures / pod.volume * 100:.1f}%"
        age = _UNKNOWN
        if pod.written_ms is not None and now_ms is not None:
            age = _seconds(max(0, now_ms - pod.written_ms))
        cells = (_int(pod.volume), _int(pod.failures), rate, _int(pod.trips), age)
        rows.append((printable(pod.instance), *cells))
    pods = _table(header, rows, frozenset(header[1:]))
    return f"{text}\n\n{pods}"


def action_text(command: str, name: str, state: SharedState) -> str:
    """``force-open`` / ``reset``: one line saying what every pod now does."""
    shown = printable(name)
    if command == "force-open":
        if not state.changed:
            return f"{shown}: already forced open (epoch {state.epoch})"
        return f"{shown}: forced open on every pod until reset (epoch {state.epoch})"
    return f"{shown}: closed on every pod, attempts cleared (epoch {state.epoch})"


def cleanup_text(removed: dict[str, int]) -> str:
    """``cleanup``: entries removed per breaker, then the total."""
    lines = [f"{printable(name)}: removed {count}" for name, count in removed.items()]
    total = sum(removed.values())
    lines.append(f"removed {total} stats entr{'y' if total == 1 else 'ies'} in all")
    return "\n".join(lines)
