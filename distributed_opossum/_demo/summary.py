"""The numbers at the end of a run, measured from what was recorded (never estimated).

- the calls that reached the sick API during the outage: through the shared
  breaker, and through each pod's independent local breaker, which got a copy
  of the same traffic (counted by the API itself);
- propagation: one pod's change (a trip, a trial's outcome) → the same change
  on every other pod, from the pods' own monotonic clocks;
- the open periods of the shared breaker, their length and their trials;
- the quorum phase: which pods opened, how many calls the others served.

``summarise`` is pure (records in, a ``Summary`` out); ``render`` makes the lines.
"""

from __future__ import annotations

import statistics
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .downstream import Hit
from .records import (
    ApiChange,
    CallCounts,
    PhaseStart,
    Record,
    StateChange,
    Trial,
    TrialEnd,
    explained_by_trial,
)
from .settings import BREAKER, INDEPENDENT, QUORUM, QUORUM_BREAKER, VOLUME_THRESHOLD

__all__ = ["OpenPeriod", "Propagation", "Summary", "render", "summarise"]


@dataclass(frozen=True, slots=True)
class Propagation:
    """One pod's change and when every other pod made the same change.

    Attributes:
        pod: where it began.
        what: ``"trip"``, ``"cluster decision"``, ``"failed trial"`` or ``"successful trial"``.
        t: when.
        delays: other pod → seconds until it followed; None: it changed on its own
            (its own trip) or not within 2 s.
    """

    pod: str
    what: str
    t: float
    delays: dict[str, float | None]

    @property
    def followed(self) -> list[float]:
        """The delays of the pods that followed."""
        return [delay for delay in self.delays.values() if delay is not None]


@dataclass(slots=True)
class OpenPeriod:
    """One cluster-wide open period of the shared breaker."""

    number: int
    start: float
    half_open_at: float | None = None
    trials: list[Trial] = field(default_factory=list)
    outcomes: list[TrialEnd] = field(default_factory=list)

    @property
    def length(self) -> float | None:
        """Seconds from the first pod opening to the first pod going half-open."""
        return None if self.half_open_at is None else self.half_open_at - self.start


@dataclass(frozen=True, slots=True)
class Summary:
    """Everything the report says, as numbers."""

    pods: tuple[str, ...]
    outage: tuple[float, float] | None
    reached: dict[str, Counter[str]]  # breaker → pod → calls that met the sick API
    independent_trips: tuple[str, ...]
    trials_during_outage: dict[str, int]  # breaker → trials
    periods: tuple[OpenPeriod, ...]
    propagations: tuple[Propagation, ...]
    quorum_start: float | None
    quorum_opened: tuple[str, ...]
    quorum_served: Counter[str]
    sick_pod: str
    api_received: int
    pods_reached: int

    @property
    def sick_pod_alone(self) -> bool:
        """Whether in phase 5 the sick pod opened and no other pod did."""
        return self.quorum_opened == (self.sick_pod,)

    def total(self, breaker: str) -> int:
        """Calls through ``breaker`` that met the sick API."""
        return sum(self.reached[breaker].values())


def _outage(records: Sequence[Record]) -> tuple[float, float] | None:
    changes = [r for r in records if isinstance(r, ApiChange)]
    start = next((c.t for c in changes if c.mode != "healthy"), None)
    if start is None:
        return None
    end = next((c.t for c in changes if c.t > start and c.mode == "healthy"), None)
    last = max((r.t for r in records), default=start)
    return start, end if end is not None else last


def _phase_start(records: Sequence[Record], number: int) -> float | None:
    return next((r.t for r in records if isinstance(r, PhaseStart) and r.number == number), None)


def _open_periods(events: Iterable[Record]) -> list[OpenPeriod]:
    """Cluster-wide open periods of the shared breaker, with their trials.

    A period begins with the first pod opening (the others follow within
    milliseconds), ends when the first pod goes half-open, and its trials are
    those until the next opening or closing.
    """
    periods: list[OpenPeriod] = []
    current: OpenPeriod | None = None
    for record in events:
        if getattr(record, "breaker", None) != BREAKER:
            continue
        if isinstance(record, StateChange):
            if record.state == "open" and (current is None or current.half_open_at is not None):
                current = OpenPeriod(number=len(periods) + 1, start=record.t)
                periods.append(current)
            elif record.state == "half_open" and current and current.half_open_at is None:
                current.half_open_at = record.t
            elif record.state == "closed" and current and current.half_open_at is not None:
                current = None
        elif isinstance(record, Trial) and current is not None:
            current.trials.append(record)
        elif isinstance(record, TrialEnd) and current is not None:
            current.outcomes.append(record)
    return periods


