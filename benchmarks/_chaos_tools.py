"""The chaos suite's tools (``tests/``), importable from the benchmark scripts.

The soak test drives the same machinery as the chaos tests: private
``redis-server`` processes, the TCP proxy, the fake downstream, the pod
processes and their records. Nothing is copied: this module puts ``tests/``
on ``sys.path`` and re-exports what the soak scripts use.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import chaos_fleet  # noqa: E402
import chaos_pod_process  # noqa: E402
from chaos_downstream import DownstreamSwitch  # noqa: E402
from chaos_fleet import Fleet, PodView, consistent, url_client  # noqa: E402
from chaos_proxy import ChaosProxy  # noqa: E402
from chaos_records import Event, FleetResults, Timeline, Trial, trials_per_period  # noqa: E402
from chaos_scenario import CHAOS_OPTIONS, GRACE, TICK  # noqa: E402
from redis_server import RedisServer, RedisServerError  # noqa: E402

__all__ = [
    "CHAOS_OPTIONS",
    "GRACE",
    "TESTS",
    "TICK",
    "ChaosProxy",
    "DownstreamSwitch",
    "Event",
    "Fleet",
    "FleetResults",
    "PodView",
    "RedisServer",
    "RedisServerError",
    "Timeline",
    "Trial",
    "chaos_fleet",
    "chaos_pod_process",
    "consistent",
    "trials_per_period",
    "url_client",
]
