"""A soak pod process: ``tests/chaos_pod_process.py`` with its own records kept bounded.

The chaos suite's pod process keeps every ``fire()`` latency and samples RSS
ten times a second: fine for a few seconds, but over half an hour those
records alone would grow each process by several MB and pass for a leak of
the library. This wrapper runs the very same process with:

- the latency records trimmed to the latest :data:`LATENCIES_KEPT` calls;
- RSS sampled once a second;
- each exception that reached a caller also kept with its time (the first
  :data:`ERRORS_KEPT`), so a leaked error can be lined up with a fault;
- a ``progress`` command (outcomes so far, errors, trials, RSS now) that does
  not stop the load;
- SIGINT ignored: a Ctrl-C in the terminal reaches the whole process group,
  and the soak script shuts its pods down itself (``quit``), cleanly.

Usage (by the soak script, through chaos_fleet.Fleet)::

    python benchmarks/_soak_pod.py CONFIG.json
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from _chaos_tools import chaos_pod_process

LATENCIES_KEPT = 10_000
"""Latency records kept per process (the latest calls)."""
ERRORS_KEPT = 200
"""Timed error records kept per process (the first ones)."""
_TRIM_EVERY_S = 5.0


class SoakPodProcess(chaos_pod_process.PodProcess):
    """The chaos pod process, with bounded records and a ``progress`` command."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.error_log: list[list[Any]] = []

    def record_error(self, instance: str, error: BaseException) -> None:
        """Count the exception (as the chaos process does) and keep it with its time."""
        super().record_error(instance, error)
        if len(self.error_log) < ERRORS_KEPT:
            kind = f"{type(error).__module__}.{type(error).__qualname__}"
            self.error_log.append([time.monotonic(), instance, kind, repr(error)[:300]])

    def start_monitors(self) -> None:
        """The chaos process's monitors, and the trimming of the latency records."""
        super().start_monitors()
        self._monitors.append(asyncio.get_running_loop().create_task(self._trim()))

    async def _trim(self) -> None:
        while True:
            await asyncio.sleep(_TRIM_EVERY_S)
            if len(self.latencies) > 2 * LATENCIES_KEPT:
                del self.latencies[:-LATENCIES_KEPT]

    def progress(self) -> dict[str, Any]:
        """What the soak script prints every minute; the load goes on."""
        return {
            "t": time.monotonic(),
            "process": self.config["process"],
            "outcomes": {p.instance: dict(p.outcomes) for p in self.pods},
            "errors": sum(e["count"] for e in self.errors.values()),
            "trials": len(self.trials),
            "registry_down": sum(1 for e in self.events if e[2] == "registry_down"),
            "rss": chaos_pod_process.rss_bytes(),
            "max_lag": self.max_lag,
        }

    def results(self) -> dict[str, Any]:
        """The chaos process's records, plus the timed errors."""
        body = super().results()
        body["error_log"] = self.error_log
        return body

    async def command(self, message: dict[str, Any]) -> dict[str, Any]:
        """``progress``, or any command of the chaos process."""
        if message.get("cmd") == "progress":
            return self.progress()
        return await super().command(message)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # chaos_pod_process.main builds its process from the module's PodProcess.
    chaos_pod_process.PodProcess = SoakPodProcess  # type: ignore[misc]
    config = json.loads(Path(sys.argv[1]).read_text())
    config.setdefault("sample_interval", 1.0)
    sys.exit(asyncio.run(chaos_pod_process.main(config)))
