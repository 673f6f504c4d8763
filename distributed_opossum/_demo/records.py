"""What the demo records: the pods' reports (one JSON line each) and its own actions.

A pod prints one JSON object per line on its stdout. Every report carries
``"e"`` (its kind), most carry ``"t"`` (the pod's ``time.monotonic()``: every
process of one machine reads the same monotonic clock, so the demo can compare
them) and ``"b"`` (which breaker: ``payments``, ``payments-quorum`` or
``independent``)::

    {"e": "ready", "pid": 4242}
    {"e": "state", "t": .., "b": .., "state": "open", "cause": "local",
     "attempts": 1, "retry_after": 1.0, "failures": 11, "successes": 9}
    {"e": "trial", "t": .., "b": ..}                     a trial call reached the API
    {"e": "trial_end", "t": .., "b": .., "ok": false, "outcome": "timed out"}
    {"e": "registry", "t": .., "up": false, "error": ".."}
    {"e": "calls", "b": .., "sent": .., "reached": .., "ok": .., "failed": .., "rejected": ..}
    {"e": "error", "message": ".."}
    {"e": "bye"}

``parse_report`` turns a line into one of the record types below, with times
moved to the demo's clock (seconds since the scenario began).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ApiChange",
    "CallCounts",
    "PhaseStart",
    "PodExit",
    "Record",
    "RegistryChange",
    "StateChange",
    "Trial",
    "TrialEnd",
    "explained_by_trial",
    "parse_report",
]


@dataclass(frozen=True, slots=True)
class StateChange:
    """A breaker of a pod changed state (``open``, ``half_open``, ``closed``, ``forced_open``)."""

    t: float
    pod: str
    breaker: str
    state: str
    cause: str
    attempts: int = 0
    retry_after: float | None = None
    failures: int = 0
    successes: int = 0


@dataclass(frozen=True, slots=True)
class Trial:
    """A trial call (admitted while half-open) reached the API."""

    t: float
    pod: str
    breaker: str


@dataclass(frozen=True, slots=True)
class TrialEnd:
    """A trial call finished: ``ok`` and what happened in words (``timed out``, ``HTTP 503``)."""

    t: float
    pod: str
    breaker: str
    ok: bool
    outcome: str


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """A pod lost (``up`` False) or regained its Redis connection."""

    t: float
    pod: str
    up: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class CallCounts:
    """A pod's running totals of the calls through one breaker."""

    pod: str
    breaker: str
    sent: int
    reached: int
    ok: int
    failed: int
    rejected: int


@dataclass(frozen=True, slots=True)
class PodExit:
    """A pod process ended (``expected`` False: before the demo asked it to)."""

    t: float
    pod: str
    code: int | None
    expected: bool


@dataclass(frozen=True, slots=True)
class ApiChange:
    """The demo changed the payments API: ``mode`` and the pods it refuses (phase 5)."""

    t: float
    mode: str
    sick: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PhaseStart:
    """A phase of the scenario began."""

    t: float
    number: int
    title: str


Record = StateChange | Trial | TrialEnd | RegistryChange | PodExit | ApiChange | PhaseStart
"""Everything that goes on the timeline (``CallCounts`` are totals, kept apart)."""


_TRIAL_TO_STATE_S = 0.25  # a trial's end and the state change it causes, at most this apart


def explained_by_trial(change: StateChange, trial: TrialEnd | None) -> bool:
    """Whether ``change`` is the pod's own failed ``trial`` re-opening the breaker.

    Usually such an opening has cause ``trial``; when the local trial permit
    expired just before the trial's timeout, the pod follows the cluster's
    re-opening instead (cause ``cluster``), and the trial is still the reason.
    """
    return (
        trial is not None
        and change.state == "open"
        and change.cause in ("trial", "cluster")
        and (trial.pod, trial.breaker, trial.ok) == (change.pod, change.breaker, False)
        and 0.0 <= change.t - trial.t <= _TRIAL_TO_STATE_S
    )


class ReportError(ValueError):
    """A pod printed something that is not a report."""


def parse_report(
    line: bytes | str, pod: str, t0: float
) -> Record | CallCounts | dict[str, Any] | None:
    """One line of a pod's stdout as a record.

    Args:
        line: the raw line.
        pod: which pod printed it.
        t0: the demo's ``time.monotonic()`` when the scenario began.

    Returns:
        A record; the raw dict for ``ready``, ``error`` and ``bye`` (the fleet
        handles those); None for a blank line.

    Raises:
        ReportError: the line is not a JSON object of a known kind.
    """
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    if not text.strip():
        return None
    try:
        data = json.loads(text)
        kind = data["e"]
        if kind in ("ready", "error", "bye"):
            return dict(data)
        if kind == "calls":
            return CallCounts(
                pod=pod,
                breaker=str(data["b"]),
                sent=int(data["sent"]),
                reached=int(data["reached"]),
                ok=int(data["ok"]),
                failed=int(data["failed"]),
                rejected=int(data["rejected"]),
            )
        t = float(data["t"]) - t0
        if kind == "state":
            retry_after = data.get("retry_after")
            return StateChange(
                t=t,
                pod=pod,
                breaker=str(data["b"]),
                state=str(data["state"]),
                cause=str(data["cause"]),
                attempts=int(data.get("attempts", 0)),
                retry_after=None if retry_after is None else float(retry_after),
                failures=int(data.get("failures", 0)),
                successes=int(data.get("successes", 0)),
            )
        if kind == "trial":
            return Trial(t=t, pod=pod, breaker=str(data["b"]))
        if kind == "trial_end":
            return TrialEnd(
                t=t, pod=pod, breaker=str(data["b"]), ok=bool(data["ok"]), outcome=data["outcome"]
            )
        if kind == "registry":
            return RegistryChange(
                t=t, pod=pod, up=bool(data["up"]), error=str(data.get("error", ""))
            )
    except (ValueError, KeyError, TypeError) as error:
        raise ReportError(f"{pod} printed an unreadable report {text.strip()[:200]!r}") from error
    raise ReportError(f"{pod} printed a report of unknown kind {kind!r}")
