"""Properties: whatever lands on the channel, in the stats list or in the state hash,
the pods keep working.

Hypothesis draws the input: random bytes, arbitrary JSON, well-formed
messages with fields replaced by wrong types, huge or negative numbers,
future versions, forged epochs and counts. Two pods of a fresh breaker (a new
name per example, on the session's real Redis) take it; then:

- no exception other than the breaker's own reaches a caller of ``fire()``;
- the listener and the ticker are alive, and Redis ran every script;
- a real ``force_open()`` through one pod reaches the other within two ticks,
  and a real ``reset()`` after it too: forged input cannot freeze a pod;
- a stats entry with absurd counts (more calls than any pod can make in a
  window) opens nobody.

Each example waits for ticks, so shrinking (hundreds of examples) is left
out: a failure reports the example as drawn. Examples are derandomized so CI
runs the same ones every time.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import pytest
import redis.asyncio as aioredis
from distributed_support import Cluster, Pod, counted, more_reports
from helpers import Boom
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from redis_server import RedisServer
from transport_support import redis_now_ms
from waiting import eventually, stays

from distributed_opossum import OpenCircuitError, State

pytestmark = pytest.mark.redis

TICK = 0.1
WITHIN = 2 * TICK + 0.3  # two ticks, plus room for a busy machine

PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

BROADCAST_FIELDS = ("v", "name", "gen", "epoch", "state", "open_until", "now", "attempts",
                    "origin", "reason")  # fmt: skip
STATS_FIELDS = ("v", "timestamp", "instance", "fires", "successes", "failures", "timeouts",
                "rejects", "local_open", "epoch")  # fmt: skip
STATE_FIELDS = ("gen", "epoch", "state", "open_until", "attempts", "closed_at", "reason",
                "trial_successes", "lease:intruder")  # fmt: skip
STATES = ("closed", "open", "half_open", "forced_open")

# --------------------------------------------------------------------------- strategies

edge_integers = st.sampled_from(
    [0, 1, -1, 2**31, 2**53 - 1, 2**53, 2**53 + 1, 2**63 - 1, 2**64, 10**12, -(2**63)]
)
nasty = st.one_of(
    st.none(),
    st.booleans(),
    edge_integers,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


def _field_values(field: str, known: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values worth trying in ``field``: wrong types and extremes, plus plausible forgeries."""
    if field == "v":
        return st.sampled_from([1, 2, 0, "1", 1.0]) | nasty
    if field == "state":
        return st.sampled_from([*STATES, "exploded", ""]) | nasty
    if field in ("gen", "name", "instance"):
        return st.sampled_from([known.get(field, ""), "someone-else", ""]) | nasty
    if field in ("epoch", "timestamp", "failures", "successes"):
        return st.integers(min_value=0, max_value=2**53 + 2) | edge_integers | nasty
    return nasty


@st.composite
def forged_messages(draw: st.DrawFn, base: dict[str, Any], fields: tuple[str, ...]) -> bytes:
    """Bytes, arbitrary JSON, or ``base`` with some fields replaced or dropped."""
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "mutated", "mutated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    message = dict(base)
    for field in draw(st.sets(st.sampled_from(fields), min_size=1, max_size=4)):
        message[field] = draw(_field_values(field, base))
    for field in draw(st.sets(st.sampled_from(fields), max_size=1)):
        message.pop(field, None)
    return json.dumps(message).encode()


# --------------------------------------------------------------------------- the pods


TwoPods = Callable[[], AbstractAsyncContextManager[Cluster]]


@pytest.fixture
def two_pods(redis_server_session: RedisServer, redis_client: aioredis.Redis) -> TwoPods:
    """``async with two_pods() as cluster``: two synced pods of a breaker of its own (a fresh
    name, so each example starts anew), short open periods."""

    @asynccontextmanager
    async def pods() -> AsyncIterator[Cluster]:
        async with Cluster(
            redis_server_session.url,
            f"prop-{uuid.uuid4().hex[:10]}",
            admin=redis_client,
            reset_timeout=0.5,
            rolling_count_timeout=1.0,
            volume_threshold=5,
            sync_interval=TICK,
        ) as cluster:
            await cluster.started(2)
            yield cluster

    return pods


async def calls_are_clean(pod: Pod) -> None:
    """A few calls: only the breaker's own outcomes come back."""
    for _ in range(3):
        with suppress(OpenCircuitError, Boom):
            await pod.breaker.fire()


async def manual_control_reaches_everyone(pods: list[Pod]) -> None:
    """force_open() through pod0 reaches pod1 within two ticks; so does reset()."""
    for pod in pods:
        coordinator = pod.coordinator
        assert coordinator._listener is not None
        assert not coordinator._listener.done()
        assert coordinator._ticker is not None
        assert not coordinator._ticker.done()
    await pods[0].breaker.force_open()
    await eventually(
        lambda: all(p.breaker.state is State.FORCED_OPEN for p in pods),
        within=WITHIN,
        what=f"force_open on every pod (epochs {[p.link.epoch for p in pods]})",
    )
    await pods[0].breaker.reset()
    await eventually(
        lambda: all(p.breaker.closed for p in pods),
        within=WITHIN,
        what=f"reset on every pod (epochs {[p.link.epoch for p in pods]})",
    )


async def reported(pods: list[Pod], ticks: int = 2) -> None:
    """Wait until every pod has made ``ticks`` more reports (calling: idle pods send none)."""
    await more_reports(pods, ticks, within=ticks * TICK + 0.5)


