"""BreakerTransport: httpx requests through per-host breakers, against a real local server.

The server (``local_http_server.py``) runs on the test's loop and answers as
the test says; it counts the requests that reach it. Breakers run on a
``FakeClock`` wherever their timing matters and the server's does not.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from helpers import cancel
from local_http_server import LocalHttpServer
from redis_admin import channel_subscribers
from redis_server import RedisServer
from waiting import eventually, eventually_async

from distributed_opossum import (
    CircuitBreaker,
    CircuitTimeoutError,
    OpenCircuitError,
    ShutdownError,
    State,
)
from distributed_opossum.httpx import BreakerTransport, default_is_failure, host_key
from distributed_opossum.testing import FakeClock


@pytest.fixture
async def server() -> AsyncIterator[LocalHttpServer]:
    """A local HTTP server of this test."""
    async with LocalHttpServer() as running:
        yield running


def options(clock: FakeClock, **changes: Any) -> dict[str, Any]:
    """Breaker options: open after 3 failing calls of 3, for 10 s, on the fake clock."""
    return {"clock": clock, "volume_threshold": 3, "reset_timeout": 10.0, **changes}


@asynccontextmanager
async def client_for(
    **transport_args: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, BreakerTransport]]:
    """An AsyncClient over a new BreakerTransport (closed, with its breakers, at the end)."""
    transport = BreakerTransport(**transport_args)
    async with httpx.AsyncClient(transport=transport) as client:
        yield client, transport


async def trip(client: httpx.AsyncClient, server: LocalHttpServer, breaker_of: Any) -> None:
    """Send failing requests until the server's breaker opens."""
    server.status = 500
    for _ in range(10):
        response = await client.get(server.url())
        assert response.status_code == 500
        if breaker_of().opened:
            return
    raise AssertionError("the breaker did not open")


# --------------------------------------------------------------------------- outcomes


async def test_success_passes_through(server: LocalHttpServer, clock: FakeClock) -> None:
    """A 200 reaches the caller as sent, through one breaker per host named http:<host:port>."""
    async with client_for(breaker_options=options(clock)) as (client, transport):
        response = await client.get(server.url("/hello"))
        assert response.status_code == 200
        assert response.text == "200 /hello"
        assert list(transport.breakers) == [server.netloc]
        breaker = transport.breakers[server.netloc]
        assert breaker.name == f"http:{server.netloc}"
        assert (breaker.stats.successes, breaker.stats.failures) == (1, 0)
        assert server.hits == 1


async def test_server_error_is_returned_and_counted(
    server: LocalHttpServer, clock: FakeClock
) -> None:
    """A 500 is returned to the caller with its body, and recorded as a failure."""
    server.status = 500
    async with client_for(breaker_options=options(clock)) as (client, transport):
        response = await client.get(server.url("/boom"))
        assert response.status_code == 500
        assert response.text == "500 /boom"
        with pytest.raises(httpx.HTTPStatusError):
            response.raise_for_status()
        stats = transport.breakers[server.netloc].stats
        assert (stats.successes, stats.failures) == (0, 1)


async def test_client_error_is_not_a_failure(server: LocalHttpServer, clock: FakeClock) -> None:
    """A 404 is the caller's problem: counted as a success."""
    server.status = 404
    async with client_for(breaker_options=options(clock)) as (client, transport):
        for _ in range(5):
            assert (await client.get(server.url())).status_code == 404
        breaker = transport.breakers[server.netloc]
        assert (breaker.stats.successes, breaker.stats.failures) == (5, 0)
        assert breaker.closed


async def test_connection_refused_raises_and_counts(
    server: LocalHttpServer, clock: FakeClock
) -> None:
    """A stopped server: httpx.ConnectError reaches the caller and is a failure."""
    await server.close()
    async with client_for(breaker_options=options(clock)) as (client, transport):
        with pytest.raises(httpx.ConnectError):
            await client.get(server.url())
        assert transport.breakers[server.netloc].stats.failures == 1


