"""The soak's fleet (chaos_fleet.Fleet running _soak_pod.py) and its state-agreement samples.

Every ``interval`` seconds the soak asks whether every pod agrees with the
shared state hash in Redis (chaos_fleet.consistent: same gen and epoch, a
matching state). A look reads the hash, every pod's view, then the hash
again; when the hash moved in between (a close or an open in flight), the
look is taken again, so a transition caught half-way does not pass for a
disagreement. A disagreement is looked at once more two ticks later
(``settled``: whether every pod agreed by then), to tell a pod that was a
moment late from one that stays wrong.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from _chaos_tools import Fleet, FleetResults, chaos_fleet, consistent
from redis.exceptions import RedisError

__all__ = ["SOAK_POD", "Sample", "SoakFleet", "sample_agreement"]

SOAK_POD = Path(__file__).with_name("_soak_pod.py")
# Fleet starts chaos_fleet.POD_SCRIPT in each process: the soak's wrapper of it instead.
chaos_fleet.POD_SCRIPT = SOAK_POD

_LOOKS = 3


class SoakFleet(Fleet):
    """A chaos fleet of soak pod processes: progress while loaded, raw records at the end."""

    async def progress(self) -> list[dict[str, Any]]:
        """Each process's outcomes so far, errors, trials and RSS now (the load goes on)."""
        return await self._all("progress")

    async def collect(self) -> tuple[FleetResults, list[dict[str, Any]]]:
        """Stop the load; the merged records and each process's raw ones."""
        await self.stop_load()
        raw = await self._all("results")
        return FleetResults.merge(raw), raw


@dataclass(frozen=True)
class Sample:
    """One look at whether every pod agreed with Redis."""

    start: float
    end: float
    agreed: bool
    detail: str
    """The disagreement (Redis's gen/epoch/state and the odd pods), or ''."""
    settled: bool | None
    """For a disagreement: whether every pod agreed two ticks later."""


def _core(shared: dict[str, str]) -> tuple[str | None, str | None, str | None]:
    return shared.get("gen"), shared.get("epoch"), shared.get("state")


async def _look(fleet: Fleet, admin: aioredis.Redis) -> tuple[bool, str]:
    for _ in range(_LOOKS):
        before = await fleet.shared_state(admin)
        views = await fleet.snapshot()
        shared = await fleet.shared_state(admin)
        if _core(before) == _core(shared):
            break
    odd = [v for v in views if not consistent(v, shared)]
    if not odd:
        return True, ""
    gen, epoch, state = _core(shared)
    pods = ", ".join(
        f"{v.instance}: {v.state} gen={v.gen} epoch={v.epoch} shared={v.shared} down={v.down} "
        f"subscribed={v.subscribed}"
        for v in odd
    )
    return False, f"redis: {state} gen={gen} epoch={epoch}; {len(odd)} pod(s) not: {pods}"


async def take_sample(fleet: Fleet, admin: aioredis.Redis, tick: float) -> Sample:
    """One look (and, on a disagreement, a second one two ticks later)."""
    start = time.monotonic()
    try:
        agreed, detail = await _look(fleet, admin)
    except (OSError, RedisError) as error:
        return Sample(start, time.monotonic(), False, f"Redis did not answer: {error!r}", None)
    end = time.monotonic()
    if agreed:
        return Sample(start, end, True, "", None)
    await asyncio.sleep(2 * tick)
    try:
        settled, _ = await _look(fleet, admin)
    except (OSError, RedisError):
        settled = False
    return Sample(start, end, False, detail, settled)


async def sample_agreement(
    fleet: Fleet, admin: aioredis.Redis, samples: list[Sample], *, interval: float, tick: float
) -> None:
    """Append a :class:`Sample` every ``interval`` seconds, until cancelled."""
    due = time.monotonic()
    while True:
        samples.append(await take_sample(fleet, admin, tick))
        due = max(due + interval, time.monotonic())
        await asyncio.sleep(due - time.monotonic())
