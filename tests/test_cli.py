"""The operator CLI on breakers that really reported: status, watch, force-open, reset, cleanup."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from cli_support import Cli, run_cli
from transport_support import redis_now_ms
from waiting import eventually, eventually_async

from distributed_opossum import State
from distributed_opossum._redis.keys import BreakerKeys

pytestmark = pytest.mark.redis

ODD = "eu/west: payments {v2} é"
"""A name with a slash, a colon, spaces, braces and a non-ASCII letter."""
CALLS = {"payments": (0, 4), "search": (3, 0), ODD: (1, 1)}
"""(successes, failures) each of two pods fired: payments opens on the pooled rate (and
its window starts over in the new epoch), the others stay closed with every call pooled."""

BREAKER_FIELDS = {
    "name", "state", "exists", "epoch", "attempts", "reason", "now_ms", "open_until_ms",
    "retry_in_ms", "closed_at_ms", "lease_expires_ms", "window", "pods", "problems",
}  # fmt: skip
WINDOW_FIELDS = {
    "volume", "failures", "failure_rate", "trips", "reporting", "votes", "entries", "latest_ms",
    "min_pod_volume", "error_threshold_percentage",
}  # fmt: skip


def rows(table: str) -> dict[str, list[str]]:
    """The rows of a status table by name (cells are at least two spaces apart)."""
    lines = table.splitlines()
    assert lines[0].split() == [
        "NAME", "STATE", "EPOCH", "RETRY", "IN", "ATTEMPTS", "PODS", "VOLUME", "FAILURES",
        "RATE", "VOTES",
    ]  # fmt: skip
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines[1:] if "  " in line]
    return {row[0]: row for row in cells}


def seconds(text: str) -> float:
    """A "12.3s" cell as seconds."""
    assert text.endswith("s"), text
    return float(text[:-1])


async def test_status_lists_every_breaker_that_reported(cli: Cli) -> None:
    """status prints one row per breaker: the open one with its retry time, pods and the
    last tally's pooled figures (an open breaker's window starts over: nothing since)."""
    async with cli.reported(CALLS):
        ran = await cli.tallied("status")
    assert (ran.code, ran.err) == (0, "")
    assert len(ran.out.splitlines()) == 1 + len(CALLS)  # no note: nothing unreadable or pending
    table = rows(ran.out)
    assert sorted(table) == sorted(CALLS)
    payments = table["payments"]
    assert payments[1:3] == ["open", "1"]
    assert 25.0 < seconds(payments[3]) <= 30.0
    assert payments[4:] == ["1", "0", "0", "0", "-", "0/0"]
    assert table["search"][1:] == ["closed", "0", "-", "0", "2", "6", "0", "0.0%", "0/2"]
    assert table[ODD][1:] == ["closed", "0", "-", "0", "2", "4", "2", "50.0%", "0/2"]


async def test_status_json_has_the_documented_shape(cli: Cli) -> None:
    """status --json is one document: v, prefix and every breaker with the documented fields."""
    async with cli.reported(CALLS):
        ran = await cli.tallied("--json", "status")
        now = await redis_now_ms(cli.admin)
        entries = await entries_of(cli, "payments")
    assert (ran.code, ran.err) == (0, "")
    assert len(ran.out.strip().splitlines()) == 1
    document = ran.json()
    assert set(document) == {"v", "prefix", "breakers"}
    assert (document["v"], document["prefix"]) == (1, "dopossum")
    breakers: dict[str, Any] = {b["name"]: b for b in document["breakers"]}
    assert sorted(breakers) == sorted(CALLS)
    for breaker in breakers.values():
        assert set(breaker) == BREAKER_FIELDS
        assert set(breaker["window"]) == WINDOW_FIELDS
        assert breaker["problems"] == []
        # The vote rule is a pod option: Redis does not hold it.
        assert breaker["window"]["min_pod_volume"] is None
        assert breaker["window"]["error_threshold_percentage"] is None
        expected_pods = [] if breaker["name"] == "payments" else ["pod-0", "pod-1"]
        assert [pod["instance"] for pod in breaker["pods"]] == expected_pods
    payments = breakers["payments"]
    assert (payments["state"], payments["reason"], payments["attempts"]) == (
        "open",
        "pooled_rate",
        1,
    )
    # Redis' clock: now_ms is Redis TIME, and the time left is reckoned against it.
    assert now - 5000 < payments["now_ms"] <= now
    assert payments["retry_in_ms"] == payments["open_until_ms"] - payments["now_ms"]
    # Opening started a new epoch: no pod has a call in its window since.
    window = payments["window"]
    assert (window["volume"], window["failures"], window["failure_rate"]) == (0, 0, None)
    assert (window["reporting"], window["votes"], window["trips"]) == (0, 0, 0)
    assert window["entries"] == entries >= 2  # the list keeps the record of each pod's calls
    search = breakers["search"]
    assert search["retry_in_ms"] is None
    window = search["window"]
    assert (window["volume"], window["failures"], window["failure_rate"]) == (6, 0, 0.0)
    assert (window["reporting"], window["votes"], window["trips"]) == (2, 0, 0)
    assert now - 5000 < window["latest_ms"] <= now + 1000
    assert search["pods"][0] == {"instance": "pod-0", "volume": 3, "failures": 0, "trips": 0}
    odd = breakers[ODD]["window"]
    assert (odd["volume"], odd["failures"], odd["failure_rate"]) == (4, 2, 0.5)


async def test_retry_time_ignores_the_local_clock(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With this machine's wall clock a day off, the retry time is still Redis' ~30 s."""
    async with cli.reported({"payments": (0, 4)}):
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 86_400.0)
        ran = await cli("status")
        monkeypatch.undo()
    assert ran.code == 0, ran.err
    assert 25.0 < seconds(rows(ran.out)["payments"][3]) <= 30.0