# --------------------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(data=st.data())
async def test_any_broadcast_leaves_the_pods_working(
    two_pods: TwoPods, data: st.DataObject
) -> None:
    """Whatever is published on the events channel, calls stay clean and manual control works."""
    async with two_pods() as cluster:
        pods, admin = cluster.pods, cluster.admin
        now = await redis_now_ms(admin)
        base = {
            "v": 1,
            "name": pods[0].breaker.name,
            "gen": pods[0].link.gen,
            "epoch": pods[0].link.epoch + 1,
            "state": "open",
            "open_until": now + 500,
            "now": now,
            "attempts": 1,
            "origin": "intruder",
            "reason": "forged",
        }
        payload = data.draw(forged_messages(base, BROADCAST_FIELDS), label="broadcast")
        async with counted(pods, "messages"):  # delivered
            await admin.publish(pods[0].link.keys.events, payload)
        await calls_are_clean(pods[1])
        await manual_control_reaches_everyone(pods)


@PROPERTY_SETTINGS
@example(epoch=2**53 - 1, state="closed", same_gen=True)  # the forgery of the issue
@given(
    epoch=st.integers(min_value=0, max_value=2**53 - 1) | edge_integers.filter(lambda e: e >= 0),
    state=st.sampled_from(STATES),
    same_gen=st.booleans(),
)
async def test_well_formed_forged_broadcast_cannot_freeze_the_pods(
    two_pods: TwoPods, epoch: int, state: str, same_gen: bool
) -> None:
    """A valid-looking broadcast with any epoch and state: the real state still wins."""
    async with two_pods() as cluster:
        pods, admin = cluster.pods, cluster.admin
        now = await redis_now_ms(admin)
        forged = {
            "v": 1,
            "name": pods[0].breaker.name,
            "gen": pods[0].link.gen if same_gen else "forged-gen",
            "epoch": epoch,
            "state": state,
            "open_until": now + 60_000 if state == "open" else 0,
            "now": now,
            "attempts": 1 if state == "open" else 0,
            "origin": "intruder",
            "reason": "forged",
        }
        async with counted(pods, "messages"):  # delivered
            await admin.publish(pods[0].link.keys.events, json.dumps(forged))
        await calls_are_clean(pods[1])
        await manual_control_reaches_everyone(pods)


@PROPERTY_SETTINGS
@given(data=st.data())
async def test_any_stats_entry_leaves_reporting_and_control_working(
    two_pods: TwoPods, data: st.DataObject
) -> None:
    """Whatever lands in the stats list, every report runs and manual control works."""
    async with two_pods() as cluster:
        pods, admin = cluster.pods, cluster.admin
        base = {
            "v": 1,
            "timestamp": await redis_now_ms(admin),
            "instance": "ghost",
            "fires": 10,
            "successes": 5,
            "failures": 5,
            "timeouts": 0,
            "rejects": 0,
            "local_open": False,
            "epoch": pods[0].link.epoch,
        }
        entry = data.draw(forged_messages(base, STATS_FIELDS), label="stats entry")
        await admin.rpush(pods[0].link.keys.stats, entry)
        await reported(pods)
        for pod in pods:
            assert pod.coordinator.stats["script_errors"] == 0
        await calls_are_clean(pods[1])
        await manual_control_reaches_everyone(pods)


@PROPERTY_SETTINGS
@given(
    failures=st.integers(min_value=10**9, max_value=2**53 - 1) | st.sampled_from([10**12, 1e12]),
    successes=st.integers(min_value=0, max_value=10),
)
async def test_absurd_counts_open_nobody(
    two_pods: TwoPods, failures: int | float, successes: int
) -> None:
    """A stats entry claiming more failures than any pod can make in a window opens nobody."""
    async with two_pods() as cluster:
        pods, admin = cluster.pods, cluster.admin
        entry = {
            "v": 1,
            "timestamp": await redis_now_ms(admin),
            "instance": "ghost",
            "fires": failures,
            "successes": successes,
            "failures": failures,
            "timeouts": 0,
            "rejects": 0,
            "local_open": False,  # a trip vote is a vote whatever the counts
            "epoch": pods[0].link.epoch,
        }
        await admin.rpush(pods[0].link.keys.stats, json.dumps(entry))
        await reported(pods, ticks=3)
        await stays(lambda: all(p.breaker.closed for p in pods), duration=TICK)


@PROPERTY_SETTINGS
@given(
    fields=st.dictionaries(
        st.sampled_from(STATE_FIELDS),
        st.one_of(
            nasty.map(lambda v: json.dumps(v) if not isinstance(v, str) else v),
            st.sampled_from(STATES),
            st.integers(min_value=0, max_value=2**53 + 2).map(str),
        ),
        min_size=1,
        max_size=5,
    )
)
async def test_any_state_hash_leaves_reporting_and_control_working(
    two_pods: TwoPods, fields: dict[str, str]
) -> None:
    """Whatever is written into the state hash, reports run and manual control works."""
    async with two_pods() as cluster:
        pods, admin = cluster.pods, cluster.admin
        await admin.hset(pods[0].link.keys.state, mapping=fields)  # type: ignore[arg-type]
        await reported(pods)
        for pod in pods:
            assert pod.coordinator.stats["script_errors"] == 0
        await calls_are_clean(pods[1])
        await manual_control_reaches_everyone(pods)
