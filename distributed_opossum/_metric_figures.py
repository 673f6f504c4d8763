"""The figures the metrics integrations report: what a breaker's window and cluster view say.

Pure functions of a ``stats`` snapshot or a ``breaker.cluster`` view, and the
two protocols an integration implements to receive them (:class:`Sink`) and
one breaker's call events (:class:`Recorder`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._cluster_view import ClusterView
    from ._stats import Stats

__all__ = [
    "KINDS",
    "STATES",
    "ClusterFigures",
    "Recorder",
    "Sink",
    "WindowFigures",
    "cluster_figures",
    "window_figures",
]

STATES: tuple[str, ...] = ("closed", "open", "half_open", "forced_open")
"""The values of the ``state`` label (resilience4j's, lower case)."""

KINDS: tuple[str, ...] = ("successful", "failed", "ignored")
"""The values of the ``kind`` label of the call counters."""


@dataclass(frozen=True, slots=True)
class WindowFigures:
    """This pod's rolling window of one breaker.

    Attributes:
        successes: successful calls in the window (errors ``error_filter`` let pass included).
        failures: failed calls in the window.
        failure_rate: failures / (successes + failures) in percent; -1 while
            the window holds fewer completed calls than ``volume_threshold``
            (at least one), as resilience4j reports a rate not yet judged.
    """

    successes: int
    failures: int
    failure_rate: float


@dataclass(frozen=True, slots=True)
class ClusterFigures:
    """The cluster's breaker of one name as this pod last heard of it (``None``: unknown).

    Attributes:
        state: one of :data:`STATES`, None before the pod's first word from Redis.
        successes: successful calls of every pod in the pooled window.
        failures: failed calls of every pod in the pooled window.
        failure_rate: pooled failure rate in percent, -1 below ``volume_threshold``.
        pods_reporting: pods with completed calls or a trip in the window.
        votes: pods voting to open.
        attempts: consecutive openings without a close (the shared backoff).
        retry_after: seconds until the cluster's open period ends; 0 when not
            open, infinite when forced open.
        registry_down: True while this pod cannot use Redis.
    """

    state: str | None
    successes: int | None
    failures: int | None
    failure_rate: float
    pods_reporting: int | None
    votes: int | None
    attempts: int
    retry_after: float | None
    registry_down: bool


class Recorder(Protocol):
    """Where one breaker's call events go (bound to its name by the sink)."""

    def successful(self, latency: float) -> None:
        """A call succeeded after ``latency`` seconds."""

    def failed(self, latency: float | None) -> None:
        """A call failed (``latency`` None: it never ran, the capacity was full)."""

    def ignored(self, latency: float) -> None:
        """A call raised an error that ``error_filter`` said is not a failure."""

    def not_permitted(self) -> None:
        """A call was rejected because the breaker is open."""


class Sink(Protocol):
    """What a metrics integration does with what the tracker learns."""

    def recorder(self, name: str) -> Recorder:
        """The recorder of the breakers named ``name`` (creates their series)."""

    def state(self, name: str, state: str) -> None:
        """The breaker named ``name`` is now in ``state``."""

    def window(self, name: str, figures: WindowFigures) -> None:
        """The latest figures of this pod's window."""

    def cluster(self, name: str, figures: ClusterFigures) -> None:
        """The latest view of the cluster (distributed breakers only)."""

    def forget(self, name: str) -> None:
        """No breaker of this name is followed any more: drop its series."""


def window_figures(stats: Stats, volume_threshold: int) -> WindowFigures:
    """Figures of a ``stats`` snapshot."""
    volume = stats.successes + stats.failures
    rate = 100.0 * stats.failures / volume if volume >= max(volume_threshold, 1) else -1.0
    return WindowFigures(stats.successes, stats.failures, rate)


def cluster_figures(view: ClusterView, volume_threshold: int) -> ClusterFigures:
    """Figures of a ``breaker.cluster`` view."""
    state = None if view.state not in STATES else view.state
    volume, failures = view.volume, view.failures
    successes: int | None = None
    rate = -1.0
    if volume is not None and failures is not None:
        successes = volume - failures
        if volume >= max(volume_threshold, 1):
            rate = 100.0 * failures / volume
    retry_after = view.retry_after
    if retry_after is None and state == "forced_open":
        retry_after = math.inf  # no trial until reset()
    return ClusterFigures(
        state=state,
        successes=successes,
        failures=failures,
        failure_rate=rate,
        pods_reporting=view.pods_reporting,
        votes=view.votes,
        attempts=view.attempts,
        retry_after=retry_after,
        registry_down=view.registry_down,
    )
