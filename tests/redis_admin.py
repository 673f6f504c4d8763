"""The test's own Redis operations: an admin client, ACL users, killed connections, who listens.

What a test does to or reads from the server beside the pods it watches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis_server import RedisServer, free_port

__all__ = [
    "acl_setuser",
    "admin_client",
    "admin_of",
    "channel_subscribers",
    "dead_port_url",
    "kill_pubsub",
    "readme_acl_rule",
    "user_subscriptions",
    "user_url",
]


def admin_client(url: str) -> aioredis.Redis:
    """A client for the test's own reads and writes (it reconnects after a restart)."""
    return aioredis.Redis.from_url(
        url, retry=Retry(NoBackoff(), 3), retry_on_error=[redis.exceptions.ConnectionError]
    )


@asynccontextmanager
async def admin_of(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """:func:`admin_client` of ``server``, closed when the block ends."""
    admin = admin_client(server.url)
    try:
        yield admin
    finally:
        await admin.aclose()


async def acl_setuser(admin: aioredis.Redis, *rule: str) -> None:
    """``ACL SETUSER`` with raw rule words (redis-py leaves execute_command unannotated)."""
    await admin.execute_command("ACL", "SETUSER", *rule)  # type: ignore[no-untyped-call]


def readme_acl_rule(prefix: str, user: str = "dopossum") -> list[str]:
    """The README's ``ACL SETUSER <user>`` arguments, with the key prefix ``prefix``."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith(f"ACL SETUSER {user} "))
    words = line.split()[2:]
    return [w.replace("dopossum", prefix, 1) if w.startswith(("~", "&")) else w for w in words]


def user_url(url: str, user: str, password: str) -> str:
    """``url`` with ``user:password@`` in it."""
    return url.replace("://", f"://{user}:{password}@", 1)


def dead_port_url() -> str:
    """A ``redis://`` URL of a localhost port nothing listens on."""
    return f"redis://127.0.0.1:{free_port()}/0"


async def kill_pubsub(admin: aioredis.Redis) -> int:
    """``CLIENT KILL TYPE pubsub`` (every pub/sub connection but the admin's); how many."""
    killed: int = await admin.client_kill_filter(_type="pubsub", skipme=True)
    return killed


async def channel_subscribers(admin: aioredis.Redis, names: set[str]) -> set[str]:
    """Which of the client ``names`` hold a channel subscription on the server."""
    found = set()
    for entry in await admin.client_list():
        if entry.get("name") in names and int(entry.get("sub", 0)) > 0:
            found.add(entry["name"])
    return found


async def user_subscriptions(admin: aioredis.Redis, user: str) -> int:
    """How many connections of the Redis ``user`` hold a channel subscription."""
    entries = await admin.client_list()
    return sum(1 for e in entries if e.get("user") == user and int(e.get("sub", 0)) > 0)
