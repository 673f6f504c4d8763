"""A worker process for the Prometheus multiprocess tests.

Run with ``PROMETHEUS_MULTIPROC_DIR`` set: builds a local breaker named
``payments`` (and ``inventory`` when told to shut one down), registers the
metrics, makes the calls it is told to, refreshes the gauges once and
prints ``{"pid": ...}`` and stays alive (its breakers too) until a line
comes on stdin.

Usage::

    python prometheus_pod_process.py SUCCESSES FAILURES STATE

``STATE``: ``closed`` (leave it), ``open`` (``open()`` the breaker at the end),
or ``shutdown`` (also make ``inventory`` and shut it down after the refresh).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys

from helpers import Boom, Downstream

from distributed_opossum import CircuitBreaker, prometheus
from distributed_opossum.testing import FakeClock


async def main(successes: int, failures: int, state: str) -> None:
    """Make the calls, refresh, and leave."""
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR"), "PROMETHEUS_MULTIPROC_DIR is not set"
    downstream = Downstream()
    clock = FakeClock()
    breaker = CircuitBreaker(downstream.action, name="payments", clock=clock)
    inventory = CircuitBreaker(downstream.action, name="inventory", clock=clock)
    collector = prometheus.register(refresh_interval=None)
    await inventory.fire()
    for _ in range(successes):
        await breaker.fire()
    downstream.mode = "fail"
    for _ in range(failures):
        with contextlib.suppress(Boom):
            await breaker.fire()
    if state == "open":
        breaker.open()
    collector.refresh()
    if state == "shutdown":
        await inventory.shutdown()
    print(json.dumps({"pid": os.getpid()}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
