"""``distributed_opossum.prometheus``: every breaker's metrics on a registry, with one call."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed_support import ClusterFactory, Pod
from helpers import Downstream, Ignored, breaker_on, outcome_of
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer
from waiting import eventually, eventually_async

from distributed_opossum import CircuitBreaker, SemaphoreLockedError, prometheus
from distributed_opossum.testing import FakeClock

POD_SCRIPT = Path(__file__).with_name("prometheus_pod_process.py")


def value(registry: CollectorRegistry, metric: str, **labels: str) -> float | None:
    """One sample of a scrape of ``registry`` (None when absent)."""
    return registry.get_sample_value(metric, labels)


def states(
    registry: CollectorRegistry, name: str, metric: str = "circuitbreaker_state"
) -> dict[str, float | None]:
    """The one-hot state gauges of ``name``: state -> value."""
    return {
        state: value(registry, metric, name=name, state=state)
        for state in ("closed", "open", "half_open", "forced_open")
    }


@pytest.fixture
def collectors() -> Iterator[Callable[..., prometheus.BreakerCollector]]:
    """``prometheus.register`` whose collectors are closed after the test."""
    made: list[prometheus.BreakerCollector] = []

    def register(*args: Any, **kwargs: Any) -> prometheus.BreakerCollector:
        collector = prometheus.register(*args, **kwargs)
        made.append(collector)
        return collector

    yield register
    for collector in made:
        collector.close()


Register = Callable[..., prometheus.BreakerCollector]


async def test_counters_count_each_kind_of_call(collectors: Register) -> None:
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
    registry = CollectorRegistry()
    collectors(registry, breakers=[breaker])
    for outcome, times in (("ok", 3), ("fail", 2), ("ignored", 1)):
        downstream.mode = outcome
        for _ in range(times):
            await outcome_of(breaker)
    breaker.open()
    assert await outcome_of(breaker) == "rejected"
    assert await outcome_of(breaker) == "rejected"

    def calls(kind: str) -> float | None:
        return value(registry, "circuitbreaker_calls_total", name="payments", kind=kind)

    assert (calls("successful"), calls("failed"), calls("ignored")) == (3.0, 2.0, 1.0)
    assert value(registry, "circuitbreaker_not_permitted_calls_total", name="payments") == 2.0
    count = "circuitbreaker_calls_seconds_count"
    assert value(registry, count, name="payments", kind="successful") == 3.0
    assert value(registry, count, name="payments", kind="ignored") == 1.0


async def test_counters_are_monotonic_when_the_window_forgets(
    collectors: Register, clock: FakeClock
) -> None:
    """The totals keep counting after the rolling window has dropped the calls."""
    breaker = breaker_on(clock, name="payments")
    registry = CollectorRegistry()
    collectors(registry, breakers=[breaker])
    for _ in range(4):
        await outcome_of(breaker)
    await clock.advance(60.0)  # far past the 10 s window
    await outcome_of(breaker)
    assert breaker.stats.successes == 1
    assert value(registry, "circuitbreaker_calls_total", name="payments", kind="successful") == 5.0
    assert value(registry, "circuitbreaker_buffered_calls", name="payments", kind="successful") == 1


async def test_a_full_capacity_is_a_failure_without_latency(collectors: Register) -> None:
    """A call refused by ``capacity`` counts as failed, as the breaker does, but adds no latency."""
    clock = FakeClock()
    downstream = Downstream(clock=clock)
    downstream.takes = 1.0
    breaker = CircuitBreaker(
        downstream.action, name="payments", clock=clock, capacity=1, volume_threshold=100
    )
    registry = CollectorRegistry()
    collectors(registry, breakers=[breaker])
    first = asyncio.create_task(breaker.fire())
    await asyncio.sleep(0)
    with pytest.raises(SemaphoreLockedError):
        await breaker.fire()
    await clock.advance(1.0)
    assert await first == "ok"
    labels = {"name": "payments", "kind": "failed"}
    assert value(registry, "circuitbreaker_calls_total", **labels) == 1.0
    assert value(registry, "circuitbreaker_calls_seconds_count", **labels) == 0.0


async def test_latency_histogram_buckets(collectors: Register) -> None:
    """Each call's latency lands in the first bucket that holds it."""
    clock = FakeClock()
    downstream = Downstream(clock=clock)
    breaker = CircuitBreaker(downstream.action, name="payments", clock=clock)
    registry = CollectorRegistry()
    collectors(registry, breakers=[breaker], buckets=(0.01, 0.05, 0.1))
    for takes in (0.005, 0.03, 0.07, 0.2):
        downstream.takes = takes
        task = asyncio.create_task(breaker.fire())
        await clock.advance(takes)
        assert await task == "ok"

    def bucket(le: str) -> float | None:
        labels = {"name": "payments", "kind": "successful", "le": le}
        return value(registry, "circuitbreaker_calls_seconds_bucket", **labels)

    assert [bucket(le) for le in ("0.01", "0.05", "0.1", "+Inf")] == [1.0, 2.0, 3.0, 4.0]
    total = value(registry, "circuitbreaker_calls_seconds_sum", name="payments", kind="successful")
    assert total == pytest.approx(0.305)


