"""Helpers for the distributed tests: pods of one breaker name, each with its own client.

A "pod" here is one :class:`CircuitBreaker` with a Redis client of its own (its
own connections, hence its own coordinator), as a replica in another process
would have. Every pod of a :class:`Cluster` shares the breaker name and the key
prefix. Waits are real but short, and every one of them is bounded.

Tests get their clusters from the ``make_cluster`` fixture (conftest.py), which
closes them when the test ends.

Example::

    async def test_trip_spreads(make_cluster: ClusterFactory) -> None:
        cluster = await make_cluster(reset_timeout=0.3, sync_interval=0.5)
        pod0, pod1 = await cluster.started(2)  # built, synced and listening
        await cluster.trip()  # pod0 fails until it opens; every pod is open
        assert pod1.causes("open") == ["remote"]
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from helpers import Downstream, EventLog, outcome_of
from redis_admin import channel_subscribers, user_subscriptions
from redis_server import RedisServer
from transport_support import text
from waiting import eventually, eventually_async

from distributed_opossum import CircuitBreaker
from distributed_opossum._redis.coordinator import Coordinator
from distributed_opossum._redis.keys import BreakerKeys
from distributed_opossum._redis.link import SharedLink

__all__ = [
    "PREFIX",
    "RECORDED_EVENTS",
    "Cluster",
    "ClusterFactory",
    "Pod",
    "assert_no_leak",
    "call_outcome",
    "coordinator_idle",
    "counted",
    "gather_calls",
    "more_counted",
    "more_reports",
    "stop",
]

RedisT = TypeVar("RedisT", bound=aioredis.Redis)
T = TypeVar("T")

PREFIX = "dtest"
"""Key prefix of every distributed test."""

RECORDED_EVENTS = (
    "open",
    "close",
    "half_open",
    "registry_down",
    "registry_up",
)
"""Events every pod records (with their arguments and the time they came).

None of them is a call event, so a closed pod keeps the plain call path.
"""


@dataclass
class Pod:
    """One replica: a breaker, its own client, its downstream and what it emitted."""

    instance: str
    breaker: CircuitBreaker[..., Any]
    client: aioredis.Redis
    downstream: Downstream
    events: EventLog = field(default_factory=EventLog)

    def __post_init__(self) -> None:
        self.events.attach(self.breaker, *RECORDED_EVENTS)

    @property
    def link(self) -> SharedLink:
        """The breaker's tie to the cluster."""
        link = self.breaker._link
        assert link is not None, "not a distributed breaker"
        return link

    @property
    def coordinator(self) -> Coordinator:
        """The coordinator of this pod's client."""
        coordinator = self.link.coordinator
        assert coordinator is not None, "not attached to a coordinator"
        return coordinator

    def causes(self, event: str) -> list[str]:
        """The cause argument of every ``event`` emitted, in order (as plain strings)."""
        return self.events.causes(event)

    def count(self, event: str) -> int:
        """How many ``event`` were emitted."""
        return self.events.count(event)

    def times(self, event: str) -> list[float]:
        """When each ``event`` was emitted (``time.monotonic()``)."""
        return self.events.times(event)

    async def call(self) -> str:
        """One call through the breaker: ``"ok"``, ``"failed"`` or ``"rejected"``."""
        return await outcome_of(self.breaker)

    async def hanging_call(self) -> asyncio.Future[str]:
        """A call whose downstream hangs (until ``downstream.release()``), once it runs there."""
        self.downstream.mode = "hang"
        running = self.downstream.running
        call = asyncio.ensure_future(self.call())
        await eventually(
            lambda: self.downstream.running > running, what=f"{self.instance}'s call running"
        )
        return call

    async def trip(self, limit: int = 1000) -> int:
        """Fail calls until this pod opens (locally); returns how many calls it took."""
        self.downstream.mode = "fail"
        for n in range(1, limit + 1):
            await self.call()
            if self.breaker.opened:
                return n
        raise AssertionError(f"{self.instance} did not open after {limit} failing calls")


