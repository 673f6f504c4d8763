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
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "RedisServerError", "redis_server_binary"]

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


def _free_port() -> int:
    # Another process may grab the port between close() and redis-server's
    # bind(); start() retries on a fresh port when that happens.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One private ``redis-server`` process.

    Args:
        binary: path of ``redis-server``; found on ``PATH`` when omitted.
        extra_args: more command-line options, e.g. ``("--maxmemory", "1mb")``.
    """

    def __init__(self, binary: str | None = None, extra_args: tuple[str, ...] = ()) -> None:
        found = binary or redis_server_binary()
        if found is None:
            raise RedisServerError("redis-server is not on PATH")
        self.binary = found
        self.extra_args = extra_args
        self.host = "127.0.0.1"
        self.port = 0
        self._dir = Path(tempfile.mkdtemp(prefix="dopossum-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` of this server."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the process is alive (paused counts as alive)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log(self) -> str:
        """What the server wrote to its log so far (for failure messages)."""
        path = self._dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> RedisServer:
        """Start the server (on a new free port the first time) and wait for PING."""
        if self.running:
            raise RedisServerError("already running")
        pick_port = self.port == 0
        for _ in range(5):
            if pick_port:
                self.port = _free_port()
            if self._spawn():
                return self
            if not pick_port:
                break
        raise RedisServerError(f"redis-server did not start on port {self.port}:\n{self.log}")

    def _spawn(self) -> bool:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", "redis.log",
            *self.extra_args,
        ]  # fmt: skip
        self._proc = subprocess.Popen(args, cwd=self._dir, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if _answers_ping(self.port):
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

    def __enter__(self) -> RedisServer:
        return self.start() if not self.running else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
