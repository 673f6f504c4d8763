"""The pod processes: start them, read their reports, stop them — every one, on every exit.

Each pod runs ``python -m distributed_opossum._demo.pod`` in a session of its
own: Ctrl-C in the terminal reaches only the demo, which then stops the pods
in order (``stop`` on stdin, then SIGTERM, then SIGKILL). A pod also stops when
its stdin closes, so even a demo killed outright leaves no pod behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .records import CallCounts, PodExit, ReportError, parse_report
from .redis_target import DemoError
from .settings import BREAKER, INDEPENDENT, QUORUM, QUORUM_BREAKER, SYNC_INTERVAL, Settings
from .timeline import Timeline

__all__ = ["Fleet"]

_READY_TIMEOUT_S = 60.0  # 5 fresh interpreters importing redis on a busy 2-core machine
_STOP_TIMEOUT_S = 5.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class Fleet:
    """The pods of one run.

    Args:
        settings: the run's settings.
        timeline: where the pods' reports go.
    """

    def __init__(self, settings: Settings, timeline: Timeline) -> None:
        self.settings = settings
        self.timeline = timeline
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._ready: dict[str, asyncio.Future[int | str]] = {}  # a pid, or why it failed
        self._stopping = False

    def _config(self, pod: str, rate: float, redis_url: str, api_port: int) -> dict[str, Any]:
        settings = self.settings
        return {
            "pod": pod,
            "rate": rate,
            "redis_url": redis_url,
            "prefix": settings.prefix,
            "sync_interval": SYNC_INTERVAL,
            "quorum": QUORUM,
            "breaker": BREAKER,
            "quorum_breaker": QUORUM_BREAKER,
            "independent": INDEPENDENT,
            "api_host": "127.0.0.1",
            "api_port": api_port,
            "options": settings.breaker_options(),
        }

    async def start(self, redis_url: str, api_port: int) -> dict[str, int]:
        """Start every pod and wait until each has reached Redis; returns their pids.

        Raises:
            DemoError: a pod could not start or reach Redis.
        """
        env = dict(os.environ)
        # The pods import this very copy of the package, installed or not.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        loop = asyncio.get_running_loop()
        for pod, rate in zip(self.settings.pod_names, self.settings.rates, strict=True):
            config = self._config(pod, rate, redis_url, api_port)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "distributed_opossum._demo.pod",
                json.dumps(config),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
            self.processes[pod] = process
            self._ready[pod] = loop.create_future()
            self._readers.append(loop.create_task(self._read(pod, process)))
        pids: dict[str, int] = {}
        try:
            async with asyncio.timeout(_READY_TIMEOUT_S):
                for pod, ready in self._ready.items():
                    outcome = await ready
                    if isinstance(outcome, str):
                        raise DemoError(outcome)
                    pids[pod] = outcome
        except TimeoutError:
            raise DemoError(f"the pods did not start within {_READY_TIMEOUT_S:.0f} s") from None
        return pids

    async def _read(self, pod: str, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        ready = self._ready[pod]
        timeline = self.timeline
        async for raw in process.stdout:
            try:
                report = parse_report(raw, pod, timeline.t0)
            except ReportError as error:
                timeline.note(str(error))
                continue
            if isinstance(report, CallCounts):
                timeline.count(report)
            elif isinstance(report, dict):
                if report["e"] == "ready" and not ready.done():
                    ready.set_result(int(report["pid"]))
                elif report["e"] == "error" and not ready.done():
                    ready.set_result(f"{pod}: {report['message']}")
                elif report["e"] == "error":
                    timeline.note(f"{pod}: {report['message']}")
            elif report is not None:
                timeline.add(report)
        code = await process.wait()
        if not ready.done():
            ready.set_result(f"{pod} exited at start (exit code {code})")
        timeline.add(PodExit(timeline.now(), pod, code, expected=self._stopping))

    async def send(self, command: str) -> None:
        """Send one command line to every pod still running."""
        for process in self.processes.values():
            if process.returncode is None and process.stdin is not None:
                with contextlib.suppress(ConnectionError):
                    process.stdin.write(command.encode() + b"\n")
                    await process.stdin.drain()

    async def stop(self) -> None:
        """Stop every pod: politely, then SIGTERM, then SIGKILL; wait for all of them."""
        self._stopping = True
        await self.send("stop")
        for process in self.processes.values():
            if process.stdin is not None:
                process.stdin.close()
        waits = [process.wait() for process in self.processes.values()]
        _, pending = await asyncio.wait(
            [asyncio.ensure_future(wait) for wait in waits], timeout=_STOP_TIMEOUT_S
        )
        if pending:
            self._signal_all(signal.SIGTERM)
            _, pending = await asyncio.wait(pending, timeout=_STOP_TIMEOUT_S)
        if pending:
            self._signal_all(signal.SIGKILL)
            await asyncio.wait(pending)
        await asyncio.gather(*self._readers, return_exceptions=True)

    def _signal_all(self, signum: signal.Signals) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signum)

    def kill_now(self) -> None:
        """Last resort, without an event loop: SIGKILL every pod that may still run."""
        self._signal_all(signal.SIGKILL)
