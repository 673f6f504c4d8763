"""Fallbacks: checked when given (not at the first failure), and called.

A fallback is called as ``fallback(*args, error, **kwargs)``: the call's
positional arguments, then the error. One that cannot take them would raise a
``TypeError`` of its own at the worst moment (the downstream is failing), so
its signature is checked against the action's when it is registered.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["await_fallback", "call_fallback", "chain", "check_fallback"]

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


def call_fallback(
    fn: Callable[..., Any], error: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``fn(*args, error, **kwargs)``: its result, or the awaitable an async fallback gives.

    Whatever the fallback raises keeps ``error`` reachable as its
    ``__context__``, wherever this runs (inside the ``except`` that caught
    ``error``, or not).
    """
    try:
        return fn(*args, error, **kwargs)
    except Exception as fallback_error:
        chain(fallback_error, error)
        raise


async def await_fallback(awaitable: Awaitable[Any], error: BaseException) -> Any:
    """The result of an async fallback, chaining ``error`` into what it raises."""
    try:
        return await awaitable
    except Exception as fallback_error:
        chain(fallback_error, error)
        raise


def chain(fallback_error: BaseException, error: BaseException) -> None:
    """Make ``error`` the context of ``fallback_error`` (unless it has one, or is it)."""
    if fallback_error is not error and fallback_error.__context__ is None:
        fallback_error.__context__ = error
