"""Least privilege and transport security.

- The README's ACL line is enough for everything the library does (reports,
  broadcasts, trial leases and their release, force_open, reset, the CLI, a
  reload after SCRIPT FLUSH): Redis' ACL LOG records no refusal.
- A user without the rights gets one clear error, and the breakers keep
  working locally.
- A wrong password gets a clear error and no crash.
- TLS (``rediss://``) with a certificate the test makes: a fleet in three
  processes coordinates over it; a client that does not trust the CA gets a
  clear error and stays local.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from chaos_fleet import url_client
from chaos_scenario import CONVERGE_WITHIN, chaos_run, open_spread
from distributed_support import PREFIX, Cluster, Pod
from redis_admin import acl_setuser, admin_of, readme_acl_rule, user_url
from redis_server import RedisServer
from waiting import eventually, eventually_async

from distributed_opossum import State

pytestmark = pytest.mark.redis

FAST: dict[str, Any] = {"reset_timeout": 0.3, "rolling_count_timeout": 1.0}


def _library_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    """The library's records about Redis (state changes, which carry ``circuit``, left out)."""
    return [
        r
        for r in caplog.records
        if r.name.startswith("distributed_opossum")
        and r.levelno >= level
        and "circuit" not in vars(r)
    ]


async def test_readme_acl_line_covers_everything_the_library_does(
    redis_server: RedisServer,
) -> None:
    """Every feature run by the README's ACL user: Redis refuses nothing (ACL LOG stays empty)."""
    async with admin_of(redis_server) as admin:
        await acl_setuser(admin, *readme_acl_rule(PREFIX))
        await admin.acl_log_reset()
        url = user_url(redis_server.url, "dopossum", "secret")
        async with Cluster(url, admin=admin, **FAST, sync_interval=0.1) as cluster:
            pods = [cluster.pod(n, client=cluster.client(n, named=False)) for n in ("pod0", "pod1")]
            await cluster.ready(user="dopossum")
            await admin.script_flush()  # the next reports reload the scripts
            await cluster.trip()  # report + broadcast
            await cluster.half_open(within=1.0)
            trial = await pods[1].hanging_call()  # a trial whose caller is cancelled
            trial.cancel()
            await asyncio.gather(trial, return_exceptions=True)
            pods[1].downstream.mode = "ok"
            await eventually_async(lambda: _trial_ok(pods[1]), within=2.0, what="a trial")
            await eventually(lambda: pods[0].breaker.closed, within=0.5, what="closed")
            await pods[0].breaker.force_open()
            await eventually(lambda: pods[1].breaker.state is State.FORCED_OPEN, within=0.5)
            await pods[0].breaker.reset()
            await eventually(lambda: pods[1].breaker.closed, within=0.5)
            # The operator's CLI has a user of its own (the README's operator line).
            await acl_setuser(admin, *readme_acl_rule(PREFIX, "dopossum-operator"))
            operator = user_url(redis_server.url, "dopossum-operator", "secret")
            for command in (["status", "payments"], ["cleanup", "payments", "--max-age", "0"]):
                _cli(operator, command)
            await asyncio.sleep(0.3)  # a few more reports
            for pod in pods:
                assert pod.coordinator.stats["script_errors"] == 0, pod.coordinator.stats
                assert pod.coordinator.stats["listener_errors"] == 0, pod.coordinator.stats
        refused = [e for e in await admin.acl_log() if e.get("username") == "dopossum"]
        assert refused == [], f"the README's ACL line lacks: {refused}"


async def _trial_ok(pod: Pod) -> bool:
    return await pod.call() == "ok"


@asynccontextmanager
async def _pod_on(url: str, calls: int) -> AsyncIterator[Pod]:
    """A pod on ``url`` (its client unnamed: the user may not name it) once it made ``calls``
    calls 50 ms apart, each of them a success; shut down when the block ends."""
    async with Cluster(url, **FAST, sync_interval=0.05) as cluster:
        pod = cluster.pod("pod0", client=cluster.client("pod0", named=False))
        for _ in range(calls):
            assert await pod.call() == "ok"
            await asyncio.sleep(0.05)
        yield pod


