"""The multi-pod demo, run as a newcomer runs it: a subprocess, judged by what it prints.

Short mode (``--duration 8``), on a private redis-server given with ``--url``,
and on the default choice with no redis-server on PATH (the embedded server);
then Ctrl-C in the middle of a run. Every run must leave no process behind.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer
from terminal import ctrl_c_as_in_a_terminal

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/cmdline").exists(), reason="finds leftover processes through /proc"
)

DEMO = [sys.executable, "-m", "distributed_opossum.demo"]
PODS = [f"pod-{index}" for index in range(5)]
SICK = "pod-1"
SVG = "{http://www.w3.org/2000/svg}"

_LINE = re.compile(r"^\s*\+(?P<t>\d+\.\d+)s\s+(?P<who>\S+)\s+(?P<label>[A-Z-]+)\s+(?P<words>.*)$")
_PHASE = re.compile(r"^── (?P<number>\d)\. ")


@dataclass(frozen=True)
class Line:
    """One timeline line of the output."""

    phase: int
    t: float
    who: str
    label: str
    words: str


def timeline(out: str) -> list[Line]:
    """The timeline lines, each with the phase it was printed in."""
    lines: list[Line] = []
    phase = 0
    for text in out.splitlines():
        if match := _PHASE.match(text):
            phase = int(match["number"])
        elif (match := _LINE.match(text)) and phase:
            lines.append(
                Line(phase, float(match["t"]), match["who"], match["label"], match["words"])
            )
    return lines


def token_of(out: str) -> str:
    """The run's unique name (its key prefix), which every process it starts carries."""
    match = re.search(r"prefix\s+'(dopossum-demo-[0-9a-f]+)'", out)
    assert match, out
    return match[1]


def leftovers(out: str) -> list[str]:
    """Processes of this run still alive (not zombies): pods carry the run's token in
    their command line; a private redis-server names its port in its process title."""
    marks = [token_of(out)]
    if port := re.search(r"private redis-server \S+ on (127\.0\.0\.1:\d+)", out):
        marks.append(port[1])
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if any(mark in cmdline for mark in marks) and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


def check_story(out: str) -> None:
    """What every complete run must show, phase by phase."""
    assert not re.search(r"<\w+\.\w+: |Cause\.|State\.|,\)", out), out  # words, never reprs
    lines = timeline(out)
    assert {line.phase for line in lines} == {1, 2, 3, 4, 5}, out

    # 2. every pod opens soon after the outage, all within milliseconds of the first.
    down = next(line.t for line in lines if line.who == "API" and line.label == "DOWN")
    first_open: dict[str, float] = {}
    for line in lines:
        if line.phase in (2, 3) and line.label == "OPEN" and line.who in PODS:
            first_open.setdefault(line.who, line.t)
    assert set(first_open) == set(PODS), out
    assert max(first_open.values()) - down < 5.0, out
    assert max(first_open.values()) - min(first_open.values()) < 0.5, out
    assert any("tripped here (its own failures" in line.words for line in lines), out
    assert any("opened by another pod's trip" in line.words for line in lines), out

    # 3. at most one trial per open period, and backoff really happened (periods grow).
    periods: list[list[Line]] = []
    state: dict[str, str] = {}
    for line in (line for line in lines if line.phase in (2, 3, 4) and line.who in PODS):
        if line.label == "OPEN" and all(s != "OPEN" for s in state.values()):
            periods.append([])
        if line.label in ("OPEN", "HALF-OPEN", "CLOSED"):
            state[line.who] = line.label
        if line.label == "TRIAL":
            assert periods, out
            periods[-1].append(line)
    assert len(periods) >= 3, out
    assert all(len(trials) <= 1 for trials in periods), out
    assert sum(len(trials) for trials in periods) >= 3, out
    lengths = [float(x) for x in re.findall(r"period \d+\s+(\d+\.\d+) s", out)]
    assert len(lengths) >= 3, out
    assert all(1.5 < b / a < 2.5 for a, b in itertools.pairwise(lengths)), lengths
    assert "closed after a successful trial" in out

    # 4. every pod closed again.
    closed = {line.who for line in lines if line.phase == 4 and line.label == "CLOSED"}
    assert closed == set(PODS), out

    # 5. with quorum, the sick pod alone opened.
    opened = {line.who for line in lines if line.phase == 5 and line.label == "OPEN"}
    assert opened == {SICK}, out
    flat = " ".join(out.split())  # the summary's long lines are wrapped
    assert f"only {SICK} opened; the other pods stayed closed" in flat, out

    # The summary: measured numbers, coordination well below independent breakers.
    coordinated = re.search(r"with coordination \(.*?\): (\d+) calls", flat)
    independent = re.search(r"independent local breakers \(.*?\): (\d+) calls", flat)
    assert coordinated, out
    assert independent, out
    assert 0 < int(coordinated[1]) < int(independent[1]), out
    assert re.search(r"pod-\d's trip at \+\d+\.\d+ s → pod-\d \+\d+\.\d ms", flat), out
    assert re.search(r"Counted on both sides: the API received \d+ calls", flat), out
    assert "every process it started is stopped" in out