_FOLLOW_WINDOW_S = 2.0
_PODS_PER_ROW = 10


def _origins(records: Sequence[Record]) -> list[tuple[str, str, float, str]]:
    """``(pod, what, t, state others follow to)`` for each change other pods followed.

    The first trip (or cluster decision) of an opening, and every trial's end:
    the moment its outcome was known on the pod that ran it.
    """
    origins: list[tuple[str, str, float, str]] = []
    trials: dict[str, TrialEnd] = {}
    last_trip = float("-inf")
    for record in records:
        if isinstance(record, TrialEnd):
            trials[record.pod] = record
            state = "closed" if record.ok else "open"
            what = "successful trial" if record.ok else "failed trial"
            origins.append((record.pod, what, record.t, state))
        elif (
            isinstance(record, StateChange)
            and record.state == "open"
            and record.cause in ("local", "cluster")
            and not explained_by_trial(record, trials.get(record.pod))
            and record.t - last_trip > _FOLLOW_WINDOW_S
        ):
            last_trip = record.t
            what = "trip" if record.cause == "local" else "cluster decision"
            origins.append((record.pod, what, record.t, "open"))
    return origins


def _propagations(records: Sequence[Record], pods: Sequence[str]) -> list[Propagation]:
    """Each origin change of the shared breaker and how fast the other pods followed."""
    shared = [r for r in records if getattr(r, "breaker", None) == BREAKER]
    changes = [r for r in shared if isinstance(r, StateChange)]
    result: list[Propagation] = []
    for origin_pod, what, t, state in _origins(shared):
        delays: dict[str, float | None] = {}
        for pod in pods:
            if pod == origin_pod:
                continue
            follower = next(
                (
                    c
                    for c in changes
                    if c.pod == pod and c.state == state and 0.0 <= c.t - t <= _FOLLOW_WINDOW_S
                ),
                None,
            )
            followed = follower is not None and follower.cause in ("remote", "cluster")
            delays[pod] = follower.t - t if follower is not None and followed else None
        result.append(Propagation(origin_pod, what, t, delays))
    return result