async def test_breaker_opens_and_rejects_without_reaching_the_server(
    server: LocalHttpServer, clock: FakeClock
) -> None:
    """After 3 failures the breaker opens; later requests raise OpenCircuitError, no hit."""
    async with client_for(breaker_options=options(clock)) as (client, transport):
        await trip(client, server, lambda: transport.breakers[server.netloc])
        assert server.hits == 3
        with pytest.raises(OpenCircuitError) as caught:
            await client.get(server.url())
        assert caught.value.breaker_name == f"http:{server.netloc}"
        assert caught.value.retry_after == pytest.approx(10.0)
        assert server.hits == 3
        assert transport.breakers[server.netloc].stats.rejects == 1


async def test_open_response_gives_503_with_retry_after(
    server: LocalHttpServer, clock: FakeClock
) -> None:
    """open_response=True: a synthetic 503, Retry-After rounded up, JSON naming the breaker."""
    transport_options = options(clock, reset_timeout=10.5)
    async with client_for(breaker_options=transport_options, open_response=True) as (
        client,
        transport,
    ):
        breaker = transport.breakers.get(server.netloc)
        assert breaker is None
        await trip(client, server, lambda: transport.breakers[server.netloc])
        await clock.advance(0.25)
        response = await client.get(server.url())
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "11"
        assert response.json() == {
            "error": "circuit_open",
            "breaker": f"http:{server.netloc}",
            "retry_after": pytest.approx(10.25),
        }
        assert response.request.url == server.url()
        assert server.hits == 3

        await transport.breakers[server.netloc].force_open()
        forced = await client.get(server.url())
        assert forced.status_code == 503
        assert "Retry-After" not in forced.headers
        assert forced.json()["retry_after"] is None
        assert server.hits == 3


async def test_half_open_trial_then_close(server: LocalHttpServer, clock: FakeClock) -> None:
    """When the open period ends one trial goes out; a failed one re-opens, a good one closes."""
    async with client_for(breaker_options=options(clock)) as (client, transport):

        def breaker_of() -> CircuitBreaker[..., Any]:
            return transport.breakers[server.netloc]

        await trip(client, server, breaker_of)
        await clock.advance(10.0)
        assert breaker_of().state is State.HALF_OPEN

        trial = await client.get(server.url())  # still failing: the trial re-opens
        assert trial.status_code == 500
        assert breaker_of().opened
        assert server.hits == 4

        server.status = 200
        await clock.advance(10.0)
        assert (await client.get(server.url())).status_code == 200
        assert breaker_of().closed
        assert server.hits == 5
        assert (await client.get(server.url())).status_code == 200


# --------------------------------------------------------------------------- keys


async def test_each_host_has_its_own_breaker(clock: FakeClock) -> None:
    """Two servers on two ports: one failing opens its breaker only."""
    async with (
        LocalHttpServer() as sick,
        LocalHttpServer() as healthy,
        client_for(breaker_options=options(clock)) as (client, transport),
    ):
        assert (await client.get(healthy.url())).status_code == 200
        await trip(client, sick, lambda: transport.breakers[sick.netloc])
        with pytest.raises(OpenCircuitError):
            await client.get(sick.url())
        for _ in range(3):
            assert (await client.get(healthy.url())).status_code == 200
        assert transport.breakers[healthy.netloc].closed
        assert set(transport.breakers) == {sick.netloc, healthy.netloc}
        assert healthy.hits == 4


async def test_custom_key_function(server: LocalHttpServer, clock: FakeClock) -> None:
    """key(request) picks the breaker: here the first path segment, on one server."""

    def by_service(request: httpx.Request) -> str:
        return request.url.path.split("/")[1]

    async with client_for(key=by_service, breaker_options=options(clock), name_prefix="svc:") as (
        client,
        transport,
    ):
        server.status = 500
        for _ in range(3):
            await client.get(server.url("/payments/charge"))
        assert transport.breakers["payments"].opened
        assert transport.breakers["payments"].name == "svc:payments"
        server.status = 200
        assert (await client.get(server.url("/search/q"))).status_code == 200
        with pytest.raises(OpenCircuitError):
            await client.get(server.url("/payments/charge"))
        assert sorted(transport.breakers) == ["payments", "search"]