def run_demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The demo in short mode; fails the test if it leaves a process behind."""
    done = subprocess.run(
        [*DEMO, "--duration", "8", *args],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
        check=False,
    )
    assert leftovers(done.stdout) == [], done.stdout
    return done


@pytest.mark.slow
def test_demo_on_a_redis_server_given_by_url(redis_server: RedisServer, tmp_path: Path) -> None:
    """Short run on a private redis-server via --url: the whole story, the picture, no leftovers."""
    picture = tmp_path / "timeline.svg"
    done = run_demo("--url", redis_server.url, "--picture", str(picture))
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"the Redis at {redis_server.url} (--url)" in out
    check_story(out)

    assert f"Picture: {picture}" in out
    root = ET.parse(picture).getroot()
    lanes = root.findall(f".//{SVG}g[@class='lane']")
    assert [lane.get("data-pod") for lane in lanes] == PODS
    assert all(lane.findall(f"{SVG}rect") for lane in lanes)
    assert len(root.findall(f".//{SVG}line[@class='phase']")) == 5

    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.keys(f"{token_of(out)}*") == []  # the demo cleaned up after itself
    finally:
        client.close()


@pytest.mark.slow
def test_demo_on_a_machine_without_redis_server(tmp_path: Path) -> None:
    """The default choice with no redis-server on PATH: the embedded server, the same story."""
    path = os.pathsep.join(
        folder
        for folder in os.environ.get("PATH", "").split(os.pathsep)
        if folder and not (Path(folder) / "redis-server").exists()
    )
    done = run_demo("--no-picture", env={**os.environ, "PATH": path, "TMPDIR": str(tmp_path)})
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "an embedded fakeredis" in out
    check_story(out)
    assert "Picture:" not in out
    assert not list(tmp_path.glob("*.svg"))


@pytest.mark.parametrize(
    ("signum", "args", "phase", "code", "words"),
    [
        (signal.SIGINT, [], 2, 130, "Stopped by Ctrl-C"),
        (signal.SIGTERM, ["--duration", "8"], 3, 143, "Stopped by signal 15"),
    ],
    ids=["ctrl-c-in-the-outage", "sigterm-while-the-api-hangs"],
)
async def test_a_signal_stops_every_process_without_a_traceback(
    signum: signal.Signals, args: list[str], phase: int, code: int, words: str
) -> None:
    """SIGINT / SIGTERM mid-run (default Redis choice): exit code, no traceback, nothing left."""
    process = await asyncio.create_subprocess_exec(
        *DEMO,
        "--no-picture",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )
    assert process.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(40):
            while not seen or not seen[-1].startswith(f"── {phase}. "):
                raw = await process.stdout.readline()
                assert raw, "".join(seen)
                seen.append(raw.decode())
            if phase == 3:  # calls are hanging on the API: stop in the middle of them
                seen.append((await process.stdout.readline()).decode())
                await asyncio.sleep(0.3)
        process.send_signal(signum)
        async with asyncio.timeout(20):
            rest, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    out = "".join(seen) + rest.decode()
    assert process.returncode == code, out + err.decode()
    assert "Traceback" not in out + err.decode()
    assert err.decode() == ""
    assert f"{words}: every process the demo started is stopped." in out
    assert "a private redis-server" in out or "an embedded fakeredis" in out
    assert leftovers(out) == []


def test_bad_arguments_are_refused_with_a_clear_message() -> None:
    """--pods and --duration outside their ranges: exit 2, naming the option."""
    for args, words in (
        (["--pods", "1"], "--pods must be between 2 and 20"),
        (["--duration", "1"], "--duration must be between 4 and 600 seconds"),
    ):
        done = subprocess.run([*DEMO, *args], capture_output=True, text=True, check=False)
        assert done.returncode == 2
        assert words in done.stderr
