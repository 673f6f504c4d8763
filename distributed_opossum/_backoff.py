"""How long an open period lasts: exponential backoff with a cap and jitter. Pure."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["open_period"]


def open_period(
    attempts: int,
    *,
    reset_timeout: float,
    multiplier: float = 1.0,
    max_reset_timeout: float | None = None,
    jitter: float = 0.0,
    uniform: Callable[[float, float], float] | None = None,
) -> float:
    """Seconds the breaker stays open on its ``attempts``-th consecutive opening.

    ``reset_timeout × multiplier^(attempts−1)``, capped by ``max_reset_timeout``,
    then multiplied by ``uniform(1 − jitter, 1 + jitter)`` and capped again.
    ``attempts`` below 1 counts as 1 (the first opening).

    >>> open_period(3, reset_timeout=1.0, multiplier=2.0)
    4.0
    """
    exponent = max(attempts, 1) - 1
    try:
        period = reset_timeout * multiplier**exponent if reset_timeout else 0.0
    except OverflowError:  # multiplier ** huge: the cap (if any) decides
        period = float("inf")
    if max_reset_timeout is not None:
        period = min(period, max_reset_timeout)
    if jitter and uniform is not None:
        period *= uniform(1.0 - jitter, 1.0 + jitter)
        if max_reset_timeout is not None:
            period = min(period, max_reset_timeout)
    return max(period, 0.0)