class Cluster:
    """Pods of one breaker name; each pod gets a client (and connections) of its own.

    Args:
        url: the Redis server of the pods (each pod makes its own client).
        name: the breaker name shared by every pod.
        admin: the test's own client of the server, for :meth:`ready` and the reads.
        sync_interval: the pods' ``distributed`` ``sync_interval``, when given.
        **defaults: breaker options of every pod; ``distributed`` entries other
            than ``client`` and ``instance_id`` go in ``distributed=...``.
    """

    def __init__(
        self,
        url: str,
        name: str = "payments",
        *,
        admin: aioredis.Redis | None = None,
        sync_interval: float | None = None,
        **defaults: Any,
    ) -> None:
        self.url = url
        self.name = name
        self._admin = admin
        if sync_interval is not None:
            distributed = defaults.get("distributed", {})
            defaults["distributed"] = {"sync_interval": sync_interval, **distributed}
        self.defaults = defaults
        self.pods: list[Pod] = []
        prefix = defaults.get("distributed", {}).get("prefix", PREFIX)
        self.keys = BreakerKeys.for_breaker(prefix, name)
        self._clients: list[aioredis.Redis] = []

    @property
    def admin(self) -> aioredis.Redis:
        """The test's own client of the server."""
        assert self._admin is not None, "this cluster has no admin client"
        return self._admin

    def client(
        self, instance: str, url: str | None = None, *, named: bool = True
    ) -> aioredis.Redis:
        """A new client, closed with the cluster (named after ``instance`` unless ``named`` is
        False: a Redis user may lack the right to name its connections)."""
        return self.adopt(
            aioredis.Redis.from_url(url or self.url, client_name=instance if named else None)
        )

    def adopt(self, client: RedisT) -> RedisT:
        """Close ``client`` (made by the test) with the cluster."""
        self._clients.append(client)
        return client

    def pod(
        self,
        instance: str,
        *,
        client: aioredis.Redis | None = None,
        downstream: Downstream | None = None,
        url: str | None = None,
        **options: Any,
    ) -> Pod:
        """A new pod: a breaker named like the others, with its own client."""
        client = client if client is not None else self.client(instance, url)
        downstream = downstream if downstream is not None else Downstream()
        merged = {**self.defaults, **options}
        distributed = {
            "prefix": PREFIX,
            **merged.pop("distributed", {}),
            "client": client,
            "instance_id": instance,
        }
        breaker: CircuitBreaker[..., Any] = CircuitBreaker(
            downstream.action, name=self.name, distributed=distributed, **merged
        )
        pod = Pod(instance, breaker, client, downstream)
        self.pods.append(pod)
        return pod

    async def started(self, count: int = 2, **options: Any) -> list[Pod]:
        """``count`` new pods ``pod0``, ``pod1``, ... (with ``options``), once all are ready."""
        first = len(self.pods)
        pods = [self.pod(f"pod{first + i}", **options) for i in range(count)]
        await self.ready()
        return pods

    async def observed(self, observe: Callable[[Pod], T]) -> tuple[list[Pod], list[T]]:
        """Two new pods, each handed to ``observe`` as it is made (to hang a metrics reader on
        it, say); once they are ready, pod0 makes three successful calls and pod1 a failed one
        (pooled: 4 calls, 25 % failed). Returns the pods and what ``observe`` returned."""
        pods = [self.pod(f"pod{len(self.pods)}") for _ in range(2)]
        observers = [observe(pod) for pod in pods]
        await self.ready()
        for _ in range(3):
            assert await pods[0].call() == "ok"
        pods[1].downstream.mode = "fail"
        assert await pods[1].call() == "failed"
        return pods, observers

    async def ready(
        self, admin: aioredis.Redis | None = None, *, within: float = 2.0, user: str | None = None
    ) -> None:
        """Wait until every pod has synced once and listens on the events channel.

        Pods on clients without a name are told by the Redis ``user`` they log in as.
        """
        await eventually(
            lambda: all(p.link.gen is not None for p in self.pods),
            within=within,
            what="first sync of every pod",
        )
        admin = admin if admin is not None else self.admin

        async def listening() -> bool:
            if user is not None:
                return await user_subscriptions(admin, user) >= len(self.pods)
            names = {
                str(p.client.connection_pool.connection_kwargs["client_name"]) for p in self.pods
            }
            return await channel_subscribers(admin, names) == names

        await eventually_async(listening, within=within, interval=0.005, what="pods subscribed")

    async def trip(self, *, within: float = 0.5) -> None:
        """Trip the cluster through its first pod; wait until every pod has opened on it."""
        opened = [p.count("open") for p in self.pods]
        await self.pods[0].trip()
        await eventually(
            lambda: all(p.count("open") > n for p, n in zip(self.pods, opened, strict=True)),
            within=within,
            what="every pod open",
        )

    async def half_open(self, *, within: float = 2.0) -> None:
        """Wait until every pod is half-open (the open period ended), then heal every downstream."""
        await eventually(
            lambda: all(p.breaker.half_open for p in self.pods),
            within=within,
            what="every pod half-open",
        )
        for pod in self.pods:
            pod.downstream.mode = "ok"

    async def half_opened(
        self, count: int = 2, *, within: float = 2.0, **options: Any
    ) -> list[Pod]:
        """:meth:`started` pods, tripped through pod0 (:meth:`trip`), every pod half-open and
        healed (:meth:`half_open`, ``within`` seconds)."""
        pods = await self.started(count, **options)
        await self.trip()
        await self.half_open(within=within)
        return pods

    async def stats_entries(self, admin: aioredis.Redis | None = None) -> list[dict[str, Any]]:
        """The stats list, parsed, oldest first."""
        admin = admin if admin is not None else self.admin
        return [json.loads(raw) for raw in await admin.lrange(self.keys.stats, 0, -1)]

    async def state_hash(self, admin: aioredis.Redis | None = None) -> dict[str, str]:
        """The shared state hash, decoded."""
        admin = admin if admin is not None else self.admin
        raw = await admin.hgetall(self.keys.state)
        return {text(k): text(v) for k, v in raw.items()}

    async def shared_state(self) -> str | None:
        """The ``state`` field of the shared state hash (None when there is none)."""
        return (await self.state_hash()).get("state")

    async def shared_state_becomes(self, state: str, *, within: float = 0.5) -> None:
        """Wait until the shared state hash says ``state``."""

        async def arrived() -> bool:
            return await self.shared_state() == state

        await eventually_async(arrived, within=within, what=f"shared state {state}")

    async def aclose(self) -> None:
        """Shut every pod down, stop the coordinators, close the clients."""
        coordinators = {id(c): c for p in self.pods if (c := p.link.coordinator) is not None}
        for pod in self.pods:
            await pod.breaker.shutdown()
        for coordinator in coordinators.values():
            await stop(coordinator)
        for client in self._clients:
            await client.aclose()

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class ClusterFactory(Protocol):
    """What the ``make_cluster`` fixture is: ``await make_cluster(**options)``."""

    async def __call__(
        self,
        name: str = "payments",
        *,
        server: RedisServer | None = None,
        url: str | None = None,
        **options: Any,
    ) -> Cluster:
        """A :class:`Cluster` on ``server`` (the session's) or ``url``, closed with the test.

        ``options`` are :class:`Cluster`'s; ``rolling_count_timeout`` is 1 s unless given.
        """
        ...


