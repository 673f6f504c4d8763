"""What the coordinator sends to the Lua scripts: decision parameters and bucket counts.

Both are validated once, at construction, with errors that name the field, so
a script never receives an argument it would have to guess around.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from distributed_opossum._checks import check_int, check_real, check_text

__all__ = [
    "DecisionParams",
    "PodWindow",
    "WindowReport",
    "check_int",
    "check_real",
    "check_text",
    "to_argv",
]


def to_argv(*values: str | int | float) -> tuple[str, ...]:
    """Format script arguments; repr() keeps every digit of a float for Lua's tonumber."""
    return tuple(v if isinstance(v, str) else repr(v) for v in values)


@dataclass(frozen=True, slots=True)
class WindowReport:
    """One pod's counts for one finished bucket interval."""

    fires: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    rejects: int = 0
    local_open: bool = False
    """True when the pod tripped locally during the interval."""

    def __post_init__(self) -> None:
        for field in ("fires", "successes", "failures", "timeouts", "rejects"):
            check_int(field, getattr(self, field), minimum=0)
        if not isinstance(self.local_open, bool):
            raise TypeError(f"local_open must be a bool, got {self.local_open!r}")

    @property
    def is_empty(self) -> bool:
        """True when there is nothing to append (no calls, no trip)."""
        return not self.local_open and not (
            self.fires or self.successes or self.failures or self.timeouts or self.rejects
        )

    def to_argv(self) -> tuple[str, ...]:
        """The counts in the order ``report_window.lua`` reads them (ARGV[2..7])."""
        return to_argv(
            self.fires,
            self.successes,
            self.failures,
            self.timeouts,
            self.rejects,
            1 if self.local_open else 0,
        )


