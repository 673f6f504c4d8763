"""The ``stats`` snapshot of a breaker: plain numbers, frozen, cheap to pass around."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["COUNTER_NAMES", "Stats"]

COUNTER_NAMES: tuple[str, ...] = (
    "fires",
    "successes",
    "failures",
    "timeouts",
    "rejects",
    "fallbacks",
    "semaphore_rejections",
    "cache_hits",
    "cache_misses",
    "coalesce_cache_hits",
    "coalesce_cache_misses",
)


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters summed over the rolling window, with latency figures.

    Latencies are seconds. ``percentiles`` maps 0.0, 0.25, 0.5, 0.75, 0.9,
    0.95, 0.99, 0.995 and 1.0 to an estimate within ~3 %; with no samples
    they are 0.0, and -1 when ``rolling_percentiles_enabled`` is False.
    """

    fires: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    rejects: int = 0
    fallbacks: int = 0
    semaphore_rejections: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    coalesce_cache_hits: int = 0
    coalesce_cache_misses: int = 0
    latency_mean: float = 0.0
    percentiles: dict[float, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (percentile keys become strings, as JSON needs)."""
        data = asdict(self)
        data["percentiles"] = {str(k): v for k, v in self.percentiles.items()}
        return data
