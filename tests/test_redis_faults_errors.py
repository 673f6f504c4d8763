"""Regressions of defect 1: no Redis exception reaches a caller of ``fire()``, whatever Redis says.

The lease request is the one Redis call on a caller's path. On a real,
private redis-server: a server at maxmemory, a script cache flushed between
the library's reload and its retry, and every error class redis-py has
(cluster errors included) raised on the request. ``force_open()`` and
``reset()`` answer each of them with ``RegistryError``.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
import redis.exceptions
from distributed_support import Cluster, ClusterFactory, Pod, assert_no_leak, call_outcome
from redis_server import RedisServer

from distributed_opossum import RegistryError

pytestmark = pytest.mark.redis


async def fill_to_maxmemory(admin: aioredis.Redis) -> None:
    """2 MB of data, then maxmemory 1 MB below what is used (noeviction): every write is refused."""
    for i in range(32):
        await admin.set(f"ballast:{i}", b"x" * 65536)
    used = int((await admin.info("memory"))["used_memory"])
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", str(used - 1024 * 1024))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        await admin.set("one-more", b"x")


async def test_trial_at_maxmemory_lets_no_redis_error_through(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """Redis at maxmemory (noeviction) when the open period ends: trial calls raise no OOM error."""
    cluster = await make_cluster(server=redis_server, reset_timeout=0.3, sync_interval=1.0)
    pods = await cluster.started(2)
    await cluster.trip()
    await fill_to_maxmemory(cluster.admin)
    await cluster.half_open(within=1.0)
    outcomes = [await call_outcome(pod) for pod in pods for _ in range(3)]
    assert_no_leak(outcomes)


ClientT = TypeVar("ClientT", bound=aioredis.Redis)


async def half_open_with(cluster: Cluster, client_class: type[ClientT]) -> tuple[ClientT, Pod]:
    """pod0 on a client of its own, pod1 on a ``client_class`` client; tripped through pod0,
    every pod half-open. Returns pod1's client and pod1."""
    client = cluster.adopt(client_class.from_url(cluster.url, client_name="pod1"))
    assert isinstance(client, client_class)
    cluster.pod("pod0")
    pod1 = cluster.pod("pod1", client=client)
    await cluster.ready()
    await cluster.trip()
    await cluster.half_open()
    return client, pod1


class FlushAfterLoad(aioredis.Redis):
    """A real client whose ``SCRIPT LOAD`` is followed by a ``SCRIPT FLUSH`` while armed.

    It puts a flush from another client exactly between the library's reload
    of a script and its retry, the race a tight ``SCRIPT FLUSH`` loop hits.
    """

    flush_after_load = False

    async def script_load(self, script: Any) -> Any:
        """SCRIPT LOAD, then (when armed) SCRIPT FLUSH."""
        sha = await super().script_load(script)
        if self.flush_after_load:
            await super().script_flush()
        return sha


async def test_script_cache_flushed_between_reload_and_retry_stays_hidden(
    redis_server: RedisServer, make_cluster: ClusterFactory
) -> None:
    """NOSCRIPT on the retry after a reload (a flush in between) does not reach the caller."""
    cluster = await make_cluster(server=redis_server, reset_timeout=0.3, sync_interval=2.0)
    client, pod1 = await half_open_with(cluster, FlushAfterLoad)
    await cluster.admin.script_flush()
    client.flush_after_load = True
    outcomes = [await call_outcome(pod1) for _ in range(3)]
    client.flush_after_load = False
    assert_no_leak(outcomes)


def _every_redis_error() -> list[type[Exception]]:
    """Every error class of ``redis.exceptions``: RedisError's and the cluster client's own."""
    roots = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)
    found = [
        cls
        for _, cls in inspect.getmembers(redis.exceptions, inspect.isclass)
        if issubclass(cls, roots)
    ]
    return sorted(found, key=lambda cls: cls.__name__)


def _instance(cls: type[Exception]) -> Exception:
    if issubclass(cls, redis.exceptions.AskError):  # MOVED / ASK carry "slot host:port"
        return cls("3999 127.0.0.1:6381")
    try:
        return cls(f"{cls.__name__.upper()} injected by the test")
    except TypeError:
        return cls()


class FailingEvalsha(aioredis.Redis):
    """A real client whose single-script calls (EVALSHA) raise ``error`` while it is set."""

    error: Exception | None = None

    async def evalsha(self, *args: Any, **kwargs: Any) -> Any:
        """EVALSHA, or the armed error."""
        if self.error is not None:
            raise self.error
        return await super().evalsha(*args, **kwargs)


@pytest.mark.parametrize("error_class", _every_redis_error(), ids=lambda cls: cls.__name__)
async def test_lease_request_lets_no_redis_error_through(
    make_cluster: ClusterFactory, error_class: type[Exception]
) -> None:
    """Whatever redis-py raises on the lease request, fire() raises none of it; commands raise
    RegistryError."""
    cluster = await make_cluster(reset_timeout=0.1, sync_interval=2.0)
    client, pod1 = await half_open_with(cluster, FailingEvalsha)
    client.error = _instance(error_class)
    outcomes = [await call_outcome(pod1)]
    if error_class is redis.exceptions.NoScriptError:
        # The script's source goes out instead (EVAL): the command works.
        await pod1.breaker.reset()
    else:
        with pytest.raises(Exception) as command:  # noqa: PT011 (checked below)
            await pod1.breaker.reset()
        assert isinstance(command.value, RegistryError), repr(command.value)
    client.error = None
    assert_no_leak(outcomes)
