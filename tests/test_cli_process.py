"""The operator CLI run from a shell: the ``dopossum`` script, ``python -m``, Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import pytest
from cli_support import ROOT, console_script, reported_breakers, run_process
from redis_admin import dead_port_url
from redis_server import RedisServer
from terminal import ctrl_c_as_in_a_terminal
from waiting import eventually

from distributed_opossum import State

pytestmark = pytest.mark.redis


async def test_an_operator_session_from_the_shell(redis_server: RedisServer) -> None:
    """dopossum, python -m distributed_opossum and ``python -m …cli`` steer running pods."""
    url = redis_server.url
    dopossum = str(console_script())
    module = (sys.executable, "-m", "distributed_opossum")
    old_module = (sys.executable, "-m", "distributed_opossum.cli")
    async with reported_breakers(url, {"payments": (3, 0)}) as breakers:
        listed = await asyncio.to_thread(run_process, dopossum, "status", env={"REDIS_URL": url})
        assert (listed.code, listed.err) == (0, "")
        assert listed.out.splitlines()[1].split()[:2] == ["payments", "closed"]

        forced = await asyncio.to_thread(
            run_process, *module, "--url", url, "force-open", "payments"
        )
        assert (forced.code, forced.err) == (0, "")
        await eventually(
            lambda: all(b.state is State.FORCED_OPEN for b in breakers),
            within=2.0,
            what="every pod forced open",
        )
        shown = await asyncio.to_thread(
            run_process, *module, "status", "payments", "--json", "--url", url
        )
        assert shown.json()["breaker"]["state"] == "forced_open"

        reset = await asyncio.to_thread(run_process, *old_module, "--url", url, "reset", "payments")
        assert (reset.code, reset.err) == (0, "")
        await eventually(lambda: all(b.closed for b in breakers), within=2.0, what="pods closed")

        typo = await asyncio.to_thread(run_process, dopossum, "--url", url, "status", "paymnets")
        assert (typo.code, typo.out, typo.err) == (1, "", "dopossum: no such breaker: paymnets\n")


def test_no_server_from_the_shell_is_one_line_and_exit_3() -> None:
    """The script with nothing listening: exit 3, one line on stderr, no traceback."""
    ran = run_process(console_script(), "--url", dead_port_url(), "status")
    assert (ran.code, ran.out) == (3, "")
    assert ran.err.startswith("dopossum: cannot reach Redis at ")
    assert ran.err.count("\n") == 1


def test_ctrl_c_stops_watch_with_status_0(redis_server: RedisServer) -> None:
    """SIGINT (Ctrl-C) during watch: exit 0, nothing on stderr, no traceback."""
    command = [sys.executable, "-m", "distributed_opossum", "--url", redis_server.url, "watch"]
    with subprocess.Popen(
        [*command, "--interval", "0.05"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_in_a_terminal,  # noqa: PLW1509  (only signal(), async-signal-safe)
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # the first refresh is out: watch is running
            assert first == "no breakers under prefix 'dopossum'\n"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0
    assert err == ""
    assert "Traceback" not in out
