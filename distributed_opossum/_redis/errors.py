"""What the Redis layer raises when Redis cannot be used, and errors in one line.

redis-py's cluster client raises more than ``RedisError``: its own root,
``RedisClusterException`` (``SlotNotCoveredError``, a pipelined command it
refuses, no node answering), is not one. Every one of them is Redis trouble:
counted, logged, turned into ``registry_down``, never passed to a caller.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["REDIS_ERRORS", "REGISTRY_ERRORS", "describe"]

REDIS_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,  # the builtin ConnectionError and TimeoutError included
)
"""Errors that mean "Redis cannot be reached" (as opposed to a bad reply)."""
REGISTRY_ERRORS: tuple[type[Exception], ...] = (
    *REDIS_ERRORS,
    RedisError,  # ClusterDownError, TryAgainError, MovedError, AskError included
    RedisClusterException,  # the cluster client's own root, not a RedisError
)
"""Everything the Redis layer raises when Redis cannot be used: unreachable, or
refusing (out of memory, read-only, no rights, cluster down, ...)."""


def describe(error: BaseException) -> str:
    """An error in one line, naming its kind (``NoPermissionError: ...``)."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
