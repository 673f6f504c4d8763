"""What the pod processes of a chaos run recorded, and the invariants checked on it.

:class:`FleetResults` merges the JSON records of every pod process
(chaos_pod_process.py). :class:`Timeline` is the test's own record of when
Redis could not be reached (by every pod or by some). From both:

- :func:`trials_per_period` counts the trial calls of each cluster-wide
  half-open period. A period is one shared state (``gen``, ``epoch``): the
  epoch moves on every open and every close, and a pod learns the current one
  with its trial lease, so every trial of one period carries the same pair.
  Trials made while Redis could not be reached (per the timeline, plus a
  grace for the pods to notice it is back) follow the local rule and are left
  out; trials while Redis answered count, whatever the pod believed.
- :func:`assert_invariants` checks what every chaos test promises: no Redis
  exception reached a caller, at most ``half_open_max_calls`` trials per
  period while Redis answered, flat memory.

All times are ``time.monotonic()`` of the machine (shared by its processes).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Event",
    "FleetResults",
    "Outage",
    "Timeline",
    "Trial",
    "assert_invariants",
    "rss_growth",
    "trials_per_period",
]

MIB = 1024 * 1024


@dataclass(frozen=True)
class Event:
    """A state or registry event of one pod."""

    t: float
    instance: str
    name: str
    detail: str
    """The cause (state events) or the error's repr (registry_down)."""
    state: str
    """The pod's state right after the event."""


@dataclass(frozen=True)
class Trial:
    """A call that reached the downstream while its pod's breaker was not closed."""

    t: float
    instance: str
    gen: str | None
    epoch: int
    down: bool
    """The pod believed Redis down (so it followed the local rule)."""
    shared: str
    state: str

    @property
    def period(self) -> tuple[str | None, int]:
        """The cluster-wide period the trial belongs to."""
        return self.gen, self.epoch


@dataclass(frozen=True)
class Outage:
    """A span during which Redis could not be reached, by every pod or by ``pods``."""

    start: float
    end: float
    pods: frozenset[str] | None = None

    def covers(self, t: float, instance: str, grace: float = 0.0) -> bool:
        """Whether a record of ``instance`` at ``t`` falls into this outage (plus ``grace``)."""
        affected = self.pods is None or instance in self.pods
        return affected and self.start <= t <= self.end + grace


@dataclass
class Timeline:
    """The test's record of the faults it injected."""

    outages: list[Outage] = field(default_factory=list)

    @contextmanager
    def outage(self, pods: Iterable[str] | None = None) -> Iterator[None]:
        """Everything inside the block is an outage (for ``pods``, or all)."""
        start = time.monotonic()
        try:
            yield
        finally:
            chosen = None if pods is None else frozenset(pods)
            self.outages.append(Outage(start, time.monotonic(), chosen))

    def add(self, start: float, end: float, pods: Iterable[str] | None = None) -> None:
        """Record an outage from ``start`` to ``end``."""
        self.outages.append(Outage(start, end, None if pods is None else frozenset(pods)))

    def covers(self, t: float, instance: str, grace: float = 0.0) -> bool:
        """Whether Redis was out of reach of ``instance`` at ``t`` (plus ``grace``)."""
        return any(o.covers(t, instance, grace) for o in self.outages)


def trials_per_period(
    trials: Iterable[Trial], timeline: Timeline | None = None, *, grace: float = 0.0
) -> dict[tuple[str | None, int], list[Trial]]:
    """Trials grouped by cluster-wide period, those made while Redis was out of reach left out.

    Args:
        trials: every trial of the run.
        timeline: the outages; trials of an affected pod during one (or within
            ``grace`` after it) follow the local rule and do not count.
        grace: how long after an outage pods may still apply the local rule.
    """
    periods: dict[tuple[str | None, int], list[Trial]] = defaultdict(list)
    for trial in sorted(trials, key=lambda t: t.t):
        if timeline is not None and timeline.covers(trial.t, trial.instance, grace):
            continue
        periods[trial.period].append(trial)
    return dict(periods)


def rss_growth(samples: Sequence[tuple[float, float]], since: float) -> float:
    """Bytes of RSS growth after ``since``: the last third's peak over the first third's median.

    Raises:
        AssertionError: too few samples after ``since`` to judge.
    """
    after = [rss for t, rss in samples if t >= since]
    assert len(after) >= 6, f"only {len(after)} RSS samples after warm-up"
    third = len(after) // 3
    return max(after[-third:]) - statistics.median(after[:third])