async def test_no_histogram_without_buckets(collectors: Register, clock: FakeClock) -> None:
    """``buckets=None`` leaves the latency histogram out (its cost with it); the counters stay."""
    breaker = breaker_on(clock, name="payments")
    registry = CollectorRegistry()
    collectors(registry, breakers=[breaker], buckets=None)
    await outcome_of(breaker)
    labels = {"name": "payments", "kind": "successful"}
    assert value(registry, "circuitbreaker_calls_total", **labels) == 1.0
    assert value(registry, "circuitbreaker_calls_seconds_count", **labels) is None
    await breaker.shutdown()
    assert value(registry, "circuitbreaker_calls_total", **labels) is None


async def test_state_gauges_follow_every_state(collectors: Register, clock: FakeClock) -> None:
    """One gauge per state: 1 for the current state, 0 for the three others."""
    breaker = breaker_on(clock, name="payments")
    registry = CollectorRegistry()
    collectors(registry, breakers=[breaker], refresh_interval=None)
    expected = dict.fromkeys(("closed", "open", "half_open", "forced_open"), 0.0)
    assert states(registry, "payments") == {**expected, "closed": 1.0}
    breaker.open()
    assert states(registry, "payments") == {**expected, "open": 1.0}
    await clock.advance(30.0)
    assert states(registry, "payments") == {**expected, "half_open": 1.0}
    await breaker.force_open()
    assert states(registry, "payments") == {**expected, "forced_open": 1.0}
    await breaker.reset()
    assert states(registry, "payments") == {**expected, "closed": 1.0}


async def test_state_events_update_the_gauges_without_a_scrape(
    collectors: Register, clock: FakeClock
) -> None:
    """A state change sets the gauges at once: a scrape from another thread sees it."""
    breaker = breaker_on(clock, name="payments")
    registry = CollectorRegistry()
    collectors(registry, breakers=[breaker], refresh_interval=None)
    breaker.open()
    text = (await asyncio.to_thread(generate_latest, registry)).decode()
    assert 'circuitbreaker_state{name="payments",state="open"} 1.0' in text


