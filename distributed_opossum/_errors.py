"""The exception tree of distributed_opossum.

::

    Exception
     └── CircuitBreakerError            every error the breaker itself raises
          ├── OpenCircuitError          "EOPENBREAKER": the call was not admitted
          ├── CircuitTimeoutError       "ETIMEDOUT": also a built-in TimeoutError
          ├── SemaphoreLockedError      "ESEMLOCKED": over ``capacity``
          ├── ShutdownError             "ESHUTDOWN": the breaker was shut down
          └── RegistryError             "EREGISTRY": a cluster-wide command
                                        (``force_open``/``reset``) could not reach Redis

The action's own exceptions propagate unchanged, and no Redis exception ever
escapes :meth:`CircuitBreaker.fire`.
"""

from __future__ import annotations

__all__ = [
    "CircuitBreakerError",
    "CircuitTimeoutError",
    "OpenCircuitError",
    "RegistryError",
    "SemaphoreLockedError",
    "ShutdownError",
]


class CircuitBreakerError(Exception):
    """Base class of the errors raised by a breaker rather than by its action.

    Attributes:
        code: opossum's error code (``"EOPENBREAKER"``, ``"ETIMEDOUT"``, ...).
        breaker_name: the name of the breaker that raised it.
    """

    code: str = "EBREAKER"

    def __init__(self, message: str, *, breaker_name: str = "") -> None:
        super().__init__(message)
        self.breaker_name = breaker_name


class OpenCircuitError(CircuitBreakerError):
    """The breaker is open (or half-open with every trial permit taken).

    Attributes:
        retry_after: seconds until a trial call may be admitted, or ``None``
            when the breaker is forced open and only ``reset()`` closes it.
    """

    code = "EOPENBREAKER"

    def __init__(self, *, breaker_name: str = "", retry_after: float | None = None) -> None:
        if retry_after is None:
            message = f"Breaker {breaker_name!r} is open"
        else:
            message = f"Breaker {breaker_name!r} is open; retry after {retry_after:.3f} s"
        super().__init__(message, breaker_name=breaker_name)
        self.retry_after = retry_after


class CircuitTimeoutError(CircuitBreakerError, TimeoutError):
    """The action did not finish within ``timeout``; it was cancelled.

    Attributes:
        timeout: the breaker's timeout in seconds.
    """

    code = "ETIMEDOUT"

    def __init__(self, *, breaker_name: str = "", timeout: float = 0.0) -> None:
        super().__init__(
            f"Breaker {breaker_name!r} timed out after {timeout * 1000:g} ms",
            breaker_name=breaker_name,
        )
        self.timeout = timeout


class SemaphoreLockedError(CircuitBreakerError):
    """``capacity`` concurrent calls are already running."""

    code = "ESEMLOCKED"

    def __init__(self, *, breaker_name: str = "", capacity: int = 0) -> None:
        super().__init__(
            f"Breaker {breaker_name!r} semaphore locked: {capacity} calls in flight",
            breaker_name=breaker_name,
        )
        self.capacity = capacity


class ShutdownError(CircuitBreakerError):
    """The breaker was shut down; it admits no more calls."""

    code = "ESHUTDOWN"

    def __init__(self, *, breaker_name: str = "") -> None:
        super().__init__(f"Breaker {breaker_name!r} has been shut down", breaker_name=breaker_name)


class RegistryError(CircuitBreakerError):
    """A cluster-wide command could not reach Redis; nothing was changed.

    Raised only by ``force_open()`` and ``reset()`` of a distributed breaker
    (never by ``fire()``), within 5 s, so an operator knows the command did
    nothing, locally included.
    """

    code = "EREGISTRY"

    def __init__(self, message: str, *, breaker_name: str = "") -> None:
        super().__init__(message, breaker_name=breaker_name)
