"""One channel per breaker: a pod subscribes to the breakers it holds, and to nothing else.

Each test runs on a real redis-server and on fakeredis (both serve pub/sub and
``PUBSUB NUMSUB``), except the one that kills connections, which needs a real
server. Report intervals are long: only a broadcast, or the check that follows
a (re)subscription, can explain what a pod learns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from helpers import Boom, Downstream
from redis_admin import kill_pubsub
from redis_server import RedisServer
from waiting import eventually, eventually_async, stays

from distributed_opossum import CircuitBreaker
from distributed_opossum._redis.coordinator import Coordinator
from distributed_opossum._redis.keys import BreakerKeys
from distributed_opossum._redis.scripts import SCRIPT_NAMES, script_source, scripts_for

LONG = 30.0
"""Report interval and open period: nothing a test waits for may come from a report."""
_prefixes = itertools.count()

ClientMaker = Callable[[], aioredis.Redis]


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), "fakeredis"])
async def new_client(request: pytest.FixtureRequest) -> AsyncIterator[ClientMaker]:
    """Makes clients of one server (a real one, or one fakeredis server); closes them after."""
    made: list[aioredis.Redis] = []
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()

        def make() -> aioredis.Redis:
            made.append(fakeredis.FakeAsyncRedis(server=server))
            return made[-1]
    else:
        real: RedisServer = request.getfixturevalue("redis_server_session")

        def make() -> aioredis.Redis:
            made.append(aioredis.Redis.from_url(real.url))
            return made[-1]

    try:
        yield make
    finally:
        for client in made:
            await client.aclose()


class Pods:
    """Breakers of a fresh key prefix, shut down when the test ends."""

    def __init__(self) -> None:
        self.prefix = f"chan{next(_prefixes)}"
        self.breakers: list[CircuitBreaker[..., Any]] = []

    def breaker(self, client: aioredis.Redis, name: str, instance: str) -> CircuitBreaker[..., Any]:
        """A breaker ``name`` on ``client`` that one failed call trips."""
        made: CircuitBreaker[..., Any] = CircuitBreaker(
            Downstream(mode="fail").action,
            name=name,
            volume_threshold=1,
            reset_timeout=LONG,
            distributed={
                "client": client,
                "prefix": self.prefix,
                "instance_id": instance,
                "sync_interval": LONG,
            },
        )
        self.breakers.append(made)
        return made

    def keys(self, name: str) -> BreakerKeys:
        """The keys and channel of breaker ``name``."""
        return BreakerKeys.for_breaker(self.prefix, name)


@pytest.fixture
async def pods() -> AsyncIterator[Pods]:
    """A :class:`Pods` whose breakers are shut down after the test."""
    made = Pods()
    try:
        yield made
    finally:
        for breaker in made.breakers:
            await breaker.shutdown()


def coordinator_of(breaker: CircuitBreaker[..., Any]) -> Coordinator:
    """The coordinator a distributed breaker reports through."""
    link = breaker._link
    assert link is not None
    assert link.coordinator is not None
    return link.coordinator


async def numsub(admin: aioredis.Redis, *channels: str) -> dict[str, int]:
    """``PUBSUB NUMSUB``: subscribers of each channel."""
    reply = await admin.pubsub_numsub(*channels)
    return {(c.decode() if isinstance(c, bytes) else str(c)): int(n) for c, n in reply}


async def subscribers_become(admin: aioredis.Redis, expected: dict[str, int]) -> None:
    """Wait until ``PUBSUB NUMSUB`` of those channels says ``expected``."""

    async def arrived() -> bool:
        return await numsub(admin, *expected) == expected

    await eventually_async(arrived, within=2.0, what=f"subscribers {expected}")


async def trip(breaker: CircuitBreaker[..., Any]) -> None:
    """One failed call: the breaker opens (volume_threshold 1)."""
    with contextlib.suppress(Boom):
        await breaker.fire()
    assert breaker.opened


async def test_a_pod_receives_only_the_breakers_it_holds(
    new_client: ClientMaker, pods: Pods
) -> None:
    """Pod A holds x and y, pod B only y: B subscribes y alone and receives nothing of x."""
    admin, a, b = new_client(), new_client(), new_client()
    x, y = pods.keys("x"), pods.keys("y")
    ax, ay = pods.breaker(a, "x", "A"), pods.breaker(a, "y", "A")
    by = pods.breaker(b, "y", "B")
    await subscribers_become(admin, {x.events: 1, y.events: 2})
    assert await admin.pubsub_numpat() == 0  # no pattern: nobody hears every breaker
    b_coordinator = coordinator_of(by)
    assert b_coordinator.listener.channels == {y.events}
    assert coordinator_of(ax) is coordinator_of(ay)  # one coordinator, one connection, per client
    assert coordinator_of(ax).listener.channels == {x.events, y.events}
    await eventually(lambda: b_coordinator.stats["checks"] >= 1, what="B checked y")

    heard = b_coordinator.stats["messages"]
    await trip(ax)
    await eventually(lambda: ax._link is not None and ax._link.shared == "open", what="x open")
    # x's broadcast went out before this marker, on the one channel B holds.
    await admin.publish(y.events, b"marker")
    await eventually(lambda: b_coordinator.stats["messages"] > heard, what="B heard the marker")
    await stays(lambda: b_coordinator.stats["messages"] == heard + 1, duration=0.1)
    assert b_coordinator.stats["bad_messages"] >= 1  # the marker, and nothing of x
    assert by.closed


async def test_the_last_breaker_of_a_name_leaving_unsubscribes_its_channel(
    new_client: ClientMaker, pods: Pods
) -> None:
    """Two breakers of one name on one client: one subscription; gone with the second."""
    admin, client = new_client(), new_client()
    x, y = pods.keys("x"), pods.keys("y")
    first, second = pods.breaker(client, "y", "P"), pods.breaker(client, "y", "P")
    other = pods.breaker(client, "x", "P")
    await subscribers_become(admin, {x.events: 1, y.events: 1})
    coordinator = coordinator_of(first)
    assert coordinator is coordinator_of(second)

    await first.shutdown()
    await stays(lambda: coordinator.listener.channels == {x.events, y.events}, duration=0.05)
    assert await numsub(admin, y.events) == {y.events: 1}
    await second.shutdown()
    await subscribers_become(admin, {x.events: 1, y.events: 0})
    assert coordinator.listener.channels == {x.events}

    # The channel comes back with a new breaker of that name, on the same connection.
    again = pods.breaker(client, "y", "P")
    await subscribers_become(admin, {x.events: 1, y.events: 1})
    assert coordinator_of(again) is coordinator
    assert not other.is_shutdown


@pytest.mark.redis
async def test_a_killed_subscription_resubscribes_and_reads_what_it_missed(
    redis_server_session: RedisServer, pods: Pods
) -> None:
    """CLIENT KILL TYPE pubsub: the pod subscribes again and reads each breaker's state,
    so a change whose broadcast it never got reaches it long before a report would."""
    admin = aioredis.Redis.from_url(redis_server_session.url)
    client = aioredis.Redis.from_url(redis_server_session.url)
    try:
        names = ("x", "y", "z")
        held = [pods.breaker(client, name, "P") for name in names]
        await subscribers_become(admin, {pods.keys(n).events: 1 for n in names})
        coordinator = coordinator_of(held[0])
        await eventually(lambda: coordinator.stats["checks"] >= len(names), what="first checks")
        await eventually(lambda: all(b._link and b._link.gen for b in held), what="first sync")

        # Another pod forces y open, and its broadcast is lost (sent to no one).
        lost = dataclasses.replace(pods.keys("y"), events=f"{pods.prefix}:lost")
        await scripts_for(admin).force_open(lost, instance="elsewhere")
        await stays(lambda: held[1].closed, duration=0.2, what="y closed until it checks")

        checks = coordinator.stats["checks"]
        assert await kill_pubsub(admin) >= 1
        await eventually(lambda: held[1].opened, within=2.0, what="y open after resubscribing")
        assert coordinator.stats["checks"] >= checks + len(names)  # one read per breaker
        assert held[0].closed
        assert held[2].closed
    finally:
        for breaker in pods.breakers:
            await breaker.shutdown()
        await admin.aclose()
        await client.aclose()


def test_scripts_for_a_cluster_client_broadcast_on_shard_channels() -> None:
    """Every script that broadcasts does it with SPUBLISH for a cluster client, PUBLISH else;
    nothing else differs."""
    for name in SCRIPT_NAMES:
        plain, sharded = script_source(name), script_source(name, sharded=True)
        assert "'SPUBLISH'" not in plain
        assert sharded.replace("'SPUBLISH'", "'PUBLISH'") == plain
        assert ("'SPUBLISH'" in sharded) == ("'PUBLISH'" in plain)
    assert "'SPUBLISH'" in script_source("report_window", sharded=True)
