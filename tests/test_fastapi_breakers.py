"""``Breakers``: one breaker per name, defaults and overrides, the client, the lifespans."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException
from helpers import Boom

from distributed_opossum import CircuitBreaker, breakers
from distributed_opossum.fastapi import Breakers

pytestmark = pytest.mark.usefixtures("no_breaker_left")


async def charge(order: int) -> str:
    return f"charged {order}"


async def refund(order: int) -> str:
    return f"refunded {order}"


def fake_client() -> aioredis.Redis:
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


class CloseSpy:
    """Stands in for a client's ``aclose`` and records what was shut down by then."""

    def __init__(self, client: Any) -> None:
        self.original = client.aclose
        self.calls: list[list[bool]] = []
        self.watched: list[CircuitBreaker[..., Any]] = []
        client.aclose = self

    async def __call__(self) -> None:
        self.calls.append([breaker.is_shutdown for breaker in self.watched])
        await self.original()


# --------------------------------------------------------------------------- names and options


def test_a_name_is_one_breaker() -> None:
    """get() makes a breaker once per name; the same name again, with or without
    the same options, returns it."""
    made = Breakers(timeout=3.0)
    payments = made.get("payments", charge, reset_timeout=5.0)
    assert made.get("payments", charge, reset_timeout=5.0) is payments
    assert made.get("payments") is payments
    assert made.get("inventory") is not payments
    assert payments.name == "payments"


def test_options_override_the_defaults() -> None:
    """The defaults apply to every breaker; get()'s options override them."""
    made = Breakers(timeout=3.0, reset_timeout=20.0)
    plain = made.get("plain")
    special = made.get("special", timeout=1.0)
    assert (plain.options.timeout, plain.options.reset_timeout) == (3.0, 20.0)
    assert (special.options.timeout, special.options.reset_timeout) == (1.0, 20.0)


def test_other_options_for_a_name_are_an_error() -> None:
    """The same name with other options (or another action) names the difference."""
    made = Breakers()
    made.get("payments", charge, timeout=2.0)
    with pytest.raises(ValueError, match=r"'payments'.*timeout 2\.0 \(now 3\.0\)"):
        made.get("payments", charge, timeout=3.0)
    with pytest.raises(ValueError, match=r"action charge \(now refund\)"):
        made.get("payments", refund, timeout=2.0)
    made.get("guard-only")
    with pytest.raises(ValueError, match=r"'guard-only'.*timeout not given \(now 1\.0\)"):
        made.get("guard-only", timeout=1.0)


def test_repeating_a_default_is_no_difference() -> None:
    """Options are compared as the breaker is made: a default given again is the same."""
    made = Breakers(timeout=3.0)
    breaker = made.get("payments", charge)
    assert made.get("payments", charge, timeout=3.0) is breaker
    with pytest.raises(ValueError, match=r"timeout 3\.0 \(now 4\.0\)"):
        made.get("payments", charge, timeout=4.0)


def test_bad_defaults_fail_at_construction() -> None:
    """A typo or a bad value among the defaults fails when the object is made."""
    with pytest.raises(TypeError, match="did you mean 'timeout'"):
        Breakers(timeot=3.0)
    with pytest.raises(ValueError, match="'reset_timeout'"):
        Breakers(reset_timeout=-1)
    with pytest.raises(TypeError, match="'error_filter' must be callable"):
        Breakers(error_filter=42)
    with pytest.raises(TypeError, match="is_failure_status"):
        Breakers(is_failure_status=500)  # type: ignore[arg-type]


def test_what_breakers_decides_is_refused() -> None:
    """name and distributed belong to the object; redis= and url= exclude each other."""
    with pytest.raises(TypeError, match="'name' is not an option here"):
        Breakers(name="x")
    with pytest.raises(TypeError, match=r"'distributed' is not an option here.*redis= or url="):
        Breakers().get("x", distributed={"client": fake_client()})
    with pytest.raises(TypeError, match="not both"):
        Breakers(fake_client(), url="redis://127.0.0.1:6379")
    with pytest.raises(TypeError, match=r"url=\.\.\.\) must be a str"):
        Breakers(url=6379)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Breakers\.get\(\): 'name' must be a str"):
        Breakers().get(42)  # type: ignore[call-overload]


