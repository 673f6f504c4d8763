"""Careless input gets a clear error at once, never a breaker that silently misbehaves.

Cache keys without a stable identity, default names that merge unrelated
callables, a client that is not an asyncio Redis client, unbounded options, a
state import with unknown keys, a fallback that cannot take the error: each was
accepted before and misbehaved later.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import gc
import uuid
from decimal import Decimal
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio as aioredis
from helpers import Boom, fail

from distributed_opossum import CircuitBreaker, OpenCircuitError, circuit_breaker
from distributed_opossum._options import (
    MAX_NAME_LENGTH,
    MAX_ROLLING_COUNT_BUCKETS,
    MIN_SYNC_INTERVAL,
)

# -- cache keys -------------------------------------------------------------------------------


class Tenant:
    """An object without a meaningful identity of its value (``repr`` holds an address)."""

    def __init__(self, tenant_id: int) -> None:
        self.tenant_id = tenant_id

    @circuit_breaker(cache=True)
    async def data(self) -> int:
        return self.tenant_id


async def test_cached_method_never_serves_another_instances_result() -> None:
    """A cached method refuses the default key for ``self`` instead of mixing tenants."""
    with pytest.raises(TypeError, match="cache_get_key"):
        await Tenant(1).data()


async def test_default_key_refuses_objects_and_names_the_argument() -> None:
    """An argument without a stable value identity is a TypeError naming it and cache_get_key."""

    async def fetch(*args: Any, **kwargs: Any) -> str:
        return "x"

    breaker = CircuitBreaker(fetch, cache=True)
    with pytest.raises(TypeError, match=r"argument 1 .*object.*cache_get_key"):
        await breaker.fire(1, object())
    with pytest.raises(TypeError, match=r"keyword 'who' .*Tenant.*cache_get_key"):
        await breaker.fire(who=Tenant(1))
    assert breaker.stats.fires == 0  # a call that never happened is not counted


async def test_same_address_does_not_mean_same_key() -> None:
    """Two objects that lived at the same address never share a cache entry."""
    seen: list[int] = []

    async def fetch(tenant: Tenant) -> int:
        seen.append(tenant.tenant_id)
        return tenant.tenant_id

    breaker = CircuitBreaker(fetch, cache=True, cache_get_key=lambda t: t.tenant_id)
    for tenant_id in range(5):
        tenant = Tenant(tenant_id)
        assert await breaker.fire(tenant) == tenant_id
        del tenant
        gc.collect()
    assert seen == [0, 1, 2, 3, 4]


class Colour(enum.Enum):
    RED = "red"


async def test_default_key_accepts_plain_values() -> None:
    """Plain values, enums, UUIDs, decimals and containers of them make stable keys."""
    calls: list[Any] = []

    async def fetch(*args: Any, **kwargs: Any) -> str:
        calls.append(args)
        return "x"

    breaker = CircuitBreaker(fetch, cache=True)
    value = (
        1,
        2.5,
        "s",
        b"b",
        None,
        True,
        Colour.RED,
        uuid.UUID(int=7),
        Decimal("1.10"),
        [1, {"k": (2, 3)}],
        frozenset({1, 2}),
    )
    await breaker.fire(*value)
    await breaker.fire(*value)
    assert len(calls) == 1
    await breaker.fire(1.0)  # 1.0 and 1 are different keys
    await breaker.fire(1)
    assert len(calls) == 3


# -- default names ----------------------------------------------------------------------------


class Client:
    async def get(self, url: str) -> str:
        return url


async def _fetch(host: str) -> str:
    return host


def test_bound_methods_of_two_instances_get_different_names() -> None:
    """``a.get`` and ``b.get`` are different downstreams: their default names differ."""
    first, second = CircuitBreaker(Client().get), CircuitBreaker(Client().get)
    assert first.name != second.name
    assert first.name.startswith("Client.get")


def test_partials_and_lambdas_get_different_names() -> None:
    """Two partials of one function, and two lambdas, never share a default name."""
    partials = {CircuitBreaker(functools.partial(_fetch, h)).name for h in ("a", "b")}
    lambdas = {CircuitBreaker(lambda: 1).name, CircuitBreaker(lambda: 2).name}
    assert len(partials) == 2
    assert len(lambdas) == 2
    assert all("_fetch" in name for name in partials)


def test_plain_function_keeps_its_qualname() -> None:
    """A module-level function still defaults to its ``__qualname__`` (API.md)."""
    assert CircuitBreaker(_fetch).name == "_fetch"


def test_distributed_breaker_needs_an_explicit_name() -> None:
    """``distributed`` without ``name`` is a TypeError naming the option."""
    client = fakeredis.FakeAsyncRedis()
    with pytest.raises(TypeError, match="'name'"):
        CircuitBreaker(_fetch, distributed={"client": client})


def test_decorated_distributed_function_needs_a_name() -> None:
    """The decorator refuses ``distributed`` without ``name`` at decoration time."""
    client = fakeredis.FakeAsyncRedis()
    with pytest.raises(TypeError, match="'name'"):
        circuit_breaker(distributed={"client": client})(_fetch)


@pytest.mark.parametrize("length", [0, MAX_NAME_LENGTH + 1])
def test_name_length_is_bounded(length: int) -> None:
    """Names are 1..MAX_NAME_LENGTH characters; the error gives the bound."""
    with pytest.raises(ValueError, match=str(MAX_NAME_LENGTH)):
        CircuitBreaker(_fetch, name="n" * length)


# -- the Redis client -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "hint"),
    [
        (object(), "object"),
        ("redis://127.0.0.1:6379", "from_url"),
        (redis.Redis(), "blocks the event loop"),
    ],
)
def test_client_must_be_an_asyncio_redis_client(client: object, hint: str) -> None:
    """Anything but a redis.asyncio client is refused at construction, with a hint."""
    with pytest.raises(TypeError, match=hint):
        CircuitBreaker(_fetch, name="svc", distributed={"client": client})


def test_asyncio_clients_are_accepted() -> None:
    """``redis.asyncio.Redis``, ``RedisCluster`` and fakeredis' async client are clients."""
    for client in (
        aioredis.Redis(),
        aioredis.RedisCluster(host="127.0.0.1", port=1),
        fakeredis.FakeAsyncRedis(),
    ):
        CircuitBreaker(_fetch, name="svc", distributed={"client": client})