async def test_failure_rate_and_buffered_calls(collectors: Register) -> None:
    """The window's failure rate, -1 below the volume threshold, and its calls by kind."""
    clock = FakeClock()
    downstream = Downstream(clock=clock)
    breaker = CircuitBreaker(downstream.action, name="payments", clock=clock, volume_threshold=4)
    registry = CollectorRegistry()
    collectors(registry, breakers=[breaker])
    assert value(registry, "circuitbreaker_failure_rate", name="payments") == -1.0
    await outcome_of(breaker)
    downstream.mode = "fail"
    await outcome_of(breaker)
    assert value(registry, "circuitbreaker_failure_rate", name="payments") == -1.0
    downstream.mode = "ok"
    await outcome_of(breaker)
    await outcome_of(breaker)
    assert value(registry, "circuitbreaker_failure_rate", name="payments") == 25.0
    buffered = "circuitbreaker_buffered_calls"
    assert value(registry, buffered, name="payments", kind="successful") == 3.0
    assert value(registry, buffered, name="payments", kind="failed") == 1.0
    assert value(registry, "circuitbreaker_cluster_failure_rate", name="payments") is None


async def test_a_scrape_off_the_loop_never_reads_the_window(collectors: Register) -> None:
    """From another thread a scrape serves the last refresh: the breaker's window is not touched."""
    clock = FakeClock()
    downstream = Downstream(clock=clock)
    breaker = CircuitBreaker(downstream.action, name="payments", clock=clock)
    registry = CollectorRegistry()
    collectors(registry, breakers=[breaker], refresh_interval=None)
    assert value(registry, "circuitbreaker_failure_rate", name="payments") == -1.0
    downstream.mode = "fail"
    await outcome_of(breaker)
    text = (await asyncio.to_thread(generate_latest, registry)).decode()
    assert 'circuitbreaker_failure_rate{name="payments"} -1.0' in text
    assert 'circuitbreaker_calls_total{kind="failed",name="payments"} 1.0' in text  # events are
    assert value(registry, "circuitbreaker_failure_rate", name="payments") == 100.0  # on the loop


async def test_the_refresh_timer_keeps_gauges_fresh_for_other_threads(collectors: Register) -> None:
    """Every ``refresh_interval`` the loop refreshes the gauges a thread's scrape serves."""
    clock = FakeClock()
    downstream = Downstream(clock=clock)
    breaker = CircuitBreaker(downstream.action, name="payments", clock=clock)
    registry = CollectorRegistry()
    collectors(registry, breakers=[breaker], refresh_interval=0.01)
    downstream.mode = "fail"
    await outcome_of(breaker)

    async def scraped_rate() -> float | None:
        text = (await asyncio.to_thread(generate_latest, registry)).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        return families["circuitbreaker_failure_rate"].samples[0].value

    async def refreshed() -> bool:
        return await scraped_rate() == 100.0

    await eventually_async(refreshed, within=2.0, what="a refresh by the timer")


def test_the_refresh_timer_follows_the_breakers_to_a_new_loop() -> None:
    """Registered outside any loop, the timer starts with the first event, and moves to the
    next loop when the first one is gone."""
    clock = FakeClock()
    downstream = Downstream(clock=clock)
    breaker = CircuitBreaker(downstream.action, name="payments", clock=clock)
    registry = CollectorRegistry()
    collector = prometheus.register(registry, breakers=[breaker], refresh_interval=0.01)

    async def scraped_rate() -> float | None:
        text = (await asyncio.to_thread(generate_latest, registry)).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = families["circuitbreaker_failure_rate"].samples
        return samples[0].value if samples else None

    async def first() -> None:
        assert await scraped_rate() is None  # nothing read the window yet
        await outcome_of(breaker)

        async def refreshed() -> bool:
            return await scraped_rate() == 0.0

        await eventually_async(refreshed, within=2.0, what="a refresh on the first loop")

    async def second() -> None:
        downstream.mode = "fail"
        await outcome_of(breaker)

        async def refreshed() -> bool:
            return await scraped_rate() == 50.0

        await eventually_async(refreshed, within=2.0, what="a refresh on the second loop")

    try:
        asyncio.run(first())
        asyncio.run(second())
    finally:
        collector.close()


