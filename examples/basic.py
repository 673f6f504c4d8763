"""A breaker around a flaky service, on one process: watch it open, reject, half-open and close.

Run: python examples/basic.py
"""

from __future__ import annotations

import asyncio
import random

from distributed_opossum import CircuitBreaker, OpenCircuitError


async def flaky_service(order_id: int) -> str:
    """Fails 60 % of the time, like a downstream having a bad day."""
    await asyncio.sleep(0.001)
    if random.random() < 0.6:
        raise ConnectionError("payments backend unavailable")
    return f"charged order {order_id}"


async def main() -> None:
    """Fire 40 calls through a breaker and print what happens."""
    breaker = CircuitBreaker(
        flaky_service,
        name="payments",
        timeout=1.0,
        error_threshold_percentage=50,
        volume_threshold=5,
        reset_timeout=0.2,
    )
    for event in ("open", "half_open", "close"):
        breaker.on(event, lambda cause, event=event: print(f"  -> {event} ({cause})"))
    for order_id in range(40):
        try:
            print(await breaker.fire(order_id))
        except OpenCircuitError as error:
            print(f"rejected: retry in {error.retry_after:.2f} s")
        except ConnectionError as error:
            print(f"failed: {error}")
        await asyncio.sleep(0.02)
    print(breaker.stats)
    await breaker.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
