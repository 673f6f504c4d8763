"""The five phases of the demo, and everything one run starts and stops.

1. healthy; 2. the API goes down: one pod trips, every pod opens; 3. backoff:
one trial per open period cluster-wide, each period twice the last; 4. the API
recovers: one successful trial closes every pod; 5. one sick pod, on a second
breaker with ``quorum``: only that pod opens.

Phases wait for what they are about (every pod open, the third opening, every
pod closed) rather than for fixed times, with a bound each, so a busy machine
slows the demo down instead of breaking its story. A bound that runs out is
said on the timeline and makes the exit code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import redis.asyncio as aioredis

from distributed_opossum._redis.keys import BreakerKeys

from .downstream import PaymentsApi
from .fleet import Fleet
from .picture import render_svg
from .records import PhaseStart, StateChange
from .redis_target import DemoError, RedisTarget
from .settings import (
    BREAKER,
    QUORUM,
    QUORUM_BREAKER,
    SYNC_INTERVAL,
    VOLUME_THRESHOLD,
    WINDOW,
    Settings,
)
from .summary import render, summarise
from .timeline import Timeline

__all__ = ["run"]


class Stopped(Exception):
    """SIGTERM or SIGHUP asked the demo to stop (Ctrl-C arrives as KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


async def run(settings: Settings, target: RedisTarget, out: TextIO, kill_list: list[Fleet]) -> int:
    """One run of the demo; returns the exit code.

    Args:
        settings: what to run.
        target: the Redis (already started when private).
        out: where the timeline and the report go.
        kill_list: gets the fleet, so the caller can kill the pods even if this
            coroutine is interrupted mid-cleanup.

    Raises:
        Stopped: SIGTERM or SIGHUP; everything was stopped.
        DemoError: the demo cannot run (the message says why).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    signals: list[int] = []

    def on_signal(signum: int) -> None:
        signals.append(signum)
        task.cancel()

    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await _run(settings, target, out, kill_list)
    except asyncio.CancelledError:
        if signals:
            raise Stopped(signals[0]) from None
        raise


async def _run(settings: Settings, target: RedisTarget, out: TextIO, kill_list: list[Fleet]) -> int:
    colour = out.isatty() and "NO_COLOR" not in os.environ
    timeline = Timeline(out, colour=colour, quorums={BREAKER: None, QUORUM_BREAKER: QUORUM})
    api = PaymentsApi(timeline.now, settings.slow_delay)
    fleet = Fleet(settings, timeline)
    kill_list.append(fleet)

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    try:
        say(
            f"distributed_opossum demo: {settings.pods} pods share one circuit breaker, "
            f"{BREAKER!r}, through Redis."
        )
        say(_field("Redis", f"{target.description}; keys under the prefix {settings.prefix!r}"))
        if target.kind == "url":
            await _check_redis(target.url)
        await api.start()
        say(_field("payments API", f"http://127.0.0.1:{api.port}/charge, {_API}"))
        pids = await fleet.start(target.url, api.port)
        pid_list = ", ".join(str(pid) for pid in pids.values())
        say(
            _field(
                "pods",
                f"{settings.pods} processes, each with its own Redis client (pids {pid_list})",
            )
        )
        for label, text in _setup(settings):
            say(_field(label, text))
        timeline.start()
        await fleet.send("go")
        problems = await _phases(settings, timeline, api, fleet)
        timeline.note("stopping the pods")
        await fleet.stop()
        end = timeline.now()
        await timeline.stop()
        say()
        say("── summary " + "─" * 81)
        counts = timeline.counts
        summary = summarise(
            timeline.records, api.hits, counts, settings.pod_names, settings.sick_pod
        )
        for text in render(summary):
            say(text)
        if settings.picture is not None:
            path = _write_picture(settings, timeline, end)
            say(f"Picture: {path}  (a swimlane per pod; open it in a browser)")
        for problem in problems:
            say(f"Not as expected: {problem}")
        return 1 if problems else 0
    finally:
        await fleet.stop()
        await timeline.stop()
        await api.close()
        if target.kind == "url":
            await _delete_keys(target.url, settings.prefix)


_API = "a local HTTP server the demo makes healthy, failing or slow"


def _field(label: str, text: str) -> str:
    """One line of the introduction, wrapped under its label."""
    return textwrap.fill(
        text,
        100,
        initial_indent=f"  {label + ':':<14}",
        subsequent_indent=" " * 16,
        break_on_hyphens=False,
        break_long_words=False,
    )


def _setup(settings: Settings) -> list[tuple[str, str]]:
    """What the pods do, for the introduction."""
    rates = ", ".join(
        f"{pod} {rate:g}/s" for pod, rate in zip(settings.pod_names, settings.rates, strict=True)
    )
    return [
        (
            "traffic",
            f"{rates} (a skewed load balancer: a pod under {VOLUME_THRESHOLD / WINDOW:g} calls/s "
            "cannot trip on its own)",
        ),
        ("breakers", f"{settings.describe_options()}, sync_interval={SYNC_INTERVAL:g}"),
        (
            "comparison",
            f"each pod also sends a copy of its {BREAKER} traffic through a local breaker of "
            "its own (not distributed); the API counts both apart",
        ),
        (
            "timeline",
            "seconds since phase 1, from each pod's own monotonic clock (one clock for every "
            "process of a machine)",
        ),
    ]


async def _phases(
    settings: Settings, timeline: Timeline, api: PaymentsApi, fleet: Fleet
) -> list[str]:
    """Run the five phases; returns what did not happen within its bound."""
    pods = settings.pod_names
    problems: list[str] = []

    def phase(number: int, title: str) -> None:
        timeline.mark(PhaseStart(timeline.now(), number, title))

    async def expect(what: str, predicate: Callable[[], bool], bound: float) -> None:
        if not await timeline.wait_until(predicate, bound):
            problems.append(f"{what} (waited {bound:.1f} s)")
            timeline.note(f"not as expected: {what} within {bound:.1f} s")

    phase(1, f"healthy: every pod calls the payments API through breaker {BREAKER!r}")
    timeline.mark(api.set("healthy"))
    await asyncio.sleep(settings.healthy_seconds)

    phase(2, "outage: the API fails every call; one pod trips, every pod opens")
    timeline.mark(api.set("failing"))
    await expect(
        "every pod opened",
        lambda: all(timeline.state(pod, BREAKER) == "open" for pod in pods),
        3.0 + 4 * WINDOW,
    )

    phase(3, "backoff: one trial per open period, cluster-wide; each failure doubles the period")
    timeline.mark(api.set("slow"))
    await expect(
        "two failed trials",
        lambda: timeline.attempts(BREAKER) >= 3,
        3 * settings.reset_timeout + 2 * settings.timeout + 5.0,
    )

    phase(4, "recovery: the API is healthy again; the next trial closes every pod")
    timeline.mark(api.set("healthy"))
    timeline.note("(the pods stay open until their open period ends: backoff; then one trial)")
    await expect(
        "every pod closed",
        lambda: all(timeline.state(pod, BREAKER) == "closed" for pod in pods),
        settings.max_reset_timeout + settings.timeout + 5.0,
    )
    await asyncio.sleep(settings.hold_seconds)

    sick = settings.sick_pod
    await fleet.send("quorum")
    phase(5, f"one sick pod: only {sick}'s calls fail; with quorum={QUORUM}, only {sick} opens")
    timeline.note(
        f"(the pods call through {QUORUM_BREAKER!r} from now on: the same options plus "
        f"quorum={QUORUM}."
    )
    timeline.note(f" Without a quorum, {sick}'s trip would open every pod, as in phase 2.)")
    sick_since = timeline.now()
    timeline.mark(api.set("healthy", sick=(sick,)))
    await expect(
        f"{sick} opened",
        lambda: timeline.state(sick, QUORUM_BREAKER) != "closed",
        settings.sick_seconds,
    )
    await asyncio.sleep(max(0.0, settings.sick_seconds - (timeline.now() - sick_since)))
    opened = {
        r.pod
        for r in timeline.records
        if isinstance(r, StateChange) and r.breaker == QUORUM_BREAKER and r.state == "open"
    }
    if others := sorted(opened - {sick}):
        problems.append(f"in phase 5, {', '.join(others)} opened too")
    return problems


def _write_picture(settings: Settings, timeline: Timeline, end: float) -> Path:
    assert settings.picture is not None
    title = (
        f"distributed_opossum demo: {settings.pods} pods, breaker {BREAKER!r} "
        f"(phase 5: {QUORUM_BREAKER!r}, quorum={QUORUM})"
    )
    svg = render_svg(timeline.records, settings.pod_names, end, title)
    path = settings.picture.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg, encoding="utf-8")
    return path


async def _check_redis(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        async with asyncio.timeout(5.0):
            await client.ping()
    except Exception as error:
        raise DemoError(f"cannot reach Redis at --url: {error or type(error).__name__}") from None
    finally:
        await client.aclose()


async def _delete_keys(url: str, prefix: str) -> None:
    """Remove the run's keys from the user's Redis (they would expire anyway)."""
    client = aioredis.Redis.from_url(url)
    try:
        keys = [
            key
            for name in (BREAKER, QUORUM_BREAKER)
            for key in _keys_of(BreakerKeys.for_breaker(prefix, name))
        ]
        async with asyncio.timeout(5.0):
            await client.delete(*keys)
    except Exception as error:  # best effort: the keys expire on their own
        print(f"could not delete the demo's keys: {error}", file=sys.stderr)
    finally:
        await client.aclose()


def _keys_of(keys: BreakerKeys) -> list[str]:
    return [keys.state, keys.stats, keys.pods]
