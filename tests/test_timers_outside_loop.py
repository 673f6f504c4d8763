"""Timers wanted before any event loop ran are armed by the first call."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import succeed

from distributed_opossum import CircuitBreaker, OpenCircuitError, Stats


def test_snapshot_listener_registered_outside_a_loop_gets_snapshots() -> None:
    """A snapshot handler added before asyncio.run() is served once the breaker is used."""
    breaker = CircuitBreaker(succeed, rolling_count_timeout=0.1, rolling_count_buckets=2)
    snapshots: list[Stats] = []
    breaker.on("snapshot", snapshots.append)

    async def main() -> None:
        assert await breaker.fire() == "ok"
        await asyncio.sleep(0.2)  # the real clock: the timer must really be armed
        await breaker.shutdown()

    asyncio.run(main())
    assert len(snapshots) >= 2
    assert snapshots[0].fires == 1


def test_state_restored_open_outside_a_loop_announces_half_open_on_time() -> None:
    """An open state imported before the loop ran still ends with a half_open event."""
    breaker = CircuitBreaker(
        succeed, reset_timeout=0.05, state={"open": True, "opened_at": time.time()}
    )
    events: list[str] = []
    breaker.on("half_open", lambda: events.append("half_open"))

    async def main() -> None:
        with pytest.raises(OpenCircuitError):
            await breaker.fire()
        await asyncio.sleep(0.15)
        assert events == ["half_open"]
        await breaker.shutdown()

    asyncio.run(main())