# -- bounded options --------------------------------------------------------------------------


def test_bucket_count_is_bounded() -> None:
    """A huge bucket count is refused at once (it used to grind, then MemoryError)."""
    with pytest.raises(ValueError, match=str(MAX_ROLLING_COUNT_BUCKETS)):
        CircuitBreaker(_fetch, rolling_count_buckets=10**9)


def test_sync_interval_is_bounded() -> None:
    """An explicit report interval below the minimum is refused."""
    client = fakeredis.FakeAsyncRedis()
    with pytest.raises(ValueError, match="sync_interval"):
        CircuitBreaker(_fetch, name="svc", distributed={"client": client, "sync_interval": 0.001})


def test_tiny_buckets_do_not_make_a_tiny_report_interval() -> None:
    """A 0.1 ms bucket reports no more often than MIN_SYNC_INTERVAL."""
    client = fakeredis.FakeAsyncRedis()
    breaker = CircuitBreaker(
        _fetch, name="svc", rolling_count_timeout=0.001, distributed={"client": client}
    )
    assert breaker._link is not None
    assert breaker._link.interval >= MIN_SYNC_INTERVAL


# -- fallbacks --------------------------------------------------------------------------------


class FallbackFailed(Exception):
    pass


def _failing_fallback(error: BaseException) -> None:
    raise FallbackFailed("fallback failed")


@pytest.mark.parametrize("listened", [False, True])
async def test_fallback_error_chains_the_original(listened: bool) -> None:
    """A fallback that raises keeps the action's error reachable, listeners or not."""
    breaker = CircuitBreaker(fail).fallback(_failing_fallback)
    if listened:
        breaker.on("failure", lambda *_: None)
    with pytest.raises(FallbackFailed) as caught:
        await breaker.fire()
    assert isinstance(caught.value.__context__, Boom)


