"""Breaker names: the default one of a callable, and the bounds of any name.

A name is an identity: breakers of one name share their state across pods, and
metrics and logs are labelled by it. A default that merged unrelated callables
(``client_a.get`` and ``client_b.get`` both ``AsyncClient.get``, every lambda
``<lambda>``) would merge their downstreams too. So only a plain function
defaults to its ``__qualname__``; anything whose qualname says too little (a
bound method, a ``functools.partial``, a lambda, a function defined inside
another, a callable object) gets a suffix ``#<n>`` unique in the process.
Distributed breakers need an explicit name (``_options.py``).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_NAME_LENGTH", "check_name", "default_name"]

MAX_NAME_LENGTH = 1000
"""Longest name, in characters. It keeps every key, channel and broadcast of a
breaker well below the sizes Redis and the listener accept (a broadcast holds
the name: at most 4 bytes a character in UTF-8)."""

_suffixes = itertools.count(1)
_suffix_lock = threading.Lock()


def check_name(label: str, value: object) -> str:
    """``value`` if it is a str of 1..MAX_NAME_LENGTH characters, else raise."""
    if not isinstance(value, str):
        raise TypeError(f"{label} must be a str, got {value!r:.80}")
    if not 1 <= len(value) <= MAX_NAME_LENGTH:
        raise ValueError(
            f"{label} must be 1 to {MAX_NAME_LENGTH} characters long, got {len(value)}"
        )
    return value


def default_name(action: Callable[..., Any]) -> str:
    """The name of a breaker made without ``name=`` around ``action``."""
    base, unique = _describe(action)
    if unique:
        return base
    with _suffix_lock:
        return f"{base}#{next(_suffixes)}"


def _describe(action: Callable[..., Any]) -> tuple[str, bool]:
    """``(base name, whether the base alone identifies the callable)``."""
    if isinstance(action, functools.partial):
        inner, _ = _describe(action.func)
        return f"partial({inner})", False
    if inspect.ismethod(action):
        return _qualname(action.__func__), False
    if inspect.isclass(action):
        return _qualname(action), True
    if inspect.isbuiltin(action) and not inspect.ismodule(getattr(action, "__self__", None)):
        return _qualname(action), False  # a builtin bound to an object: {}.get
    if inspect.isfunction(action) or inspect.isbuiltin(action):
        qualname = _qualname(action)
        return qualname, "<lambda>" not in qualname and "<locals>" not in qualname
    return _qualname(type(action)), False


def _qualname(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return name if isinstance(name, str) and name else type(obj).__name__
