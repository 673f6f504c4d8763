"""OpenTelemetry metrics of every breaker, with one call: ``register()``.

Needs the ``otel`` extra (``pip install distributed-opossum[otel]``: the
``opentelemetry-api``; the application brings its SDK and exporter). The
instruments are those of :mod:`distributed_opossum.prometheus`, in
OpenTelemetry's dotted style, with the attributes ``name``, ``state`` and ``kind``:

- ``circuitbreaker.calls`` (``kind`` successful, failed, ignored) and
  ``circuitbreaker.not_permitted_calls``: observable counters of totals
  counted at each call; ``circuitbreaker.call.duration``: histogram, seconds;
- ``circuitbreaker.state`` (1 for the breaker's state, 0 for the others),
  ``circuitbreaker.failure_rate`` (%, -1 below the volume threshold),
  ``circuitbreaker.buffered_calls``, ``circuitbreaker.registry_down``:
  observable gauges;
- ``circuitbreaker.cluster.state``, ``.failure_rate``, ``.buffered_calls``,
  ``.pods_reporting``, ``.votes``, ``.attempts``, ``.retry_after`` (seconds;
  not reported while forced open, as OpenTelemetry takes no infinity):
  observable gauges of the cluster's view (distributed breakers only; the
  same on every pod, so aggregate them with ``max``).

Through the OpenTelemetry Prometheus exporter they become
``circuitbreaker_calls_total``, ``circuitbreaker_call_duration_seconds``,
``circuitbreaker_state``... A breaker that is gone is reported no more (its
histogram excepted: the SDK keeps a synchronous instrument's series).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.metrics import (
        CallbackOptions,
        Histogram,
        Meter,
        MeterProvider,
        Observation,
    )
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "distributed_opossum.otel needs opentelemetry-api: pip install 'distributed-opossum[otel]'"
    ) from error

from ._metric_figures import (
    STATES,
    ClusterFigures,
    WindowFigures,
)
from ._metrics import BreakerTracker, breaker_source

__all__ = ["DEFAULT_BUCKETS", "BreakerInstruments", "register"]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Bucket boundaries (seconds) advised for ``circuitbreaker.call.duration``: 1 ms to 10 s."""

Attributes = dict[str, str]


class _Tally:
    """The call counts of one breaker name, kept as plain numbers.

    The SDK spends ~15 µs on each measurement (attribute checks and hashing):
    the counts are kept here and reported by observable counters at
    collection time, so a call pays only for its latency measurement.
    """

    __slots__ = ("failed", "ignored", "not_permitted", "successful")

    def __init__(self) -> None:
        self.successful = 0
        self.failed = 0
        self.ignored = 0
        self.not_permitted = 0


class _Recorder:
    """One breaker name's tally and latency attributes, made once."""

    __slots__ = ("_duration", "_failed", "_ignored", "_ok", "_tally")

    def __init__(self, tally: _Tally, duration: Histogram | None, name: str) -> None:
        self._tally = tally
        self._duration = duration
        self._ok = {"name": name, "kind": "successful"}
        self._failed = {"name": name, "kind": "failed"}
        self._ignored = {"name": name, "kind": "ignored"}

    def successful(self, latency: float) -> None:
        self._tally.successful += 1
        if self._duration is not None:
            self._duration.record(latency, self._ok)

    def failed(self, latency: float | None) -> None:
        self._tally.failed += 1
        if latency is not None and self._duration is not None:
            self._duration.record(latency, self._failed)

    def ignored(self, latency: float) -> None:
        self._tally.ignored += 1
        if self._duration is not None:
            self._duration.record(latency, self._ignored)

    def not_permitted(self) -> None:
        self._tally.not_permitted += 1