async def test_breakers_made_later_join_and_shut_down_ones_leave(collectors: Register) -> None:
    """Without ``breakers=``, each scrape follows ``breakers()``: new ones appear, shut-down go."""
    clock = FakeClock()
    registry = CollectorRegistry()
    collectors(registry)
    assert value(registry, "circuitbreaker_state", name="metrics-later", state="closed") is None
    later = CircuitBreaker(Downstream(clock=clock).action, name="metrics-later", clock=clock)
    assert value(registry, "circuitbreaker_state", name="metrics-later", state="closed") == 1.0
    await outcome_of(later)
    labels = {"name": "metrics-later", "kind": "successful"}
    assert value(registry, "circuitbreaker_calls_total", **labels) == 1.0
    await later.shutdown()
    text = generate_latest(registry).decode()
    assert "metrics-later" not in text


async def test_a_collected_breaker_leaves(collectors: Register) -> None:
    """A breaker nobody references any more is gone from the scrape, without a shutdown."""
    clock = FakeClock()
    registry = CollectorRegistry()
    collectors(registry, refresh_interval=None)
    breaker: CircuitBreaker[..., Any] | None = CircuitBreaker(
        Downstream(clock=clock).action, name="metrics-collected", clock=clock
    )
    assert "metrics-collected" in generate_latest(registry).decode()
    del breaker
    gc.collect()
    assert "metrics-collected" not in generate_latest(registry).decode()


async def test_same_name_breakers_share_series_until_the_last_goes(collectors: Register) -> None:
    """Two breakers of one name add up; the series stay while one of them lives."""
    clock = FakeClock()
    first = CircuitBreaker(Downstream(clock=clock).action, name="twins", clock=clock)
    second = CircuitBreaker(Downstream(clock=clock).action, name="twins", clock=clock)
    registry = CollectorRegistry()
    collectors(registry, breakers=[first, second])
    await outcome_of(first)
    await outcome_of(second)
    labels = {"name": "twins", "kind": "successful"}
    assert value(registry, "circuitbreaker_calls_total", **labels) == 2.0
    await first.shutdown()
    assert value(registry, "circuitbreaker_calls_total", **labels) == 2.0
    await second.shutdown()
    assert value(registry, "circuitbreaker_calls_total", **labels) is None


async def test_the_exposition_parses(collectors: Register, clock: FakeClock) -> None:
    """The text exposition parses, with the documented names and types."""
    breaker = breaker_on(clock, name='pay"ments\\')
    registry = CollectorRegistry()
    collectors(registry, breakers=[breaker])
    await outcome_of(breaker)
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    # The 0.0.4 text format has no _created: the parser reads those samples as gauges.
    types = {name: f.type for name, f in families.items() if not name.endswith("_created")}
    assert types == {
        "circuitbreaker_state": "gauge",
        "circuitbreaker_calls": "counter",
        "circuitbreaker_calls_seconds": "histogram",
        "circuitbreaker_not_permitted_calls": "counter",
        "circuitbreaker_failure_rate": "gauge",
        "circuitbreaker_buffered_calls": "gauge",
        "circuitbreaker_registry_down": "gauge",
        "circuitbreaker_cluster_state": "gauge",
        "circuitbreaker_cluster_failure_rate": "gauge",
        "circuitbreaker_cluster_buffered_calls": "gauge",
        "circuitbreaker_cluster_pods_reporting": "gauge",
        "circuitbreaker_cluster_votes": "gauge",
        "circuitbreaker_cluster_attempts": "gauge",
        "circuitbreaker_cluster_retry_after_seconds": "gauge",
    }
    totals = [s for s in families["circuitbreaker_calls"].samples if s.name.endswith("_total")]
    assert {(s.labels["name"], s.labels["kind"], s.value) for s in totals} == {
        ('pay"ments\\', "successful", 1.0),
        ('pay"ments\\', "failed", 0.0),
        ('pay"ments\\', "ignored", 0.0),
    }