def test_distributed_keys_need_redis() -> None:
    """quorum and the other distributed keys without a client say what is missing."""
    with pytest.raises(TypeError, match=r"'quorum'.*need Redis: make Breakers with redis= or url="):
        Breakers(quorum=2)
    with pytest.raises(TypeError, match=r"'sync_interval' for breaker 'payments' need Redis"):
        Breakers().get("payments", sync_interval=0.1)
    with pytest.raises(TypeError, match=r"prefix=\.\.\.\) needs Redis"):
        Breakers(prefix="shop")
    with pytest.raises(ValueError, match="'prefix' must not contain braces"):
        Breakers(fake_client(), prefix="{shop}")


async def test_distributed_options_default_and_override() -> None:
    """With a client, every breaker is distributed on it under the prefix; quorum and
    the other keys come from the defaults or from get()."""
    client = fake_client()
    made = Breakers(client, prefix="shop", quorum=2, sync_interval=0.05)
    payments = made.get("payments", charge)
    search = made.get("search", quorum=0.5)
    assert made.redis is client
    for breaker, quorum in ((payments, 2), (search, 0.5)):
        distributed = breaker.options.distributed
        assert distributed is not None
        assert (distributed.client, distributed.prefix) == (client, "shop")
        assert (distributed.quorum, distributed.sync_interval) == (quorum, 0.05)
    await made.aclose()
    await client.aclose()


def test_local_without_redis() -> None:
    """Without redis= or url= the breakers are local."""
    made = Breakers()
    assert made.redis is None
    assert made.get("payments").options.distributed is None
    assert made.get("payments").cluster is None


# --------------------------------------------------------------------------- HTTP errors


async def test_fire_judges_http_errors_by_status() -> None:
    """An HTTPException from a fired action counts by its status: 4xx spared, 5xx a failure."""

    async def lookup(status: int) -> str:
        raise HTTPException(status)

    made = Breakers(volume_threshold=100)
    breaker = made.get("lookup", lookup)
    for status in (404, 409, 422, 500, 503):
        with pytest.raises(HTTPException):
            await breaker.fire(status)
    assert (breaker.stats.successes, breaker.stats.failures) == (3, 2)


async def test_failure_statuses_are_configurable() -> None:
    """is_failure_status decides which statuses count (here 429 too)."""

    async def lookup(status: int) -> str:
        raise HTTPException(status)

    made = Breakers(volume_threshold=100, is_failure_status=lambda status: status in (429, 503))
    breaker = made.get("lookup", lookup)
    for status in (404, 429, 500, 503):
        with pytest.raises(HTTPException):
            await breaker.fire(status)
    assert (breaker.stats.successes, breaker.stats.failures) == (2, 2)


async def test_user_error_filter_still_applies() -> None:
    """A user's error_filter (with the call's arguments) spares errors too."""

    async def action(error: Exception) -> str:
        raise error

    def spare_boom(error: BaseException, *args: Any) -> bool:
        return isinstance(error, Boom) and args == (args[0],)

    made = Breakers(volume_threshold=100, error_filter=spare_boom)
    breaker = made.get("action", action)
    for error in (Boom(), HTTPException(404), HTTPException(500), KeyError("x")):
        with pytest.raises(type(error)):
            await breaker.fire(error)
    assert (breaker.stats.successes, breaker.stats.failures) == (2, 2)


# --------------------------------------------------------------------------- lifespans


async def test_each_lifespan_makes_fresh_breakers() -> None:
    """A lifespan makes every known breaker at startup (unless a live one exists) and
    shuts them down at its end; the next one makes new ones with the same options."""
    made = Breakers(timeout=3.0)
    declared = made.get("payments", charge, reset_timeout=5.0)
    app = FastAPI(lifespan=made.lifespan)
    seen = []
    for _ in range(2):
        async with app.router.lifespan_context(app):
            assert [b["name"] for b in made.status()["breakers"]] == ["payments"]
            breaker = made.get("payments")
            assert not breaker.is_shutdown
            assert (breaker.options.timeout, breaker.options.reset_timeout) == (3.0, 5.0)
            assert await breaker.fire(7) == "charged 7"
            seen.append(breaker)
        assert breaker.is_shutdown
        assert made.status()["breakers"] == []
    assert seen[0] is declared  # made before the first lifespan, used by it
    assert seen[1] is not declared


