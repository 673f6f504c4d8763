"""``distributed_opossum.otel``: every breaker's instruments on a meter provider, with one call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from distributed_support import ClusterFactory, Pod
from helpers import Downstream, Ignored, outcome_of
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from waiting import eventually

from distributed_opossum import CircuitBreaker, otel
from distributed_opossum.testing import FakeClock

STATES = ("closed", "open", "half_open", "forced_open")


class Meter:
    """A meter provider with an in-memory reader, and readings of what it collects."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def collect(self) -> dict[str, list[Any]]:
        """Instrument name -> its data points, from one collection."""
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = list(metric.data.data_points)
        return found

    def value(self, instrument: str, **attributes: str) -> float | None:
        """The value of one data point of a number instrument (None when absent)."""
        for point in self.collect().get(instrument, []):
            if dict(point.attributes) == attributes:
                assert isinstance(point, NumberDataPoint)
                return point.value
        return None

    def histogram(self, instrument: str, **attributes: str) -> HistogramDataPoint | None:
        """One data point of a histogram (None when absent)."""
        for point in self.collect().get(instrument, []):
            if dict(point.attributes) == attributes:
                assert isinstance(point, HistogramDataPoint)
                return point
        return None

    def states(self, name: str, instrument: str = "circuitbreaker.state") -> dict[str, float]:
        """The one-hot state gauges of ``name``."""
        points = self.collect().get(instrument, [])
        return {p.attributes["state"]: p.value for p in points if p.attributes.get("name") == name}


Register = Callable[..., otel.BreakerInstruments]


@pytest.fixture
def instruments() -> Iterator[Register]:
    """``otel.register`` whose instruments are closed after the test."""
    made: list[otel.BreakerInstruments] = []

    def register(*args: Any, **kwargs: Any) -> otel.BreakerInstruments:
        made.append(otel.register(*args, **kwargs))
        return made[-1]

    yield register
    for item in made:
        item.close()


async def test_counters_count_each_kind_of_call(instruments: Register) -> None:
    """Successful, failed and ignored calls and rejections each move their own counter."""
    clock = FakeClock()
    downstream = Downstream(clock=clock)
    breaker = CircuitBreaker(
        downstream.action,
        name="payments",
        clock=clock,
        volume_threshold=100,
        error_filter=lambda error: isinstance(error, Ignored),
    )
    meter = Meter()
    instruments(meter.provider, breakers=[breaker])
    for outcome, times in (("ok", 3), ("fail", 2), ("ignored", 1)):
        downstream.mode = outcome
        for _ in range(times):
            await outcome_of(breaker)
    breaker.open()
    assert await outcome_of(breaker) == "rejected"
    counts = {
        kind: meter.value("circuitbreaker.calls", name="payments", kind=kind)
        for kind in ("successful", "failed", "ignored")
    }
    assert counts == {"successful": 3, "failed": 2, "ignored": 1}
    assert meter.value("circuitbreaker.not_permitted_calls", name="payments") == 1


async def test_latency_histogram_buckets(instruments: Register) -> None:
    """The histogram takes seconds, with the advised boundaries."""
    clock = FakeClock()
    downstream = Downstream(clock=clock)
    breaker = CircuitBreaker(downstream.action, name="payments", clock=clock)
    meter = Meter()
    instruments(meter.provider, breakers=[breaker], buckets=(0.01, 0.05, 0.1))
    for takes in (0.005, 0.03, 0.07, 0.2):
        downstream.takes = takes
        task = asyncio.create_task(breaker.fire())
        await clock.advance(takes)
        assert await task == "ok"
    point = meter.histogram("circuitbreaker.call.duration", name="payments", kind="successful")
    assert point is not None
    assert list(point.explicit_bounds) == [0.01, 0.05, 0.1]
    assert list(point.bucket_counts) == [1, 1, 1, 1]
    assert point.sum == pytest.approx(0.305)