async def test_namespace_prefixes_every_name(collectors: Register, clock: FakeClock) -> None:
    """``namespace="resilience4j"`` gives resilience4j's own names."""
    breaker = breaker_on(clock, name="payments")
    registry = CollectorRegistry()
    collectors(registry, breakers=[breaker], namespace="resilience4j")
    state = value(registry, "resilience4j_circuitbreaker_state", name="payments", state="closed")
    assert state == 1.0
    assert value(registry, "circuitbreaker_state", name="payments", state="closed") is None


async def test_one_register_per_registry(collectors: Register) -> None:
    """A second ``register()`` on the same registry is refused (its series would clash)."""
    registry = CollectorRegistry()
    collectors(registry, breakers=[])
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        collectors(registry, breakers=[])


async def test_default_registry(collectors: Register, clock: FakeClock) -> None:
    """Without a registry, the metrics go to ``prometheus_client.REGISTRY``."""
    breaker = breaker_on(clock, name="metrics-default")
    collector = collectors(breakers=[breaker])
    assert value(REGISTRY, "circuitbreaker_state", name="metrics-default", state="closed") == 1.0
    collector.close()
    assert value(REGISTRY, "circuitbreaker_state", name="metrics-default", state="closed") is None


async def test_close_unsubscribes(collectors: Register, clock: FakeClock) -> None:
    """``close()`` leaves the breaker as it was: no listener, back on its plain call path."""
    breaker = breaker_on(clock, name="payments")
    registry = CollectorRegistry()
    collector = collectors(registry, breakers=[breaker])
    assert breaker._events.call_listened
    collector.close()
    assert not breaker._events.call_listened
    assert not breaker._gate
    assert value(registry, "circuitbreaker_state", name="payments", state="closed") is None


