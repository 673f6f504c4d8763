"""The numbers of the demo's scenario, all derived from ``--pods`` and ``--duration``.

Kept in one place so the pods, the scenario and the report agree on them, and
so a reader can see at a glance what each phase is made of.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BREAKER",
    "INDEPENDENT",
    "QUORUM",
    "QUORUM_BREAKER",
    "Settings",
    "new_token",
]

BREAKER = "payments"
"""The breaker every pod shares in phases 1-4 (distributed, no quorum)."""

QUORUM_BREAKER = "payments-quorum"
"""The breaker of phase 5: the same options plus ``quorum``."""

INDEPENDENT = "independent"
"""Label of each pod's local, non-distributed breaker (the comparison's traffic)."""

QUORUM = 2
"""Pods that must vote before ``payments-quorum`` opens cluster-wide."""

WINDOW = 1.0  # rolling_count_timeout: short, so a trip takes half a second
BUCKETS = 10
VOLUME_THRESHOLD = 10
SYNC_INTERVAL = 0.1
DEFAULT_DURATION = 30.0


def new_token() -> str:
    """A name unique to one run: the key prefix, temp names and the pods' command lines."""
    return f"dopossum-demo-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Settings:
    """What one run of the demo does.

    Attributes:
        pods: how many pod processes.
        duration: rough length of the scenario in seconds; every phase scales with it.
        url: a Redis to use instead of a private one.
        picture: where to write the SVG, or None for no picture.
        token: unique name of this run (see :func:`new_token`).
    """

    pods: int
    duration: float
    url: str | None
    picture: Path | None
    token: str

    @property
    def prefix(self) -> str:
        """Key prefix of this run, so a shared Redis keeps other data apart."""
        return self.token

    @property
    def reset_timeout(self) -> float:
        """The first open period (1 s by default); each failed trial doubles it.

        Never below 0.4 s: it stays longer than the timeout, so a hanging
        trial times out well before its trial permit would expire.
        """
        return max(0.4, self.duration / 30.0)

    @property
    def max_reset_timeout(self) -> float:
        """Cap of the open period: the third period is the longest."""
        return 4.0 * self.reset_timeout

    @property
    def timeout(self) -> float:
        """Per-call timeout; a slow API's trials fail by it."""
        return max(0.3, self.reset_timeout / 2.0)

    @property
    def slow_delay(self) -> float:
        """How long the slow API takes to answer (well past the timeout)."""
        return 4.0 * self.timeout

    @property
    def healthy_seconds(self) -> float:
        """Phase 1."""
        return max(1.0, 0.12 * self.duration)

    @property
    def hold_seconds(self) -> float:
        """How long phase 4 goes on once every pod is closed again."""
        return max(0.5, 0.08 * self.duration)

    @property
    def sick_seconds(self) -> float:
        """Phase 5."""
        return max(2.5, 0.3 * self.duration)

    @property
    def sick_pod(self) -> str:
        """The pod whose calls fail in phase 5 (busy enough to trip on its own)."""
        return "pod-1"

    @property
    def pod_names(self) -> tuple[str, ...]:
        """``pod-0`` … ``pod-N-1``."""
        return tuple(f"pod-{index}" for index in range(self.pods))

    @property
    def rates(self) -> tuple[float, ...]:
        """Calls per second of each pod: a skewed load balancer, busiest first.

        The quiet pods see fewer than ``volume_threshold`` calls per window, so
        on their own they can never judge the failure rate: the case pooled
        stats and broadcast trips exist for.
        """
        return tuple(max(1.5, round(40.0 / (index + 1) ** 1.5, 1)) for index in range(self.pods))

    def breaker_options(self) -> dict[str, Any]:
        """The options every breaker of the demo shares (name and ``distributed`` apart)."""
        return {
            "timeout": self.timeout,
            "error_threshold_percentage": 50,
            "volume_threshold": VOLUME_THRESHOLD,
            "rolling_count_timeout": WINDOW,
            "rolling_count_buckets": BUCKETS,
            "reset_timeout": self.reset_timeout,
            "reset_timeout_multiplier": 2.0,
            "max_reset_timeout": self.max_reset_timeout,
        }

    def describe_options(self) -> str:
        """The breaker options as one line of ``name=value``."""
        options = self.breaker_options()
        return ", ".join(f"{name}={_short(value)}" for name, value in options.items())


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
