"""Helpers for the distributed tests: pods of one breaker name, each with its own client.

A "pod" here is one :class:`CircuitBreaker` with a Redis client of its own (its
own connections, hence its own coordinator), as a replica in another process
would have. Every pod of a :class:`Cluster` shares the breaker name and the key
prefix. Waits are real but short, and every one of them is bounded.

Example::

    async with Cluster(server.url, "payments", reset_timeout=0.3) as cluster:
        pod0, pod1 = cluster.pod("pod0"), cluster.pod("pod1")
        await cluster.ready(admin)
        await pod0.trip()
        await eventually(lambda: pod1.breaker.opened)
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis_server import RedisServer

from distributed_opossum import CircuitBreaker, OpenCircuitError
from distributed_opossum._redis.coordinator import Coordinator
from distributed_opossum._redis.keys import BreakerKeys
from distributed_opossum._redis.link import SharedLink

__all__ = [
    "PREFIX",
    "RECORDED_EVENTS",
    "Boom",
    "Cluster",
    "Downstream",
    "Pod",
    "acl_setuser",
    "admin_of",
    "assert_no_leak",
    "call_outcome",
    "coordinator_idle",
    "dead_port_url",
    "eventually",
    "eventually_async",
    "gather_calls",
    "open_then_half_open",
    "pattern_subscribers",
    "readme_acl_rule",
    "redis_now_ms",
    "stays",
    "stop",
    "text",
]

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


class Boom(Exception):
    """What a failing downstream raises."""


async def eventually(
    predicate: Callable[[], bool],
    *,
    within: float = 1.0,
    interval: float = 0.002,
    what: str = "condition",
) -> float:
    """Poll ``predicate`` until it holds; fail after ``within`` s. Returns the wait."""
    start = time.monotonic()
    deadline = start + within
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not hold within {within:.3f} s")
        await asyncio.sleep(interval)
    return time.monotonic() - start


async def eventually_async(
    predicate: Callable[[], Awaitable[bool]],
    *,
    within: float = 1.0,
    interval: float = 0.01,
    what: str = "condition",
) -> float:
    """Like :func:`eventually` for a predicate that must be awaited (a Redis read)."""
    start = time.monotonic()
    deadline = start + within
    while not await predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not hold within {within:.3f} s")
        await asyncio.sleep(interval)
    return time.monotonic() - start


async def stays(
    predicate: Callable[[], bool], *, duration: float, interval: float = 0.01, what: str = ""
) -> None:
    """Assert ``predicate`` holds at every poll for ``duration`` seconds."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert predicate(), f"{what or 'condition'} stopped holding"
        await asyncio.sleep(interval)
    assert predicate(), f"{what or 'condition'} stopped holding"


