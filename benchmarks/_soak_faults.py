"""The faults a soak run injects, in rotation, and their schedule.

Each fault restores what it changed in a ``finally`` (a resumed server, a
healed downstream, a proxy back to pass-through, no maxmemory), so a soak
interrupted in the middle of one leaves nothing behind. Every injection is
recorded as a :class:`Fault` with its window; faults during which Redis could
not be reached or refused every write are marked ``redis_outage``: trials in
them follow the local rule and are not judged (as in the chaos suite).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import cycle

import redis.asyncio as aioredis
from _chaos_tools import ChaosProxy, DownstreamSwitch, RedisServer
from redis.exceptions import OutOfMemoryError

__all__ = [
    "FAULTS",
    "Fault",
    "FaultContext",
    "FaultKind",
    "inject_faults",
]

KILL_DOWN_S = 1.0
"""How long Redis stays dead before its empty restart."""
FREEZE_S = 3.0
"""SIGSTOP: longer than the 2 s round-trip limit, so pods declare an outage."""
DOWNSTREAM_OUTAGE_S = 10.0
LATENCY_S = 0.2
LATENCY_FOR_S = 20.0
MAXMEMORY_FOR_S = 5.0
SETTLE_S = 5.0
"""The least time between the end of one fault and the start of the next."""
_BALLAST = [f"soak:ballast:{i}" for i in range(32)]
_MIB = 1024 * 1024


@dataclass
class FaultContext:
    """What the faults act on."""

    server: RedisServer
    proxy: ChaosProxy
    switch: DownstreamSwitch
    admin: aioredis.Redis
    """A client of the fault injector alone, straight to the server."""
    faults: list[Fault] = field(default_factory=list)
    """Every fault injected so far, in order."""
    current: tuple[str, float] | None = None
    """The fault under way (kind, start), if any."""


@dataclass(frozen=True)
class Fault:
    """One injected fault and its window (``time.monotonic()``)."""

    kind: str
    number: int
    """1 for the first fault of this kind, 2 for the second, ..."""
    start: float
    end: float
    redis_outage: bool
    detail: str


@dataclass(frozen=True)
class FaultKind:
    """A fault to inject: its name, planned length, and the coroutine that injects it."""

    name: str
    planned_s: float
    redis_outage: bool
    inject: Callable[[FaultContext], Awaitable[str]]


async def _kill_and_restart(ctx: FaultContext) -> str:
    await asyncio.to_thread(ctx.server.kill)
    try:
        await asyncio.sleep(KILL_DOWN_S)
    finally:
        await asyncio.to_thread(ctx.server.start)  # same port, no data, no scripts
    return f"killed (SIGKILL), restarted empty after {KILL_DOWN_S:g} s"


async def _sigstop(ctx: FaultContext) -> str:
    ctx.server.pause()
    try:
        await asyncio.sleep(FREEZE_S)
    finally:
        ctx.server.resume()
    return f"SIGSTOP for {FREEZE_S:g} s, then SIGCONT"


async def _kill_pubsub(ctx: FaultContext) -> str:
    killed: int = await ctx.admin.client_kill_filter(_type="pubsub", skipme=True)
    return f"CLIENT KILL TYPE pubsub: {killed} connection(s) closed"


async def _script_flush(ctx: FaultContext) -> str:
    await ctx.admin.script_flush()
    return "SCRIPT FLUSH"


async def _downstream_outage(ctx: FaultContext) -> str:
    ctx.switch.fail()
    try:
        await asyncio.sleep(DOWNSTREAM_OUTAGE_S)
    finally:
        ctx.switch.heal()
    return f"every downstream call failed for {DOWNSTREAM_OUTAGE_S:g} s"


async def _latency(ctx: FaultContext) -> str:
    ctx.proxy.delay(LATENCY_S)
    try:
        await asyncio.sleep(LATENCY_FOR_S)
    finally:
        ctx.proxy.pass_through()
    return f"{LATENCY_S * 1000:g} ms added to every command for {LATENCY_FOR_S:g} s"


async def _maxmemory(ctx: FaultContext) -> str:
    admin = ctx.admin
    for key in _BALLAST:
        await admin.set(key, b"x" * 65536)
    used = int((await admin.info("memory"))["used_memory"])
    limit = used - _MIB
    try:
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", str(limit))
        refused = False
        try:
            await admin.set("soak:one-more", b"x")
        except OutOfMemoryError:
            refused = True
        await asyncio.sleep(MAXMEMORY_FOR_S)
    finally:
        await admin.config_set("maxmemory", "0")
        await admin.delete(*_BALLAST, "soak:one-more")
    return (
        f"maxmemory {limit:,} B (noeviction) for {MAXMEMORY_FOR_S:g} s; "
        f"a test write was {'refused' if refused else 'ACCEPTED'}"
    )


FAULTS: tuple[FaultKind, ...] = (
    FaultKind("redis-kill-restart", KILL_DOWN_S, True, _kill_and_restart),
    FaultKind("redis-sigstop-3s", FREEZE_S, True, _sigstop),
    FaultKind("client-kill-pubsub", 0.0, False, _kill_pubsub),
    FaultKind("script-flush", 0.0, False, _script_flush),
    FaultKind("downstream-outage-10s", DOWNSTREAM_OUTAGE_S, False, _downstream_outage),
    FaultKind("latency-200ms-20s", LATENCY_FOR_S, False, _latency),
    # A Redis that refuses every write cannot record a lease: like the chaos
    # suite, the trial bound is judged outside this window only.
    FaultKind("maxmemory-5s", MAXMEMORY_FOR_S, True, _maxmemory),
)
"""The rotation: one after the other, then again from the first."""


async def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def inject_faults(
    ctx: FaultContext,
    *,
    first_at: float,
    every: float,
    end: float,
    log: Callable[[str], None],
) -> None:
    """Inject the :data:`FAULTS` in rotation every ``every`` s from ``first_at`` until ``end``.

    A fault starts at its slot, or :data:`SETTLE_S` after the previous one
    ended if that is later, and only if it can end ``SETTLE_S`` before
    ``end``. A fault whose injection fails is recorded with the error and the
    rotation goes on.
    """
    numbers: dict[str, int] = {}
    slot = first_at
    for kind in cycle(FAULTS):
        if slot + kind.planned_s + SETTLE_S > end:
            return
        await _sleep_until(slot)
        start = time.monotonic()
        ctx.current = (kind.name, start)
        numbers[kind.name] = numbers.get(kind.name, 0) + 1
        detail = "interrupted"
        try:
            detail = await kind.inject(ctx)
        except Exception as error:  # reported with the fault; the soak goes on
            detail = f"injection failed: {error!r}"[:300]
        finally:
            fault = Fault(
                kind.name, numbers[kind.name], start, time.monotonic(), kind.redis_outage, detail
            )
            ctx.faults.append(fault)
            ctx.current = None
            with contextlib.suppress(Exception):
                log(f"fault {len(ctx.faults)}: {kind.name} #{fault.number}: {detail}")
        slot = max(slot + every, fault.end + SETTLE_S)