def detail(text: str) -> dict[str, str]:
    """The "label  value" lines of ``status NAME`` (before its pods table) by label."""
    lines = {}
    for line in text.split("\n\n", maxsplit=1)[0].splitlines():
        label, value = re.split(r"\s{2,}", line, maxsplit=1)
        lines[label] = value
    return lines


async def test_status_of_one_breaker_shows_its_pods(cli: Cli) -> None:
    """status NAME prints the breaker's fields, Redis' open-until time, the pooled window
    and when it was tallied, and a row per pod with the age of its window."""
    async with cli.reported(CALLS):
        ran = await cli("status", "payments")
        search = await cli.tallied("status", "search")
        odd = await cli("status", ODD)
        entries = {name: await entries_of(cli, name) for name in ("payments", "search")}
    assert (ran.code, ran.err) == (0, "")
    lines = detail(ran.out)
    assert lines["state"] == "open (epoch 1, reason pooled_rate)"
    assert re.fullmatch(
        r"\S+s \(open until \d{4}-\d\d-\d\d .* UTC, Redis clock\)", lines["retry in"]
    )
    # Opening started a new epoch, whose window is empty: no pods table.
    assert (
        lines["window"] == f"0 calls, 0 failures (-), 0 local trips, {entries['payments']} entries"
    )
    assert lines["pods"] == "0 reporting, 0 voting to open"
    assert "\n\n" not in ran.out
    assert "vote rule" not in ran.out
    assert "None" not in ran.out

    assert (search.code, search.err) == (0, "")
    lines = detail(search.out)
    assert lines["state"] == "closed (epoch 0, reason created)"
    assert (
        lines["window"] == f"6 calls, 0 failures (0.0%), 0 local trips, {entries['search']} entries"
    )
    assert lines["pods"] == "2 reporting, 0 voting to open"
    assert re.fullmatch(r"\d+\.\ds ago", lines["tallied"])
    assert seconds(lines["tallied"].split()[0]) < 2.0  # the pods tally at every report interval
    assert re.fullmatch(r"\d+\.\ds ago \(the latest pod window written\)", lines["reported"])
    assert "problem" not in lines
    pods = search.out.split("\n\n")[1].splitlines()
    assert pods[0].split() == ["POD", "VOLUME", "FAILURES", "RATE", "TRIPS", "AGE"]
    cells = [line.split() for line in pods[1:]]
    assert [row[:5] for row in cells] == [
        ["pod-0", "3", "0", "0.0%", "0"],
        ["pod-1", "3", "0", "0.0%", "0"],
    ]
    assert all(seconds(row[5]) < 2.0 for row in cells)  # each pod rewrites it as it reports
    assert odd.code == 0, odd.err
    assert detail(odd.out)["breaker"] == f"{ODD} (prefix dopossum)"


