"""What a breaker of :class:`Breakers` is made of, and saying how two recipes differ.

The object keeps recipes, not breakers, across lifespans: a breaker is final
after ``shutdown()``, its recipe makes the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from distributed_opossum._options import DistributedOptions

__all__ = ["DISTRIBUTED_KEYS", "Recipe", "conflict"]

DISTRIBUTED_KEYS = frozenset(f.name for f in fields(DistributedOptions)) - {"client", "prefix"}
"""Keys of ``distributed`` that may be given flat, beside the breaker options."""

_MISSING = object()


@dataclass(frozen=True, slots=True)
class Recipe:
    """What one breaker is made of: its action and the options given for it."""

    action: Callable[..., Any] | None
    options: Mapping[str, Any]


def conflict(name: str, known: Recipe, given: Recipe) -> str:
    """Say how ``given`` differs from what ``name`` was made of."""
    differences = []
    if known.action != given.action:
        differences.append(f"action {_label(known.action)} (now {_label(given.action)})")
    for key in sorted(known.options.keys() | given.options.keys()):
        was, now = known.options.get(key, _MISSING), given.options.get(key, _MISSING)
        if was != now:
            differences.append(f"{key} {_label(was)} (now {_label(now)})")
    return (
        f"breaker {name!r} was made with {'; '.join(differences)}: a name is one breaker, "
        "so give the same action and options again (or none, to look it up), "
        "or use another name"
    )


def _label(value: object) -> str:
    if value is _MISSING:
        return "not given"
    if value is None:
        return "none"
    return getattr(value, "__qualname__", None) or repr(value)
