"""What the CLI reads from Redis: every breaker across SCAN pages; garbage as unknown."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from cli_support import Cli

from distributed_opossum._redis.fleet import Fleet
from distributed_opossum._redis.keys import BreakerKeys

pytestmark = pytest.mark.redis

STATE = {
    "gen": "g1", "epoch": "3", "state": "open", "open_until": "0", "attempts": "2",
    "closed_at": "0", "reason": "pooled_rate", "trial_successes": "0",
}  # fmt: skip
"""A well-formed state hash (its open period long over)."""


def keys(name: str) -> BreakerKeys:
    """The keys of ``name`` under the default prefix."""
    return BreakerKeys.for_breaker("dopossum", name)


async def put_hash(client: aioredis.Redis, key: str, fields: dict[str, str]) -> None:
    """HSET ``fields`` into ``key`` (redis-py's ``mapping`` type wants its own key type)."""
    await client.hset(key, items=[text for pair in fields.items() for text in pair])


async def command_calls(client: aioredis.Redis, command: str) -> int:
    """How many times Redis ran ``command`` since the last CONFIG RESETSTAT."""
    stats: dict[str, Any] = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_status_finds_every_breaker_over_many_scan_pages(cli: Cli) -> None:
    """250 breakers among 5,000 other keys: all listed, over several SCAN calls, never KEYS."""
    names = [f"svc-{i:03d}" for i in range(249)] + ["a:b {c} é"]
    pipe = cli.admin.pipeline(transaction=False)
    for name in names:
        pipe.hset(keys(name).state, items=[text for pair in STATE.items() for text in pair])
    pipe.mset({f"app:session:{i}": "x" for i in range(5000)})
    pipe.hset("dopossum:{svc-000}:unrelated", "a", "b")  # our tag, not our suffix
    pipe.hset("dopossum:{bad%zz}:state", "gen", "g")  # not an encoded name
    pipe.hset("dopossum:{svc-000%41}:state", "gen", "g")  # not canonically encoded
    pipe.hset("dopossumx:{svc-x}:state", "gen", "g")  # another prefix
    await pipe.execute()
    await cli.admin.config_resetstat()

    ran = await cli("--json", "status")
    assert (ran.code, ran.err) == (0, "")
    breakers = ran.json()["breakers"]
    assert [b["name"] for b in breakers] == sorted(names)
    assert {b["state"] for b in breakers} == {"open"}
    assert {b["retry_in_ms"] for b in breakers} == {0}
    assert await command_calls(cli.admin, "scan") > 1
    assert await command_calls(cli.admin, "keys") == 0


def pod_field(volume: int, failures: int, trips: int = 0, *, epoch: str = "3") -> str:
    """A pod's field of the windows hash, of ``STATE``'s gen (and its epoch unless told)."""
    return f"g1:{epoch} 1700000000000 {volume} {failures} {trips}"


def snapshot(figures: str, *, gen: str = "g1", epoch: str = "3") -> str:
    """A tally's snapshot in the lease: holder, gen, epoch, state, ms, then ``figures``
    ("<volume> <failures> <reporting> <votes>")."""
    return f"pod-0 {gen} {epoch} open 1700000000000 {figures}"


async def test_garbage_in_redis_shows_as_unknown(cli: Cli) -> None:
    """A garbage state hash, pod windows, tally snapshot, and keys of the wrong type read as
    unknown with the reason, exit 0; garbage never reaches the terminal."""
    await put_hash(cli.admin, keys("bad-state").state, STATE | {"state": "bogus"})
    await put_hash(cli.admin, keys("bad-epoch").state, STATE | {"epoch": "-1"})
    await cli.admin.set(keys("not-a-hash").state, "garbage")
    await cli.admin.rpush(keys("state-a-list").state, "garbage")
    bad = keys("bad-windows")
    await put_hash(cli.admin, bad.state, STATE)
    await cli.admin.rpush(bad.stats, "not json", "{}")
    await put_hash(
        cli.admin,
        bad.pods,
        {
            "volume": "12x",  # not a pod's field: ignored
            "pod:fine": pod_field(4, 1),
            "pod:failures-over-volume": pod_field(1, 2),
            "pod:huge": pod_field(10**20, 0),
            "pod:old-format": "1700000000000 g1 3 4 1 0",
            "pod:\x1b[2Jevil": "\x1b[31m",
            "pod:older-epoch": pod_field(9, 9, epoch="2"),  # counts nowhere: not listed
        },
    )
    await cli.admin.set(bad.tally, snapshot("12x 1 99999999999999999999 0"))
    for name, figures in (("failures-over-volume", "4 5 1 0"), ("votes-over-pods", "4 1 1 2")):
        await put_hash(cli.admin, keys(name).state, STATE)
        await put_hash(cli.admin, keys(name).pods, {"pod:fine": pod_field(4, 1)})
        await cli.admin.set(keys(name).tally, snapshot(figures))
    await put_hash(cli.admin, keys("windows-not-a-hash").state, STATE)
    await cli.admin.set(keys("windows-not-a-hash").pods, "garbage")
    await put_hash(cli.admin, keys("stats-not-a-list").state, STATE)
    await cli.admin.set(keys("stats-not-a-list").stats, "garbage")
    await put_hash(cli.admin, keys("tally-not-a-string").state, STATE)
    await put_hash(cli.admin, keys("tally-not-a-string").pods, {"pod:fine": pod_field(4, 1)})
    await cli.admin.rpush(keys("tally-not-a-string").tally, "garbage")

    table = await cli("status")
    assert (table.code, table.err) == (0, "")
    assert "\x1b" not in table.out
    for name in ("bad-state", "bad-epoch", "not-a-hash", "state-a-list"):
        row = next(line for line in table.out.splitlines() if line.startswith(name))
        assert row.split()[1:5] == ["?", "?", "?", "?"], row
        assert f"{name}: state hash unreadable (garbage)" in table.out
    row = next(line for line in table.out.splitlines() if line.startswith("bad-windows"))
    assert row.split()[1:] == ["open", "3", "due", "2", "?", "?", "?", "?", "?/?"]

    document = (await cli("--json", "status")).json()
    breakers = {b["name"]: b for b in document["breakers"]}
    assert breakers["bad-state"]["state"] is None
    assert breakers["bad-state"]["epoch"] is None
    assert breakers["bad-state"]["problems"]
    bad_windows = breakers["bad-windows"]
    assert bad_windows["state"] == "open"
    window = bad_windows["window"]
    pooled = ("volume", "failures", "failure_rate", "reporting", "votes")
    assert [window[field] for field in pooled] == [None] * 5
    assert (window["trips"], window["entries"], window["min_pod_volume"]) == (0, 2, None)
    assert window["latest_ms"] == 1700000000000  # of the pod that counts only
    unknown = {"volume": None, "failures": None, "trips": None}
    assert bad_windows["pods"] == [
        {"instance": "\x1b[2Jevil"} | unknown,
        {"instance": "failures-over-volume"} | unknown,
        {"instance": "fine", "volume": 4, "failures": 1, "trips": 0},
        {"instance": "huge"} | unknown,
        {"instance": "old-format"} | unknown,
    ]
    assert bad_windows["problems"] == [
        "4 pod window(s) unreadable (garbage); they count nowhere, and the next tally removes them",
        "pooled window unreadable (garbage in the tally lease)",
    ]
    for name in ("failures-over-volume", "votes-over-pods"):
        assert breakers[name]["window"]["volume"] is None, name
        assert breakers[name]["problems"] == [
            "pooled window unreadable (garbage in the tally lease)"
        ]
    for name in ("windows-not-a-hash", "stats-not-a-list"):
        assert breakers[name]["state"] == "open"
        assert breakers[name]["window"]["volume"] is None
        assert breakers[name]["problems"] == ["window unreadable (a key of the wrong type)"]
    tally = breakers["tally-not-a-string"]
    assert tally["window"]["volume"] is None
    assert [pod["volume"] for pod in tally["pods"]] == [4]
    assert tally["problems"] == ["tally lease unreadable (a key of the wrong type)"]

    detail = await cli("status", "bad-windows")
    assert detail.code == 0, detail.err
    assert "\\x1b[2Jevil" in detail.out
    assert "\x1b" not in detail.out
    assert "None" not in detail.out


@pytest.mark.parametrize(
    ("lease", "pooled"),
    [
        (snapshot("4 1 1 0"), (4, 1, 1, 0)),
        # An instance id may hold spaces: the snapshot is read from the right.
        ("pod 0 " + snapshot("4 1 1 0").partition(" ")[2], (4, 1, 1, 0)),
        (None, None),  # the lease ran out (or a change of state deleted it)
        ("pod-0", None),  # won by a pod's plain report: its tally follows
        (snapshot("9 9 1 1", epoch="2"), None),  # of the state before the last change
        (snapshot("9 9 1 1", gen="g0"), None),  # of a state hash Redis lost since
    ],
)
async def test_pooled_figures_are_a_tally_of_the_current_state(
    redis_client: aioredis.Redis, lease: str | None, pooled: tuple[int, ...] | None
) -> None:
    """The pooled figures are the snapshot's when it is of the state's gen and epoch;
    otherwise, with pods holding windows, they are pending: unknown, and no problem."""
    k = keys("payments")
    await put_hash(redis_client, k.state, STATE)
    await put_hash(redis_client, k.pods, {"pod:a": pod_field(4, 1)})
    if lease is not None:
        await redis_client.set(k.tally, lease)
    (status,) = await Fleet(redis_client, "dopossum").read(["payments"])
    window = status.window
    assert status.problems == ()
    assert (window.volume, window.failures, window.reporting, window.votes) == (
        pooled or (None,) * 4
    )
    assert window.pending is (pooled is None)
    assert window.tallied_ms == (None if pooled is None else 1700000000000)
    assert [(pod.instance, pod.volume, pod.written_ms) for pod in window.pods] == [
        ("a", 4, 1700000000000)
    ]


async def test_a_window_of_no_current_pod_is_empty_not_pending(
    redis_client: aioredis.Redis,
) -> None:
    """Only windows of another epoch, and no snapshot: nothing to tally, so zeros."""
    k = keys("payments")
    await put_hash(redis_client, k.state, STATE)
    await put_hash(redis_client, k.pods, {"pod:a": pod_field(4, 1, epoch="2")})
    (status,) = await Fleet(redis_client, "dopossum").read(["payments"])
    window = status.window
    assert (window.volume, window.failures, window.reporting, window.votes) == (0, 0, 0, 0)
    assert (window.pending, window.pods, status.problems) == (False, (), ())


async def test_names_cannot_drive_the_terminal(cli: Cli) -> None:
    """Escape codes and newlines in names print escaped (errors too); JSON keeps them exact."""
    name = "evil\x1b[2J\nname"
    await put_hash(cli.admin, keys(name).state, STATE | {"reason": "\x1b[31mred"})
    table = await cli("status")
    detail = await cli("status", name)
    as_json = await cli("--json", "status")
    assert table.code == detail.code == as_json.code == 0
    assert "evil\\x1b[2J\\nname" in table.out
    assert "\\x1b[31mred" in detail.out
    assert "\x1b" not in table.out + detail.out
    assert len(table.out.splitlines()) == 2
    assert as_json.json()["breakers"][0]["name"] == name
    typo = await cli("status", "nope\x1b[2J")
    assert (typo.code, typo.err) == (1, "dopossum: no such breaker: nope\\x1b[2J\n")


async def test_fleet_reads_a_missing_breaker_as_empty(redis_client: aioredis.Redis) -> None:
    """Fleet.read of a name without keys: closed, no state in Redis, empty sums, no problem."""
    (status,) = await Fleet(redis_client, "dopossum").read(["nobody"])
    assert status.state is not None
    assert (status.state.state, status.state.exists) == ("closed", False)
    assert (status.window.volume, status.window.entries, status.window.pods) == (0, 0, ())
    assert status.problems == ()
