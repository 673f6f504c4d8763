"""Prometheus metrics of every breaker, with one call: ``register()``.

Needs the ``prometheus`` extra (``pip install distributed-opossum[prometheus]``).
The names are resilience4j's, in snake case, so its dashboards and alerts
apply (``namespace="resilience4j"`` gives its very names). Labels: ``name``
(the breaker's), ``state`` (closed, open, half_open, forced_open), ``kind``.

- ``circuitbreaker_state{name,state}``: 1 for the breaker's state, 0 for the others;
- ``circuitbreaker_calls_total{name,kind}``: calls, ``kind`` successful, failed
  or ignored (errors ``error_filter`` let pass);
- ``circuitbreaker_calls_seconds{name,kind}``: histogram of their latency;
- ``circuitbreaker_not_permitted_calls_total{name}``: calls rejected while open;
- ``circuitbreaker_failure_rate{name}``: % of failed calls in the window, -1
  below the volume threshold;
- ``circuitbreaker_buffered_calls{name,kind}``: successful and failed calls in the window;
- ``circuitbreaker_registry_down{name}``: 1 while this pod cannot reach Redis;
- ``circuitbreaker_cluster_state{name,state}``, ``circuitbreaker_cluster_failure_rate``,
  ``circuitbreaker_cluster_buffered_calls{name,kind}``,
  ``circuitbreaker_cluster_pods_reporting``, ``circuitbreaker_cluster_votes``,
  ``circuitbreaker_cluster_attempts``, ``circuitbreaker_cluster_retry_after_seconds``
  (+Inf when forced open): the cluster's view (distributed breakers only).

The ``cluster_`` gauges are the same on every pod: aggregate them over pods
with ``max``, not ``sum``.

Multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) works: the metrics are
``prometheus_client`` metric objects, so each process writes its own files
and ``MultiProcessCollector`` adds them up (gauge modes: ``livesum`` for the
state, the buffered calls and registry_down, ``livemax`` for the failure
rate, ``livemostrecent`` for the cluster's view).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics import MetricWrapperBase
    from prometheus_client.registry import Collector
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "distributed_opossum.prometheus needs prometheus_client: "
        "pip install 'distributed-opossum[prometheus]'"
    ) from error

from ._metric_figures import (
    KINDS,
    STATES,
    ClusterFigures,
    WindowFigures,
)
from ._metrics import BreakerTracker, breaker_source

__all__ = ["DEFAULT_BUCKETS", "BreakerCollector", "register"]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"),
)  # fmt: skip
"""Latency buckets (seconds) of ``circuitbreaker_calls_seconds``: 1 ms to 10 s."""

_NAN = float("nan")
_Mode = Literal["livesum", "livemax", "livemostrecent"]

# (name after the prefix, help, labels after "name", multiprocess mode) of each gauge.
_CLUSTER: _Mode = "livemostrecent"  # every pod holds the same view: the freshest one wins
_GAUGES: dict[str, tuple[str, tuple[str, ...], _Mode]] = {
    "state": ("1 for the breaker's state, 0 for the others", ("state",), "livesum"),
    "failure_rate": (
        "Failed calls in % of the completed calls in the window; -1 below the volume threshold",
        (),
        "livemax",
    ),
    "buffered_calls": ("Successful and failed calls in the window", ("kind",), "livesum"),
    "registry_down": (
        "1 while this pod cannot reach Redis (its breaker decides locally)",
        (),
        "livesum",
    ),
    "cluster_state": (
        "1 for the cluster's state as this pod last heard of it, 0 for the others",
        ("state",),
        _CLUSTER,
    ),
    "cluster_failure_rate": (
        "Failed calls of every pod in % of their completed calls; -1 below the volume threshold",
        (),
        _CLUSTER,
    ),
    "cluster_buffered_calls": (
        "Successful and failed calls of every pod in the pooled window",
        ("kind",),
        _CLUSTER,
    ),
    "cluster_pods_reporting": ("Pods with completed calls or a trip in the window", (), _CLUSTER),
    "cluster_votes": ("Pods voting to open the cluster's breaker", (), _CLUSTER),
    "cluster_attempts": (
        "Consecutive openings without a close (the shared backoff)",
        (),
        _CLUSTER,
    ),
    "cluster_retry_after_seconds": (
        "Seconds until the cluster's open period ends; +Inf when forced open",
        (),
        _CLUSTER,
    ),
}
_WINDOW_KINDS = ("successful", "failed")


def _multiprocess() -> bool:
    # The test prometheus_client itself makes (its values pick their class at import).
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ


def _number(value: float | None) -> float:
    return _NAN if value is None else float(value)


class _Recorder:
    """The counters and histogram series of one breaker name, bound once (labels() is slow)."""

    __slots__ = (
        "_failed",
        "_failed_seconds",
        "_ignored",
        "_ignored_seconds",
        "_not_permitted",
        "_successful",
        "_successful_seconds",
    )

    def __init__(
        self, calls: Counter, seconds: Histogram | None, not_permitted: Counter, name: str
    ) -> None:
        self._successful = calls.labels(name, "successful")
        self._failed = calls.labels(name, "failed")
        self._ignored = calls.labels(name, "ignored")
        self._not_permitted = not_permitted.labels(name)
        self._successful_seconds = self._failed_seconds = self._ignored_seconds = None
        if seconds is not None:
            self._successful_seconds = seconds.labels(name, "successful")
            self._failed_seconds = seconds.labels(name, "failed")
            self._ignored_seconds = seconds.labels(name, "ignored")

    def successful(self, latency: float) -> None:
        self._successful.inc()
        if self._successful_seconds is not None:
            self._successful_seconds.observe(latency)

    def failed(self, latency: float | None) -> None:
        self._failed.inc()
        if latency is not None and self._failed_seconds is not None:
            self._failed_seconds.observe(latency)

    def ignored(self, latency: float) -> None:
        self._ignored.inc()
        if self._ignored_seconds is not None:
            self._ignored_seconds.observe(latency)

    def not_permitted(self) -> None:
        self._not_permitted.inc()


class _Metrics:
    """The metric objects, and what the tracker tells them (its sink)."""

    def __init__(
        self,
        *,
        namespace: str,
        buckets: Sequence[float] | None,
    ) -> None:
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, got {namespace!r}")
        self._multiprocess = _multiprocess()
        prefix = f"{namespace}_circuitbreaker_" if namespace else "circuitbreaker_"
        gauges = {
            key: Gauge(
                prefix + key,
                documentation,
                ("name", *labels),
                registry=None,
                multiprocess_mode=mode,
            )
            for key, (documentation, labels, mode) in _GAUGES.items()
        }
        self._state = gauges["state"]
        self._calls = Counter(
            prefix + "calls",
            "Calls by outcome: successful, failed (timeouts and a full capacity included), "
            "ignored (errors error_filter let pass)",
            ("name", "kind"),
            registry=None,
        )
        self._seconds = (
            None
            if buckets is None
            else Histogram(
                prefix + "calls_seconds",
                "How long calls took, by outcome",
                ("name", "kind"),
                registry=None,
                buckets=buckets,
            )
        )
        self._not_permitted = Counter(
            prefix + "not_permitted_calls",
            "Calls rejected because the breaker was open",
            ("name",),
            registry=None,
        )
        self._failure_rate = gauges["failure_rate"]
        self._buffered = gauges["buffered_calls"]
        self._registry_down = gauges["registry_down"]
        self._cluster_state = gauges["cluster_state"]
        self._cluster_failure_rate = gauges["cluster_failure_rate"]
        self._cluster_buffered = gauges["cluster_buffered_calls"]
        self._cluster_pods = gauges["cluster_pods_reporting"]
        self._cluster_votes = gauges["cluster_votes"]
        self._cluster_attempts = gauges["cluster_attempts"]
        self._cluster_retry_after = gauges["cluster_retry_after_seconds"]
        self.metrics: tuple[MetricWrapperBase, ...] = (
            self._state,
            self._calls,
            *(() if self._seconds is None else (self._seconds,)),
            self._not_permitted,
            self._failure_rate,
            self._buffered,
            self._registry_down,
            self._cluster_state,
            self._cluster_failure_rate,
            self._cluster_buffered,
            self._cluster_pods,
            self._cluster_votes,
            self._cluster_attempts,
            self._cluster_retry_after,
        )

    def recorder(self, name: str) -> _Recorder:
        """Bind the call series of ``name`` (they show at 0 from now on)."""
        return _Recorder(self._calls, self._seconds, self._not_permitted, name)

    def state(self, name: str, state: str) -> None:
        """Set the one-hot state gauges of ``name``."""
        for value in STATES:
            self._state.labels(name, value).set(1.0 if value == state else 0.0)

    def window(self, name: str, figures: WindowFigures) -> None:
        """Set the window gauges of ``name``."""
        self._failure_rate.labels(name).set(figures.failure_rate)
        self._buffered.labels(name, "successful").set(figures.successes)
        self._buffered.labels(name, "failed").set(figures.failures)

    def cluster(self, name: str, figures: ClusterFigures) -> None:
        """Set the cluster gauges of ``name`` (NaN where the pod does not know yet)."""
        self._registry_down.labels(name).set(1.0 if figures.registry_down else 0.0)
        for value in STATES:
            self._cluster_state.labels(name, value).set(1.0 if value == figures.state else 0.0)
        self._cluster_failure_rate.labels(name).set(figures.failure_rate)
        self._cluster_buffered.labels(name, "successful").set(_number(figures.successes))
        self._cluster_buffered.labels(name, "failed").set(_number(figures.failures))
        self._cluster_pods.labels(name).set(_number(figures.pods_reporting))
        self._cluster_votes.labels(name).set(_number(figures.votes))
        self._cluster_attempts.labels(name).set(figures.attempts)
        self._cluster_retry_after.labels(name).set(_number(figures.retry_after))

    def forget(self, name: str) -> None:
        """Drop every series of ``name``.

        In multiprocess mode ``prometheus_client`` cannot remove a series from
        its files: this process' share of the gauges goes to 0 instead (-1
        for the failure rate), and the series go when the process does.
        """
        if self._multiprocess:
            for value in STATES:
                self._state.labels(name, value).set(0.0)
            self._failure_rate.labels(name).set(-1.0)
            for kind in _WINDOW_KINDS:
                self._buffered.labels(name, kind).set(0.0)
            self._registry_down.labels(name).set(0.0)
            return
        series: list[tuple[MetricWrapperBase, tuple[str, ...]]] = [
            *((metric, (name,)) for metric in self._per_name()),
            *((self._state, (name, value)) for value in STATES),
            *((self._cluster_state, (name, value)) for value in STATES),
            *((self._calls, (name, kind)) for kind in KINDS),
            *((self._seconds, (name, kind)) for kind in KINDS if self._seconds is not None),
            *((self._buffered, (name, kind)) for kind in _WINDOW_KINDS),
            *((self._cluster_buffered, (name, kind)) for kind in _WINDOW_KINDS),
        ]
        for metric, labels in series:
            with contextlib.suppress(KeyError):  # older prometheus_client raise for a missing one
                metric.remove(*labels)

    def _per_name(self) -> tuple[MetricWrapperBase, ...]:
        return (
            self._not_permitted,
            self._failure_rate,
            self._registry_down,
            self._cluster_failure_rate,
            self._cluster_pods,
            self._cluster_votes,
            self._cluster_attempts,
            self._cluster_retry_after,
        )


class BreakerCollector(Collector):
    """The metrics of a set of breakers, as ``prometheus_client`` metric objects.

    Made and registered by :func:`register`; see the module docstring for the
    metrics. Counters and the histogram move with each call (event handlers);
    the state gauges with each state change; the window and cluster gauges at
    every refresh (every ``refresh_interval`` seconds on the breakers' event
    loop, and at each scrape made on that loop).
    """

    def __init__(
        self,
        *,
        breakers: Any = None,
        namespace: str = "",
        buckets: Sequence[float] | None = DEFAULT_BUCKETS,
        refresh_interval: float | None = 5.0,
    ) -> None:
        self._metrics = _Metrics(namespace=namespace, buckets=buckets)
        self._tracker = BreakerTracker(self._metrics, breaker_source(breakers), refresh_interval)
        self._registry: CollectorRegistry | None = None

    # -- prometheus_client's Collector ---------------------------------------------------------

    def collect(self) -> Iterable[Any]:
        """The metric families, after a refresh (or only a look for new breakers, off-loop)."""
        self._tracker.scraped()
        for metric in self._metrics.metrics:
            yield from metric.collect()

    def describe(self) -> Iterable[Any]:
        """The metric families without samples (the registry checks names with them)."""
        for metric in self._metrics.metrics:
            yield from metric.describe()

    # -- control ---------------------------------------------------------------------------------

    def start(self, registry: CollectorRegistry) -> None:
        """Follow the breakers, registered on ``registry`` (what :func:`register` does)."""
        registry.register(self)
        self._registry = registry
        try:
            self._tracker.start()
            self._tracker.scraped()
        except BaseException:  # a breakers= callable that fails, or gives something else
            self.close()
            raise

    def refresh(self) -> None:
        """Look for new breakers and read every gauge now.

        Call it on the event loop the breakers run on: it reads their rolling
        windows, which only that loop may touch.
        """
        self._tracker.refresh()

    def close(self) -> None:
        """Stop: unsubscribe from every breaker, stop the refresh timer, unregister."""
        self._tracker.close()
        registry, self._registry = self._registry, None
        if registry is not None:
            with contextlib.suppress(KeyError):
                registry.unregister(self)


def register(
    registry: CollectorRegistry | None = None,
    *,
    breakers: Any = None,
    namespace: str = "",
    buckets: Sequence[float] | None = DEFAULT_BUCKETS,
    refresh_interval: float | None = 5.0,
) -> BreakerCollector:
    """Register the metrics of every breaker of the process on ``registry``.

    Args:
        registry: a ``prometheus_client.CollectorRegistry``; the default
            registry when None. In multiprocess mode, register here as you
            would a ``Counter`` (the default registry is fine): the values go
            to ``PROMETHEUS_MULTIPROC_DIR``, read by ``MultiProcessCollector``.
        breakers: None: every live breaker of the process, looked up at each
            scrape and refresh (breakers made later join; shut-down ones
            leave). A callable returning breakers (``lambda:
            breakers(client=redis_client)``), or an iterable of breakers.
        namespace: a prefix of every name (``"resilience4j"`` gives
            ``resilience4j_circuitbreaker_state``...).
        buckets: the latency histogram's buckets, in seconds; None: no
            histogram (it costs ~2 µs a call).
        refresh_interval: seconds between refreshes of the window and cluster
            gauges on the breakers' event loop (None: only at scrapes made on
            that loop and at ``refresh()``). Multiprocess mode needs it, as
            does a scrape served from another thread.

    Returns:
        The collector; ``close()`` undoes it all.

    Raises:
        ValueError: the registry already has these metric names (one
            ``register()`` per registry and namespace), or a bad argument.

    Example::

        from prometheus_client import CollectorRegistry, generate_latest
        from distributed_opossum import prometheus

        registry = CollectorRegistry()
        prometheus.register(registry)
        print(generate_latest(registry).decode())
    """
    collector = BreakerCollector(
        breakers=breakers, namespace=namespace, buckets=buckets, refresh_interval=refresh_interval
    )
    collector.start(REGISTRY if registry is None else registry)
    return collector
