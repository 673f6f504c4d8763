"""The tests' redis-server launcher: a server is started only when it is that process
that answers on its port."""

from __future__ import annotations

import pytest
from redis_server import RedisServer, RedisServerError

pytestmark = pytest.mark.redis


def test_a_server_whose_port_another_server_holds_is_not_taken_for_started() -> None:
    """The second process cannot bind the port and exits; the first one answering PING
    there must not pass for it (a cluster node that "started" that way never joins)."""
    with RedisServer() as first:
        second = RedisServer()
        second.port = first.port  # a fixed port: no retry on another one
        with pytest.raises(RedisServerError):
            second.start()
        assert not second.running
        assert first.running
