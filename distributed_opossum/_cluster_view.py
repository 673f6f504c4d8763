"""What one pod knows of the cluster's breaker: ``CircuitBreaker.cluster``.

A snapshot, as of the pod's last word from Redis (a report's reply, a trial
lease, a broadcast): the shared state, the backoff, and the pooled window the
decisions are made on. Made for status pages and metrics; reading it costs
no Redis round trip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ClusterView"]


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The cluster's breaker of one name, as this pod last heard of it.

    Attributes:
        state: ``closed``, ``open``, ``half_open``, ``forced_open``, or
            ``unknown`` before the first word from Redis.
        epoch: the shared state's version (+1 at every open and close).
        attempts: consecutive openings without a close (drives the backoff).
        retry_after: seconds until the cluster's open period ends (0 when not
            open, None when forced open).
        registry_down: True while this pod cannot use Redis (it decides locally).
        pods_reporting: pods with completed calls or a trip in the window.
        volume: completed calls of every pod in the window.
        failures: failed calls of every pod in the window.
        failure_rate: failures / volume in percent (None without volume).
        votes: pods voting to open (with ``quorum``: compare with it).
        age: seconds since the pooled window was last read from Redis.
    """

    state: str
    epoch: int | None
    attempts: int
    retry_after: float | None
    registry_down: bool
    pods_reporting: int | None
    volume: int | None
    failures: int | None
    failure_rate: float | None
    votes: int | None
    age: float | None

    def to_dict(self) -> dict[str, Any]:
        """The view as a JSON-serialisable dict."""
        return asdict(self)