async def test_no_histogram_without_buckets(instruments: Register) -> None:
    """``buckets=None`` leaves the latency histogram out; the call totals stay."""
    clock = FakeClock()
    breaker = CircuitBreaker(Downstream(clock=clock).action, name="payments", clock=clock)
    meter = Meter()
    instruments(meter.provider, breakers=[breaker], buckets=None)
    await outcome_of(breaker)
    assert meter.value("circuitbreaker.calls", name="payments", kind="successful") == 1
    assert "circuitbreaker.call.duration" not in meter.collect()


async def test_gauges_state_failure_rate_and_buffered_calls(instruments: Register) -> None:
    """The state one-hot, the window's failure rate (-1 below the volume) and its calls."""
    clock = FakeClock()
    downstream = Downstream(clock=clock)
    breaker = CircuitBreaker(downstream.action, name="payments", clock=clock, volume_threshold=2)
    meter = Meter()
    instruments(meter.provider, breakers=[breaker], refresh_interval=None)
    assert meter.states("payments") == {s: int(s == "closed") for s in STATES}
    assert meter.value("circuitbreaker.failure_rate", name="payments") == -1.0
    await outcome_of(breaker)
    downstream.mode = "fail"
    await outcome_of(breaker)
    assert meter.value("circuitbreaker.failure_rate", name="payments") == 50.0
    buffered = "circuitbreaker.buffered_calls"
    assert meter.value(buffered, name="payments", kind="failed") == 1
    await outcome_of(breaker)
    assert breaker.opened
    assert meter.states("payments") == {s: int(s == "open") for s in STATES}
    await clock.advance(30.0)
    assert meter.states("payments") == {s: int(s == "half_open") for s in STATES}
    assert "circuitbreaker.cluster.state" not in meter.collect()


async def test_a_collection_off_the_loop_serves_the_last_refresh(instruments: Register) -> None:
    """An export thread never reads a breaker's window; the state events still reach it."""
    clock = FakeClock()
    downstream = Downstream(clock=clock)
    breaker = CircuitBreaker(downstream.action, name="payments", clock=clock)
    meter = Meter()
    instruments(meter.provider, breakers=[breaker], refresh_interval=None)
    downstream.mode = "fail"
    await outcome_of(breaker)  # opens: 1 failure of 1
    from_thread = await asyncio.to_thread(meter.collect)
    rates = [p.value for p in from_thread["circuitbreaker.failure_rate"]]
    assert rates == [-1.0]
    opened = [
        p.value for p in from_thread["circuitbreaker.state"] if p.attributes["state"] == "open"
    ]
    assert opened == [1]
    assert meter.value("circuitbreaker.failure_rate", name="payments") == 100.0


async def test_breakers_made_later_join_and_shut_down_ones_leave(instruments: Register) -> None:
    """Without ``breakers=``, each collection follows ``breakers()``."""
    clock = FakeClock()
    meter = Meter()
    instruments(meter.provider)
    assert meter.states("otel-later") == {}
    later = CircuitBreaker(Downstream(clock=clock).action, name="otel-later", clock=clock)
    assert meter.states("otel-later") == {s: int(s == "closed") for s in STATES}
    await outcome_of(later)
    assert meter.value("circuitbreaker.calls", name="otel-later", kind="successful") == 1
    await later.shutdown()
    assert meter.states("otel-later") == {}
    assert meter.value("circuitbreaker.failure_rate", name="otel-later") is None
    assert meter.value("circuitbreaker.calls", name="otel-later", kind="successful") is None


async def test_close_stops_everything(instruments: Register) -> None:
    """``close()`` unsubscribes and reports no gauge any more."""
    clock = FakeClock()
    breaker = CircuitBreaker(Downstream(clock=clock).action, name="payments", clock=clock)
    meter = Meter()
    registered = instruments(meter.provider, breakers=[breaker])
    assert breaker._events.call_listened
    registered.close()
    assert not breaker._events.call_listened
    await outcome_of(breaker)
    assert meter.states("payments") == {}
    assert meter.value("circuitbreaker.calls", name="payments", kind="successful") is None