async def stop(coordinator: Coordinator) -> None:
    """Close ``coordinator`` and wait until none of its tasks is left.

    A coordinator whose last breaker was shut down closes itself in the
    background; that close is awaited rather than raced.
    """
    if coordinator.links:
        await coordinator.close()
    await eventually(
        lambda: coordinator.closed and coordinator_idle(coordinator),
        within=5.0,
        what="coordinator closed",
    )


def coordinator_idle(coordinator: Coordinator) -> bool:
    """True when the coordinator runs no task any more."""
    tasks = [coordinator._ticker, coordinator._listener, *coordinator._tasks]
    return all(task is None or task.done() for task in tasks)


@asynccontextmanager
async def counted(
    pods: Sequence[Pod], counter: str, more: int = 1, *, within: float = 1.0
) -> AsyncIterator[None]:
    """When the block ends, wait until the coordinator counter ``counter`` of every pod
    has grown by ``more`` since the block began."""
    before = [p.coordinator.stats[counter] for p in pods]
    yield
    await eventually(
        lambda: all(
            p.coordinator.stats[counter] >= b + more for p, b in zip(pods, before, strict=True)
        ),
        within=within,
        what=f"{more} more {counter} on every pod",
    )


async def more_counted(
    pods: Sequence[Pod], counter: str, more: int = 1, *, within: float = 1.0
) -> None:
    """Wait until the coordinator counter ``counter`` of every pod grew by ``more`` from now."""
    async with counted(pods, counter, more, within=within):
        pass


async def more_reports(pods: Sequence[Pod], more: int = 1, *, within: float = 1.0) -> None:
    """Make every pod call (successfully) until its coordinator sent ``more`` reports
    more: an idle breaker sends none."""
    before = [p.coordinator.stats["reports"] for p in pods]

    def done() -> bool:
        counts = [p.coordinator.stats["reports"] for p in pods]
        return all(n >= b + more for n, b in zip(counts, before, strict=True))

    async def calling() -> None:
        while not done():
            for pod in pods:
                pod.downstream.mode = "ok"
                await pod.call()
            await asyncio.sleep(0.01)

    async with asyncio.timeout(within):
        await calling()


async def gather_calls(calls: list[Awaitable[str]]) -> list[str]:
    """Run calls concurrently; their outcomes in order."""
    return list(await asyncio.gather(*calls))


async def call_outcome(pod: Pod) -> str | BaseException:
    """One call: ``"ok"``, ``"rejected"``, ``"failed"``, or whatever else reached the caller."""
    try:
        return await pod.call()
    except Exception as error:  # what these tests look for
        return error


def assert_no_leak(outcomes: list[str | BaseException]) -> None:
    """Assert that no call let an exception other than the breaker's own through."""
    leaked = [
        f"{type(o).__module__}.{type(o).__qualname__}: {o}"
        for o in outcomes
        if isinstance(o, BaseException)
    ]
    assert not leaked, f"exceptions reached fire() callers: {leaked}"
