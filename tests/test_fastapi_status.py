"""The status route: this app's breakers (or every breaker of the process) as JSON."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from fastapi import FastAPI
from fastapi_support import served
from helpers import Boom, fail
from waiting import eventually

from distributed_opossum import CircuitBreaker, breakers
from distributed_opossum.fastapi import Breakers
from distributed_opossum.testing import FakeClock

STATS_KEYS = {
    "fires", "successes", "failures", "timeouts", "rejects", "fallbacks",
    "semaphore_rejections", "cache_hits", "cache_misses", "coalesce_cache_hits",
    "coalesce_cache_misses", "latency_mean", "percentiles",
}  # fmt: skip
CLUSTER_KEYS = {
    "state", "epoch", "attempts", "retry_after", "registry_down", "pods_reporting",
    "volume", "failures", "failure_rate", "votes", "age",
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("no_breaker_left")


async def test_status_route_shows_the_object_breakers() -> None:
    """GET /breakers: name, state, retry_after, attempts, stats, cluster (None when local)."""
    clock = FakeClock()
    made = Breakers(clock=clock, reset_timeout=4.0)
    made.get("payments", fail)
    made.get("inventory")
    app = FastAPI(lifespan=made.lifespan)
    app.include_router(made.status_router("/breakers"))
    elsewhere = CircuitBreaker(name="elsewhere")
    async with served(app) as client:
        with pytest.raises(Boom):
            await made.get("payments").fire()
        await clock.advance(1.5)
        response = await client.get("/breakers")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    payments, inventory = response.json()["breakers"]
    assert {key: payments[key] for key in payments if key != "stats"} == {
        "name": "payments",
        "group": "payments",
        "state": "open",
        "enabled": True,
        "retry_after": 2.5,
        "attempts": 1,
        "cluster": None,
    }
    assert set(payments["stats"]) == STATS_KEYS
    assert (payments["stats"]["fires"], payments["stats"]["failures"]) == (1, 1)
    assert (inventory["name"], inventory["state"], inventory["retry_after"]) == (
        "inventory",
        "closed",
        0.0,
    )
    assert elsewhere.name not in [b["name"] for b in response.json()["breakers"]]


async def test_status_route_of_every_breaker() -> None:
    """every_breaker=True lists every live breaker of the process."""
    made = Breakers()
    app = FastAPI(lifespan=made.lifespan)
    app.include_router(made.status_router("/all", every_breaker=True, include_in_schema=False))
    elsewhere = CircuitBreaker(name="elsewhere")
    async with served(app) as client:
        made.get("payments")
        names = [b["name"] for b in (await client.get("/all")).json()["breakers"]]
        schema = (await client.get("/openapi.json")).json()
        assert names == [b.name for b in breakers()]  # other modules' breakers included
    assert names[-2:] == ["elsewhere", "payments"]
    assert "/all" not in schema["paths"]
    await elsewhere.shutdown()


async def test_status_shows_the_cluster_view() -> None:
    """A distributed breaker's entry carries breaker.cluster.to_dict()."""
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    made = Breakers(client, prefix="status-test", sync_interval=0.02)
    app = FastAPI(lifespan=made.lifespan)
    app.include_router(made.status_router())

    async def charge() -> str:
        return "charged"

    made.get("payments", charge)
    async with served(app) as http:
        assert await made.get("payments").fire() == "charged"

        def reported() -> bool:  # the report after the call comes back with the pooled window
            view = made.get("payments").cluster
            return view is not None and bool(view.volume)

        await eventually(reported, within=2.0)
        [entry] = (await http.get("/breakers")).json()["breakers"]
    cluster: dict[str, Any] = entry["cluster"]
    assert set(cluster) == CLUSTER_KEYS
    assert cluster["state"] == "closed"
    assert cluster["pods_reporting"] == 1
    assert cluster["failure_rate"] == 0.0
    await client.aclose()
