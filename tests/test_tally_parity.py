"""The tally in Python (``_redis/tally.py``) is the script's, field for field.

The pod that wins the tally lease sums the windows hash itself and runs the
script only when the sums say *open*: so on any windows hash, the Python tally
and ``report_window.lua``'s must agree on the pooled figures, on which fields
go, and on whether the breaker opens. Hypothesis draws the hash: fields of
the current gen and epoch, of others, old, from the future, and garbage; the
script runs on the session's real Redis (Redis' own Lua) and on fakeredis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from redis_server import RedisServer
from transport_support import KEYS, PARAMS

from distributed_opossum._redis.params import DecisionParams
from distributed_opossum._redis.scripts import script_source
from distributed_opossum._redis.tally import decide, list_cap, tally_windows

GEN = "feedfacefeedface"
EPOCH = 3

PARITY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

counts = st.one_of(
    st.integers(min_value=0, max_value=30),
    st.sampled_from([99_999_999, 100_000_000, 100_000_001, 2**53, 10**20]),
)
digits = st.text(alphabet="0123456789", min_size=1, max_size=22)


@st.composite
def field_values(draw: st.DrawFn, now: int) -> bytes:
    """A pod's field as a report writes it, or a near miss, or garbage."""
    kind = draw(st.sampled_from(["current", "current", "current", "other", "garbage"]))
    if kind == "garbage":
        return draw(
            st.binary(max_size=60)
            | st.builds(lambda d: f"{GEN}:{EPOCH} {d}".encode(), st.text(max_size=30))
        )
    age = draw(
        st.sampled_from([0, 1, PARAMS.window_ms - 1, PARAMS.window_ms, PARAMS.window_ms + 1])
        | st.integers(min_value=-2 * PARAMS.window_ms, max_value=2 * PARAMS.window_ms)
    )
    ts: str = str(now - age)
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        ts = draw(digits)  # leading zeros, too short, too long
    if kind == "current":
        gen, epoch = GEN, str(EPOCH)
    else:
        gen = draw(st.sampled_from([GEN, "other-history", "a:b", ""]))
        epoch = draw(st.sampled_from([str(EPOCH - 1), str(EPOCH + 1), "03", "x"]))
    v = draw(counts)
    f = draw(st.integers(min_value=0, max_value=v + 1) if v < 100 else counts)
    t = draw(st.sampled_from([0, 0, 1, 2]) | counts)
    tail = draw(st.sampled_from(["", "", "", " ", "\n", " 0"]))
    return f"{gen}:{epoch} {ts} {v} {f} {t}{tail}".encode()


@st.composite
def windows(draw: st.DrawFn, now: int) -> dict[bytes, bytes]:
    size = draw(st.integers(min_value=0, max_value=12))
    return {f"pod:p{i}".encode(): draw(field_values(now)) for i in range(size)}


decisions = st.sampled_from(
    [
        PARAMS,
        dataclasses.replace(PARAMS, volume_threshold=10),
        dataclasses.replace(PARAMS, quorum=2, min_pod_volume=3),
        dataclasses.replace(PARAMS, quorum=0.5, min_pod_volume=1),
        dataclasses.replace(PARAMS, error_threshold_percentage=12.5, volume_threshold=5),
    ]
)


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), "fakeredis"])
def sync_client(
    request: pytest.FixtureRequest, redis_server_session: RedisServer
) -> Iterator[redis.Redis]:
    client: redis.Redis = (
        redis.Redis.from_url(redis_server_session.url)
        if request.param == "redis"
        else fakeredis.FakeRedis()
    )
    try:
        yield client
    finally:
        client.close()


def _script_tally(
    client: redis.Redis, fields: dict[bytes, bytes], decision: DecisionParams
) -> tuple[list[int], set[bytes], str, int]:
    """Run the script's tally on ``fields``: (pooled figures, fields left, state, list length)."""
    client.delete(KEYS.state, KEYS.stats, KEYS.pods, KEYS.tally)
    client.hset(
        KEYS.state,
        mapping={
            "gen": GEN, "epoch": EPOCH, "state": "closed", "open_until": 0, "attempts": 0,
            "closed_at": 0, "reason": "test", "trial_successes": 0,
        },
    )  # fmt: skip
    if fields:
        client.hset(KEYS.pods, mapping=fields)  # type: ignore[arg-type]
    client.rpush(KEYS.stats, *[b"entry"] * 60)
    args: list[str | int | float] = [
        "tallier", 0, 0, 0, 0, 0, 0, EPOCH, 1.0, "g2", KEYS.events, KEYS.name,
        *decision.to_argv(), GEN, "", 1, 1000,
    ]  # fmt: skip
    reply = client.eval(
        script_source("report_window"), 4, KEYS.stats, KEYS.state, KEYS.pods, KEYS.tally, *args
    )
    assert isinstance(reply, list)
    left = {key for key in client.hkeys(KEYS.pods) if isinstance(key, bytes)}
    state = client.hget(KEYS.state, "state")
    assert isinstance(state, bytes)
    return list(reply[11:15]), left, state.decode(), int(client.llen(KEYS.stats))


def _redis_now(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


@PARITY_SETTINGS
@given(data=st.data(), decision=decisions)
def test_the_python_tally_is_the_scripts(
    sync_client: redis.Redis, data: st.DataObject, decision: DecisionParams
) -> None:
    decision = dataclasses.replace(decision, max_entries=10, pod_entries=5)
    # Fields a few seconds either side of the window's edges, read against the
    # script's clock: the draw uses a now a little before the script's own.
    now = _redis_now(sync_client)
    fields = data.draw(windows(now))
    figures, left, state, length = _script_tally(sync_client, fields, decision)
    script_now = _redis_now(sync_client)
    # The script ran between `now` and `script_now`: a field that ages out in
    # between may go either way; draws on those few ms are rare, but exact
    # edges are drawn on purpose, so compare at both ends and require one.
    results = [
        tally_windows(fields, gen=GEN, epoch=EPOCH, now_ms=at, params=decision)
        for at in range(now, script_now + 1)
    ]
    matches = [
        t
        for t in results
        if set(fields) - set(t.gone) == left
        and (state == "open") == (decide(t, decision) is not None)
        and [t.volume, t.failures, t.reporting, t.votes] == figures
        and length == (60 if state == "open" else min(60, list_cap(t, decision)))
    ]
    assert matches, (fields, figures, left, state, length, results[0])


def test_the_window_edges() -> None:
    """Young is ``now - window_ms < ts <= now + window_ms``, as in the script's header."""
    now, w = 1_800_000_000_000, PARAMS.window_ms

    def counted(ts: int) -> bool:
        fields = {b"pod:a": f"{GEN}:{EPOCH} {ts} 1 0 0".encode()}
        return tally_windows(fields, gen=GEN, epoch=EPOCH, now_ms=now, params=PARAMS).pods == 1

    assert [counted(ts) for ts in (now - w, now - w + 1, now + w, now + w + 1)] == [
        False,
        True,
        True,
        False,
    ]