async def test_get_outside_a_lifespan_makes_breakers_lazily() -> None:
    """Without a lifespan, get() makes the breaker when asked; aclose() shuts it down
    and a later get() makes another."""
    made = Breakers()
    breaker = made.get("payments", charge)
    assert await breaker.fire(1) == "charged 1"
    assert breaker in breakers()
    await made.aclose()
    assert breaker.is_shutdown
    again = made.get("payments")
    assert again is not breaker
    assert await again.fire(2) == "charged 2"


async def test_wrapped_lifespan_runs_inside() -> None:
    """breakers.lifespan(own) runs own's startup after the breakers are made and its
    shutdown before they are shut down; own's state is passed on."""
    made = Breakers()
    made.get("payments", charge)
    events: list[tuple[str, bool]] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
        events.append(("startup", made.get("payments").is_shutdown))
        yield {"answer": 42}
        events.append(("shutdown", made.get("payments").is_shutdown))

    app = FastAPI(lifespan=made.lifespan(own))
    async with app.router.lifespan_context(app) as state:
        assert state == {"answer": 42}
        breaker = made.get("payments")
    assert events == [("startup", False), ("shutdown", False)]
    assert breaker.is_shutdown


async def test_failed_startup_still_shuts_down() -> None:
    """When the app's own startup fails, the breakers made for it are shut down."""
    made = Breakers()
    made_at_startup: list[CircuitBreaker[..., Any]] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        made_at_startup.append(made.get("payments", charge))
        raise Boom("startup failed")
        yield

    app = FastAPI(lifespan=made.lifespan(own))
    with pytest.raises(Boom):
        async with app.router.lifespan_context(app):
            pass
    assert made.status()["breakers"] == []
    assert made_at_startup[0].is_shutdown


async def test_the_last_of_overlapping_lifespans_shuts_down() -> None:
    """Two apps sharing the object: the breakers live until the last lifespan ends."""
    made = Breakers()
    first, second = FastAPI(lifespan=made.lifespan), FastAPI(lifespan=made.lifespan)
    async with first.router.lifespan_context(first):
        async with second.router.lifespan_context(second):
            breaker = made.get("payments", charge)
        assert not breaker.is_shutdown
        assert await breaker.fire(1) == "charged 1"
    assert breaker.is_shutdown


def test_lifespan_refuses_what_is_not_an_app_or_a_lifespan() -> None:
    """lifespan() of something neither an app nor callable says what it takes."""
    with pytest.raises(TypeError, match=r"the app .* or a lifespan function"):
        Breakers().lifespan(42)  # type: ignore[call-overload]


async def test_owned_client_closes_after_the_breakers() -> None:
    """With url=, the lifespan shuts the breakers down first, then closes the client."""
    made = Breakers(url="redis://127.0.0.1:1/0", sync_interval=0.05)
    spy = CloseSpy(made.redis)
    spy.watched.append(made.get("payments", charge))
    app = FastAPI(lifespan=made.lifespan)
    async with app.router.lifespan_context(app):
        spy.watched.append(made.get("payments"))
    assert spy.calls == [[True, True]]


async def test_given_client_stays_open() -> None:
    """With redis=, the client is the caller's: the lifespan does not close it."""
    client = fake_client()
    spy = CloseSpy(client)
    made = Breakers(client, sync_interval=0.05)
    app = FastAPI(lifespan=made.lifespan)
    async with app.router.lifespan_context(app):
        breaker = made.get("payments", charge)
        assert await breaker.fire(1) == "charged 1"
    assert breaker.is_shutdown
    assert spy.calls == []
    await client.aclose()
    assert len(spy.calls) == 1


def test_public_names() -> None:
    """distributed_opossum.fastapi exports its names, sorted; the core does not import FastAPI."""
    import distributed_opossum.fastapi as integration  # noqa: PLC0415 (the module under test)

    assert integration.__all__ == ["BreakerGuard", "Breakers", "install_exception_handlers"]
    assert all(getattr(integration, name) is not None for name in integration.__all__)