class _Instruments:
    """The instruments, what the tracker tells them (their sink) and their observers."""

    def __init__(self, meter: Meter, buckets: Sequence[float] | None) -> None:
        self.scraped: Callable[[], None] = lambda: None  # the tracker's, once it exists
        self._lock = threading.Lock()
        self._states: dict[str, str] = {}
        self._windows: dict[str, WindowFigures] = {}
        self._clusters: dict[str, ClusterFigures] = {}
        self._tallies: dict[str, _Tally] = {}
        meter.create_observable_counter(
            "circuitbreaker.calls",
            callbacks=[_callback(self._observe_calls)],
            unit="{call}",
            description="Calls by outcome: successful, failed, "
            "ignored (errors error_filter let pass)",
        )
        self._duration = (
            None
            if buckets is None
            else meter.create_histogram(
                "circuitbreaker.call.duration",
                unit="s",
                description="How long calls took, by outcome",
                explicit_bucket_boundaries_advisory=list(buckets),
            )
        )
        meter.create_observable_counter(
            "circuitbreaker.not_permitted_calls",
            callbacks=[_callback(self._observe_not_permitted)],
            unit="{call}",
            description="Calls rejected because the breaker was open",
        )
        gauges: list[tuple[str, str, str, Callable[[], Iterable[Observation]]]] = [
            ("state", "", "1 for the breaker's state, 0 for the others", self._observe_state),
            (
                "failure_rate",
                "%",
                "Failed calls in % of the completed calls in the window; -1 below the volume",
                self._observe_failure_rate,
            ),
            (
                "buffered_calls",
                "{call}",
                "Successful and failed calls in the window",
                self._observe_buffered,
            ),
            (
                "registry_down",
                "",
                "1 while this pod cannot reach Redis (its breaker decides locally)",
                self._observe_registry_down,
            ),
            (
                "cluster.state",
                "",
                "1 for the cluster's state as this pod last heard of it, 0 for the others",
                self._observe_cluster_state,
            ),
            (
                "cluster.failure_rate",
                "%",
                "Failed calls of every pod in % of their completed calls; -1 below the volume",
                self._cluster_gauge(lambda f: f.failure_rate),
            ),
            (
                "cluster.buffered_calls",
                "{call}",
                "Successful and failed calls of every pod in the pooled window",
                self._observe_cluster_buffered,
            ),
            (
                "cluster.pods_reporting",
                "{pod}",
                "Pods with completed calls or a trip in the window",
                self._cluster_gauge(lambda f: f.pods_reporting),
            ),
            (
                "cluster.votes",
                "{pod}",
                "Pods voting to open the cluster's breaker",
                self._cluster_gauge(lambda f: f.votes),
            ),
            (
                "cluster.attempts",
                "{attempt}",
                "Consecutive openings without a close (the shared backoff)",
                self._cluster_gauge(lambda f: f.attempts),
            ),
            (
                "cluster.retry_after",
                "s",
                "Seconds until the cluster's open period ends; none while forced open",
                self._cluster_gauge(lambda f: f.retry_after),
            ),
        ]
        for suffix, unit, description, observe in gauges:
            meter.create_observable_gauge(
                "circuitbreaker." + suffix,
                callbacks=[_callback(observe)],
                unit=unit,
                description=description,
            )

    def clear(self) -> None:
        """Report nothing more."""
        with self._lock:
            self._tallies.clear()
            self._states.clear()
            self._windows.clear()
            self._clusters.clear()

    # -- the tracker's sink ------------------------------------------------------------------------

    def recorder(self, name: str) -> _Recorder:
        """The tally of ``name`` (shared by breakers of one name) and its latency attributes."""
        with self._lock:
            tally = self._tallies.setdefault(name, _Tally())
        return _Recorder(tally, self._duration, name)

    def state(self, name: str, state: str) -> None:
        """Keep ``name``'s state for the next collection."""
        with self._lock:
            self._states[name] = state

    def window(self, name: str, figures: WindowFigures) -> None:
        """Keep ``name``'s window figures for the next collection."""
        with self._lock:
            self._windows[name] = figures

    def cluster(self, name: str, figures: ClusterFigures) -> None:
        """Keep ``name``'s cluster figures for the next collection."""
        with self._lock:
            self._clusters[name] = figures

    def forget(self, name: str) -> None:
        """Report nothing more of ``name``."""
        with self._lock:
            self._tallies.pop(name, None)
            self._states.pop(name, None)
            self._windows.pop(name, None)
            self._clusters.pop(name, None)

    # -- observable instruments --------------------------------------------------------------------

    def _observe_calls(self) -> Iterable[Observation]:
        # The first instrument of a collection refreshes (on the breakers' loop) or
        # looks for new breakers; the others report what it found.
        self.scraped()
        with self._lock:
            tallies = list(self._tallies.items())
        return [
            Observation(count, {"name": name, "kind": kind})
            for name, tally in tallies
            for kind, count in (
                ("successful", tally.successful),
                ("failed", tally.failed),
                ("ignored", tally.ignored),
            )
        ]

    def _observe_not_permitted(self) -> Iterable[Observation]:
        with self._lock:
            tallies = list(self._tallies.items())
        return [Observation(tally.not_permitted, {"name": name}) for name, tally in tallies]

    def _observe_state(self) -> Iterable[Observation]:
        with self._lock:
            states = list(self._states.items())
        return [
            Observation(1 if value == state else 0, {"name": name, "state": value})
            for name, state in states
            for value in STATES
        ]

    def _observe_failure_rate(self) -> Iterable[Observation]:
        with self._lock:
            windows = list(self._windows.items())
        return [Observation(figures.failure_rate, {"name": name}) for name, figures in windows]

    def _observe_buffered(self) -> Iterable[Observation]:
        with self._lock:
            windows = list(self._windows.items())
        observations = []
        for name, figures in windows:
            observations.append(
                Observation(figures.successes, {"name": name, "kind": "successful"})
            )
            observations.append(Observation(figures.failures, {"name": name, "kind": "failed"}))
        return observations

    def _observe_registry_down(self) -> Iterable[Observation]:
        with self._lock:
            clusters = list(self._clusters.items())
        return [Observation(int(f.registry_down), {"name": name}) for name, f in clusters]

    def _observe_cluster_state(self) -> Iterable[Observation]:
        with self._lock:
            clusters = list(self._clusters.items())
        return [
            Observation(1 if value == figures.state else 0, {"name": name, "state": value})
            for name, figures in clusters
            for value in STATES
        ]

    def _observe_cluster_buffered(self) -> Iterable[Observation]:
        with self._lock:
            clusters = list(self._clusters.items())
        observations = []
        for name, figures in clusters:
            if figures.successes is not None and figures.failures is not None:
                observations.append(
                    Observation(figures.successes, {"name": name, "kind": "successful"})
                )
                observations.append(Observation(figures.failures, {"name": name, "kind": "failed"}))
        return observations

    def _cluster_gauge(
        self, value: Callable[[ClusterFigures], float | None]
    ) -> Callable[[], Iterable[Observation]]:
        """An observer of one number of the cluster's view.

        Left out while unknown, and when infinite (``retry_after`` when forced
        open): the SDK refuses non-finite values.
        """

        def observe() -> Iterable[Observation]:
            with self._lock:
                clusters = list(self._clusters.items())
            return [
                Observation(number, {"name": name})
                for name, figures in clusters
                if (number := value(figures)) is not None and math.isfinite(number)
            ]

        return observe


