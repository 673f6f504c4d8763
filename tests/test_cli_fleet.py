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


async def test_garbage_in_redis_shows_as_unknown(cli: Cli) -> None:
    """A garbage state hash, garbage sums and keys of the wrong type read as unknown, exit 0."""
    await put_hash(cli.admin, keys("bad-state").state, STATE | {"state": "bogus"})
    await put_hash(cli.admin, keys("bad-epoch").state, STATE | {"epoch": "-1"})
    await cli.admin.set(keys("not-a-hash").state, "garbage")
    await put_hash(cli.admin, keys("bad-sums").state, STATE)
    await cli.admin.rpush(keys("bad-sums").stats, "not json", "{}")
    await put_hash(
        cli.admin,
        keys("bad-sums").pods,
        {
            "entries": "2",
            "volume": "12x",
            "failures": "1",
            "reporting": "99999999999999999999",
            "rule": "five fifty",
            "pod:fine": "4 1 0",
            "pod:failures-over-volume": "1 2 0",
            "pod:\x1b[2Jevil": "\x1b[31m",
        },
    )
    await put_hash(cli.admin, keys("sums-not-a-hash").state, STATE)
    await cli.admin.set(keys("sums-not-a-hash").pods, "garbage")
    await cli.admin.rpush(keys("state-a-list").state, "garbage")
    await put_hash(cli.admin, keys("stats-not-a-list").state, STATE)
    await cli.admin.set(keys("stats-not-a-list").stats, "garbage")

    table = await cli("status")
    assert (table.code, table.err) == (0, "")
    assert "\x1b" not in table.out
    for name in ("bad-state", "bad-epoch", "not-a-hash", "state-a-list"):
        row = next(line for line in table.out.splitlines() if line.startswith(name))
        assert row.split()[1:5] == ["?", "?", "?", "?"], row
        assert f"{name}: state hash unreadable (garbage)" in table.out

    document = (await cli("--json", "status")).json()
    breakers = {b["name"]: b for b in document["breakers"]}
    assert breakers["bad-state"]["state"] is None
    assert breakers["bad-state"]["epoch"] is None
    assert breakers["bad-state"]["problems"]
    sums = breakers["bad-sums"]
    assert sums["state"] == "open"
    assert (sums["window"]["volume"], sums["window"]["reporting"]) == (None, None)
    assert sums["window"]["failures"] == 1
    assert (sums["window"]["min_pod_volume"], sums["window"]["failure_rate"]) == (None, None)
    assert sums["pods"] == [
        {"instance": "\x1b[2Jevil", "volume": None, "failures": None, "trips": None},
        {"instance": "failures-over-volume", "volume": None, "failures": None, "trips": 0},
        {"instance": "fine", "volume": 4, "failures": 1, "trips": 0},
    ]
    for name in ("sums-not-a-hash", "stats-not-a-list"):
        assert breakers[name]["state"] == "open"
        assert breakers[name]["window"]["volume"] is None
        assert breakers[name]["problems"] == ["window sums unreadable (a key of the wrong type)"]

    detail = await cli("status", "bad-sums")
    assert detail.code == 0, detail.err
    assert "\\x1b[2Jevil" in detail.out
    assert "\x1b" not in detail.out


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
