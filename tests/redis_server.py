"""A private ``redis-server`` process for tests.

Each :class:`RedisServer` runs its own ``redis-server`` on a free localhost
port, in its own temporary directory, with persistence off, so a test can
stop, kill, pause or restart it without touching anyone else's Redis.

Example::

    with RedisServer() as server:
        client = redis.asyncio.Redis.from_url(server.url)
        ...
        server.pause()  # SIGSTOP: connections hang, as with a stalled host
        server.resume()
        server.restart()  # same port, empty data, empty script cache

A server can also take a configuration file (Sentinel needs one it may
rewrite) and listen for TLS beside its plain port (the plain port stays for
the fixtures' own PING and admin work)::

    certificates = TlsFiles.generate(directory)
    with RedisServer(tls=certificates) as server:
        client = redis.asyncio.Redis.from_url(server.tls_url, ssl_ca_certs=str(certificates.ca))
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from services import Service

__all__ = [
    "RedisServer",
    "RedisServerError",
    "TlsFiles",
    "Topology",
    "free_port",
    "redis_server_binary",
    "server_at",
]

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


class RedisServerError(RuntimeError):
    """The private ``redis-server`` could not be started or stopped."""


def redis_server_binary() -> str | None:
    """Return the path of ``redis-server`` (``$REDIS_SERVER`` wins), or None."""
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which("redis-server")


def free_port() -> int:
    """A localhost TCP port nobody listens on right now.

    Another process may grab it between this call and its use; starters
    retry on a fresh port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int, pid: int | None = None) -> bool:
    """True when a server on ``port`` answers PING (and, with ``pid``, is that process:
    a server that failed to bind a port taken by another one must not pass for it)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(64).startswith(b"+PONG"):
                return False
            if pid is None:
                return True
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while b"\r\n" not in reply or len(reply) < _bulk_end(reply):
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                reply += chunk
            return f"process_id:{pid}\r\n".encode() in reply
    except OSError:
        return False


def _bulk_end(reply: bytes) -> int:
    """Where a bulk reply (``$<n>\\r\\n<n bytes>\\r\\n``) ends; an error line ends at once."""
    head, _, _ = reply.partition(b"\r\n")
    if not head.startswith(b"$"):
        return 0
    return len(head) + 2 + int(head[1:]) + 2


@dataclass(frozen=True)
class TlsFiles:
    """A certificate, its key and the CA that signed it (PEM files) for a TLS server."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def generate(cls, directory: Path) -> TlsFiles:
        """A fresh CA and a server certificate for 127.0.0.1 / localhost, valid one day.

        Needs the ``cryptography`` package (in the ``test`` extra).
        """
        from tls_certificates import write_server_certificate  # noqa: PLC0415 (optional dep)

        return cls(*write_server_certificate(directory))


class RedisServer(Service):
    """One private ``redis-server`` process.

    Args:
        binary: path of ``redis-server``; found on ``PATH`` when omitted.
        extra_args: more command-line options, e.g. ``("--maxmemory", "1mb")``.
        config: text of a configuration file, written to the server's directory
            and passed first (``redis-server <file> --sentinel`` rewrites it).
        tls: certificate files; the server then also listens for TLS on
            :attr:`tls_port` (clients must trust ``tls.ca``).
    """

    def __init__(
        self,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
        *,
        config: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        found = binary or redis_server_binary()
        if found is None:
            raise RedisServerError("redis-server is not on PATH")
        self.binary = found
        self.extra_args = extra_args
        self.config = config
        self.tls = tls
        self.host = "127.0.0.1"
        self.port = 0
        self.tls_port = 0
        self._dir = Path(tempfile.mkdtemp(prefix="dopossum-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` of this server."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def tls_url(self) -> str:
        """``rediss://127.0.0.1:<tls_port>/0`` of this server (only with ``tls``)."""
        if self.tls is None:
            raise RedisServerError("this server was not started with tls")
        return f"rediss://{self.host}:{self.tls_port}/0"

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the plain port."""
        return self.host, self.port

    @property
    def directory(self) -> Path:
        """The server's private working directory."""
        return self._dir

    @property
    def pid(self) -> int | None:
        """The process id while running, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive (paused counts as alive)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log(self) -> str:
        """What the server wrote to its log so far (for failure messages)."""
        path = self._dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> Self:
        """Start the server (on a new free port the first time) and wait for PING."""
        if self.running:
            raise RedisServerError("already running")
        pick_port = self.port == 0
        for _ in range(5):
            if pick_port:
                self.port = free_port()
                if self.tls is not None:
                    self.tls_port = free_port()
            if self._spawn():
                return self
            if not pick_port:
                break
        raise RedisServerError(f"redis-server did not start on port {self.port}:\n{self.log}")

    def _spawn(self) -> bool:
        config: list[str] = []
        if self.config is not None:
            path = self._dir / "redis.conf"
            if not path.exists():  # a restart keeps what Sentinel rewrote
                path.write_text(self.config)
            config = [str(path)]
        tls: list[str] = []
        if self.tls is not None:
            tls = [
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        args = [
            self.binary,
            *config,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", "redis.log",
            *tls,
            *self.extra_args,
        ]  # fmt: skip
        self._proc = subprocess.Popen(args, cwd=self._dir, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if _answers_ping(self.port, self._proc.pid):
                return True
            time.sleep(0.005)
        self.kill()
        return False

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM) and wait for it to exit."""
        self._signal_and_wait(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crashed host would."""
        self._signal_and_wait(signal.SIGKILL)

    def _signal_and_wait(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        if self._paused:
            # A stopped process does not act on SIGTERM until it is continued.
            proc.send_signal(signal.SIGCONT)
            self._paused = False
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(_STOP_TIMEOUT_S)
        self._proc = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it keeps its sockets but answers nothing."""
        if self._proc is None:
            raise RedisServerError("not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Unfreeze a paused server (SIGCONT)."""
        if self._proc is None:
            raise RedisServerError("not running")
        self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> None:
        """Stop and start again on the same port: the data and script cache are gone."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start() if not self.running else self


def server_at(servers: Iterable[RedisServer], address: tuple[str, int]) -> RedisServer:
    """The one of ``servers`` listening on ``address``."""
    for server in servers:
        if server.address == address:
            return server
    raise KeyError(address)


class Topology(Service):
    """Servers started and stopped as one (a Sentinel set-up, a Redis Cluster).

    A subclass lists its ``processes`` and writes ``_start()``; a start that fails half-way
    stops what it started before the error propagates.
    """

    @property
    def processes(self) -> list[RedisServer]:
        """Every process of the topology."""
        raise NotImplementedError

    def start(self) -> Self:
        """Start every process and wait until the topology works (see ``_start``)."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop every process and remove their directories."""
        for process in self.processes:
            process.close()
