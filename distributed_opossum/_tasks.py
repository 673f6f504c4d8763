"""The running loop and its current task, found as cheaply as the Python allows.

Both ``fire()`` and ``async with breaker:`` need the current task for the
timeout queue on every call, so the lookup is resolved once, at import.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import BuiltinFunctionType
from typing import Any

__all__ = ["running_loop", "task_of"]

running_loop = asyncio.get_running_loop


def _current_task_of(loop: asyncio.AbstractEventLoop | None) -> asyncio.Task[Any] | None:
    return None if loop is None else asyncio.current_task(loop)


# ``asyncio.current_task`` is a Python function before 3.12 and costs more than a
# whole plain call there; the task registry it reads is a dict keyed by loop.
_tasks_by_loop = getattr(asyncio.tasks, "_current_tasks", None)
task_of: Callable[[asyncio.AbstractEventLoop | None], asyncio.Task[Any] | None] = (
    _tasks_by_loop.get
    if isinstance(_tasks_by_loop, dict)
    and not isinstance(asyncio.current_task, BuiltinFunctionType)
    else _current_task_of
)
"""The current task of ``loop``: None when the loop runs no task (or is None).

A loop has a current task only while it runs one, so this also tells whether
``loop`` is the one running this code, without ``get_running_loop()`` (a
``getpid`` system call on every call on 3.11), as long as a breaker is used
from one loop at a time."""
