"""The library's logger: state changes, Redis trouble, said once in a while.

Everything goes to the ``distributed_opossum`` logger, which has a
``NullHandler``: an application that configures no logging sees nothing.
Nothing is logged per call. A state change is one record with its fields in
``extra`` (``circuit``, ``state``, ``previous_state``, ``cause``), so that
structured log handlers can index them. An opening is a warning on the pod
where it was decided (its own trip, its report that decided for the cluster,
an operator's ``force_open`` there); pods following another pod's decision
log it at info, so an incident is one warning, not one per replica. The
rest is info.

Redis trouble repeats every tick while it lasts; logged each time it would
drown the application's logs (forty error records a second for one user
without rights). :class:`Throttle` lets the first record of a kind through,
then at most one per interval, with the number that were held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._state import Transition

__all__ = ["Throttle", "describe_error", "log_transition", "logger"]

logger = logging.getLogger("distributed_opossum")
logger.addHandler(logging.NullHandler())


def describe_error(error: BaseException) -> str:
    """An error in one line, naming its kind (``NoPermissionError: ...``)."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Throttle:
    """Log a kind of record at most once per ``interval`` seconds (the first one at once).

    Args:
        interval: seconds between two records of one kind.
        clock: seconds on a monotonic clock (injected by tests).
    """

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, kind: str) -> int | None:
        """None when a record of ``kind`` must wait; else how many were held back before it."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._held.pop(kind, 0)

    def log(self, level: int, kind: str, message: str, *args: object, **extra: object) -> None:
        """``logger.log(level, message, *args)`` unless ``kind`` was logged too recently."""
        held = self.allow(kind)
        if held is None:
            return
        if held:
            message += " (%d more like it since the last report)"
            args = (*args, held)
        logger.log(level, message, *args, extra=extra or None)


_WORDS = {
    "local": "its own calls failed",
    "cluster": "the cluster decided on this pod's report",
    "remote": "another pod or the cluster decided",
    "manual": "an operator",
    "timer": "the open period ended",
    "trial": "a trial call",
    "health_check": "a failed health check",
}


def log_transition(circuit: str, transition: Transition) -> None:
    """One record per state change, with its fields in ``extra``."""
    state, cause = transition.state.value, transition.cause.value
    # An opening is a warning where it was decided; the other pods following it
    # say so at info: one warning per incident, not one per replica (and no
    # record made on every pod of a fleet that logs warnings only).
    opening = state in ("open", "forced_open") and cause != "remote"
    level = logging.WARNING if opening else logging.INFO
    if not logger.isEnabledFor(level):
        return
    previous = transition.previous.value
    logger.log(
        level,
        "distributed_opossum: breaker %r %s -> %s (%s)",
        circuit,
        previous,
        state,
        _WORDS.get(cause, cause),
        extra={"circuit": circuit, "state": state, "previous_state": previous, "cause": cause},
    )
