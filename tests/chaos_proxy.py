"""A controllable TCP proxy to put between Redis clients and a ``redis-server``.

The proxy runs its own asyncio loop in a daemon thread, so it keeps forwarding
(or delaying, or swallowing) whatever the test's own event loop is doing, and
it serves clients in other processes as well as in this one. Point a client at
:attr:`ChaosProxy.url` instead of the server's URL, then steer the link:

- :meth:`pass_through`: forward both ways (the default);
- :meth:`delay`: hold every chunk for a while before forwarding it, each
  direction on its own (``delay(0.2)`` adds 200 ms to every command's answer;
  chunks keep their order and their delays overlap, as on a slow network);
- :meth:`black_hole`: accept connections, read what clients send, forward
  nothing and answer nothing, on new and existing connections alike (the
  network partition of a split brain);
- :meth:`cut`: close every current connection at once (a reset), the mode
  stays as it is.

Leaving the black hole cuts the connections that lost data in it (their
requests and replies no longer match), as a healed partition would find its
old TCP connections dead.

Example::

    with ChaosProxy(server.port) as proxy:
        client = redis.asyncio.Redis.from_url(proxy.url)
        proxy.delay(0.2)
        ...
        proxy.black_hole()
        proxy.pass_through()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Self, TypeVar

from services import Service

__all__ = ["ChaosProxy", "ProxyStats"]

Mode = Literal["pass", "black_hole"]
T = TypeVar("T")

_CHUNK = 65536
_CONTROL_TIMEOUT_S = 5.0


@dataclass
class ProxyStats:
    """What went through the proxy (read from any thread; updated by the proxy's)."""

    accepted: int = 0
    """Connections accepted so far."""
    open: int = 0
    """Connections open now."""
    upstream_bytes: int = 0
    """Bytes forwarded from clients to the server."""
    downstream_bytes: int = 0
    """Bytes forwarded from the server to clients."""
    swallowed_bytes: int = 0
    """Bytes dropped in the black hole (either direction)."""
    cut: int = 0
    """Connections closed by :meth:`ChaosProxy.cut` (or on leaving the black hole)."""


@dataclass(eq=False)
class _Link:
    """One client connection and its connection to the server."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tainted: bool = False  # lost data in the black hole
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def close(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.transport.abort()  # an RST, as a dropped connection would give
        for task in self.tasks:
            task.cancel()


class ChaosProxy(Service):
    """A TCP proxy from a free localhost port to ``target_host:target_port``.

    Args:
        target_port: the server's port.
        target_host: the server's host.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = "127.0.0.1"
        self.port = 0
        self.stats = ProxyStats()
        self._mode: Mode = "pass"
        self._upstream_delay = 0.0
        self._downstream_delay = 0.0
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` of the proxy."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def mode(self) -> Mode:
        """``"pass"`` or ``"black_hole"``."""
        return self._mode

    def start(self) -> Self:
        """Listen on a free port and start forwarding (returns once listening)."""
        if self._thread is not None:
            raise RuntimeError("the proxy is already running")
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="chaos-proxy", daemon=True
        )
        self._thread.start()
        self.port = ready.result(_CONTROL_TIMEOUT_S)
        return self

    def close(self) -> None:
        """Close every connection, stop listening and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may have stopped already
            self._call(self._shutdown)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(_CONTROL_TIMEOUT_S)
        self._thread = None

    # -- control (from any thread) ---------------------------------------------------------

    def pass_through(self, *, cut_tainted: bool = True) -> None:
        """Forward both ways without delay; cut connections that lost data in the black hole."""
        self._upstream_delay = self._downstream_delay = 0.0
        self._mode = "pass"
        if cut_tainted:
            self._call(lambda: self._cut(lambda link: link.tainted))

    def delay(self, upstream: float, downstream: float = 0.0) -> None:
        """Hold each chunk ``upstream`` s (client to server) / ``downstream`` s (back)."""
        if upstream < 0 or downstream < 0:
            raise ValueError("delays must be >= 0")
        self._upstream_delay = upstream
        self._downstream_delay = downstream

    def black_hole(self) -> None:
        """Accept and read, but forward and answer nothing (new and existing connections)."""
        self._mode = "black_hole"

    def cut(self) -> int:
        """Close every current connection now; returns how many were closed."""
        return self._call(lambda: self._cut(lambda link: True))

    # -- the proxy's own thread ------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the proxy's loop and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the proxy is not running")
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as error:  # handed to the calling thread
                done.set_exception(error)

        loop.call_soon_threadsafe(run)
        return done.result(_CONTROL_TIMEOUT_S)

    def _serve(self, ready: concurrent.futures.Future[int]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, 0))
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, sock=sock, limit=_CHUNK)
            )
            ready.set_result(sock.getsockname()[1])
            loop.run_forever()
        except BaseException as error:
            if not ready.done():
                ready.set_exception(error)
            raise
        finally:
            loop.run_until_complete(self._drain())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _drain(self) -> None:
        """Cancel and await what is left: no "task destroyed" noise, no unclosed transport."""
        pending = asyncio.all_tasks() - {asyncio.current_task()}
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut(lambda link: True)

    def _cut(self, which: Callable[[_Link], bool]) -> int:
        chosen = [link for link in self._links if which(link)]
        for link in chosen:
            self._links.discard(link)
            link.close()
        self.stats.cut += len(chosen)
        self.stats.open = len(self._links)
        return len(chosen)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self._links.add(link)
        self.stats.accepted += 1
        self.stats.open = len(self._links)
        try:
            server_reader, server_writer = await asyncio.open_connection(
                self.target_host, self.target_port, limit=_CHUNK
            )
        except OSError:
            self._drop(link)
            return
        link.server = server_writer
        if link not in self._links:  # cut while connecting
            link.close()
            return
        loop = asyncio.get_running_loop()
        for task in (
            loop.create_task(self._pump(link, reader, server_writer, upstream=True)),
            loop.create_task(self._pump(link, server_reader, writer, upstream=False)),
        ):
            link.tasks.add(task)

    def _drop(self, link: _Link) -> None:
        self._links.discard(link)
        self.stats.open = len(self._links)
        link.close()

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        """Forward one direction: read, apply the mode and the delay, write in order."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.get_running_loop().create_task(self._send(link, queue, writer, upstream))
        link.tasks.add(sender)
        try:
            while chunk := await reader.read(_CHUNK):
                if self._mode == "black_hole":
                    link.tainted = True
                    self.stats.swallowed_bytes += len(chunk)
                    continue
                delay = self._upstream_delay if upstream else self._downstream_delay
                queue.put_nowait((time.monotonic() + delay, chunk))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            queue.put_nowait(None)
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await sender
        self._drop(link)

    async def _send(
        self,
        link: _Link,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
        upstream: bool,
    ) -> None:
        while (item := await queue.get()) is not None:
            due, chunk = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._mode == "black_hole":  # became a black hole while it waited
                link.tainted = True
                self.stats.swallowed_bytes += len(chunk)
                continue
            writer.write(chunk)
            await writer.drain()
            if upstream:
                self.stats.upstream_bytes += len(chunk)
            else:
                self.stats.downstream_bytes += len(chunk)
