"""Pods in processes of their own (``distributed_pod_process.py``), driven from a test.

Example::

    pod = await PodProcess.start(url, "payments", "proc-a", reset_timeout=0.5,
                                 sync_interval=0.1)
    await pod.expect("ready", 15.0)
    await pod.send("trip")
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from distributed_support import PREFIX

__all__ = ["POD_SCRIPT", "PodProcess"]

POD_SCRIPT = Path(__file__).with_name("distributed_pod_process.py")


class PodProcess:
    """A ``distributed_pod_process.py`` child: send commands, read its JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process, instance: str) -> None:
        self.process = process
        self.instance = instance
        self.lines: list[dict[str, Any]] = []

    @classmethod
    async def start(
        cls, url: str, name: str, instance: str, *, reset_timeout: float, sync_interval: float
    ) -> PodProcess:
        """Start the child process."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(POD_SCRIPT),
            url,
            name,
            instance,
            PREFIX,
            str(reset_timeout),
            str(sync_interval),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process, instance)

    async def expect(self, event: str, within: float = 1.0, **fields: Any) -> dict[str, Any]:
        """The next line reporting ``event`` (with ``fields``); fails after ``within`` s."""
        for line in self.lines:
            if line["event"] == event and all(line.get(k) == v for k, v in fields.items()):
                self.lines.remove(line)
                return line
        stdout = self.process.stdout
        assert stdout is not None
        async with asyncio.timeout(within):
            while True:
                raw = await stdout.readline()
                assert raw, f"{self.instance} exited (code {self.process.returncode})"
                line = json.loads(raw)
                if line["event"] == event and all(line.get(k) == v for k, v in fields.items()):
                    return dict(line)
                self.lines.append(line)

    async def send(self, command: str) -> None:
        """Send one command line."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(command.encode() + b"\n")
        await stdin.drain()

    async def finish(self) -> int:
        """Ask the child to quit; its exit code (killed after 5 s)."""
        if self.process.returncode is None:
            try:
                await self.send("quit")
                async with asyncio.timeout(5.0):
                    return await self.process.wait()
            except (TimeoutError, ConnectionError):
                self.process.kill()
                await self.process.wait()
                return -1
        return self.process.returncode
