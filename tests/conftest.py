"""Redis fixtures: private redis-server processes, clients for them, and fakeredis.

Real-server tests need the ``redis-server`` binary. Without it they are
skipped locally, but fail when the ``CI`` environment variable is set: in CI
the real-Redis tests must run, never silently skip.

Fixtures:
    redis_server_session  one private server for the whole run
    redis_server          a fresh private server for one test (kill/pause/restart it freely)
    redis_client          redis.asyncio client on the session server, emptied before the test
    fake_redis_client     fakeredis.FakeAsyncRedis with Lua, its own empty server
    any_redis_client      parametrized: the real client (marked ``redis``) and the fake one
    sentinel_topology     1 master, 1 replica, 3 sentinels of this test alone
    cluster_topology      a Redis Cluster (3 masters, 3 replicas) of this test alone
                          (also needs ``redis-cli``; marked ``cluster``)
    tls_redis_server      a private server listening for TLS too, with a certificate made
                          for it (a build without TLS skips, or fails under ``CI``)
    clock                 a FakeClock (t = 1000 s) for the test
    make_cluster          ``await make_cluster(**options)``: a distributed_support.Cluster on
                          the session server (emptied first) or on ``server=``, with an admin
                          client; closed when the test ends
    cli                   ``await cli("status")``: the operator CLI in-process, aimed at the
                          session server (emptied first), its output captured
    no_breaker_left       shuts down, when the test ends, the breakers the test made
                          (for modules whose breakers are registered by name)

Tests that use a real server get the ``redis`` marker automatically, so
``pytest -m "not redis"`` runs without redis-server.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from cli_support import Cli
from distributed_support import Cluster, ClusterFactory
from redis_admin import admin_client
from redis_cluster import RedisClusterTopology, redis_cli_binary
from redis_sentinel import SentinelTopology
from redis_server import RedisServer, RedisServerError, TlsFiles, redis_server_binary

from distributed_opossum import breakers
from distributed_opossum.testing import FakeClock

_REAL_SERVER_FIXTURES = frozenset(
    {"redis_server", "redis_server_session", "redis_client", "sentinel_topology",
     "cluster_topology", "tls_redis_server", "make_cluster"}
)  # fmt: skip


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message}; real-Redis tests must not be skipped in CI", pytrace=False)
    pytest.skip(message)


def _server_or_skip() -> RedisServer:
    if redis_server_binary() is None:
        _missing("redis-server not found on PATH (set REDIS_SERVER to its path)")
    return RedisServer()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real server with ``redis`` (and a cluster with ``cluster``)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if _REAL_SERVER_FIXTURES & fixtures:
            item.add_marker(pytest.mark.redis)
        if "cluster_topology" in fixtures:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock (at t = 1000 s) for the test."""
    return FakeClock()


@pytest.fixture(scope="session")
def redis_server_session() -> Iterator[RedisServer]:
    """One private redis-server shared by the run (tests get it emptied via redis_client)."""
    server = _server_or_skip()
    with server:
        yield server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server of this test alone, started; removed afterwards."""
    server = _server_or_skip()
    with server:
        yield server


async def _real_client(server: RedisServer) -> aioredis.Redis:
    if not server.running:  # an earlier test stopped the shared server
        server.start()
    client = aioredis.Redis.from_url(server.url)
    await client.flushall()
    await client.script_flush()
    return client


@pytest.fixture
def sentinel_topology() -> Iterator[SentinelTopology]:
    """A master, its replica and three sentinels of this test alone."""
    _server_or_skip().close()
    with SentinelTopology() as topology:
        yield topology


@pytest.fixture
def cluster_topology() -> Iterator[RedisClusterTopology]:
    """A Redis Cluster of 3 masters and 3 replicas of this test alone."""
    _server_or_skip().close()
    if redis_cli_binary() is None:
        _missing("redis-cli not found on PATH (it creates the cluster)")
    with RedisClusterTopology() as topology:
        yield topology


@pytest.fixture
def tls_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server of this test that also listens for TLS (``server.tls_url``)."""
    _server_or_skip().close()
    server = RedisServer(tls=TlsFiles.generate(tmp_path / "tls"))
    try:
        server.start()
    except RedisServerError:
        log = server.log[-1000:]
        server.close()
        _missing(f"this redis-server does not take --tls-port (built without TLS?):\n{log}")
    with server:
        yield server


@pytest.fixture
async def redis_client(redis_server_session: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of the session's redis-server, whose data and script cache start empty."""
    client = await _real_client(redis_server_session)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def fake_redis_client() -> AsyncIterator[aioredis.Redis]:
    """A fakeredis client (Lua enabled through lupa) on a server of its own."""
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), "fakeredis"])
async def any_redis_client(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """The same test on a real redis-server and on fakeredis."""
    client: aioredis.Redis
    if request.param == "fakeredis":
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    else:
        server: RedisServer = request.getfixturevalue("redis_server_session")
        client = await _real_client(server)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def make_cluster(redis_server_session: RedisServer) -> AsyncIterator[ClusterFactory]:
    """Clusters of pods, closed when the test ends (see distributed_support.ClusterFactory).

    A cluster lives on the session's server (emptied before the first one) unless
    ``server=`` names another (a private ``redis_server``, requested before this
    fixture so that it outlives the pods) or ``url=`` another address (a user's
    URL, or a dead port: no admin client then, unless ``server=`` is given too).
    """
    async with AsyncExitStack() as stack:
        admins: dict[str, aioredis.Redis] = {}

        async def admin_for(server: RedisServer) -> aioredis.Redis:
            if server.url not in admins:
                admin = admins[server.url] = admin_client(server.url)
                stack.push_async_callback(admin.aclose)
                if server is redis_server_session:
                    if not server.running:  # an earlier test stopped the shared server
                        server.start()
                    await admin.flushall()
                    await admin.script_flush()
            return admins[server.url]

        async def make(
            name: str = "payments",
            *,
            server: RedisServer | None = None,
            url: str | None = None,
            **options: Any,
        ) -> Cluster:
            options.setdefault("rolling_count_timeout", 1.0)
            if url is None:
                server = server if server is not None else redis_server_session
                url = server.url
            admin = await admin_for(server) if server is not None else None
            cluster = Cluster(url, name, admin=admin, **options)
            stack.push_async_callback(cluster.aclose)
            return cluster

        yield make


@pytest.fixture
async def no_breaker_left() -> AsyncIterator[None]:
    """Shut down, when the test ends, the breakers made during it (and only those: other
    test modules keep module-level breakers alive across tests)."""
    before = breakers()
    try:
        yield
    finally:
        await asyncio.gather(*(b.shutdown() for b in breakers() if b not in before))


@pytest.fixture
def cli(
    redis_server_session: RedisServer,
    redis_client: aioredis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    """The operator CLI aimed at the session's redis-server (emptied first), in-process."""
    return Cli(redis_server_session.url, redis_client, capsys)
