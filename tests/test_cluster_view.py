"""``CircuitBreaker.cluster``: what a pod knows of the cluster's breaker, without a round trip."""

from __future__ import annotations

import json

import pytest
from distributed_support import ClusterFactory
from helpers import succeed
from waiting import eventually

from distributed_opossum import CircuitBreaker, ClusterView

pytestmark = pytest.mark.redis


def test_a_local_breaker_has_no_cluster_view() -> None:
    """Without ``distributed`` there is no cluster to see."""
    assert CircuitBreaker(succeed).cluster is None


async def test_view_follows_reports_and_openings(make_cluster: ClusterFactory) -> None:
    """The pooled window and the shared state arrive with the reports and the broadcasts."""
    cluster = await make_cluster(
        reset_timeout=5.0, volume_threshold=100, rolling_count_timeout=2.0, sync_interval=0.05
    )
    pods, (first, _) = await cluster.observed(lambda pod: pod.breaker.cluster)
    assert first is not None  # what pod0 knew as it was made, before its first sync
    assert first.state in ("unknown", "closed")

    def pooled() -> ClusterView | None:
        view = pods[0].breaker.cluster
        return view if view is not None and view.volume == 4 else None

    await eventually(lambda: pooled() is not None, within=2.0, what="both pods' calls pooled")
    view = pooled()
    assert view is not None
    assert (view.state, view.pods_reporting, view.failures, view.votes) == ("closed", 2, 1, 0)
    assert view.failure_rate == pytest.approx(25.0)
    assert view.retry_after == 0.0
    assert view.age is not None
    assert view.age < 1.0
    assert json.loads(json.dumps(view.to_dict()))["pods_reporting"] == 2

    await pods[1].breaker.force_open()
    await eventually(lambda: pods[0].breaker.cluster.state == "forced_open")  # type: ignore[union-attr]
    forced = pods[0].breaker.cluster
    assert forced is not None
    assert forced.retry_after is None
    await pods[1].breaker.reset()
    await pods[1].trip(limit=200)
    await eventually(lambda: pods[0].breaker.cluster.state == "open")  # type: ignore[union-attr]
    opened = pods[0].breaker.cluster
    assert opened is not None
    assert opened.retry_after is not None
    assert 4.0 < opened.retry_after <= 5.0
    assert opened.attempts == 1
    assert opened.registry_down is False
