"""distributed_opossum: asyncio circuit breakers (opossum's semantics), cluster-wide via Redis.

>>> from distributed_opossum import CircuitBreaker
"""

from __future__ import annotations

from ._breaker import CircuitBreaker
from ._cluster_view import ClusterView
from ._decorator import circuit_breaker
from ._errors import (
    CircuitBreakerError,
    CircuitTimeoutError,
    OpenCircuitError,
    RegistryError,
    SemaphoreLockedError,
    ShutdownError,
)
from ._options import BreakerOptions, DistributedOptions
from ._registry import ShutdownAll, breakers, shutdown_all
from ._state import Cause, State
from ._stats import Stats

__all__ = [
    "BreakerOptions",
    "Cause",
    "CircuitBreaker",
    "CircuitBreakerError",
    "CircuitTimeoutError",
    "ClusterView",
    "DistributedOptions",
    "OpenCircuitError",
    "RegistryError",
    "SemaphoreLockedError",
    "ShutdownAll",
    "ShutdownError",
    "State",
    "Stats",
    "breakers",
    "circuit_breaker",
    "shutdown_all",
]