async def test_pooled_figures_pending_until_a_tally(cli: Cli) -> None:
    """With no tally of the pods' windows in Redis (its lease ran out and nobody reports),
    status shows the pooled figures pending, not as a problem: "..." and a note, null in
    JSON; the pods' own windows are still listed."""
    keys = BreakerKeys.for_breaker("dopossum", "search")
    async with cli.reported({"search": (3, 0)}):
        pass  # shut down: nothing reports, nothing tallies any more
    await eventually_async(
        lambda: _absent(cli, keys.tally), within=2.0, what="the tally lease over"
    )
    table = await cli("status")
    one = await cli("status", "search")
    as_json = await cli("--json", "status", "search")
    assert (table.code, table.err, one.code, one.err, as_json.code) == (0, "", 0, "", 0)
    assert rows(table.out)["search"][1:] == ["closed", "0", "-", "0", *["..."] * 5]
    assert table.out.splitlines()[-1] == "... pooled figures pending: the next report tallies them"
    assert len(table.out.splitlines()) == 3
    lines = detail(one.out)
    assert lines["window"].startswith("pending: the next report tallies the pods' windows;")
    assert lines["pods"] == "2 with a window in this epoch (below), votes pending"
    assert "problem" not in lines
    assert "tallied" not in lines
    pods = one.out.split("\n\n")[1].splitlines()
    assert [line.split()[:3] for line in pods[1:]] == [["pod-0", "3", "0"], ["pod-1", "3", "0"]]
    breaker = as_json.json()["breaker"]
    window = breaker["window"]
    pooled = ("volume", "failures", "failure_rate", "reporting", "votes")
    assert [window[field] for field in pooled] == [None] * 5
    assert (window["trips"], window["entries"]) == (0, await entries_of(cli, "search"))
    assert breaker["problems"] == []
    assert [pod["volume"] for pod in breaker["pods"]] == [3, 3]


async def _absent(cli: Cli, key: str) -> bool:
    return not await cli.admin.exists(key)


async def entries_of(cli: Cli, name: str) -> int:
    """Entries in the stats list of breaker ``name`` (a pod's calls may span two buckets)."""
    return int(await cli.admin.llen(BreakerKeys.for_breaker("dopossum", name).stats))


async def test_status_of_an_unknown_breaker_fails(cli: Cli) -> None:
    """status NAME of a misspelt name: "no such breaker" on stderr, exit 1 (was: closed, exit 0)."""
    async with cli.reported({"payments": (1, 0)}):
        ran = await cli("status", "paymnets")
        as_json = await cli("--json", "status", "paymnets")
    assert (ran.code, ran.out) == (1, "")
    assert ran.err == "dopossum: no such breaker: paymnets\n"
    assert (as_json.code, as_json.out, as_json.err) == (1, "", ran.err)
    assert not await cli.admin.exists(BreakerKeys.for_breaker("dopossum", "paymnets").state)


async def test_force_open_holds_every_pod_open_and_status_shows_it(cli: Cli) -> None:
    """force-open NAME: every running pod goes forced open, and status says so with no retry."""
    async with cli.reported({"search": (3, 0)}) as breakers:
        ran = await cli("force-open", "search")
        assert (ran.code, ran.err) == (0, "")
        assert ran.out == "search: forced open on every pod until reset (epoch 1)\n"
        await eventually(
            lambda: all(b.state is State.FORCED_OPEN for b in breakers),
            within=2.0,
            what="every pod forced open",
        )
        again = await cli("--json", "force-open", "search")
        status = await cli("status")
    assert again.code == 0
    assert again.json()["changed"] is False
    assert again.json()["state"] == "forced_open"
    assert rows(status.out)["search"][1:5] == ["forced_open", "1", "reset", "0"]


async def test_reset_closes_every_pod_and_clears_attempts(cli: Cli) -> None:
    """reset NAME on an open breaker: closed, attempts 0, a new epoch, every pod closed."""
    async with cli.reported({"payments": (0, 4)}) as breakers:
        await eventually(lambda: all(b.opened for b in breakers), within=2.0, what="pods open")
        ran = await cli("--json", "reset", "payments")
        await eventually(lambda: all(b.closed for b in breakers), within=2.0, what="pods closed")
        status = await cli("status", "payments", "--json")
    assert (ran.code, ran.err) == (0, "")
    reply = ran.json()
    assert (reply["command"], reply["name"], reply["changed"]) == ("reset", "payments", True)
    assert (reply["state"], reply["attempts"], reply["epoch"]) == ("closed", 0, 2)
    breaker = status.json()["breaker"]
    assert (breaker["state"], breaker["reason"], breaker["attempts"]) == ("closed", "reset", 0)


