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

    The message is built when it is read, not when the error is made: during
    an outage an open breaker makes one per rejected call, and formatting a
    message nobody reads would cost more than the rest of the rejection.

    Attributes:
        code: opossum's error code (``"EOPENBREAKER"``, ``"ETIMEDOUT"``, ...).
        breaker_name: the name of the breaker that raised it.
    """

    code: str = "EBREAKER"
    _text: str | None = None

    def __init__(self, message: str | None = None, *, breaker_name: str = "") -> None:
        self._text = message
        self.breaker_name = breaker_name

    def __str__(self) -> str:
        return self._text if self._text is not None else self.message()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def message(self) -> str:
        """The error's message (what ``str(error)`` gives)."""
        return f"Breaker {self.breaker_name!r} failed"


class OpenCircuitError(CircuitBreakerError):
    """The breaker is open (or half-open with every trial permit taken).

    Attributes:
        retry_after: seconds until a trial call may be admitted, or ``None``
            when the breaker is forced open and only ``reset()`` closes it.
    """

    code = "EOPENBREAKER"
    # Slots: no instance dict to make for each rejection (an outage's hot path).
    __slots__ = ("breaker_name", "retry_after")

    # Positional parameters (the library's own calls use them): an exception made
    # with keyword arguments costs several times more to make.
    def __init__(self, breaker_name: str = "", retry_after: float | None = None) -> None:
        self.breaker_name = breaker_name
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[OpenCircuitError], tuple[str, float | None]]:
        return (type(self), (self.breaker_name, self.retry_after))

    def message(self) -> str:
        """``Breaker 'payments' is open; retry after 2.500 s``."""
        if self.retry_after is None:
            return f"Breaker {self.breaker_name!r} is open"
        return f"Breaker {self.breaker_name!r} is open; retry after {self.retry_after:.3f} s"


class CircuitTimeoutError(CircuitBreakerError, TimeoutError):
    """The action did not finish within ``timeout``; it was cancelled.

    Attributes:
        timeout: the breaker's timeout in seconds.
    """

    code = "ETIMEDOUT"

    def __init__(self, breaker_name: str = "", timeout: float = 0.0) -> None:
        self.breaker_name = breaker_name
        self.timeout = timeout

    def message(self) -> str:
        """``Breaker 'payments' timed out after 3000 ms``."""
        return f"Breaker {self.breaker_name!r} timed out after {self.timeout * 1000:g} ms"


class SemaphoreLockedError(CircuitBreakerError):
    """``capacity`` concurrent calls are already running."""

    code = "ESEMLOCKED"

    def __init__(self, breaker_name: str = "", capacity: int = 0) -> None:
        self.breaker_name = breaker_name
        self.capacity = capacity

    def message(self) -> str:
        """``Breaker 'payments' semaphore locked: 10 calls in flight``."""
        return f"Breaker {self.breaker_name!r} semaphore locked: {self.capacity} calls in flight"


class ShutdownError(CircuitBreakerError):
    """The breaker was shut down; it admits no more calls."""

    code = "ESHUTDOWN"

    def __init__(self, breaker_name: str = "") -> None:
        self.breaker_name = breaker_name

    def message(self) -> str:
        """``Breaker 'payments' has been shut down``."""
        return f"Breaker {self.breaker_name!r} has been shut down"


class RegistryError(CircuitBreakerError):
    """A cluster-wide command could not reach Redis; nothing was changed.

    Raised only by ``force_open()`` and ``reset()`` of a distributed breaker
    (never by ``fire()``), within 5 s, so an operator knows the command did
    nothing, locally included.
    """

    code = "EREGISTRY"

    def __init__(self, message: str, *, breaker_name: str = "") -> None:
        super().__init__(message, breaker_name=breaker_name)