def summarise(
    records: Sequence[Record],
    hits: Sequence[Hit],
    counts: dict[tuple[str, str], CallCounts],
    pods: Sequence[str],
    sick_pod: str,
) -> Summary:
    """The numbers of one run.

    Args:
        records: the timeline's records (any order).
        hits: every call the API received.
        counts: the pods' latest running totals.
        pods: the pods' names.
        sick_pod: the pod whose calls fail in phase 5.
    """
    ordered = sorted(records, key=lambda r: r.t)
    outage = _outage(ordered)
    quorum_start = _phase_start(ordered, 5)
    shared_end = quorum_start if quorum_start is not None else float("inf")
    reached: dict[str, Counter[str]] = {BREAKER: Counter(), INDEPENDENT: Counter()}
    trials: dict[str, int] = {BREAKER: 0, INDEPENDENT: 0}
    trips: set[str] = set()
    if outage is not None:
        start, end = outage
        for hit in hits:
            if start <= hit.t < end and not hit.ok and hit.breaker in reached:
                reached[hit.breaker][hit.pod] += 1
        for record in ordered:
            if not start <= record.t < end:
                continue
            if isinstance(record, Trial) and record.breaker in trials:
                trials[record.breaker] += 1
            if (
                isinstance(record, StateChange)
                and record.breaker == INDEPENDENT
                and (record.state, record.cause) == ("open", "local")
            ):
                trips.add(record.pod)
    shared = [r for r in ordered if r.t < shared_end]
    opened: list[str] = []
    served: Counter[str] = Counter()
    if quorum_start is not None:
        for record in ordered:
            if (
                isinstance(record, StateChange)
                and record.breaker == QUORUM_BREAKER
                and record.t >= quorum_start
                and record.state == "open"
                and record.pod not in opened
            ):
                opened.append(record.pod)
        for hit in hits:
            if hit.t >= quorum_start and hit.ok and hit.breaker == QUORUM_BREAKER:
                served[hit.pod] += 1
    return Summary(
        pods=tuple(pods),
        outage=outage,
        reached=reached,
        independent_trips=tuple(p for p in pods if p in trips),
        trials_during_outage=trials,
        periods=tuple(_open_periods(shared)),
        propagations=tuple(_propagations(shared, pods)),
        quorum_start=quorum_start,
        quorum_opened=tuple(opened),
        quorum_served=served,
        sick_pod=sick_pod,
        api_received=len(hits),
        pods_reached=sum(c.reached for c in counts.values()),
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _names(pods: Iterable[str]) -> str:
    names = list(pods)
    return ", ".join(names) if names else "none"


def render(summary: Summary) -> list[str]:
    """The summary as lines of text."""
    lines: list[str] = []
    out = lines.append
    coordinated, independent = summary.total(BREAKER), summary.total(INDEPENDENT)
    if summary.outage is not None:
        start, end = summary.outage
        out(
            f"Calls that reached the sick payments API during the outage ({start:+.1f} s to "
            f"{end:+.1f} s), same traffic:"
        )
        ratio = f"   ({independent / coordinated:.1f}× as many)" if coordinated else ""
        shared_label = f"with coordination (breaker {BREAKER}, distributed):"
        local_label = "independent local breakers (one per pod):"
        width = max(len(shared_label), len(local_label))
        out(f"  {shared_label:<{width}} {coordinated:5d} calls")
        out(f"  {local_label:<{width}} {independent:5d} calls{ratio}")
        for first in range(0, len(summary.pods), _PODS_PER_ROW):
            pods = summary.pods[first : first + _PODS_PER_ROW]
            out(f"  {'pod by pod:':<14}" + "".join(f"{pod:>7}" for pod in pods))
            for label, breaker in (("coordinated", BREAKER), ("independent", INDEPENDENT)):
                counts = summary.reached[breaker]
                out(f"    {label:<12}" + "".join(f"{counts[pod]:>7}" for pod in pods))
        never = [pod for pod in summary.pods if pod not in summary.independent_trips]
        if never:
            out(
                f"  the independent breakers of {_names(never)} did not trip during the outage: "
                f"too few calls for volume_threshold={VOLUME_THRESHOLD}"
            )
        trials = summary.trials_during_outage
        out(
            f"  trials during the outage: {trials[BREAKER]} coordinated, "
            f"{trials[INDEPENDENT]} independent"
        )
    if summary.periods:
        out("Open periods of the shared breaker, cluster-wide, and the trials after each:")
        for period in summary.periods:
            length = "   ?   " if period.length is None else f"{period.length:5.2f} s"
            count = len(period.trials)
            noun = "trial " if count == 1 else "trials"
            how = "; ".join(
                f"{end.pod}: {'succeeded' if end.ok else end.outcome}" for end in period.outcomes
            )
            text = f"  period {period.number}  {length}  {count} {noun}"
            out(text + (f"  ({how})" if how else ""))
    if summary.propagations:
        out(
            "Propagation, one pod's change → the same change on each other pod "
            "(from the pods' monotonic clocks):"
        )
        for propagation in summary.propagations:
            out(_propagation_line(propagation))
        every = [delay for p in summary.propagations for delay in p.followed]
        if every:
            out(
                f"  all {len(every)}: median {_ms(statistics.median(every))}, max {_ms(max(every))}"
            )
    if summary.quorum_start is not None:
        others = [pod for pod in summary.pods if pod != summary.sick_pod]
        served = sum(summary.quorum_served[pod] for pod in others)
        head = f"One sick pod (phase 5, breaker {QUORUM_BREAKER}, quorum={QUORUM}): "
        if summary.sick_pod_alone:
            out(
                head + f"only {summary.sick_pod} opened; the other pods stayed closed and "
                f"served {served} calls"
            )
        else:
            out(
                head + f"opened: {_names(summary.quorum_opened)}; the other pods served "
                f"{served} calls"
            )
    out(
        f"Counted on both sides: the API received {summary.api_received} calls, the pods "
        f"counted {summary.pods_reached} that reached it."
    )
    return [_wrap(text) for text in lines]


def _wrap(text: str, width: int = 100) -> str:
    indent = " " * (len(text) - len(text.lstrip()) + 4)
    return textwrap.fill(
        text, width, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False
    )


def _propagation_line(propagation: Propagation) -> str:
    head = f"  {propagation.pod}'s {propagation.what} at {propagation.t:+.3f} s → "
    followed = propagation.followed
    own = [pod for pod, delay in propagation.delays.items() if delay is None]
    if propagation.what in ("trip", "cluster decision"):
        body = " · ".join(
            f"{pod} +{_ms(delay)}" for pod, delay in propagation.delays.items() if delay is not None
        )
    elif followed:
        body = (
            f"{len(followed)} pods followed: median {_ms(statistics.median(followed))}, "
            f"max {_ms(max(followed))}"
        )
    else:
        body = ""
    if own:
        body += ("; " if body else "") + f"not followed (own change or none): {_names(own)}"
    return head + body