async def test_force_open_and_reset_refuse_unknown_names(cli: Cli) -> None:
    """A misspelt force-open or reset creates nothing and exits 1; --create forces a new name."""
    keys = BreakerKeys.for_breaker("dopossum", "paymnets")
    for command in ("force-open", "reset"):
        ran = await cli(command, "paymnets")
        assert (ran.code, ran.err) == (1, "dopossum: no such breaker: paymnets\n")
    assert await cli.admin.keys("*") == []
    created = await cli("force-open", "paymnets", "--create")
    assert created.code == 0, created.err
    assert await cli.admin.hget(keys.state, "state") == b"forced_open"


async def test_cleanup_of_one_breaker_and_of_all(cli: Cli) -> None:
    """cleanup NAME empties that stats list only; cleanup without NAME does every breaker."""
    async with cli.reported({"payments": (0, 4), "search": (3, 0)}):
        pass  # shut down: nothing reports any more
    payments = BreakerKeys.for_breaker("dopossum", "payments")
    search = BreakerKeys.for_breaker("dopossum", "search")
    kept = await cli("--json", "cleanup", "payments")
    assert kept.json() == {
        "v": 1,
        "removed": {"payments": 0},
        "total": 0,
    }  # all younger than 30 min
    entries = await cli.admin.llen(payments.stats)
    assert entries > 0

    one = await cli("cleanup", "payments", "--max-age", "0")
    assert (one.code, one.err) == (0, "")
    assert one.out == f"payments: removed {entries}\nremoved {entries} stats entries in all\n"
    assert await cli.admin.llen(payments.stats) == 0
    search_entries = await cli.admin.llen(search.stats)
    assert search_entries > 0
    # The list is a record: the decision reads the pods' windows, which stay.
    emptied = (await cli("--json", "status", "payments")).json()["breaker"]
    assert (emptied["window"]["entries"], emptied["problems"]) == (0, [])

    every = await cli("--json", "cleanup", "--max-age", "0")
    assert every.code == 0, every.err
    assert every.json()["removed"] == {"payments": 0, "search": search_entries}
    assert await cli.admin.llen(search.stats) == 0
    kept_windows = (await cli("--json", "status", "search")).json()["breaker"]
    assert kept_windows["window"]["entries"] == 0
    assert [pod["volume"] for pod in kept_windows["pods"]] == [3, 3]
    unknown = await cli("cleanup", "paymnets")
    assert (unknown.code, unknown.err) == (1, "dopossum: no such breaker: paymnets\n")


async def test_watch_refreshes_count_times(cli: Cli) -> None:
    """watch --count N prints N tables (N JSON lines with --json), then exits 0."""
    async with cli.reported({"payments": (0, 4), "search": (3, 0)}):
        text = await cli("watch", "--count", "3", "--interval", "0.01")
        lines = await cli("watch", "search", "--json", "--count", "2", "--interval", "0.01")
    assert (text.code, text.err) == (0, "")
    frames = text.out.strip().split("\n\n")
    assert len(frames) == 3
    assert all(sorted(rows(frame)) == ["payments", "search"] for frame in frames)
    assert (lines.code, lines.err) == (0, "")
    documents = [json.loads(line) for line in lines.out.splitlines()]
    assert [d["breaker"]["name"] for d in documents] == ["search", "search"]


async def test_watch_of_an_unknown_breaker_fails_at_once(cli: Cli) -> None:
    """watch NAME of a misspelt name exits 1 before its first refresh."""
    ran = await cli("watch", "nope", "--count", "5")
    assert (ran.code, ran.out, ran.err) == (1, "", "dopossum: no such breaker: nope\n")


async def test_prefix_and_redis_url_choose_what_is_listed(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--prefix lists that prefix only (glob characters are literal); $REDIS_URL is the default."""
    async with (
        cli.reported({"a": (1, 0)}, prefix="ab", pods=1),
        cli.reported({"b": (1, 0)}, prefix="a*", pods=1),
    ):
        monkeypatch.setenv("REDIS_URL", cli.url)
        ab = await run_cli(cli.capsys, "--prefix", "ab", "status", "--json")
        star = await run_cli(cli.capsys, "status", "--prefix", "a*", "--json")
        default = await run_cli(cli.capsys, "status")
    assert [b["name"] for b in ab.json()["breakers"]] == ["a"]
    assert [b["name"] for b in star.json()["breakers"]] == ["b"]
    assert (default.code, default.out) == (0, "no breakers under prefix 'dopossum'\n")
