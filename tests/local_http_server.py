"""A tiny real HTTP/1.1 server on 127.0.0.1 whose answers the test sets.

It runs on the test's own event loop (``asyncio.start_server``), answers one
request per connection (``Connection: close``) and counts every request it
reads. What it answers:

* ``status`` (200 by default) with a small text body;
* ``/stream``: the body in :attr:`LocalHttpServer.chunks`, chunked, one write each;
* ``hang = True``: nothing until :meth:`release` (a slow server);
* after :meth:`stop`: connection refused on its port (until :meth:`start` again).

Example::

    async with LocalHttpServer() as server:
        server.status = 500
        response = await client.get(server.url("/"))
        assert server.hits == 1
"""

from __future__ import annotations

import asyncio
import contextlib
from http import HTTPStatus
from typing import Self

from services import AsyncService

__all__ = ["LocalHttpServer"]


class LocalHttpServer(AsyncService):
    """A local HTTP server of one test (see the module docstring)."""

    def __init__(self) -> None:
        self.status = 200
        self.hang = False
        self.chunks: tuple[bytes, ...] = (b"one,", b"two,", b"three")
        self.hits = 0
        self.paths: list[str] = []
        self.received = asyncio.Event()  # set whenever a request has been read
        self.port = 0
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def url(self, path: str = "/") -> str:
        """``http://127.0.0.1:<port><path>``."""
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def netloc(self) -> str:
        """``127.0.0.1:<port>``: the transport's default breaker key for this server."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Self:
        """Listen (on a free port the first time, on the same port afterwards)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and drop open connections: the port now refuses connections."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def release(self) -> None:
        """Let hanging requests be answered (and later ones not hang)."""
        self.hang = False
        released, self._release = self._release, asyncio.Event()
        released.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request_line = await reader.readline()
            if not request_line:
                return
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # headers: not needed (GET requests only)
            self.hits += 1
            self.paths.append(request_line.split()[1].decode())
            self.received.set()
            if self.hang:
                await self._release.wait()
            await self._answer(writer, self.paths[-1])
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away (a cancelled request)
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, writer: asyncio.StreamWriter, path: str) -> None:
        status = HTTPStatus(self.status)
        head = f"HTTP/1.1 {status.value} {status.phrase}\r\nConnection: close\r\n"
        if path == "/stream":
            writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            for chunk in self.chunks:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        else:
            body = f"{status.value} {path}".encode()
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
