"""The chaos tools do what they say: the proxy's modes, the downstream switch, the records."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from chaos_downstream import DownstreamSwitch
from chaos_proxy import ChaosProxy
from chaos_records import Timeline, Trial, rss_growth, trials_per_period
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis_server import RedisServer


def _client(url: str) -> aioredis.Redis:
    # No retries: the test must see what the proxy does to a connection.
    return aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_timeout=2.0)


async def test_proxy_passes_delays_and_black_holes(redis_server_session: RedisServer) -> None:
    """Pass-through answers at once; delay(0.2) adds 200 ms per command; a black hole answers
    nothing; leaving it cuts the connections that lost data, and new ones work."""
    with ChaosProxy(redis_server_session.port) as proxy:
        client = _client(proxy.url)
        try:
            await client.ping()
            start = time.monotonic()
            await client.ping()
            assert time.monotonic() - start < 0.1

            proxy.delay(0.2)
            start = time.monotonic()
            await client.ping()
            assert 0.2 <= time.monotonic() - start < 0.4

            proxy.pass_through()
            proxy.black_hole()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await client.ping()
            assert proxy.stats.swallowed_bytes > 0
            proxy.pass_through()  # the tainted connection is cut
            await asyncio.sleep(0.05)
            assert proxy.stats.cut >= 1
            fresh = _client(proxy.url)
            assert await fresh.ping()
            await fresh.aclose()
        finally:
            await client.aclose()


def test_proxy_delays_overlap(redis_server_session: RedisServer) -> None:
    """Each chunk waits its own delay from its arrival: two commands 50 ms apart take ~250 ms."""
    with (
        ChaosProxy(redis_server_session.port) as proxy,
        socket.create_connection((proxy.host, proxy.port), timeout=2.0) as sock,
    ):
        proxy.delay(0.2)
        start = time.monotonic()
        sock.sendall(b"PING\r\n")
        time.sleep(0.05)
        sock.sendall(b"PING\r\n")
        received = b""
        while received.count(b"+PONG") < 2:
            received += sock.recv(64)
        assert 0.25 <= time.monotonic() - start < 0.4


def test_proxy_cut_resets_every_connection(redis_server_session: RedisServer) -> None:
    """cut() closes every open connection; the proxy keeps accepting new ones."""
    with ChaosProxy(redis_server_session.port) as proxy:
        with socket.create_connection((proxy.host, proxy.port), timeout=2.0) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(64).startswith(b"+PONG")
            deadline = time.monotonic() + 1.0
            while proxy.stats.open < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proxy.cut() >= 1
            sock.settimeout(1.0)
            try:
                closed = sock.recv(64) == b""
            except ConnectionResetError:
                closed = True
            assert closed
        with socket.create_connection((proxy.host, proxy.port), timeout=2.0) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(64).startswith(b"+PONG")


def test_downstream_switch_is_shared_through_the_file(tmp_path: Path) -> None:
    """A flip through one mapping is seen at once through another (as in another process)."""
    test_side = DownstreamSwitch.create(tmp_path / "switch")
    pod_side = DownstreamSwitch.open(tmp_path / "switch")
    try:
        assert not pod_side.failing
        test_side.fail()
        assert pod_side.failing
        assert pod_side.mode == "fail"
        test_side.heal()
        assert not pod_side.failing
    finally:
        test_side.close()
        pod_side.close()


def _trial(t: float, instance: str, epoch: int, gen: str = "g") -> Trial:
    return Trial(t, instance, gen, epoch, down=False, shared="open", state="half_open")


def test_trials_are_counted_per_period_outside_outages() -> None:
    """Trials group by (gen, epoch); those in an outage (plus grace) of their pod do not count."""
    timeline = Timeline()
    timeline.add(10.0, 11.0)  # everyone
    timeline.add(20.0, 21.0, pods=["b"])  # only pod b
    trials = [
        _trial(1.0, "a", 1),
        _trial(1.1, "b", 1),  # a second trial in period 1
        _trial(2.0, "a", 3),
        _trial(10.5, "a", 3),  # in the outage
        _trial(11.2, "b", 3),  # within the grace
        _trial(20.5, "b", 5),  # b's own outage
        _trial(20.5, "a", 5),  # a could reach Redis
        _trial(30.0, "a", 0, gen="h"),  # a new history
    ]
    periods = trials_per_period(trials, timeline, grace=0.5)
    assert {k: len(v) for k, v in periods.items()} == {
        ("g", 1): 2,
        ("g", 3): 1,
        ("g", 5): 1,
        ("h", 0): 1,
    }


def test_rss_growth_compares_the_last_third_with_the_first() -> None:
    """Flat samples show no growth; a steady climb shows it; too few samples cannot be judged."""
    flat = [(float(t), 100.0 + (t % 2)) for t in range(30)]
    assert rss_growth(flat, since=0.0) <= 1.0
    climbing = [(float(t), 100.0 + 10 * t) for t in range(30)]
    assert rss_growth(climbing, since=0.0) > 100.0
    with pytest.raises(AssertionError):
        rss_growth(flat, since=27.0)