async def test_key_must_be_a_non_empty_string(server: LocalHttpServer) -> None:
    """A key function returning an empty string is refused with a message saying so."""
    async with client_for(key=lambda request: "") as (client, _):
        with pytest.raises(TypeError, match="non-empty str"):
            await client.get(server.url())
    assert server.hits == 0


def test_host_key_drops_default_ports() -> None:
    """The default key is host[:port], the port only when not the scheme's default."""
    assert host_key(httpx.Request("GET", "https://API.example.com:443/v1")) == "api.example.com"
    assert host_key(httpx.Request("GET", "http://api.example.com:80/")) == "api.example.com"
    assert host_key(httpx.Request("GET", "https://api.example.com:80/")) == "api.example.com:80"
    assert host_key(httpx.Request("GET", "http://127.0.0.1:8080/x")) == "127.0.0.1:8080"
    assert host_key(httpx.Request("GET", "http://[::1]:8080/")) == "[::1]:8080"


# --------------------------------------------------------------------------- judgement


async def test_custom_is_failure(server: LocalHttpServer, clock: FakeClock) -> None:
    """is_failure decides: here 429 is a failure and 503 is not; exceptions judged likewise."""

    def is_failure(request: httpx.Request, outcome: httpx.Response | Exception) -> bool:
        if isinstance(outcome, httpx.Response):
            return outcome.status_code == 429
        return not isinstance(outcome, httpx.ConnectError)

    async with client_for(breaker_options=options(clock), is_failure=is_failure) as (
        client,
        transport,
    ):
        server.status = 503
        assert (await client.get(server.url())).status_code == 503
        server.status = 429
        assert (await client.get(server.url())).status_code == 429
        await server.close()
        with pytest.raises(httpx.ConnectError):  # not a failure, still the caller's error
            await client.get(server.url())
        stats = transport.breakers[server.netloc].stats
        assert (stats.successes, stats.failures) == (2, 1)


def test_default_is_failure() -> None:
    """Transport errors and 5xx are failures; 4xx and foreign exceptions are not."""
    request = httpx.Request("GET", "http://example.com/")
    assert default_is_failure(request, httpx.Response(500))
    assert default_is_failure(request, httpx.Response(503))
    assert not default_is_failure(request, httpx.Response(499))
    assert not default_is_failure(request, httpx.Response(200))
    assert default_is_failure(request, httpx.ConnectTimeout("slow", request=request))
    assert default_is_failure(request, httpx.RemoteProtocolError("bad", request=request))
    assert not default_is_failure(request, ValueError("mine"))


async def test_foreign_exceptions_propagate_unchanged(clock: FakeClock) -> None:
    """An exception that is not httpx's comes out as it went in, and is not a failure."""
    error = ValueError("a bug in the wrapped transport")

    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    transport = BreakerTransport(httpx.MockTransport(handler), breaker_options=options(clock))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(ValueError, match="a bug") as caught:
            await client.get("http://svc.internal/")
        assert caught.value is error
        assert transport.breakers["svc.internal"].stats.failures == 0


async def test_breaker_timeout_propagates_and_is_a_failure(
    server: LocalHttpServer, clock: FakeClock
) -> None:
    """A server slower than the breaker's timeout: CircuitTimeoutError, a failure and a timeout."""
    server.hang = True
    async with client_for(breaker_options=options(clock, timeout=2.0)) as (client, transport):
        request = asyncio.ensure_future(client.get(server.url()))
        await asyncio.wait_for(server.received.wait(), 5.0)
        await clock.advance(2.0)
        with pytest.raises(CircuitTimeoutError):
            await request
        stats = transport.breakers[server.netloc].stats
        assert (stats.failures, stats.timeouts) == (1, 1)
        server.release()
        assert (await client.get(server.url())).status_code == 200


