"""_scripts.py: loading, registry, argument checks, NOSCRIPT recovery and batches."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import re
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis_server import RedisServer
from transport_support import KEYS, PARAMS, Client, params, report

from distributed_opossum._redis import scripts as _scripts
from distributed_opossum._redis.keys import BreakerKeys
from distributed_opossum._redis.params import DecisionParams, PodWindow, WindowReport
from distributed_opossum._redis.replies import parse_report_reply, parse_state_reply
from distributed_opossum._redis.scripts import (
    SCRIPT_NAMES,
    PlainReply,
    ProtocolError,
    SharedState,
    script_source,
    scripts_for,
)

LUA_DIR = (Path(__file__).resolve().parent.parent / "lua").resolve()


# --------------------------------------------------------------------------- the files


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_every_script_has_a_header(name: str) -> None:
    """Each file opens with its name, then KEYS, ARGV (where used) and returns."""
    text = (LUA_DIR / f"{name}.lua").read_text()
    header = text.split("\n\n", 1)[0]
    assert header.startswith(f"-- {name}: ")
    assert "-- KEYS[1]" in header
    assert "-- returns" in header
    for used in sorted(set(re.findall(r"ARGV\[(\d+)\]", text.split("\n\n", 1)[1]))):
        assert re.search(rf"ARGV\[{used}\]|ARGV\[\d+\.\.\d+\]", header), (
            f"ARGV[{used}] undocumented"
        )


def test_lua_files_are_exactly_the_known_scripts() -> None:
    """No script is left unregistered, none is missing."""
    names = {p.stem for p in LUA_DIR.glob("*.lua")}
    assert names == {*SCRIPT_NAMES, "_prelude"}


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_scripts_draw_no_random_numbers(name: str) -> None:
    """Randomness comes from the client (candidate gen, jitter), never from Lua."""
    assert "math.random" not in script_source(name)


def test_report_window_reads_params_in_argv_order() -> None:
    """report_window.lua's PARAM_NAMES is DecisionParams.ARGV_FIELDS, in order."""
    text = (LUA_DIR / "report_window.lua").read_text()
    block = re.search(r"local PARAM_NAMES = \{(.*?)\}", text, re.S)
    assert block is not None
    assert tuple(re.findall(r"'(\w+)'", block.group(1))) == DecisionParams.ARGV_FIELDS
    assert set(PARAMS.argv_values()) == set(DecisionParams.ARGV_FIELDS)


def test_encoded_params_are_each_options_own() -> None:
    """The argv sent is made once per options object, from its own values: options
    that compare equal (quorum 1 pod and quorum 100 %) still send their own."""
    by_count = dataclasses.replace(PARAMS, quorum=1)
    by_fraction = dataclasses.replace(PARAMS, quorum=1.0)
    assert by_count == by_fraction  # 1 == 1.0: equal as dataclasses
    assert by_count.argv_bytes == tuple(a.encode() for a in by_count.to_argv())
    assert by_fraction.argv_bytes == tuple(a.encode() for a in by_fraction.to_argv())
    assert by_count.argv_bytes != by_fraction.argv_bytes


def test_sources_are_prelude_plus_script() -> None:
    """What Redis gets is the prelude followed by the file; the sha is its SHA1."""
    source = script_source("read_state")
    prelude = (LUA_DIR / "_prelude.lua").read_text()
    assert source == prelude + "\n" + (LUA_DIR / "read_state.lua").read_text()
    script = _scripts._scripts()["read_state"]
    assert script.sha == hashlib.sha1(source.encode()).hexdigest()


def test_scripts_load_from_the_package_and_the_top_level_lua_is_a_link() -> None:
    """One place: the subpackage's lua/ (the repository's lua is a link to it, for reading)."""
    package_dir = Path(_scripts.__file__).resolve().parent / "lua"
    assert Path(str(_scripts._lua_dir())).resolve() == package_dir
    assert package_dir == LUA_DIR


# --------------------------------------------------------------------------- registry