@dataclass(frozen=True, slots=True)
class PodWindow:
    """One pod's own reports in the window, summed: what it has to say in the tally.

    Only entries of the epoch the pod knows count (every close is a new
    epoch, so the window starts over at each close).
    """

    volume: int = 0
    """Successes + failures of its entries in the window."""
    failures: int = 0
    trips: int = 0
    """Its entries in the window that carried a local trip."""

    def __post_init__(self) -> None:
        for field in ("volume", "failures", "trips"):
            check_int(field, getattr(self, field), minimum=0)
        if self.failures > self.volume:
            raise ValueError(f"failures ({self.failures}) exceed volume ({self.volume})")

    @classmethod
    def of(cls, report: WindowReport) -> PodWindow:
        """The window of a pod whose only entry is ``report``."""
        return cls(
            volume=report.successes + report.failures,
            failures=report.failures,
            trips=1 if report.local_open else 0,
        )

    @property
    def is_empty(self) -> bool:
        """True when the pod has no say (no calls, no trip)."""
        return self.volume == 0 and self.trips == 0

    def to_text(self) -> str:
        """``"<volume> <failures> <trips>"``, as ``report_window.lua`` reads it."""
        return f"{self.volume} {self.failures} {self.trips}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionParams:
    """The options a pod decides with, sent along with each script call.

    Options must match across pods; a decision uses the options of the pod
    that runs it. All durations are ms.

    Attributes:
        window_ms: length of the stats window.
        volume_threshold: pooled volume (successes + failures) needed before
            the pooled rate is judged.
        error_threshold_percentage: open when the failure rate is strictly above.
        quorum: None (a trip anywhere or the pooled rate opens), an ``int`` ≥ 1
            (that many pods must vote) or a ``float`` in (0, 1] (that fraction
            of the pods that reported calls in the window).
        min_pod_volume: a pod's own volume needed before its rate is a vote;
            None means ``volume_threshold``.
        reset_timeout_ms: open period of the first open.
        reset_timeout_multiplier: factor per further consecutive open.
        max_reset_timeout_ms: cap of the open period, None for no cap.
        half_open_max_calls: trial permits across the cluster, and successes
            needed to close.
        lease_ttl_ms: a trial permit not finished by then expires.
        max_entries: least cap of the stats list length; the cap grows to
            ``(pods in the list + 1) * pod_entries`` with the fleet.
        key_ttl_ms: TTL of every key, refreshed at least every quarter of it
            while reports come; at least ``window_ms``.
        pod_entries: entries one pod may write in a window, with room to
            spare (twice the reports of a window, plus trip reports); the
            list is capped at that many per pod in it, so it always covers
            the window, however many pods report.

    Example::

        DecisionParams(window_ms=10_000, reset_timeout_ms=30_000,
                       lease_ttl_ms=31_000, key_ttl_ms=30_000, quorum=0.5)
    """

    window_ms: int
    volume_threshold: int = 0
    error_threshold_percentage: float = 50.0
    quorum: int | float | None = None
    min_pod_volume: int | None = None
    reset_timeout_ms: int
    reset_timeout_multiplier: float = 1.0
    max_reset_timeout_ms: int | None = None
    half_open_max_calls: int = 1
    lease_ttl_ms: int
    max_entries: int = 5000
    key_ttl_ms: int
    pod_entries: int = 28
    argv_bytes: tuple[bytes, ...] = dataclasses.field(init=False, repr=False, compare=False)
    """:meth:`to_argv` encoded, made once: every script report sends it."""

    def __post_init__(self) -> None:
        check_int("window_ms", self.window_ms, minimum=1)
        check_int("volume_threshold", self.volume_threshold, minimum=0)
        check_real("error_threshold_percentage", self.error_threshold_percentage, 0, 100)
        q = self.quorum
        if isinstance(q, bool) or not (q is None or isinstance(q, int | float)):
            raise TypeError(f"quorum must be None, an int or a float, got {q!r}")
        if isinstance(q, int) and q < 1:
            raise ValueError(f"quorum as a pod count must be >= 1, got {q!r}")
        if isinstance(q, float) and not 0 < q <= 1:
            raise ValueError(f"quorum as a fraction must be in (0, 1], got {q!r}")
        if self.min_pod_volume is not None:
            check_int("min_pod_volume", self.min_pod_volume, minimum=0)
        check_int("reset_timeout_ms", self.reset_timeout_ms, minimum=0)
        check_real("reset_timeout_multiplier", self.reset_timeout_multiplier, 1, math.inf)
        if self.max_reset_timeout_ms is not None:
            check_int("max_reset_timeout_ms", self.max_reset_timeout_ms, minimum=0)
        check_int("half_open_max_calls", self.half_open_max_calls, minimum=1)
        check_int("lease_ttl_ms", self.lease_ttl_ms, minimum=1)
        check_int("max_entries", self.max_entries, minimum=1)
        check_int("key_ttl_ms", self.key_ttl_ms, minimum=self.window_ms)
        check_int("pod_entries", self.pod_entries, minimum=1)
        # (By identity, not by value: DecisionParams(quorum=1) == DecisionParams(quorum=1.0).)
        object.__setattr__(self, "argv_bytes", tuple(a.encode("ascii") for a in self.to_argv()))

    ARGV_FIELDS: ClassVar[tuple[str, ...]] = (
        "window_ms",
        "volume_threshold",
        "error_threshold_percentage",
        "quorum_count",
        "quorum_fraction",
        "min_pod_volume",
        "reset_timeout_ms",
        "reset_timeout_multiplier",
        "max_reset_timeout_ms",
        "half_open_max_calls",
        "lease_ttl_ms",
        "max_entries",
        "key_ttl_ms",
        "pod_entries",
    )
    """Order of :meth:`to_argv`; ``PARAM_NAMES`` in ``report_window.lua`` must match."""

    def argv_values(self) -> dict[str, int | float]:
        """The parameters as the scripts take them, by ``ARGV_FIELDS`` name."""
        q = self.quorum
        return {
            "window_ms": self.window_ms,
            "volume_threshold": self.volume_threshold,
            "error_threshold_percentage": float(self.error_threshold_percentage),
            "quorum_count": q if isinstance(q, int) else 0,
            "quorum_fraction": q if isinstance(q, float) else 0,
            "min_pod_volume": (
                self.volume_threshold if self.min_pod_volume is None else self.min_pod_volume
            ),
            "reset_timeout_ms": self.reset_timeout_ms,
            "reset_timeout_multiplier": float(self.reset_timeout_multiplier),
            "max_reset_timeout_ms": (
                -1 if self.max_reset_timeout_ms is None else self.max_reset_timeout_ms
            ),
            "half_open_max_calls": self.half_open_max_calls,
            "lease_ttl_ms": self.lease_ttl_ms,
            "max_entries": self.max_entries,
            "key_ttl_ms": self.key_ttl_ms,
            "pod_entries": self.pod_entries,
        }

    def to_argv(self) -> tuple[str, ...]:
        """All parameters, in ``ARGV_FIELDS`` order (``report_window.lua``'s ARGV[13..26])."""
        values = self.argv_values()
        return to_argv(*(values[name] for name in self.ARGV_FIELDS))