async def test_cancelled_request_is_neither_success_nor_failure(
    server: LocalHttpServer, clock: FakeClock
) -> None:
    """A caller that gives up mid-request: CancelledError propagates, nothing is recorded."""
    server.hang = True
    async with client_for(breaker_options=options(clock)) as (client, transport):
        request = asyncio.ensure_future(client.get(server.url()))
        await asyncio.wait_for(server.received.wait(), 5.0)
        await cancel(request)
        stats = transport.breakers[server.netloc].stats
        assert (stats.fires, stats.successes, stats.failures) == (1, 0, 0)
        server.release()


async def test_concurrent_requests_share_one_breaker(
    server: LocalHttpServer, clock: FakeClock
) -> None:
    """Concurrent requests to one host go through one breaker, each outcome recorded."""
    async with client_for(breaker_options=options(clock)) as (client, transport):
        responses = await asyncio.gather(*(client.get(server.url(f"/{i}")) for i in range(20)))
        assert sorted(r.text for r in responses) == sorted(f"200 /{i}" for i in range(20))
        assert len(transport.breakers) == 1
        assert transport.breakers[server.netloc].stats.successes == 20


# --------------------------------------------------------------------------- streaming


async def test_streamed_body_is_read_after_the_outcome(
    server: LocalHttpServer, clock: FakeClock
) -> None:
    """client.stream(): the status line decides; the chunked body still arrives whole."""
    async with client_for(breaker_options=options(clock)) as (client, transport):
        async with client.stream("GET", server.url("/stream")) as response:
            assert response.status_code == 200
            assert transport.breakers[server.netloc].stats.successes == 1
            body = b"".join([chunk async for chunk in response.aiter_bytes()])
        assert body == b"one,two,three"

        server.status = 502
        async with client.stream("GET", server.url("/stream")) as response:
            assert response.status_code == 502
            assert transport.breakers[server.netloc].stats.failures == 1
            assert await response.aread() == b"one,two,three"


# --------------------------------------------------------------------------- lifecycle


async def test_aclose_shuts_down_its_breakers_and_the_wrapped_transport(
    server: LocalHttpServer, clock: FakeClock
) -> None:
    """Leaving the client closes the transport: its breakers shut down, the inner one closed."""
    closed: list[bool] = []

    class Inner(httpx.AsyncHTTPTransport):
        async def aclose(self) -> None:
            closed.append(True)
            await super().aclose()

    async with client_for(transport=Inner(), breaker_options=options(clock)) as (
        client,
        transport,
    ):
        await client.get(server.url())
        breaker = transport.breakers[server.netloc]
        assert not breaker.is_shutdown
    assert breaker.is_shutdown
    assert closed == [True]
    await transport.aclose()  # a second close does nothing
    assert closed == [True]
    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_async_request(httpx.Request("GET", server.url()))


async def test_given_breakers_are_used_and_left_running(
    server: LocalHttpServer, clock: FakeClock
) -> None:
    """breakers={key: breaker}: the user's breaker guards the host, sees an
    HTTPStatusError on a 500, and is not shut down by the transport."""
    mine = CircuitBreaker(name="payments-api", clock=clock, volume_threshold=3)
    seen: list[BaseException] = []
    mine.on("failure", lambda error, latency, args: seen.append(error))
    server.status = 500
    async with client_for(breakers={server.netloc: mine}) as (client, transport):
        assert (await client.get(server.url("/pay"))).status_code == 500
        assert transport.breakers[server.netloc] is mine
        with pytest.raises(KeyError, match=re.escape("no breaker for key 'other.example:81'")):
            await client.get("http://other.example:81/")
    assert not mine.is_shutdown
    assert len(seen) == 1
    assert isinstance(seen[0], httpx.HTTPStatusError)
    assert seen[0].response.status_code == 500
    assert str(seen[0]) == f"500 Internal Server Error from GET {server.url('/pay')}"
    await mine.shutdown()