async def test_a_callable_picks_the_breakers(collectors: Register) -> None:
    """``breakers=`` may be a callable, asked at every look."""
    clock = FakeClock()
    chosen: list[CircuitBreaker[..., Any]] = []
    registry = CollectorRegistry()
    collectors(registry, breakers=lambda: chosen)
    chosen.append(CircuitBreaker(Downstream(clock=clock).action, name="picked", clock=clock))
    assert value(registry, "circuitbreaker_state", name="picked", state="closed") == 1.0
    chosen.clear()
    assert value(registry, "circuitbreaker_state", name="picked", state="closed") is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"breakers": "payments"}, TypeError, "breakers must be"),
        ({"breakers": [object()]}, TypeError, "must hold CircuitBreaker"),
        ({"refresh_interval": 0}, ValueError, "refresh_interval"),
        ({"refresh_interval": True}, ValueError, "refresh_interval"),
        ({"namespace": 3}, TypeError, "namespace"),
        ({"breakers": lambda: ["payments"]}, TypeError, "must give CircuitBreaker"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    """Bad arguments raise an error naming them, and register nothing."""
    registry = CollectorRegistry()
    with pytest.raises(error, match=match):
        prometheus.register(registry, **kwargs)
    assert list(registry.collect()) == []


# --------------------------------------------------------------------------- the cluster's view


CLUSTER_GAUGES = (
    "circuitbreaker_cluster_failure_rate",
    "circuitbreaker_cluster_pods_reporting",
    "circuitbreaker_cluster_votes",
    "circuitbreaker_cluster_attempts",
    "circuitbreaker_registry_down",
)


def cluster_figures(registry: CollectorRegistry) -> dict[str, Any]:
    """Every cluster gauge of ``payments`` (retry_after apart: it moves with time)."""
    figures: dict[str, Any] = {g: value(registry, g, name="payments") for g in CLUSTER_GAUGES}
    figures["state"] = states(registry, "payments", "circuitbreaker_cluster_state")
    for kind in ("successful", "failed"):
        figures[kind] = value(
            registry, "circuitbreaker_cluster_buffered_calls", name="payments", kind=kind
        )
    return figures


async def test_cluster_gauges_are_the_same_on_every_pod(
    make_cluster: ClusterFactory, collectors: Register
) -> None:
    """Two pods, each with its own registry, report the same cluster view."""
    cluster = await make_cluster(
        reset_timeout=30.0, volume_threshold=100, rolling_count_timeout=10.0, sync_interval=0.05
    )

    def registered(pod: Pod) -> CollectorRegistry:
        registry = CollectorRegistry()
        collectors(registry, breakers=[pod.breaker])
        return registry

    pods, registries = await cluster.observed(registered)

    def pooled(pod: int) -> bool:
        figures = cluster_figures(registries[pod])
        return (figures["successful"], figures["failed"]) == (3.0, 1.0)

    await eventually(lambda: pooled(0) and pooled(1), within=2.0, what="pooled on both pods")
    first, second = (cluster_figures(registry) for registry in registries)
    assert first == second
    assert first["circuitbreaker_cluster_failure_rate"] == -1.0  # below volume_threshold
    assert first["circuitbreaker_cluster_pods_reporting"] == 2.0
    assert (first["failed"], first["circuitbreaker_registry_down"]) == (1.0, 0.0)
    assert first["state"] == {"closed": 1.0, "open": 0.0, "half_open": 0.0, "forced_open": 0.0}

    await pods[1].breaker.force_open()

    def forced(pod: int) -> bool:
        return (
            states(registries[pod], "payments", "circuitbreaker_cluster_state")["forced_open"]
            == 1.0
        )

    await eventually(lambda: forced(0) and forced(1), within=2.0, what="forced open on both")
    retry = [
        value(registry, "circuitbreaker_cluster_retry_after_seconds", name="payments")
        for registry in registries
    ]
    assert retry == [math.inf, math.inf]
    assert states(registries[0], "payments") == {
        "closed": 0.0,
        "open": 0.0,
        "half_open": 0.0,
        "forced_open": 1.0,
    }
    await pods[0].breaker.reset()

    def closed(registry: CollectorRegistry) -> bool:
        return states(registry, "payments", "circuitbreaker_cluster_state")["closed"] == 1.0

    await eventually(lambda: all(closed(r) for r in registries), within=2.0, what="closed")
    assert cluster_figures(registries[0])["circuitbreaker_cluster_attempts"] == 0.0
    await pods[1].trip()

    def opened(registry: CollectorRegistry) -> bool:
        return states(registry, "payments", "circuitbreaker_cluster_state")["open"] == 1.0

    await eventually(lambda: all(opened(r) for r in registries), within=2.0, what="open")
    for registry in registries:
        retry_after = value(registry, "circuitbreaker_cluster_retry_after_seconds", name="payments")
        assert retry_after is not None
        assert 25.0 < retry_after <= 30.0
        assert value(registry, "circuitbreaker_cluster_attempts", name="payments") == 1.0


async def test_registry_down_shows_at_once(
    redis_server: RedisServer, make_cluster: ClusterFactory, collectors: Register
) -> None:
    """``registry_down``/``registry_up`` set the gauge without waiting for a refresh."""
    cluster = await make_cluster(
        server=redis_server, rolling_count_timeout=10.0, sync_interval=0.05
    )
    pod = cluster.pod("pod0")
    registry = CollectorRegistry()
    collectors(registry, breakers=[pod.breaker], refresh_interval=None)
    await cluster.ready()

    async def down_from_a_thread() -> float | None:
        text = (await asyncio.to_thread(generate_latest, registry)).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = families["circuitbreaker_registry_down"].samples
        return samples[0].value if samples else None

    assert await down_from_a_thread() == 0.0
    redis_server.stop()
    await eventually(lambda: pod.count("registry_down") == 1, within=5.0, what="down")
    assert await down_from_a_thread() == 1.0
    redis_server.start()
    await eventually(lambda: pod.count("registry_up") == 1, within=5.0, what="up")
    assert await down_from_a_thread() == 0.0


# --------------------------------------------------------------------------- multiprocess mode


class Workers:
    """Worker processes in multiprocess mode, alive until the block ends."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, successes: int, failures: int, state: str) -> int:
        """Start a worker and wait until its values are written; its pid."""
        process = subprocess.Popen(
            [sys.executable, str(POD_SCRIPT), str(successes), str(failures), state],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.directory)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            _, err = process.communicate(timeout=10)
            raise AssertionError(f"the worker failed: {err}")
        pid: int = json.loads(line)["pid"]
        return pid

    def scrape(self) -> CollectorRegistry:
        """A registry reading the directory, as a multiprocess /metrics handler makes."""
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.directory))  # type: ignore[no-untyped-call]
        return registry

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes:
            _, err = process.communicate("quit\n", timeout=10)
            assert process.returncode == 0, err


def test_multiprocess_mode_adds_up_every_process(tmp_path: Path) -> None:
    """Two processes write their files; one ``MultiProcessCollector`` scrape shows both."""
    with Workers(tmp_path) as workers:
        workers.start(successes=3, failures=1, state="closed")
        second = workers.start(successes=1, failures=1, state="open")
        registry = workers.scrape()
        check_both(registry)
        # What a server's child-exit hook does when a worker ends:
        mark_process_dead(second, str(tmp_path))  # type: ignore[no-untyped-call]
        check_first_alone(workers.scrape())


def check_both(registry: CollectorRegistry) -> None:
    """Both workers' values, added up as each metric's mode says."""

    def calls(kind: str) -> float | None:
        return value(registry, "circuitbreaker_calls_total", name="payments", kind=kind)

    assert (calls("successful"), calls("failed")) == (4.0, 2.0)
    successful_count = value(
        registry, "circuitbreaker_calls_seconds_count", name="payments", kind="successful"
    )
    assert successful_count == 4.0
    # livesum: how many processes are in each state.
    assert states(registry, "payments") == {
        "closed": 1.0,
        "open": 1.0,
        "half_open": 0.0,
        "forced_open": 0.0,
    }
    # livemax: the worst process' rate (25 % and 50 %).
    assert value(registry, "circuitbreaker_failure_rate", name="payments") == 50.0
    assert value(registry, "circuitbreaker_buffered_calls", name="payments", kind="failed") == 2.0
    text = generate_latest(registry).decode()
    assert {f.name for f in text_string_to_metric_families(text)} >= {
        "circuitbreaker_state",
        "circuitbreaker_calls",
        "circuitbreaker_calls_seconds",
    }


def check_first_alone(registry: CollectorRegistry) -> None:
    """The first worker's gauges, and both workers' counters."""

    def calls(kind: str) -> float | None:
        return value(registry, "circuitbreaker_calls_total", name="payments", kind=kind)

    assert states(registry, "payments")["open"] == 0.0
    assert states(registry, "payments")["closed"] == 1.0
    assert value(registry, "circuitbreaker_failure_rate", name="payments") == 25.0
    assert (calls("successful"), calls("failed")) == (4.0, 2.0)  # counters outlive processes


def test_multiprocess_mode_zeroes_a_shut_down_breaker(tmp_path: Path) -> None:
    """The files cannot lose a series: a shut-down breaker's share of the gauges goes to 0."""
    with Workers(tmp_path) as workers:
        workers.start(successes=1, failures=0, state="shutdown")
        workers.start(successes=1, failures=0, state="closed")
        registry = workers.scrape()
        inventory = states(registry, "inventory")
        payments = states(registry, "payments")
        labels = {"name": "inventory", "kind": "successful"}
        buffered = value(registry, "circuitbreaker_buffered_calls", **labels)
        calls = value(registry, "circuitbreaker_calls_total", **labels)
    assert inventory["closed"] == 1.0  # the other worker's
    assert payments["closed"] == 2.0
    assert buffered == 1.0
    assert calls == 2.0  # counters are never taken back
