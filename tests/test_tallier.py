"""The tally with plain commands (``_redis/tallier.py``): what it writes, and when it
hands the breaker to the script instead.

The pod that won the tally lease reads every pod's window and the state's head,
sums them, and writes the lease's snapshot, the list's cap and the removal of
old fields; when the sums open the breaker, or the state is not a closed one of
ours, or the TTLs are due, the script tallies instead (it decides and renews
atomically). Runs on a private real redis-server and on fakeredis.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis_admin import acl_setuser
from transport_support import KEYS, PARAMS, Client, redis_now_ms, text, window_field

from distributed_opossum._redis.link import SharedLink
from distributed_opossum._redis.replies import PooledWindow
from distributed_opossum._redis.scripts import scripts_for
from distributed_opossum._redis.tallier import plain_tallies

GEN = "feedfacefeedface"


@dataclasses.dataclass
class FollowingLink:
    """What the tallier uses of a link, and what it was told."""

    keys: Any = KEYS
    params: Any = PARAMS
    instance: str = "tallier"
    tally_lease_ms: int = 900
    followed: list[tuple[str, int, PooledWindow, str]] = dataclasses.field(default_factory=list)

    def apply_tally(
        self, gen: str, epoch: int, window: PooledWindow, now_ms: int, snapshot: str
    ) -> None:
        self.followed.append((gen, epoch, window, snapshot))


async def _state(client: Client, *, state: str = "closed", refreshed_ago: int = 0) -> int:
    now = await redis_now_ms(client)
    await client.hset(
        KEYS.state,
        mapping={
            "gen": GEN, "epoch": 2, "state": state, "open_until": 0, "attempts": 0,
            "closed_at": 0, "reason": "test", "trial_successes": 0,
            "refreshed": now - refreshed_ago,
        },
    )  # fmt: skip
    await client.set(KEYS.tally, "tallier", px=900)  # the lease this pod won
    return now


async def _tally(client: Client, link: FollowingLink) -> list[Any]:
    calls = [(cast(SharedLink, link), "extra")]
    return await plain_tallies(scripts_for(client), None, calls, time_limit=2.0)


async def test_a_tally_that_opens_nothing_is_written_with_plain_commands(
    any_redis_client: Client,
) -> None:
    now = await _state(any_redis_client)
    await any_redis_client.hset(
        KEYS.pods,
        mapping={
            "pod:a": window_field(now, GEN, 2, 10, 2, 0),
            "pod:b": window_field(now, GEN, 2, 5, 1, 0),
            "pod:old": window_field(now - PARAMS.window_ms - 1, GEN, 2, 50, 50, 0),
            "pod:bad": "garbage",
        },
    )
    await any_redis_client.rpush(KEYS.stats, *[f"e{i}" for i in range(PARAMS.max_entries + 7)])
    link = FollowingLink()
    assert await _tally(any_redis_client, link) == []
    window = PooledWindow(volume=15, failures=3, reporting=2, votes=0)
    lease = text(await any_redis_client.get(KEYS.tally) or b"")
    assert link.followed == [(GEN, 2, window, lease.partition(" ")[2])]
    snapshot = lease.split(" ")
    assert snapshot[:4] == ["tallier", GEN, "2", "closed"]
    assert snapshot[5:] == ["15", "3", "2", "0"]
    assert 0 < await any_redis_client.pttl(KEYS.tally) <= 900
    assert sorted(text(k) for k in await any_redis_client.hkeys(KEYS.pods)) == ["pod:a", "pod:b"]
    assert await any_redis_client.llen(KEYS.stats) == PARAMS.max_entries  # the cap
    assert text(await any_redis_client.lindex(KEYS.stats, -1) or b"") == (
        f"e{PARAMS.max_entries + 6}"
    )


async def test_sums_that_open_go_to_the_script(any_redis_client: Client) -> None:
    now = await _state(any_redis_client)
    await any_redis_client.hset(KEYS.pods, "pod:a", window_field(now, GEN, 2, 4, 3, 0))
    link = FollowingLink()
    assert await _tally(any_redis_client, link) == [(link, "extra")]
    assert link.followed == []
    assert text(await any_redis_client.get(KEYS.tally) or b"") == "tallier"  # untouched


async def test_a_state_not_closed_or_not_ours_goes_to_the_script(any_redis_client: Client) -> None:
    for state in ("open", "half_open", "forced_open"):
        await _state(any_redis_client, state=state)
        link = FollowingLink()
        assert await _tally(any_redis_client, link) == [(link, "extra")], state
    await any_redis_client.delete(KEYS.state)
    assert await _tally(any_redis_client, FollowingLink()) != []
    await any_redis_client.set(KEYS.state, "a string")
    assert await _tally(any_redis_client, FollowingLink()) != []


async def test_due_ttls_go_to_the_script(any_redis_client: Client) -> None:
    await _state(any_redis_client, refreshed_ago=PARAMS.key_ttl_ms // 4)
    link = FollowingLink()
    assert await _tally(any_redis_client, link) == [(link, "extra")]
    await _state(any_redis_client, refreshed_ago=PARAMS.key_ttl_ms // 4 - 1_000)
    assert await _tally(any_redis_client, FollowingLink()) == []


async def test_a_change_of_state_meanwhile_leaves_no_snapshot(any_redis_client: Client) -> None:
    """The snapshot is SET XX: a change of state deleted the lease, nothing brings it back."""
    await _state(any_redis_client)
    await any_redis_client.delete(KEYS.tally)
    assert await _tally(any_redis_client, FollowingLink()) == []
    assert await any_redis_client.exists(KEYS.tally) == 0


async def test_a_state_head_in_other_digits_goes_to_the_script(any_redis_client: Client) -> None:
    """'²' is a digit to Python, not to Redis: a forged epoch is no state of ours, no crash."""
    await _state(any_redis_client)
    await any_redis_client.hset(KEYS.state, "epoch", "²")
    link = FollowingLink()
    assert await _tally(any_redis_client, link) == [(link, "extra")]


async def test_a_refused_write_is_loud(redis_client: Client) -> None:
    """A tally whose writes Redis refuses (an ACL without LTRIM, say) raises, so the
    ticker logs it, rather than leaving every pod without a snapshot in silence."""
    await acl_setuser(
        redis_client, "tally-no-ltrim", "on", "nopass", "~*", "-@all",
        "+hgetall", "+hmget", "+set", "+hdel", "+time", "+hset",
    )  # fmt: skip
    user = aioredis.Redis(
        port=redis_client.connection_pool.connection_kwargs["port"], username="tally-no-ltrim"
    )
    try:
        await _state(redis_client)
        with pytest.raises(ResponseError, match="ltrim"):
            await plain_tallies(
                scripts_for(user), None, [(cast(SharedLink, FollowingLink()), 0)], time_limit=2.0
            )
    finally:
        await user.aclose()
        await redis_client.acl_deluser("tally-no-ltrim")
