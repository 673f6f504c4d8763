"""examples/fastapi_app.py: the shop with two distributed breakers, on a private Redis."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from fastapi_support import served
from redis_server import RedisServer
from waiting import eventually

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"
ORDER = {"sku": "apple", "quantity": 2}


@pytest.fixture
def shop(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The example module, imported afresh with REDIS_URL on the private server."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    spec = importlib.util.spec_from_file_location("shop_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


async def test_the_example_shop(shop: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    """Orders go through "payments", stock through the "inventory" guard; a 404 is not
    counted; a payments outage opens the breaker (503 + Retry-After) and the status
    route shows it, locally and in the cluster's view."""
    breakers = shop.breakers
    async with served(shop.app) as client:
        assert "breakers ['payments', 'inventory']" in capsys.readouterr().out
        placed = await client.post("/orders", json=ORDER)
        assert placed.json() == {"sku": "apple", "quantity": 2, "status": "charged"}

        assert (await client.get("/stock/apple")).json() == {"sku": "apple", "count": 12}
        for _ in range(5):
            assert (await client.get("/stock/kiwi")).status_code == 404
        assert breakers.get("inventory").stats.failures == 0

        assert (await client.put("/simulate/payments/down")).status_code == 200
        answers = [(await client.post("/orders", json=ORDER)).status_code for _ in range(2)]
        assert answers == [502, 502]  # 2 failures of 3 calls, volume_threshold=3: open
        rejected = await client.post("/orders", json=ORDER)
        assert (rejected.status_code, rejected.headers["Retry-After"]) == (503, "5")
        assert rejected.json()["breaker"] == "payments"

        def cluster_open() -> bool:
            view = breakers.get("payments").cluster
            return view is not None and view.state == "open"

        await eventually(cluster_open, within=2.0)
        status = {b["name"]: b for b in (await client.get("/breakers")).json()["breakers"]}
        assert (status["payments"]["state"], status["payments"]["cluster"]["state"]) == (
            "open",
            "open",
        )
        assert status["inventory"]["state"] == "closed"

        assert (await client.put("/simulate/payments/up")).status_code == 200
        await breakers.get("payments").reset()  # every worker closes
        assert (await client.post("/orders", json=ORDER)).status_code == 200
        used = [breakers.get("payments"), breakers.get("inventory")]
    assert all(breaker.is_shutdown for breaker in used)