class BreakerInstruments:
    """The OpenTelemetry instruments of a set of breakers.

    Made by :func:`register`; see the module docstring for the instruments.
    The call totals and the histogram move with each call (event handlers);
    the observable gauges report what the last refresh read (every
    ``refresh_interval`` seconds on the breakers' event loop, and at a
    collection made on that loop) and the state as of the last state change.
    """

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        *,
        breakers: Any = None,
        buckets: Sequence[float] | None = DEFAULT_BUCKETS,
        refresh_interval: float | None = 5.0,
    ) -> None:
        provider = otel_metrics.get_meter_provider() if meter_provider is None else meter_provider
        self._instruments = _Instruments(provider.get_meter("distributed_opossum"), buckets)
        self._tracker = BreakerTracker(
            self._instruments, breaker_source(breakers), refresh_interval
        )
        self._instruments.scraped = self._tracker.scraped

    def start(self) -> None:
        """Follow the breakers (what :func:`register` does)."""
        try:
            self._tracker.start()
            self._tracker.scraped()
        except BaseException:  # a breakers= callable that fails, or gives something else
            self.close()
            raise

    def refresh(self) -> None:
        """Look for new breakers and read every gauge now (on the breakers' event loop)."""
        self._tracker.refresh()

    def close(self) -> None:
        """Stop: unsubscribe from every breaker, stop the refresh timer, report nothing more.

        The instruments stay with the meter (OpenTelemetry cannot remove them).
        """
        self._tracker.close()
        self._instruments.clear()


def _callback(
    observe: Callable[[], Iterable[Observation]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return observe()

    return callback


def register(
    meter_provider: MeterProvider | None = None,
    *,
    breakers: Any = None,
    buckets: Sequence[float] | None = DEFAULT_BUCKETS,
    refresh_interval: float | None = 5.0,
) -> BreakerInstruments:
    """Create the instruments of every breaker of the process on a meter provider.

    Args:
        meter_provider: the global one (``opentelemetry.metrics``) when None.
        breakers: None: every live breaker of the process, looked up at each
            collection and refresh (breakers made later join; shut-down ones
            leave). A callable returning breakers, or an iterable of breakers.
        buckets: the bucket boundaries advised for the latency histogram
            (seconds); None: no histogram (each measurement costs ~15 µs
            with the Python SDK, the call counts a few ns).
        refresh_interval: seconds between refreshes of the gauges on the
            breakers' event loop (None: only at collections made on that loop
            and at ``refresh()``); a reader that exports from its own thread
            needs it.

    Returns:
        The instruments; ``close()`` stops them.

    Example::

        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from distributed_opossum import otel

        reader = InMemoryMetricReader()
        otel.register(MeterProvider(metric_readers=[reader]))
    """
    instruments = BreakerInstruments(
        meter_provider, breakers=breakers, buckets=buckets, refresh_interval=refresh_interval
    )
    instruments.start()
    return instruments