async def test_breakers_callable(server: LocalHttpServer, clock: FakeClock) -> None:
    """breakers=callable: asked once per key, on the key's first request."""
    asked: list[str] = []
    made: dict[str, CircuitBreaker[..., Any]] = {}

    def lookup(key: str) -> CircuitBreaker[..., Any]:
        asked.append(key)
        made[key] = CircuitBreaker(name=f"custom:{key}", clock=clock)
        return made[key]

    async with client_for(breakers=lookup) as (client, transport):
        for _ in range(3):
            await client.get(server.url())
        assert asked == [server.netloc]
        assert transport.breakers[server.netloc] is made[server.netloc]
    await made[server.netloc].shutdown()


async def test_shut_down_breaker_raises(server: LocalHttpServer, clock: FakeClock) -> None:
    """A given breaker that was shut down refuses requests with ShutdownError, even with
    open_response (only an open breaker gets the synthetic 503)."""
    mine = CircuitBreaker(name="gone", clock=clock)
    await mine.shutdown()
    async with client_for(breakers={server.netloc: mine}, open_response=True) as (client, _):
        with pytest.raises(ShutdownError):
            await client.get(server.url())
    assert server.hits == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"breaker_options": {}, "breakers": {}}, "not both"),
        ({"breaker_options": {"name": "x"}}, "must not hold 'name'"),
        ({"breaker_options": {"timeot": 1.0}}, "unknown breaker option.*timeot"),
        ({"breaker_options": [("timeout", 1.0)]}, "breaker_options must be a dict"),
        ({"breakers": 3}, "breakers must be a mapping or a callable"),
        ({"key": "host"}, "key must be callable"),
        ({"is_failure": True}, "is_failure must be callable"),
        ({"open_response": "yes"}, "open_response must be a bool"),
        ({"transport": object()}, "transport must be an httpx.AsyncBaseTransport"),
        ({"breaker_options": {"distributed": {"client": "redis://x"}}}, "client"),
    ],
)
def test_bad_arguments_are_refused(arguments: dict[str, Any], message: str) -> None:
    """Bad constructor arguments raise TypeError naming the problem."""
    with pytest.raises(TypeError, match=message):
        BreakerTransport(**arguments)


# --------------------------------------------------------------------------- distributed


async def test_distributed_breakers_open_on_every_pod(
    redis_server: RedisServer, server: LocalHttpServer
) -> None:
    """Two pods (transports with their own Redis clients): one trips, the other opens in 0.5 s."""
    clients = [aioredis.Redis.from_url(redis_server.url, client_name=f"pod-{i}") for i in (0, 1)]
    admin = aioredis.Redis.from_url(redis_server.url)
    pods = [
        BreakerTransport(
            breaker_options={
                "volume_threshold": 2,
                "reset_timeout": 5.0,
                "distributed": {"client": c, "prefix": "httpxtest", "sync_interval": 2.0},
            }
        )
        for c in clients
    ]
    http = [httpx.AsyncClient(transport=pod) for pod in pods]
    try:
        for client in http:  # each pod makes its breaker for the host
            assert (await client.get(server.url())).status_code == 200
        names = {"pod-0", "pod-1"}

        async def subscribed() -> bool:
            return await channel_subscribers(admin, names) == names

        await eventually_async(subscribed, within=5.0, what="both pods subscribed")
        await trip(http[0], server, lambda: pods[0].breakers[server.netloc])
        tripped = time.monotonic()
        other = pods[1].breakers[server.netloc]
        await eventually(lambda: other.opened, within=0.5, what="the other pod open")
        assert time.monotonic() - tripped < 0.5
        hits = server.hits
        with pytest.raises(OpenCircuitError):
            await http[1].get(server.url())
        assert server.hits == hits
    finally:
        for client in http:
            await client.aclose()
        for c in (*clients, admin):
            await c.aclose()
