"""The tally of the pods that won the tally lease in their plain reports, on one node.

Two pipelined round trips for every breaker of a tick's tallies together: the
read (:func:`.plain.tally_read_call`), summed here by :mod:`.tally`, then the
writes (:func:`.plain.tally_write_call`). A breaker whose sums say *open*,
whose state hash is not closed, gone or not ours, or whose keys' TTLs are
due, is returned instead: the caller tallies it by script
(``report_window.lua``), which decides, opens and renews atomically.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from .client import NodeRoute
from .plain import TallyRead
from .scripts import RedisScripts
from .tally import decide, list_cap, snapshot, tally_windows

if TYPE_CHECKING:
    from .link import SharedLink

__all__ = ["plain_tallies"]

T = TypeVar("T")


async def plain_tallies(
    scripts: RedisScripts,
    route: NodeRoute | None,
    calls: Sequence[tuple[SharedLink, T]],
    *,
    time_limit: float,
) -> list[tuple[SharedLink, T]]:
    """Tally ``calls``' breakers with plain commands; returns those the script must tally.

    Raises:
        redis.exceptions.RedisError, OSError: a round trip failed, or Redis
            refused a write (its breakers' leases expire; the next interval
            tallies them).
    """
    batch = scripts.batch(route)
    for link, _ in calls:
        batch.tally_read(link.keys)
    async with asyncio.timeout(time_limit):
        reads = await batch.execute()
    by_script: list[tuple[SharedLink, T]] = []
    writes = scripts.batch(route)
    for (link, extra), read in zip(calls, reads, strict=True):
        if not isinstance(read, TallyRead) or not _plain_will_do(link, read):
            by_script.append((link, extra))
            continue
        assert read.gen is not None  # (_plain_will_do)
        tally = tally_windows(
            read.fields, gen=read.gen, epoch=read.epoch, now_ms=read.now_ms, params=link.params
        )
        if decide(tally, link.params) is not None:
            by_script.append((link, extra))  # it opens: the script decides, atomically
            continue
        value = snapshot(
            link.instance,
            gen=read.gen,
            epoch=read.epoch,
            state=read.state,
            now_ms=read.now_ms,
            tally=tally,
        )
        writes.tally_write(
            link.keys,
            snapshot=value,
            lease_ms=link.tally_lease_ms,
            cap=list_cap(tally, link.params),
            gone=tally.gone,
        )
        tail = value.partition(" ")[2]
        link.apply_tally(read.gen, read.epoch, tally.window, read.now_ms, tail)
    if len(writes):
        async with asyncio.timeout(time_limit):
            written = await writes.execute()
        refused = next((result for result in written if isinstance(result, Exception)), None)
        if refused is not None:
            # Redis answered but wrote nothing (rights, memory): said, not swallowed,
            # or no pod would read a snapshot again and nobody would know why.
            raise refused
    return by_script


def _plain_will_do(link: SharedLink, read: TallyRead) -> bool:
    """True when plain commands can stand for the script's tally: the state is
    there and closed (an open breaker's TTLs follow its open period: the
    script's), and its keys' TTLs are not due (every quarter of key_ttl_ms)."""
    if read.gen is None or read.state != "closed" or read.refreshed_ms is None:
        return False
    age = read.now_ms - read.refreshed_ms
    return 0 <= age < link.params.key_ttl_ms / 4
