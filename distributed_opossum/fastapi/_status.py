"""What a status route shows of a breaker: its local state, its window, the cluster's view.

Plain JSON, read without a Redis round trip: the cluster part is what this
pod last heard (``breaker.cluster``), so a status page cannot add load to
Redis however often it is polled.
"""

from __future__ import annotations

from typing import Any

from distributed_opossum._breaker import CircuitBreaker

__all__ = ["breaker_status"]


def breaker_status(breaker: CircuitBreaker[..., Any]) -> dict[str, Any]:
    """One breaker as JSON: ``name``, ``group``, ``state``, ``enabled``, ``retry_after``,
    ``attempts``, ``stats`` and ``cluster`` (None for a local breaker)."""
    cluster = breaker.cluster
    retry_after = breaker.retry_after
    return {
        "name": breaker.name,
        "group": breaker.group,
        "state": breaker.state.value,
        "enabled": breaker.enabled,
        "retry_after": None if retry_after is None else round(retry_after, 3),
        "attempts": breaker.attempts,
        "stats": breaker.stats.to_dict(),
        "cluster": None if cluster is None else cluster.to_dict(),
    }