@asynccontextmanager
async def admin_of(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client for the test's own reads and writes on ``server`` (reconnects after a restart)."""
    admin = aioredis.Redis.from_url(
        server.url,
        retry=Retry(NoBackoff(), 3),
        retry_on_error=[redis.exceptions.ConnectionError],
    )
    try:
        yield admin
    finally:
        await admin.aclose()


async def acl_setuser(admin: aioredis.Redis, *rule: str) -> None:
    """``ACL SETUSER`` with raw rule words (redis-py leaves execute_command unannotated)."""
    await admin.execute_command("ACL", "SETUSER", *rule)  # type: ignore[no-untyped-call]


def readme_acl_rule(prefix: str, user: str = "dopossum") -> list[str]:
    """The README's ``ACL SETUSER <user>`` arguments, with the key prefix ``prefix``."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith(f"ACL SETUSER {user} "))
    words = line.split()[2:]
    return [w.replace("dopossum", prefix, 1) if w.startswith(("~", "&")) else w for w in words]


def dead_port_url() -> str:
    """A ``redis://`` URL of a localhost port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def text(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value


async def redis_now_ms(client: aioredis.Redis) -> int:
    """Redis' clock in ms."""
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def pattern_subscribers(admin: aioredis.Redis, names: set[str]) -> set[str]:
    """Which of the client ``names`` hold a pattern subscription on the server."""
    found = set()
    for entry in await admin.client_list():
        if entry.get("name") in names and int(entry.get("psub", 0)) > 0:
            found.add(entry["name"])
    return found


class Downstream:
    """The service behind a breaker: counts calls; succeeds, fails or hangs as told.

    ``mode`` is ``"ok"``, ``"fail"`` or ``"hang"`` (wait until :meth:`release`).
    """

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.calls = 0
        self.running = 0
        self._release = asyncio.Event()
        self._outcome = "ok"

    async def action(self, *args: Any) -> str:
        """The guarded call."""
        self.calls += 1
        mode = self.mode
        if mode == "fail":
            raise Boom("downstream failed")
        if mode == "hang":
            self.running += 1
            try:
                await self._release.wait()
            finally:
                self.running -= 1
            if self._outcome == "fail":
                raise Boom("downstream failed after a while")
        return "ok"

    def release(self, outcome: str = "ok") -> None:
        """Let every hanging call finish with ``outcome`` (``"ok"`` or ``"fail"``)."""
        self._outcome = outcome
        self._release.set()


@dataclass
class Pod:
    """One replica: a breaker, its own client, its downstream and what it emitted."""

    instance: str
    breaker: CircuitBreaker[..., Any]
    client: aioredis.Redis
    downstream: Downstream
    events: list[tuple[str, tuple[Any, ...], float]] = field(default_factory=list)

    def record(self) -> None:
        """Record every event of RECORDED_EVENTS."""
        for event in RECORDED_EVENTS:
            self.breaker.on(event, self._recorder(event))

    def _recorder(self, event: str) -> Callable[..., None]:
        def handler(*args: Any) -> None:
            self.events.append((event, args, time.monotonic()))

        return handler

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
        return [str(args[0]) if args else "" for name, args, _ in self.events if name == event]

    def count(self, event: str) -> int:
        """How many ``event`` were emitted."""
        return sum(1 for name, _, _ in self.events if name == event)

    def times(self, event: str) -> list[float]:
        """When each ``event`` was emitted (``time.monotonic()``)."""
        return [at for name, _, at in self.events if name == event]

    async def call(self) -> str:
        """One call through the breaker: ``"ok"``, ``"failed"`` or ``"rejected"``."""
        try:
            await self.breaker.fire()
        except OpenCircuitError:
            return "rejected"
        except Boom:
            return "failed"
        return "ok"

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
        **defaults: breaker options of every pod; ``distributed`` entries other
            than ``client`` and ``instance_id`` go in ``distributed=...``.
    """

    def __init__(self, url: str, name: str = "payments", **defaults: Any) -> None:
        self.url = url
        self.name = name
        self.defaults = defaults
        self.pods: list[Pod] = []
        prefix = defaults.get("distributed", {}).get("prefix", PREFIX)
        self.keys = BreakerKeys.for_breaker(prefix, name)
        self._clients: list[aioredis.Redis] = []

    def client(self, instance: str, url: str | None = None) -> aioredis.Redis:
        """A new client (named after ``instance``, closed with the cluster)."""
        client = aioredis.Redis.from_url(url or self.url, client_name=instance)
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
        pod.record()
        self.pods.append(pod)
        return pod

    async def ready(self, admin: aioredis.Redis, *, within: float = 2.0) -> None:
        """Wait until every pod has synced once and listens on the events channel."""
        await eventually(
            lambda: all(p.link.gen is not None for p in self.pods),
            within=within,
            what="first sync of every pod",
        )
        names = {str(p.client.connection_pool.connection_kwargs["client_name"]) for p in self.pods}
        deadline = time.monotonic() + within
        while await pattern_subscribers(admin, names) != names:
            assert time.monotonic() < deadline, "pods did not subscribe in time"
            await asyncio.sleep(0.005)

    async def stats_entries(self, admin: aioredis.Redis) -> list[dict[str, Any]]:
        """The stats list, parsed, oldest first."""
        return [json.loads(raw) for raw in await admin.lrange(self.keys.stats, 0, -1)]

    async def state_hash(self, admin: aioredis.Redis) -> dict[str, str]:
        """The shared state hash, decoded."""
        raw = await admin.hgetall(self.keys.state)
        return {text(k): text(v) for k, v in raw.items()}

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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


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


async def gather_calls(calls: list[Awaitable[str]]) -> list[str]:
    """Run calls concurrently; their outcomes in order."""
    return list(await asyncio.gather(*calls))


async def call_outcome(pod: Pod) -> str | BaseException:
    """One call: ``"ok"``, ``"rejected"``, ``"failed"``, or whatever else reached the caller."""
    try:
        await pod.breaker.fire()
    except OpenCircuitError:
        return "rejected"
    except Boom:
        return "failed"
    except Exception as error:  # what these tests look for
        return error
    return "ok"


def assert_no_leak(outcomes: list[str | BaseException]) -> None:
    """Assert that no call let an exception other than the breaker's own through."""
    leaked = [
        f"{type(o).__module__}.{type(o).__qualname__}: {o}"
        for o in outcomes
        if isinstance(o, BaseException)
    ]
    assert not leaked, f"exceptions reached fire() callers: {leaked}"


async def open_then_half_open(cluster: Cluster, admin: aioredis.Redis, pods: list[Pod]) -> None:
    """Trip the cluster through pods[0], wait until every pod is half-open, heal the downstream."""
    await cluster.ready(admin)
    await pods[0].trip()
    await eventually(lambda: all(p.breaker.opened for p in pods), within=0.5, what="all open")
    await eventually(lambda: all(p.breaker.half_open for p in pods), within=2.0, what="half_open")
    for pod in pods:
        pod.downstream.mode = "ok"
