"""What the metrics integrations share: following breakers through their public events.

A :class:`BreakerTracker` finds the breakers to follow (``breakers()`` by
default, so ones made later join and shut-down ones leave), subscribes to
their events and hands what it learns to a :class:`Sink` (Prometheus, or
OpenTelemetry). Only the public API of a breaker is used.

Where each figure comes from, and why:

- **call counts and latencies**: the ``success``, ``failure`` and ``reject``
  events. The window in ``stats`` forgets, and a counter must never go down,
  so totals are counted here, one event at a time. A call event with a
  listener takes the breaker off its plain path (see the README's per-call
  cost).
- **state**: the ``open``, ``close`` and ``half_open`` events (they cost the
  call path nothing), and every refresh; the cluster's view is read again at
  those events and at ``registry_down``/``registry_up`` (a pure read).
- **window and cluster figures** (failure rate, buffered calls, the cluster's
  view): read by :meth:`BreakerTracker.refresh`, which runs on the event loop
  of the breakers: every ``refresh_interval`` seconds from a timer, and at a
  scrape made on that loop. Reading ``stats`` advances the breaker's rolling
  window, so it must never run on another thread while the breaker is used:
  a scrape on another thread (``prometheus_client.start_http_server``, an
  OpenTelemetry export thread) serves the figures of the last refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ._breaker import CircuitBreaker
from ._errors import SemaphoreLockedError
from ._metric_figures import Sink, cluster_figures, window_figures
from ._registry import breakers as live_breakers

__all__ = ["BreakerSource", "BreakerTracker", "breaker_source"]

logger = logging.getLogger("distributed_opossum")

BreakerSource = Callable[[], Iterable["CircuitBreaker[Any, Any]"]]


def breaker_source(breakers: Any) -> BreakerSource:
    """Turn ``register(breakers=...)`` into a function listing the breakers to follow.

    ``None``: every live breaker of the process, listed again at every look.
    A callable: called at every look (``lambda: breakers(client=redis)``).
    An iterable: those breakers only, held weakly.
    """
    if breakers is None:
        return live_breakers
    if callable(breakers):
        source: BreakerSource = breakers  # called at every look
        return source
    if isinstance(breakers, str | bytes) or not isinstance(breakers, Iterable):
        raise TypeError(
            "breakers must be None (every breaker of the process), an iterable of "
            f"CircuitBreaker or a callable returning one, got {breakers!r}"
        )
    refs = []
    for breaker in breakers:
        if not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"breakers must hold CircuitBreaker objects, got {breaker!r}")
        refs.append(weakref.ref(breaker))

    def chosen() -> list[CircuitBreaker[Any, Any]]:
        return [b for b in (ref() for ref in refs) if b is not None]

    return chosen


@dataclass(slots=True)
class _Followed:
    """A breaker the tracker follows: its name and the handlers to remove at the end."""

    ref: weakref.ref[CircuitBreaker[Any, Any]]
    name: str
    handlers: list[tuple[str, Callable[..., None]]]


class BreakerTracker:
    """Follows breakers for one sink; see the module docstring.

    Args:
        sink: where the figures go.
        source: lists the breakers to follow (see :func:`breaker_source`).
        refresh_interval: seconds between refreshes on the breakers' event
            loop; None: only at scrapes made on that loop and at :meth:`refresh`.
    """

    def __init__(self, sink: Sink, source: BreakerSource, refresh_interval: float | None) -> None:
        if refresh_interval is not None and (
            isinstance(refresh_interval, bool)
            or not isinstance(refresh_interval, int | float)
            or not refresh_interval > 0
        ):
            raise ValueError(
                f"refresh_interval must be a positive number of seconds or None, "
                f"got {refresh_interval!r}"
            )
        self._sink = sink
        self._source = source
        self._interval = refresh_interval
        self._followed: dict[int, _Followed] = {}
        self._lock = threading.RLock()  # scrapes may come from another thread
        self._loop: asyncio.AbstractEventLoop | None = None  # the breakers' loop, once seen
        self._timer: asyncio.Handle | None = None
        self._closed = False

    # -- looking at the breakers ---------------------------------------------------------------

    def sync(self) -> list[CircuitBreaker[Any, Any]]:
        """Follow new breakers, drop shut-down and vanished ones; returns those followed.

        Safe from any thread: it subscribes and unsubscribes, and reads no figures.
        """
        with self._lock:
            if self._closed:
                return []
            current = []
            for breaker in self._source():
                if not isinstance(breaker, CircuitBreaker):
                    raise TypeError(f"breakers must give CircuitBreaker objects, got {breaker!r}")
                if not breaker.is_shutdown:
                    current.append(breaker)
            keys = {id(b) for b in current}
            for key in [k for k in self._followed if k not in keys]:
                self._drop(key)
            for breaker in current:
                followed = self._followed.get(id(breaker))
                if followed is not None and followed.ref() is not breaker:
                    self._drop(id(breaker))  # a collected breaker's id, reused
                    followed = None
                if followed is None:
                    self._follow(breaker)
            return current

    def refresh(self) -> None:
        """Sync, then read every followed breaker's state, window and cluster view.

        Call it on the event loop the breakers run on (it reads their windows).
        """
        for breaker in self.sync():
            name = breaker.name
            sink = self._sink
            sink.state(name, breaker.state.value)
            sink.window(name, window_figures(breaker.stats, breaker.volume_threshold))
            view = breaker.cluster
            if view is not None:
                sink.cluster(name, cluster_figures(view, breaker.volume_threshold))

    def scraped(self) -> None:
        """A scrape is about to read the figures: refresh when on the breakers' loop, else sync.

        Any running loop of this thread counts as the breakers' loop while none is known.
        """
        loop = _running_loop()
        if loop is not None and (self._loop is None or self._loop.is_closed()):
            self._arm(loop)
        if loop is not None and loop is self._loop:
            self.refresh()
        else:
            self.sync()

    def close(self) -> None:
        """Stop following: unsubscribe from every breaker and stop the refresh timer."""
        with self._lock:
            self._closed = True
            for key in list(self._followed):
                self._drop(key)
            timer, loop = self._timer, self._loop
            self._timer = None
        if timer is not None and loop is not None and not loop.is_closed():
            if _running_loop() is loop:
                timer.cancel()
            else:
                loop.call_soon_threadsafe(timer.cancel)

    # -- the refresh timer ---------------------------------------------------------------------

    def start(self) -> None:
        """Arm the refresh timer now when a loop runs in this thread (else at the first event)."""
        loop = _running_loop()
        if loop is not None:
            self._arm(loop)

    def _poke(self) -> None:
        """From an event handler: arm the timer when it does not run on a live loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            running = _running_loop()
            if running is not None:
                self._arm(running)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._closed or (self._loop is loop and self._timer is not None):
                return
            self._loop = loop
            if self._interval is not None:
                # The first refresh soon, not in the handler that armed it (it may be mid-call).
                self._timer = loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._closed or self._interval is None:
            return
        try:
            self.refresh()
        except Exception:  # never die silently: log, and try again next time
            logger.exception("metrics refresh of the breakers failed")
        loop = self._loop
        if loop is not None and not self._closed:
            self._timer = loop.call_later(self._interval, self._tick)

    # -- following one breaker -----------------------------------------------------------------

    def _follow(self, breaker: CircuitBreaker[Any, Any]) -> None:
        name = breaker.name
        recorder = self._sink.recorder(name)
        successful, failed = recorder.successful, recorder.failed
        ignored, not_permitted = recorder.ignored, recorder.not_permitted
        poke = self._poke
        ref = weakref.ref(breaker)  # handlers live on the breaker: no strong way back

        # The call handlers run on every call: the timer check is inlined (a
        # closed loop means the refresh timer died with it; _poke re-arms it).
        def on_success(result: Any, latency: float) -> None:
            loop = self._loop
            if loop is None or loop.is_closed():
                poke()
            # error_filter's errors come as the result of a success event.
            if isinstance(result, BaseException):
                ignored(latency)
            else:
                successful(latency)

        def on_failure(error: BaseException, latency: float, args: Any) -> None:
            loop = self._loop
            if loop is None or loop.is_closed():
                poke()
            # A full capacity fails the call before it runs: no latency to tell.
            failed(None if isinstance(error, SemaphoreLockedError) else latency)

        def on_reject(error: BaseException) -> None:
            loop = self._loop
            if loop is None or loop.is_closed():
                poke()
            not_permitted()

        def on_state(*_: Any) -> None:
            poke()
            current = ref()
            if current is not None:
                self._sink.state(name, current.state.value)
                view = current.cluster
                if view is not None:
                    self._sink.cluster(name, cluster_figures(view, current.volume_threshold))

        def on_shutdown() -> None:
            with self._lock:
                self._drop(key)

        handlers: list[tuple[str, Callable[..., None]]] = [
            ("success", on_success),
            ("failure", on_failure),
            ("reject", on_reject),
            ("open", on_state),
            ("close", on_state),
            ("half_open", on_state),
            ("registry_down", on_state),
            ("registry_up", on_state),
            ("shutdown", on_shutdown),
        ]
        key = id(breaker)

        def collected(_: weakref.ref[CircuitBreaker[Any, Any]]) -> None:
            with self._lock:
                followed = self._followed.get(key)
                if followed is not None and followed.ref() is None:
                    self._drop(key)

        self._followed[key] = _Followed(weakref.ref(breaker, collected), name, handlers)
        for event, handler in handlers:
            breaker.on(event, handler)

    def _drop(self, key: int) -> None:
        followed = self._followed.pop(key, None)
        if followed is None:
            return
        breaker = followed.ref()
        if breaker is not None:
            for event, handler in followed.handlers:
                breaker.off(event, handler)
        if all(other.name != followed.name for other in self._followed.values()):
            self._sink.forget(followed.name)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    with contextlib.suppress(RuntimeError):
        return asyncio.get_running_loop()
    return None