async def test_the_global_meter_provider_by_default(
    instruments: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a provider, the instruments go to OpenTelemetry's global one."""
    meter = Meter()
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: meter.provider)
    clock = FakeClock()
    breaker = CircuitBreaker(Downstream(clock=clock).action, name="payments", clock=clock)
    instruments(breakers=[breaker])
    await outcome_of(breaker)
    assert meter.value("circuitbreaker.calls", name="payments", kind="successful") == 1


def test_bad_arguments() -> None:
    """Bad arguments raise an error naming them."""
    meter = Meter()
    with pytest.raises(TypeError, match="breakers must be"):
        otel.register(meter.provider, breakers=42)
    with pytest.raises(ValueError, match="refresh_interval"):
        otel.register(meter.provider, refresh_interval=-1.0)


CLUSTER_NUMBERS = (
    "circuitbreaker.cluster.failure_rate",
    "circuitbreaker.cluster.pods_reporting",
    "circuitbreaker.cluster.votes",
    "circuitbreaker.cluster.attempts",
    "circuitbreaker.registry_down",
)


def cluster_figures(meter: Meter) -> dict[str, Any]:
    """Every cluster gauge of ``payments`` but retry_after (it moves with time)."""
    figures: dict[str, Any] = {n: meter.value(n, name="payments") for n in CLUSTER_NUMBERS}
    figures["state"] = meter.states("payments", "circuitbreaker.cluster.state")
    for kind in ("successful", "failed"):
        figures[kind] = meter.value(
            "circuitbreaker.cluster.buffered_calls", name="payments", kind=kind
        )
    return figures


async def test_cluster_gauges_are_the_same_on_every_pod(
    make_cluster: ClusterFactory, instruments: Register
) -> None:
    """Two pods, each with its own meter provider, report the same cluster view."""
    cluster = await make_cluster(
        reset_timeout=30.0, volume_threshold=2, rolling_count_timeout=10.0, sync_interval=0.05
    )

    def metered(pod: Pod) -> Meter:
        meter = Meter()
        instruments(meter.provider, breakers=[pod.breaker])
        return meter

    pods, meters = await cluster.observed(metered)

    def pooled(meter: Meter) -> bool:
        figures = cluster_figures(meter)
        return (figures["successful"], figures["failed"]) == (3, 1)

    await eventually(lambda: all(pooled(m) for m in meters), within=2.0, what="pooled")
    first, second = (cluster_figures(meter) for meter in meters)
    assert first == second
    assert first["circuitbreaker.cluster.failure_rate"] == 25.0
    assert first["circuitbreaker.cluster.pods_reporting"] == 2
    assert first["state"] == {s: int(s == "closed") for s in STATES}

    await pods[0].breaker.force_open()

    def forced(meter: Meter) -> bool:
        return meter.states("payments", "circuitbreaker.cluster.state")["forced_open"] == 1

    await eventually(lambda: all(forced(m) for m in meters), within=2.0, what="forced open")
    retry = [meter.value("circuitbreaker.cluster.retry_after", name="payments") for meter in meters]
    assert retry == [None, None]  # no trial until reset(): OpenTelemetry takes no +Inf
    await pods[0].breaker.reset()

    def closed(meter: Meter) -> bool:
        return meter.states("payments", "circuitbreaker.cluster.state")["closed"] == 1

    await eventually(lambda: all(closed(m) for m in meters), within=2.0, what="closed")
    await pods[1].trip()

    def opened(meter: Meter) -> bool:
        return meter.states("payments", "circuitbreaker.cluster.state")["open"] == 1

    await eventually(lambda: all(opened(m) for m in meters), within=2.0, what="open")
    for meter in meters:
        retry_after = meter.value("circuitbreaker.cluster.retry_after", name="payments")
        assert retry_after is not None
        assert 25.0 < retry_after <= 30.0
        assert meter.value("circuitbreaker.cluster.attempts", name="payments") == 1
