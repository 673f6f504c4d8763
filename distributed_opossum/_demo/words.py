"""Records in words: the lines of the live timeline.

Pure functions (no I/O, no clock), so every sentence can be tested on its own.
A line reads ``+3.712s  pod-0   OPEN       tripped here (its own failures ...)``:
time on the demo's clock, who, the new state, and why in words — never an enum
or a tuple.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import ApiChange, RegistryChange, StateChange, Trial, TrialEnd

__all__ = [
    "STATE_LABELS",
    "Origin",
    "api_words",
    "line",
    "registry_words",
    "state_words",
    "trial_words",
]

STATE_LABELS = {
    "closed": "CLOSED",
    "open": "OPEN",
    "half_open": "HALF-OPEN",
    "forced_open": "FORCED-OPEN",
}

_COLOURS = {
    "CLOSED": "32",  # green
    "OPEN": "31",  # red
    "FORCED-OPEN": "31",
    "HALF-OPEN": "33",  # yellow
    "TRIAL": "36",  # cyan
    "HEALTHY": "35",  # magenta: the API's lines
    "DOWN": "35",
    "HANGING": "35",
    "PARTLY": "35",
    "REDIS": "35",
    "EXITED": "31",
}


@dataclass(frozen=True, slots=True)
class Origin:
    """The change on another pod that a ``remote`` change followed.

    Attributes:
        pod: where it happened.
        t: when (demo clock).
        what: ``"trip"``, ``"cluster decision"``, ``"failed trial"`` or ``"successful trial"``.
        outcome: for a failed trial, what happened to it (``timed out``, ``HTTP 503``).
    """

    pod: str
    t: float
    what: str
    outcome: str = ""


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _period(change: StateChange) -> str:
    if change.retry_after is None:
        return ""
    text = f" · open {change.retry_after:.2f} s"
    return text + (f", attempt {change.attempts}" if change.attempts else "")


def _failed(outcome: str) -> str:
    if outcome == "timed out":
        return "timed out"
    return f"failed ({outcome})" if outcome else "failed"


def state_words(
    change: StateChange,
    *,
    origin: Origin | None = None,
    trial: TrialEnd | None = None,
    quorum: int | float | None = None,
) -> str:
    """Why a pod's breaker changed state, in words.

    Args:
        change: the change.
        origin: for a ``remote`` change, the other pod's change it followed.
        trial: for a change caused by this pod's trial, how the trial ended.
        quorum: the breaker's quorum (None: any trip opens every pod).
    """
    state, cause = change.state, change.cause
    if state == "open":
        if cause == "local":
            volume = change.failures + change.successes
            text = f"tripped here (its own failures: {change.failures} of {volume} calls)"
            if quorum is not None:
                text += f"; opens only this pod: 1 vote, quorum={quorum}"
        elif cause == "trial":
            text = f"its trial {_failed(trial.outcome if trial else '')}: open again"
        elif cause == "remote" and origin is not None:
            if origin.what == "failed trial":
                text = f"{origin.pod}'s trial {_failed(origin.outcome)}: open again"
                text += f" (+{_ms(change.t - origin.t)})"
            elif origin.what == "cluster decision":
                text = f"opened by the cluster's decision, taken on {origin.pod}"
                text += f" (+{_ms(change.t - origin.t)})"
            else:
                text = f"opened by another pod's {origin.what} ({origin.pod}, "
                text += f"+{_ms(change.t - origin.t)})"
        elif cause == "remote" and change.attempts > 1:
            text = "open again: a trial failed on another pod"
        elif cause == "remote":
            text = "opened by another pod"
        elif cause == "cluster":
            text = "opened by the cluster's decision ("
            text += "enough pods voted)" if quorum is not None else "every pod's pooled calls)"
        else:
            text = _other(cause, "opened")
        return text + _period(change)
    if state == "half_open":
        if cause in ("timer", "remote"):
            if quorum is not None:
                return "open period over: this pod may send a trial"
            return "open period over: one trial may go, cluster-wide"
        return _other(cause, "half-open")
    if state == "closed":
        if cause == "trial":
            return "closed after a successful trial"
        if cause == "remote" and origin is not None:
            return f"closed by {origin.pod}'s successful trial (+{_ms(change.t - origin.t)})"
        if cause == "remote":
            return "closed by another pod"
        return _other(cause, "closed")
    if state == "forced_open":
        return "forced open by an operator: no trials until a reset"
    return f"{state} ({cause})"


def _other(cause: str, verb: str) -> str:
    why = {
        "manual": "by hand (open()/close()/force_open()/reset())",
        "health_check": "by a failed health check",
        "restored": "from a saved state",
        "timer": "when its open period ended",
        "local": "by its own calls",
        "cluster": "by the cluster's decision",
        "remote": "by another pod",
        "trial": "by a trial call",
    }.get(cause, f"({cause})")
    return f"{verb} {why}"


def trial_words(trial: Trial, *, quorum: int | float | None = None) -> str:
    """A trial call reached the API."""
    if quorum is not None:
        return "trial allowed: one call of this pod to see whether the API answers"
    return "trial allowed: the one call let through cluster-wide"


def registry_words(change: RegistryChange) -> str:
    """A pod lost or regained Redis."""
    if change.up:
        return "Redis is back: following the cluster again"
    return f"lost Redis ({change.error or 'no answer'}): deciding alone until it is back"


def api_words(change: ApiChange) -> tuple[str, str]:
    """The demo changed the payments API: ``(label, words)``."""
    if change.sick:
        names = ", ".join(change.sick)
        return "PARTLY", f"every call of {names} gets HTTP 503; the other pods' calls succeed"
    return {
        "healthy": ("HEALTHY", "every call succeeds"),
        "failing": ("DOWN", "every call gets HTTP 503"),
        "slow": ("HANGING", "answers only after the breakers' timeout: calls time out"),
    }[change.mode]


def line(t: float, who: str, label: str, words: str, *, colour: bool = False) -> str:
    """One timeline line: ``+3.712s  pod-0    OPEN       words``."""
    tag = f"{label:<10}"
    if colour and label in _COLOURS:
        tag = f"\x1b[{_COLOURS[label]}m{tag}\x1b[0m"
    return f"{t:+8.3f}s  {who:<7}  {tag} {words}"