def _refusal(pod: Pod) -> str:
    """What the pod's one ``registry_down`` carried, as lower-case text."""
    assert pod.count("registry_down") == 1
    return str(pod.events.args_of("registry_down")[0][0]).lower()


def _cli(url: str, command: list[str]) -> None:
    """Run the CLI as an operator would, with the ACL user's URL and the test prefix."""
    done = subprocess.run(
        [sys.executable, "-m", "distributed_opossum.cli", "--url", url, "--prefix", PREFIX,
         *command],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"cli {command}: {done.stdout}{done.stderr}"


async def test_user_without_rights_gets_one_clear_error_and_stays_local(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A user with no command rights: one clear logged error, and the breaker works locally."""
    caplog.set_level(logging.WARNING, logger="distributed_opossum")
    async with admin_of(redis_server) as admin:
        await acl_setuser(admin, "nobody", "on", ">pw", "-@all")
        # 20 calls in 1 s: twenty refused reports
        async with _pod_on(user_url(redis_server.url, "nobody", "pw"), calls=20) as pod:
            await pod.trip()
            assert pod.causes("open") == ["local"]
            await eventually(lambda: pod.breaker.half_open, within=1.0)
            pod.downstream.mode = "ok"
            assert await pod.call() == "ok"  # the local trial rule
            assert pod.causes("close") == ["trial"]
    errors = _library_records(caplog, logging.ERROR)
    assert errors, "the refusal was not logged"
    text = " ".join(r.getMessage() + str(r.exc_info and r.exc_info[1]) for r in errors)
    assert "NOPERM" in text or "permission" in text.lower(), text[:500]
    assert len(errors) <= 2, (
        f"{len(errors)} error records in 1 s, not one clear error: "
        f"{[r.getMessage()[:120] for r in errors[:4]]}"
    )


async def test_wrong_password_gets_a_clear_error_and_no_crash(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password: registry_down names the failed authentication; nothing crashes."""
    caplog.set_level(logging.WARNING, logger="distributed_opossum")
    url = user_url(redis_server.url, "default", "wrong-password")
    async with admin_of(redis_server) as admin:
        await admin.config_set("requirepass", "right-password")
        try:
            async with _pod_on(url, calls=20) as pod:
                refusal = _refusal(pod)
                assert "password" in refusal, refusal
                coordinator = pod.coordinator
                assert coordinator._ticker is not None
                assert not coordinator._ticker.done()
                assert coordinator._listener is not None
                assert not coordinator._listener.done()
                await pod.trip()
                assert pod.breaker.state is State.OPEN
        finally:
            admin.connection_pool.connection_kwargs["password"] = "right-password"
            await admin.config_set("requirepass", "")
    records = _library_records(caplog, logging.WARNING)
    assert 1 <= len(records) <= 2, [r.getMessage()[:120] for r in records[:5]]


@pytest.mark.chaos
async def test_fleet_over_tls(tmp_path: Path, tls_redis_server: RedisServer) -> None:
    """Three pod processes on rediss://: a trip spreads, a trial closes, everyone converges."""
    server = tls_redis_server
    assert server.tls is not None
    spec = url_client(server.tls_url, ssl_ca_certs=str(server.tls.ca))
    async with chaos_run(tmp_path / "fleet", server, client=spec) as run:
        await asyncio.sleep(0.5)
        tripped = time.monotonic()
        run.fleet.switch.fail()
        await run.wait_pods(lambda v: v.state in ("open", "half_open"), within=1.0, what="all open")
        run.fleet.switch.heal()
        await run.wait_closed(within=3.0)
        await run.converge()
        clients = await run.admin.client_list()
        ports = {int(c["laddr"].rsplit(":", 1)[1]) for c in clients if c.get("name", "")}
        assert ports == {server.tls_port}, f"pods connected to {ports}"
    assert run.results is not None
    spread = open_spread(run.results, run.fleet.instances, tripped)
    assert spread < CONVERGE_WITHIN


async def test_tls_without_trusting_the_ca_is_a_clear_error(tls_redis_server: RedisServer) -> None:
    """A client that does not trust the server's CA: registry_down names the certificate."""
    async with _pod_on(tls_redis_server.tls_url, calls=10) as pod:
        refusal = _refusal(pod)
        assert "certificate" in refusal, refusal
        await pod.trip()
        assert pod.causes("open") == ["local"]