async def test_one_scripts_object_per_client(fake_redis_client: Client) -> None:
    """scripts_for returns the same object for a client, another for another client."""
    other = aioredis.Redis()
    try:
        assert scripts_for(fake_redis_client) is scripts_for(fake_redis_client)
        assert scripts_for(other) is not scripts_for(fake_redis_client)
        assert scripts_for(other).client is other
    finally:
        await other.aclose()


async def test_registry_does_not_keep_clients_alive() -> None:
    """A client dropped by its owner is collected, registry or not."""
    client = aioredis.Redis()
    scripts = scripts_for(client)
    await client.aclose()
    ref = weakref.ref(client)
    del client
    gc.collect()
    assert ref() is None
    with pytest.raises(RuntimeError, match="garbage-collected"):
        _ = scripts.client


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("changes", "error", "field"),
    [
        ({"window_ms": 0}, ValueError, "window_ms"),
        ({"window_ms": 1.5}, TypeError, "window_ms"),
        ({"volume_threshold": -1}, ValueError, "volume_threshold"),
        ({"volume_threshold": True}, TypeError, "volume_threshold"),
        ({"error_threshold_percentage": 101}, ValueError, "error_threshold_percentage"),
        ({"error_threshold_percentage": float("nan")}, ValueError, "error_threshold_percentage"),
        ({"quorum": 0}, ValueError, "quorum"),
        ({"quorum": 0.0}, ValueError, "quorum"),
        ({"quorum": 1.5}, ValueError, "quorum"),
        ({"quorum": True}, TypeError, "quorum"),
        ({"quorum": "2"}, TypeError, "quorum"),
        ({"min_pod_volume": -1}, ValueError, "min_pod_volume"),
        ({"reset_timeout_ms": -1}, ValueError, "reset_timeout_ms"),
        ({"reset_timeout_multiplier": 0.5}, ValueError, "reset_timeout_multiplier"),
        ({"reset_timeout_multiplier": float("inf")}, ValueError, "reset_timeout_multiplier"),
        ({"max_reset_timeout_ms": -1}, ValueError, "max_reset_timeout_ms"),
        ({"half_open_max_calls": 0}, ValueError, "half_open_max_calls"),
        ({"lease_ttl_ms": 0}, ValueError, "lease_ttl_ms"),
        ({"max_entries": 0}, ValueError, "max_entries"),
        ({"key_ttl_ms": 9_999}, ValueError, "key_ttl_ms"),
    ],
)
def test_decision_params_are_validated(
    changes: dict[str, Any], error: type[Exception], field: str
) -> None:
    """Each bad value is refused with an error naming its field."""
    with pytest.raises(error, match=field):
        params(**changes)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, {"quorum_count": 0, "quorum_fraction": 0, "max_reset_timeout_ms": -1}),
        ({"quorum": 3}, {"quorum_count": 3, "quorum_fraction": 0}),
        ({"quorum": 0.5}, {"quorum_count": 0, "quorum_fraction": 0.5}),
        ({"volume_threshold": 7}, {"min_pod_volume": 7}),
        ({"volume_threshold": 7, "min_pod_volume": 2}, {"min_pod_volume": 2}),
        ({"max_reset_timeout_ms": 0}, {"max_reset_timeout_ms": 0}),
    ],
)
def test_decision_params_as_script_arguments(
    changes: dict[str, Any], expected: dict[str, int | float]
) -> None:
    """None and quorum kinds map onto the scripts' numeric conventions."""
    values = params(**changes).argv_values()
    assert {k: values[k] for k in expected} == expected
    argv = params(**changes).to_argv()
    assert len(argv) == len(DecisionParams.ARGV_FIELDS)
    assert all(isinstance(a, str) for a in argv)


