"""A check read before the news the pod follows is stale, not a rollback.

A pod's replies and its broadcasts come on two connections. A check (the reply a
pod follows whatever it says) can be read in Redis just before a change whose
broadcast reaches the pod first: its older epoch is then old news, not Redis
having lost history. Followed as a rollback, it re-opened a pod that the
cluster had just closed, which then missed the next opening (seen as pods never
reporting ``open`` in the propagation benchmark).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from helpers import Downstream
from waiting import eventually

from distributed_opossum import CircuitBreaker
from distributed_opossum._redis.link import SharedLink
from distributed_opossum._redis.scripts import Broadcast, SharedState, SharedStateName


@pytest.fixture
async def pod() -> AsyncIterator[CircuitBreaker[..., Any]]:
    """One distributed breaker on fakeredis, synced once; reports far apart."""
    client: aioredis.Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    breaker: CircuitBreaker[..., Any] = CircuitBreaker(
        Downstream().action,
        name="stale",
        reset_timeout=60.0,
        distributed={"client": client, "instance_id": "pod", "sync_interval": 60.0},
    )
    try:
        await eventually(lambda: link_of(breaker).gen is not None, what="first sync")
        yield breaker
    finally:
        await breaker.shutdown()
        await client.aclose()


def link_of(breaker: CircuitBreaker[..., Any]) -> SharedLink:
    """The breaker's tie to the cluster."""
    link = breaker._link
    assert link is not None
    return link


def broadcast(link: SharedLink, epoch: int, state: SharedStateName, now_ms: int) -> Broadcast:
    """News of ``state`` at ``epoch``, sent at Redis time ``now_ms``."""
    return Broadcast(
        name=link.keys.name,
        gen=link.gen or "",
        epoch=epoch,
        state=state,
        open_until_ms=now_ms + 60_000 if state == "open" else 0,
        now_ms=now_ms,
        attempts=1 if state == "open" else 0,
        origin="elsewhere",
        reason="",
    )


def reply(link: SharedLink, epoch: int, state: SharedStateName, now_ms: int) -> SharedState:
    """A read of the state hash: ``state`` at ``epoch``, read at Redis time ``now_ms``."""
    return SharedState(
        gen=link.gen or "",
        epoch=epoch,
        state=state,
        open_until_ms=now_ms + 60_000 if state == "open" else 0,
        attempts=1 if state == "open" else 0,
        closed_at_ms=0,
        reason="",
        now_ms=now_ms,
        changed=False,
        lease_expires_ms=0,
        trial_successes=0,
    )


async def test_a_check_read_before_the_news_is_asked_again_not_rolled_back(
    pod: CircuitBreaker[..., Any],
) -> None:
    """Open (e+1) then closed (e+2) by broadcast; a check read at e+1 before the close
    leaves the pod closed and asks again; the second answer is believed."""
    link = link_of(pod)
    epoch, t = link.epoch, 1_000_000
    link.apply(broadcast(link, epoch + 1, "open", t + 10), own=False)
    assert pod.opened
    link.verify()  # a check is under way: read at t + 15, while still open ...
    link.apply(broadcast(link, epoch + 2, "closed", t + 15), own=False)  # ... news first
    assert pod.closed

    link.apply(reply(link, epoch + 1, "open", t + 15), own=False)  # same ms: unordered
    assert pod.closed  # old news, not Redis losing the close
    assert link.verifying  # asked again

    # Asked again, Redis still says e+1, read after the news: it lost the close.
    link.apply(reply(link, epoch + 1, "open", t + 30), own=False)
    assert pod.opened
    assert link.epoch == epoch + 1


async def test_a_forged_clock_delays_a_rollback_by_one_check_only(
    pod: CircuitBreaker[..., Any],
) -> None:
    """A broadcast with a far-future clock cannot make every later check look stale."""
    link = link_of(pod)
    epoch, t = link.epoch, 1_000_000
    link.apply(broadcast(link, epoch + 1, "open", 10**15), own=False)  # forged
    assert pod.opened
    link.verify()
    link.apply(reply(link, epoch, "closed", t), own=False)
    assert pod.opened
    assert link.verifying
    link.apply(reply(link, epoch, "closed", t + 5), own=False)
    assert pod.closed  # Redis' state wins on the second check
    assert link.epoch == epoch
