"""The README's "Quick start with FastAPI" runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

README = Path(__file__).resolve().parent.parent / "README.md"


pytestmark = pytest.mark.usefixtures("no_breaker_left")


def quick_start() -> str:
    """The first Python block of the README's FastAPI quick start."""
    section = README.read_text().split("## Quick start with FastAPI", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None
    return found.group(1)


def test_readme_fastapi_quick_start_runs() -> None:
    """The snippet's app charges, guards, spares a 404, reports, and answers 503 when open."""
    namespace: dict[str, Any] = {"__name__": "readme_quick_start"}
    exec(compile(quick_start(), "README.md", "exec"), namespace)  # the README's own code
    breakers = namespace["breakers"]
    with TestClient(namespace["app"]) as client:
        assert client.post("/orders/7/charge").json() == {"order": 7, "status": "charged"}
        assert client.get("/stock/apple").json() == {"sku": "apple", "count": 3}
        assert client.get("/stock/kiwi").status_code == 404
        status = {b["name"]: b for b in client.get("/breakers").json()["breakers"]}
        assert status["inventory"]["stats"]["failures"] == 0
        breakers.get("payments").open()
        rejected = client.post("/orders/7/charge")
    assert (rejected.status_code, rejected.headers["Retry-After"]) == (503, "30")