def test_window_report_is_validated() -> None:
    """Counts are non-negative ints; local_open a bool."""
    with pytest.raises(ValueError, match="failures"):
        WindowReport(failures=-1)
    with pytest.raises(TypeError, match="fires"):
        WindowReport(fires=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="local_open"):
        WindowReport(local_open=1)  # type: ignore[arg-type]
    assert WindowReport().is_empty
    assert not WindowReport(rejects=1).is_empty
    assert not WindowReport(local_open=True).is_empty


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"instance": ""}, "instance"),
        ({"known_epoch": -1}, "known_epoch"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": float("nan")}, "jitter"),
    ],
)
async def test_bad_report_arguments_fail_before_sending(
    fake_redis_client: Client, kwargs: dict[str, Any], field: str
) -> None:
    """Bad arguments raise at once and send nothing."""
    call: dict[str, Any] = {"instance": "pod", "known_epoch": 0, "params": PARAMS} | kwargs
    with pytest.raises((ValueError, TypeError), match=field):
        await scripts_for(fake_redis_client).report_window(KEYS, WindowReport(), **call)
    with pytest.raises((ValueError, TypeError), match=field):
        scripts_for(fake_redis_client).batch().report_window(KEYS, WindowReport(), **call)
    assert await fake_redis_client.dbsize() == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"window": (1, 0, 0)}, TypeError, "window"),
        ({"lease_ms": 0}, ValueError, "lease_ms"),
        ({"known_gen": None}, TypeError, "known_gen"),
    ],
)
async def test_bad_window_arguments_fail_before_sending(
    fake_redis_client: Client, kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    """The pod's window, the lease and the gen are checked before anything is sent."""
    call: dict[str, Any] = {"instance": "pod", "known_epoch": 0, "params": PARAMS} | kwargs
    with pytest.raises(error, match=field):
        await scripts_for(fake_redis_client).report_window(KEYS, WindowReport(), **call)
    with pytest.raises(error, match=field):
        scripts_for(fake_redis_client).batch().report_window(KEYS, WindowReport(), **call)
    assert await fake_redis_client.dbsize() == 0


def test_pod_window_is_validated() -> None:
    """Counts are non-negative ints, failures within the volume."""
    with pytest.raises(ValueError, match="failures"):
        PodWindow(volume=1, failures=2)
    with pytest.raises(ValueError, match="trips"):
        PodWindow(trips=-1)
    assert PodWindow.of(WindowReport(successes=2, failures=1, rejects=5)) == PodWindow(3, 1, 0)
    assert PodWindow.of(WindowReport(local_open=True)) == PodWindow(0, 0, 1)
    assert PodWindow().is_empty
    assert not PodWindow(trips=1).is_empty
    assert PodWindow(7, 2, 1).to_text() == "7 2 1"


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"instance": ""}, ValueError, "instance"),
        ({"gen": ""}, ValueError, "gen"),
        ({"epoch": -1}, ValueError, "epoch"),
        ({"redis_ms": -1}, ValueError, "redis_ms"),
        ({"lease_ms": 0}, ValueError, "lease_ms"),
        ({"report": WindowReport(local_open=True)}, ValueError, "trip"),
    ],
)
async def test_bad_plain_arguments_fail_before_sending(
    fake_redis_client: Client, kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    """A plain report is checked when queued; a refused one is not queued."""
    call: dict[str, Any] = {
        "report": WindowReport(successes=1),
        "instance": "pod",
        "gen": "g",
        "epoch": 0,
        "window": PodWindow(1, 0, 0),
        "redis_ms": 1,
        "lease_ms": 1_000,
    } | kwargs
    batch = scripts_for(fake_redis_client).batch()
    with pytest.raises(error, match=field):
        batch.plain_report(KEYS, **call)
    assert len(batch) == 0
    assert await batch.execute() == []
    assert await fake_redis_client.dbsize() == 0


async def test_bad_trial_arguments_fail_before_sending(fake_redis_client: Client) -> None:
    """An unknown outcome or an empty holder is refused."""
    scripts = scripts_for(fake_redis_client)
    outcome: Any = "maybe"
    with pytest.raises(ValueError, match="outcome"):
        await scripts.finish_trial(
            KEYS, holder="h", epoch=1, outcome=outcome, instance="p", params=PARAMS
        )
    with pytest.raises(ValueError, match="holder"):
        await scripts.acquire_trial(KEYS, holder="", params=PARAMS)
    with pytest.raises(ValueError, match="max_age_ms"):
        await scripts.cleanup_stats(KEYS, max_age_ms=-1)


async def test_script_rejects_bad_argv_loudly(any_redis_client: Client) -> None:
    """A caller bypassing the wrappers gets an error naming the argument, not a guess."""
    sha = await any_redis_client.script_load(script_source("report_window"))
    args: list[str | int | float] = ["pod", "x", 0, 0, 0, 0, 0, 0, 1.0, "g", "ch", "n"]
    args += PARAMS.to_argv()
    keys = (KEYS.stats, KEYS.state, KEYS.pods, KEYS.tally)
    with pytest.raises(ResponseError, match="fires"):
        await any_redis_client.evalsha(sha, len(keys), *keys, *args)
    good = [*args[:1], 0, *args[2:], "", "2 1 0", 0, 1_000]
    for index, what in [(28, "window"), (30, "tally lease ms")]:
        bad = list(good)
        bad[index - 1] = "x"
        with pytest.raises(ResponseError, match=what):
            await any_redis_client.evalsha(sha, len(keys), *keys, *bad)
    assert await any_redis_client.exists(KEYS.state) == 0


# --------------------------------------------------------------------------- NOSCRIPT


def count_pipelines(client: Client, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count the pipelines ``client`` makes from now on; the result reads the count."""
    made = 0
    pipeline = client.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        nonlocal made
        made += 1
        return pipeline(*args, **kwargs)

    monkeypatch.setattr(client, "pipeline", counting_pipeline)
    return lambda: made


async def test_single_call_survives_script_flush(any_redis_client: Client) -> None:
    """After SCRIPT FLUSH the script is loaded again and the call retried once."""
    first = await report(any_redis_client, successes=1)
    await any_redis_client.script_flush()
    second = await report(any_redis_client, successes=1)
    assert second.gen == first.gen
    assert await any_redis_client.llen(KEYS.stats) == 2  # applied exactly once each
    sha = _scripts._scripts()["report_window"].sha
    assert await any_redis_client.script_exists(sha) == [True]


async def test_a_lone_batched_call_goes_without_a_pipeline_and_survives_script_flush(
    any_redis_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of one call (one breaker's report, a trip) is one plain command, no
    pipeline; after SCRIPT FLUSH it is loaded again and applied exactly once."""
    pipelines = count_pipelines(any_redis_client, monkeypatch)
    await any_redis_client.script_flush()
    batch = scripts_for(any_redis_client).batch()
    batch.report_window(
        KEYS, WindowReport(failures=1), instance="pod", known_epoch=0, params=PARAMS
    )
    (result,) = await batch.execute()
    assert isinstance(result, SharedState)
    assert result.state == "open"
    assert await any_redis_client.llen(KEYS.stats) == 1  # applied once, NOSCRIPT and all
    assert pipelines() == 0


@pytest.mark.redis
async def test_a_lone_batched_call_that_redis_refuses_is_its_result(
    redis_client: aioredis.Redis, redis_server_session: RedisServer
) -> None:
    """A refusal of the lone command (no right to run scripts, here) comes back as that
    call's result, as it would from a pipeline: the reporter counts it, nothing raises."""
    user = "no-scripts"
    await redis_client.acl_setuser(
        user, enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all", "-evalsha"]
    )
    client = aioredis.Redis.from_url(redis_server_session.url, username=user, password="secret")
    try:
        batch = scripts_for(client).batch()
        batch.read_state(KEYS)
        (result,) = await batch.execute()
    finally:
        await client.aclose()
        await redis_client.acl_deluser(user)
    assert isinstance(result, ResponseError)
    assert "NOPERM" in str(result) or "permission" in str(result)


async def test_batch_survives_script_flush_applying_each_call_once(
    any_redis_client: Client,
) -> None:
    """Calls that met NOSCRIPT are retried; calls that ran are not run again."""
    keys = [BreakerKeys.for_breaker("test", f"b{i}") for i in range(3)]
    await any_redis_client.script_flush()
    # Only read_state is cached: the reports meet NOSCRIPT, the reads run at once.
    await scripts_for(any_redis_client).load(["read_state"])
    batch = scripts_for(any_redis_client).batch()
    for k in keys:
        batch.read_state(k)
        batch.report_window(
            k, WindowReport(failures=1), instance="pod", known_epoch=0, params=PARAMS
        )
    results = await batch.execute()
    assert [r.state for r in results if isinstance(r, SharedState)] == ["closed", "open"] * 3
    for k in keys:
        assert await any_redis_client.llen(k.stats) == 1
    # And the other way round: the reports cached, the reads not.
    await any_redis_client.script_flush()
    await scripts_for(any_redis_client).load(["report_window"])
    batch = scripts_for(any_redis_client).batch()
    for k in keys:
        batch.report_window(
            k, WindowReport(successes=1), instance="pod", known_epoch=1, params=PARAMS
        )
        batch.read_state(k)
    results = await batch.execute()
    assert all(isinstance(r, SharedState) for r in results)
    for k in keys:
        assert await any_redis_client.llen(k.stats) == 2


@pytest.mark.redis
async def test_scripts_come_back_after_a_server_restart(redis_server: RedisServer) -> None:
    """A restarted server (empty script cache) serves the next call after a reconnect."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        scripts = scripts_for(client)
        await report(client, successes=1)
        redis_server.restart()
        with contextlib.suppress(RedisConnectionError):
            await scripts.read_state(KEYS)  # the pooled connection died with the server
        state = await report(client, failures=1)
        assert (state.state, state.epoch) == ("open", 1)
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- batches


async def test_batch_is_one_pipeline(
    any_redis_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty breakers' reports go out in one pipeline execution."""
    await scripts_for(any_redis_client).load()
    executions = count_pipelines(any_redis_client, monkeypatch)
    batch = scripts_for(any_redis_client).batch()
    for i in range(50):
        batch.report_window(
            BreakerKeys.for_breaker("test", f"b{i}"),
            WindowReport(successes=1),
            instance="pod",
            known_epoch=0,
            params=PARAMS,
        )
    assert len(batch) == 50
    results = await batch.execute()
    assert executions() == 1
    assert len(results) == 50
    assert all(isinstance(r, SharedState) for r in results)
    assert len(batch) == 0


async def test_batch_errors_stay_with_their_call(any_redis_client: Client) -> None:
    """A failing call yields its exception in place; the others still succeed."""
    scripts = scripts_for(any_redis_client)
    batch = scripts.batch()
    batch.read_state(KEYS)
    # Two calls no wrapper would build: one the script refuses, one whose
    # reply does not parse.
    scripts_by_name = _scripts._scripts()
    batch._calls.append(
        _scripts._Call(
            scripts_by_name["report_window"],
            (KEYS.stats, KEYS.state, KEYS.pods, KEYS.tally),
            ("pod", "not-a-number"),
            parse_report_reply,
        )
    )
    batch._calls.append(
        _scripts._Call(
            scripts_by_name["read_state"],
            (KEYS.state,),
            (),
            lambda reply: parse_state_reply(["not", "a", "state"]),
        )
    )
    batch.read_state(KEYS)
    first, bad_argv, bad_reply, last = await batch.execute()
    assert isinstance(first, SharedState)
    assert isinstance(bad_argv, ResponseError)
    assert isinstance(bad_reply, ProtocolError)
    assert isinstance(last, SharedState)


async def test_batch_mixes_plain_reports_and_scripts(any_redis_client: Client) -> None:
    """Plain reports and script calls share one round trip, results in queue order; after
    SCRIPT FLUSH only the scripts are sent again, so every report is applied once."""
    state = await report(any_redis_client, "pod", successes=1)
    await any_redis_client.script_flush()
    now = (await scripts_for(any_redis_client).read_state(KEYS)).now_ms
    batch = scripts_for(any_redis_client).batch()
    batch.plain_report(
        KEYS,
        WindowReport(successes=2),
        instance="plain",
        gen=state.gen,
        epoch=0,
        window=PodWindow(2, 0, 0),
        redis_ms=now,
        lease_ms=1_000,
    )
    batch.report_window(
        KEYS, WindowReport(successes=1), instance="script", known_epoch=0, params=PARAMS
    )
    batch.read_state(KEYS)
    plain, scripted, read = await batch.execute()
    assert isinstance(plain, PlainReply)
    assert isinstance(scripted, SharedState)
    assert isinstance(read, SharedState)
    assert plain.now_ms >= now
    assert scripted.gen == read.gen == state.gen
    assert await any_redis_client.llen(KEYS.stats) == 3  # pod, plain, script: once each
    assert await any_redis_client.hlen(KEYS.pods) == 3


async def test_execute_states_refuses_plain_reports(fake_redis_client: Client) -> None:
    """execute_states() is for batches of script calls; a plain report there is a bug."""
    batch = scripts_for(fake_redis_client).batch()
    batch.plain_report(
        KEYS,
        WindowReport(successes=1),
        instance="p",
        gen="g",
        epoch=0,
        window=PodWindow(1, 0, 0),
        redis_ms=1,
        lease_ms=1_000,
    )
    with pytest.raises(TypeError, match="script calls only"):
        await batch.execute_states()
    assert await fake_redis_client.dbsize() == 0
    batch = scripts_for(fake_redis_client).batch()
    batch.read_state(KEYS)
    [state] = await batch.execute_states()
    assert isinstance(state, SharedState)


async def test_empty_batch_sends_nothing(fake_redis_client: Client) -> None:
    """Executing an empty batch is free."""
    assert await scripts_for(fake_redis_client).batch().execute() == []


@pytest.mark.redis
async def test_batch_raises_when_redis_is_gone(redis_server: RedisServer) -> None:
    """A failed round trip raises; no partial results are invented."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        batch = scripts_for(client).batch()
        batch.read_state(KEYS)
        redis_server.kill()
        with pytest.raises(RedisConnectionError):
            await batch.execute()
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_a_paused_server_times_out_then_serves_again(redis_server: RedisServer) -> None:
    """A stalled Redis costs the caller its socket timeout, and nothing after it resumes."""
    client = aioredis.Redis.from_url(
        redis_server.url, socket_timeout=0.1, retry=Retry(NoBackoff(), 0)
    )
    try:
        scripts = scripts_for(client)
        await report(client, successes=1)
        redis_server.pause()
        try:
            with pytest.raises(RedisTimeoutError):
                await scripts.read_state(KEYS)
        finally:
            redis_server.resume()
        state = await report(client, failures=2)
        assert (state.state, state.epoch) == ("open", 1)
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_decoded_responses_client(redis_server_session: RedisServer) -> None:
    """A client with decode_responses=True gets the same typed results."""
    client = aioredis.Redis.from_url(redis_server_session.url, decode_responses=True)
    try:
        await client.flushall()
        state = await report(client, failures=1, decision=params(reset_timeout_ms=2_000))
        assert (state.state, state.reason, state.open_until_ms - state.now_ms) == (
            "open",
            "pooled_rate",
            2_000,
        )
        grant = await scripts_for(client).acquire_trial(KEYS, holder="h", params=PARAMS)
        assert grant.retry_after_ms == state.open_until_ms - grant.state.now_ms
    finally:
        await client.aclose()


@pytest.mark.parametrize("round_", [1, 2])
async def test_redis_client_fixture_starts_empty(redis_client: Client, round_: int) -> None:
    """Each test gets the shared server with no data and no cached scripts."""
    assert await redis_client.dbsize() == 0
    assert await redis_client.script_exists(_scripts._scripts()["report_window"].sha) == [False]
    await report(redis_client, successes=round_)