@dataclass
class FleetResults:
    """The merged records of every pod process of a run."""

    events: list[Event]
    trials: list[Trial]
    errors: dict[str, dict[str, Any]]
    """Exceptions callers saw other than the breaker's own (OpenCircuitError,
    CircuitTimeoutError) and the downstream's, by ``module.QualName``:
    ``{"count": n, "redis": bool, "samples": [...]}``."""
    outcomes: dict[str, Counter[str]]
    downstream_calls: dict[str, int]
    coordinator_stats: dict[str, dict[str, int]]
    latency: dict[str, dict[str, float]]
    rss: dict[str, list[tuple[float, float]]]
    max_lag: dict[str, float]
    logs: list[tuple[float, str, str, str, str]]
    """(t, process, level, message, logger)."""

    @classmethod
    def merge(cls, raw: Sequence[dict[str, Any]]) -> FleetResults:
        """Merge the ``results`` replies of every process."""
        errors: dict[str, dict[str, Any]] = {}
        for process in raw:
            for kind, entry in process["errors"].items():
                merged = errors.setdefault(
                    kind, {"count": 0, "redis": entry["redis"], "samples": []}
                )
                merged["count"] += entry["count"]
                merged["samples"] = (merged["samples"] + entry["samples"])[:5]
        return cls(
            events=sorted((Event(*e) for p in raw for e in p["events"]), key=lambda event: event.t),
            trials=sorted((Trial(*t) for p in raw for t in p["trials"]), key=lambda t: t.t),
            errors=errors,
            outcomes={i: Counter(o) for p in raw for i, o in p["outcomes"].items()},
            downstream_calls={i: n for p in raw for i, n in p["downstream_calls"].items()},
            coordinator_stats={i: s for p in raw for i, s in p["coordinator_stats"].items()},
            latency={p["process"]: p["latency"] for p in raw},
            rss={p["process"]: [(t, r) for t, r in p["rss"]] for p in raw},
            max_lag={p["process"]: p["max_lag"] for p in raw},
            logs=sorted(
                ((t, p["process"], lvl, msg, name) for p in raw for t, lvl, msg, name in p["logs"]),
                key=lambda r: r[0],
            ),
        )

    @property
    def redis_errors(self) -> dict[str, dict[str, Any]]:
        """Redis exceptions that reached a caller of ``fire()``, by type."""
        return {kind: e for kind, e in self.errors.items() if e["redis"]}

    def events_named(self, name: str, *, after: float = float("-inf")) -> list[Event]:
        """Every ``name`` event (of any pod) at or after ``after``."""
        return [e for e in self.events if e.name == name and e.t >= after]

    def total(self, outcome: str) -> int:
        """Calls of every pod with ``outcome`` (ok, rejected, failed, timeout, error)."""
        return sum(o[outcome] for o in self.outcomes.values())

    def summary(self) -> str:
        """A few lines for an assertion message."""
        outcomes: Counter[str] = Counter()
        for o in self.outcomes.values():
            outcomes.update(o)
        return (
            f"outcomes={dict(outcomes)} trials={len(self.trials)} "
            f"errors={ {k: e['count'] for k, e in self.errors.items()} } "
            f"registry_down={len(self.events_named('registry_down'))} "
            f"latency={self.latency} max_lag={self.max_lag}"
        )


def assert_invariants(
    results: FleetResults,
    *,
    half_open_max_calls: int,
    timeline: Timeline,
    grace: float,
    load_started: float,
    warm_up: float = 1.0,
    max_rss_growth: float = 8 * MIB,
) -> None:
    """What every chaos run must show (see the module docstring).

    Args:
        results: the merged records.
        half_open_max_calls: the breakers' option.
        timeline: when Redis could not be reached.
        grace: how long after an outage the local rule may still apply.
        load_started: when the load began (memory is judged after ``warm_up``).
        warm_up: seconds of load before memory is judged.
        max_rss_growth: the most RSS a process may gain over the run.
    """
    assert results.redis_errors == {}, f"Redis errors reached callers: {results.redis_errors}"
    assert results.errors == {}, f"callers saw: {results.errors}"
    periods = trials_per_period(results.trials, timeline, grace=grace)
    crowded = {
        f"{gen}:{epoch}": [(round(t.t, 3), t.instance, t.down) for t in trials]
        for (gen, epoch), trials in periods.items()
        if len(trials) > half_open_max_calls
    }
    assert not crowded, (
        f"more than {half_open_max_calls} trial(s) in one period while Redis answered: {crowded}"
    )
    for process, samples in results.rss.items():
        growth = rss_growth(samples, load_started + warm_up)
        assert growth < max_rss_growth, f"{process}: RSS grew {growth / MIB:.1f} MiB during the run"
