"""Every Python block of the README runs as written, in order, as one session.

A reader goes from top to bottom, so the blocks run in one namespace (a later
block may use what an earlier one made), on one event loop, with top-level
``await`` allowed as in an asyncio REPL. Blocks that talk to Redis read
``REDIS_URL``, which points at a private redis-server here.
"""

from __future__ import annotations

import ast
import inspect
import re
import weakref
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer

from distributed_opossum import _registry, shutdown_all

README = Path(__file__).resolve().parent.parent / "README.md"

pytestmark = pytest.mark.redis


def python_blocks() -> list[tuple[int, str]]:
    """(line number, source) of every ```python block."""
    text = README.read_text()
    return [
        (text.count("\n", 0, match.start()) + 2, match.group(1))
        for match in re.finditer(r"```python\n(.*?)```", text, re.DOTALL)
    ]


def test_the_readme_has_python_blocks() -> None:
    """The blocks this test runs are there (a renamed fence would skip them silently)."""
    assert len(python_blocks()) >= 10


async def test_every_python_block_runs(
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each block, in order, runs without an error; what they made is then shut down."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    # The README's breakers alone: shutdown_all() below must not reach other modules'.
    monkeypatch.setattr(_registry, "_breakers", weakref.WeakValueDictionary())
    namespace: dict[str, Any] = {"__name__": "readme"}
    try:
        for line, source in python_blocks():
            code = compile(
                source, f"README.md, block at line {line}", "exec",
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            )  # fmt: skip
            result = eval(code, namespace)
            if inspect.isawaitable(result):
                await result
    finally:
        await shutdown_all()
        for name in ("close",):  # the httpx block's own way out
            if callable(namespace.get(name)):
                await namespace[name]()
        for value in list(namespace.values()):
            if type(value).__module__.startswith("redis.") and hasattr(value, "aclose"):
                await value.aclose()
    printed = capsys.readouterr().out
    assert "circuitbreaker_calls_total" in printed  # the Prometheus block's exposition