async def test_rejecting_fallback_error_chains_the_rejection() -> None:
    """On an open breaker, a failing fallback chains the ``OpenCircuitError``."""
    breaker = CircuitBreaker(fail).fallback(_failing_fallback)
    breaker.open()
    with pytest.raises(FallbackFailed) as caught:
        await breaker.fire()
    assert isinstance(caught.value.__context__, OpenCircuitError)


def test_fallback_that_cannot_take_the_error_is_refused_at_once() -> None:
    """``fallback(fn)`` checks that ``fn`` can take the call's arguments and the error."""

    async def action(order_id: int) -> str:
        return "charged"

    breaker = CircuitBreaker(action)
    with pytest.raises(TypeError, match="fallback"):
        breaker.fallback(lambda: "queued")
    with pytest.raises(TypeError, match="fallback"):
        breaker.fallback(lambda order_id: "queued")
    breaker.fallback(lambda order_id, error: "queued")
    breaker.fallback(lambda *args: "queued")


# -- state import -----------------------------------------------------------------------------


@pytest.mark.parametrize("state", [{"state": "open"}, {"open": True, "opend_at": 1.0}])
def test_state_import_refuses_unknown_keys(state: dict[str, Any]) -> None:
    """An unknown key in ``state=`` is a ValueError naming it, as unknown options are."""
    unknown = next(k for k in state if k not in {"open"})
    with pytest.raises(ValueError, match=repr(unknown)):
        CircuitBreaker(_fetch, state=state)


# -- async with only --------------------------------------------------------------------------


async def test_breaker_without_action_guards_blocks() -> None:
    """``CircuitBreaker(name=...)`` guards ``async with`` blocks; ``fire()`` says why it can't."""
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(name="block-only")
    async with breaker:
        await asyncio.sleep(0)
    assert breaker.stats.successes == 1
    with pytest.raises(TypeError, match="no action"):
        await breaker.fire()


def test_breaker_without_action_needs_a_name() -> None:
    """Without an action there is nothing to name it after."""
    with pytest.raises(TypeError, match="name"):
        CircuitBreaker()


# -- the decorator ----------------------------------------------------------------------------


async def test_decorator_in_any_order_with_classmethod_and_staticmethod() -> None:
    """Class and static methods work with the decorator outside or inside."""

    class Repository:
        calls = 0

        @circuit_breaker(name="cm-outer")
        @classmethod
        async def outer_classmethod(cls, x: int) -> int:
            return x + 1

        @classmethod
        @circuit_breaker(name="cm-inner")
        async def inner_classmethod(cls, x: int) -> int:
            return x + 2

        @circuit_breaker(name="sm-outer")
        @staticmethod
        async def outer_staticmethod(x: int) -> int:
            return x + 3

        @staticmethod
        @circuit_breaker(name="sm-inner")
        async def inner_staticmethod(x: int) -> int:
            return x + 4

        @circuit_breaker(name="method")
        async def method(self, x: int) -> int:
            return x + 5

    # Typed as Any: a decorated classmethod is typed as the function it wraps.
    cls: Any = Repository
    repo: Any = Repository()
    assert await cls.outer_classmethod(1) == 2
    assert await repo.outer_classmethod(1) == 2
    assert await cls.inner_classmethod(1) == 3
    assert await cls.outer_staticmethod(1) == 4
    assert await repo.outer_staticmethod(1) == 4
    assert await cls.inner_staticmethod(1) == 5
    assert await repo.method(1) == 6
    assert cls.outer_classmethod.breaker.stats.fires == 2
    assert cls.outer_staticmethod.breaker.name == "sm-outer"


def test_decorator_refuses_what_it_cannot_guard() -> None:
    """Decorating something that is not callable fails at decoration time, naming it."""
    with pytest.raises(TypeError, match="property"):
        circuit_breaker(name="p")(property(lambda self: 1))  # type: ignore[arg-type]
