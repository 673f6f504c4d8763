"""Checking a fallback when it is given, not at the first failure.

A fallback is called as ``fallback(*args, error, **kwargs)``: the call's
positional arguments, then the error. One that cannot take them would raise a
``TypeError`` of its own at the worst moment (the downstream is failing), so
its signature is checked against the action's when it is registered.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["check_fallback"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def check_fallback(fn: object, action: Callable[..., Any] | None) -> None:
    """Raise ``TypeError`` unless ``fn`` can take the action's required
    positional arguments followed by the error."""
    if not callable(fn):
        raise TypeError(f"fallback must be callable, got {fn!r:.80}")
    capacity = _positional_capacity(fn)
    if capacity is None:
        return  # *args, or a signature Python cannot tell
    needed = _required_positional(action) + 1
    if capacity < needed:
        raise TypeError(
            f"fallback {fn!r:.80} takes {capacity} positional argument(s), but is called "
            f"with the call's arguments and then the error ({needed} or more): "
            "define it as fallback(*args, error, **kwargs)"
        )


def _positional_capacity(fn: Callable[..., Any]) -> int | None:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return None
    return sum(1 for p in parameters if p.kind in _POSITIONAL)


def _required_positional(action: Callable[..., Any] | None) -> int:
    if action is None:
        return 0
    try:
        parameters = inspect.signature(action).parameters.values()
    except (TypeError, ValueError):
        return 0
    return sum(1 for p in parameters if p.kind in _POSITIONAL and p.default is p.empty)
