"""Which Redis the demo uses, and the one it starts when none is given.

- ``--url``: that Redis (the demo's keys live under a prefix of their own and
  are deleted at the end);
- else a private ``redis-server`` when one is on ``PATH``: a free port, a
  temporary directory, no persistence, killed at the end (and, on Linux, by
  the kernel if the demo itself dies: ``PR_SET_PDEATHSIG``);
- else an embedded fakeredis server (``fakeredis.TcpFakeServer``) in a thread
  of the demo, which the pod processes reach over TCP like a real one.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import importlib.util
import itertools
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["DemoError", "RedisTarget", "choose_redis", "redact"]

_START_TIMEOUT_S = 10.0
_MIN_FAKEREDIS = (2, 41)


class DemoError(Exception):
    """The demo cannot run; the message says why and what to do."""


@dataclass
class RedisTarget:
    """The Redis of one run.

    Attributes:
        url: what the pods connect to.
        kind: ``"url"``, ``"server"`` (a private redis-server) or ``"embedded"``.
        description: one line for the user.
    """

    url: str
    kind: str
    description: str
    _close: Callable[[], None] = field(default=lambda: None, repr=False)

    def close(self) -> None:
        """Stop what was started for this run (idempotent)."""
        close, self._close = self._close, lambda: None
        close()


def redact(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def choose_redis(url: str | None, token: str, log: Callable[[str], None]) -> RedisTarget:
    """The Redis to use: ``url``, else a private redis-server, else the embedded server.

    Args:
        url: the user's ``--url``, or None.
        token: the run's unique name (used for the server's temporary directory).
        log: prints a line for the user (a fallback is never silent).
    """
    if url is not None:
        return RedisTarget(url, "url", f"the Redis at {redact(url)} (--url)")
    binary = shutil.which("redis-server")
    if binary is not None:
        try:
            return _private_server(binary, token)
        except DemoError as error:
            log(f"{error}; using the embedded server instead")
    return _embedded_server()


def _free_port() -> int:
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


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"2.41.0"`` → ``(2, 41, 0)``; stops at the first part that is not a number."""
    parts: list[int] = []
    for part in version.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def _death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with the demo (Linux only), else None.

    The child is in a session of its own (Ctrl-C in the terminal reaches only
    the demo, which then stops it); this covers the one exit no ``finally``
    sees: the demo being killed outright.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def die_with_parent() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL))

    return die_with_parent


def _version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return ""


def _private_server(binary: str, token: str) -> RedisTarget:
    """Start ``redis-server`` on a free port in a temporary directory, persistence off."""
    directory = Path(tempfile.mkdtemp(prefix=f"{token}-redis-"))
    version = _version(binary)
    for _ in range(3):  # another process may take the free port before redis-server binds it
        port = _free_port()
        options = {
            "--port": str(port),
            "--bind": "127.0.0.1",
            "--save": "",
            "--appendonly": "no",
            "--dir": str(directory),
            "--logfile": "redis.log",
        }
        process = subprocess.Popen(
            [binary, *itertools.chain.from_iterable(options.items())],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_death_signal(),  # noqa: PLW1509 (main calls this before any thread starts)
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if _answers_ping(port):
                label = f"redis-server {version}".strip()
                return RedisTarget(
                    f"redis://127.0.0.1:{port}/0",
                    "server",
                    f"a private {label} on 127.0.0.1:{port} (found on PATH; "
                    "temporary, persistence off, stopped at the end)",
                    functools.partial(_stop, process, directory),
                )
            time.sleep(0.01)
        _stop(process, directory, keep_directory=True)
    log_path = directory / "redis.log"
    log = log_path.read_text(errors="replace")[-500:] if log_path.exists() else ""
    shutil.rmtree(directory, ignore_errors=True)
    raise DemoError(f"redis-server ({binary}) did not start: {log.strip() or 'no log'}")


def _stop(
    process: subprocess.Popen[bytes], directory: Path, *, keep_directory: bool = False
) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(3.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(3.0)
    if not keep_directory:
        shutil.rmtree(directory, ignore_errors=True)


def _embedded_server() -> RedisTarget:
    """fakeredis's TCP server in a thread of this process."""
    missing = [name for name in ("fakeredis", "lupa") if importlib.util.find_spec(name) is None]
    if missing:  # lupa runs the library's Lua scripts inside fakeredis
        raise DemoError(
            "no --url, no redis-server on PATH, and the embedded server needs fakeredis with "
            f"Lua ({', '.join(missing)} missing): pip install -e '.[demo]'"
        )
    version = importlib.metadata.version("fakeredis")
    if _version_tuple(version) < _MIN_FAKEREDIS:
        wanted = ".".join(map(str, _MIN_FAKEREDIS))
        raise DemoError(
            f"no --url, no redis-server on PATH, and the embedded server needs fakeredis >= "
            f"{wanted} (found {version}; older ones drop the pods' pub/sub connections): "
            f"pip install -U 'fakeredis[lua]>={wanted}'"
        )
    import fakeredis  # noqa: PLC0415 (only when no redis-server and no --url)

    server: Any = fakeredis.TcpFakeServer(("127.0.0.1", 0))
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="embedded-redis", daemon=True)
    thread.start()

    def close() -> None:
        server.shutdown()  # returns once serve_forever has stopped; connections end too
        with contextlib.suppress(OSError):
            server.server_close()
        thread.join(5.0)

    return RedisTarget(
        f"redis://127.0.0.1:{port}/0",
        "embedded",
        f"an embedded fakeredis {version} server on 127.0.0.1:{port} "
        "(no redis-server on PATH; in this process, gone at the end)",
        close,
    )
