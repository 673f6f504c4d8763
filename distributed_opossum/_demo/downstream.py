"""The payments API of the demo: a small local HTTP server that the demo controls.

It answers ``GET /charge`` from the pods. The demo switches it between
``healthy`` (200 at once), ``failing`` (503 at once) and ``slow`` (200, but
only after ``slow_delay``: past the breakers' timeout), and can make it refuse
the calls of some pods only (``sick``: a pod whose network is broken, say).

It counts every call that reaches it (time, pod, breaker, answered well or
not): that count, not the pods' word, is what the summary compares.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from .records import ApiChange

__all__ = ["Hit", "PaymentsApi"]

_MODES = ("healthy", "failing", "slow")


@dataclass(frozen=True, slots=True)
class Hit:
    """One call that reached the API; ``ok``: it was answered 200 in time."""

    t: float
    pod: str
    breaker: str
    ok: bool


def _response(status: int, body: str) -> bytes:
    reason = {200: "OK", 503: "Service Unavailable"}[status]
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()


class PaymentsApi:
    """The controllable HTTP downstream.

    Args:
        clock: seconds on the demo's timeline (for the hits and changes it records).
        slow_delay: how long a ``slow`` answer takes.
    """

    def __init__(self, clock: Callable[[], float], slow_delay: float) -> None:
        self._clock = clock
        self._slow_delay = slow_delay
        self.mode = "healthy"
        self.sick: frozenset[str] = frozenset()
        self.hits: list[Hit] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        """The port it listens on."""
        assert self._server is not None, "start() first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def set(self, mode: str, sick: tuple[str, ...] = ()) -> ApiChange:
        """Switch the behaviour; returns the change, for the timeline."""
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.mode, self.sick = mode, frozenset(sick)
        return ApiChange(t=self._clock(), mode=mode, sick=tuple(sorted(sick)))

    async def close(self) -> None:
        """Stop listening and drop the calls still waiting for a slow answer."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            async with asyncio.timeout(5.0):
                head = await reader.readuntil(b"\r\n\r\n")
            headers = _headers(head)
            pod, breaker = headers.get("x-pod", "?"), headers.get("x-breaker", "?")
            t = self._clock()
            if self.mode == "failing" or pod in self.sick:
                self.hits.append(Hit(t, pod, breaker, ok=False))
                writer.write(_response(503, "payments API unavailable"))
            elif self.mode == "slow":
                self.hits.append(Hit(t, pod, breaker, ok=False))
                await asyncio.sleep(self._slow_delay)
                writer.write(_response(200, "charged (late)"))
            else:
                self.hits.append(Hit(t, pod, breaker, ok=True))
                writer.write(_response(200, "charged"))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the caller gave up (its timeout) or sent garbage: nothing to answer
        except asyncio.CancelledError:
            # close() ends the calls still waiting for a slow answer. The task must
            # end normally: asyncio.start_server (Python 3.11) logs a cancelled one.
            pass
        finally:
            self._handlers.discard(task)
            with contextlib.suppress(OSError):
                writer.close()


def _headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return headers
