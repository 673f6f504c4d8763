"""Argument checks shared by the options and the script parameters; errors name the value."""

from __future__ import annotations

import math

__all__ = ["check_int", "check_real", "check_text"]


def check_int(name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` if it is an int (not a bool) ≥ ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def check_real(name: str, value: object, low: float, high: float) -> float:
    """Return ``value`` as a float if it is a finite number in [low, high], else raise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be within [{low}, {high}], got {value!r}")
    return float(value)


def check_text(name: str, value: object) -> str:
    """Return ``value`` if it is a non-empty str, else raise ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    return value
