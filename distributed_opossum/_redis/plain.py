"""The calls that need no script: a busy pod's report, and the tally read and written.

A script call costs Redis dozens of times a plain command before it does
anything (its arguments, its setup, the state it parses), so what needs no
atomicity goes as plain commands, pipelined with the scripts in a
:class:`.scripts.ScriptBatch`:

* **a plain report** (a pod that knows the state, with no trip to tell):
  ``RPUSH`` of its entry, ``HSET`` of its window, and ``SET NX PX GET`` of
  the tally lease, which answers the last tally's snapshot or wins the lease;
* **the tally read** by the pod that won it: ``HGETALL`` of the windows and
  ``HMGET`` of the state, summed by :mod:`.tally`;
* **the tally written**, when the sums open nothing: the lease's new snapshot
  (``SET XX PX``: none if a change of state deleted the lease meanwhile),
  the list's cap (``LTRIM``) and the removal of old fields (``HDEL``).

Each call is parsed with the ``TIME`` its round trip reads first. The layout
of every value is the one ``lua/report_window.lua`` documents and writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .keys import BreakerKeys
from .params import PodWindow, WindowReport, check_int, check_text
from .replies import SHARED_STATES, PlainReply, parse_count_text, parse_plain_reply

__all__ = [
    "PlainCall",
    "TallyRead",
    "entry_json",
    "plain_report_call",
    "tally_read_call",
    "tally_write_call",
]

T = TypeVar("T")

Command = tuple[str | int | bytes, ...]


@dataclass(frozen=True, slots=True)
class PlainCall(Generic[T]):
    """Plain commands of one breaker, parsed together with the round trip's ``TIME``."""

    keys: tuple[str, ...]
    """A key of the breaker first: it routes the call on a Redis Cluster."""
    commands: tuple[Command, ...]
    parse: Callable[[list[object], int], T]
    wrong_type: Callable[[int], T]
    """The result when a key held a value of another type (not ours)."""
    timed: bool = True
    """It reads the round trip's ``TIME`` (a round trip of untimed calls sends none)."""


def entry_json(report: WindowReport, *, instance: str, timestamp_ms: int, epoch: int) -> str:
    """A stats list entry in the format ``report_window.lua`` writes (ARCHITECTURE §5)."""
    return (
        f'{{"v":1,"timestamp":{timestamp_ms},"instance":{json.dumps(instance)},'
        f'"fires":{report.fires},"successes":{report.successes},"failures":{report.failures},'
        f'"timeouts":{report.timeouts},"rejects":{report.rejects},'
        f'"local_open":{"true" if report.local_open else "false"},"epoch":{epoch}}}'
    )


def plain_report_call(
    keys: BreakerKeys,
    report: WindowReport,
    *,
    instance: str,
    gen: str,
    epoch: int,
    window: PodWindow,
    redis_ms: int,
    lease_ms: int,
    snapshot: str | None = None,
) -> PlainCall[PlainReply]:
    """A busy pod's report; see the module's docstring. Its result is a :class:`PlainReply`.

    ``snapshot`` is the last snapshot this pod read (without its holder): a pod
    that wins the lease leaves it there until its tally writes the new one, so
    the pods reporting in the same instant (pods on one machine tick together)
    still read a snapshot, one interval older.

    Raises:
        ValueError: a trip (reported by script, at once), or a bad argument.
    """
    if report.local_open:
        raise ValueError("a trip is reported by script (report_window), never plain")
    check_text("instance", instance)
    check_text("gen", gen)
    check_int("epoch", epoch, minimum=0)
    check_int("redis_ms", redis_ms, minimum=0)
    commands: list[Command] = []
    if not report.is_empty:
        entry = entry_json(report, instance=instance, timestamp_ms=redis_ms, epoch=epoch)
        commands.append(("RPUSH", keys.stats, entry))
    field = f"pod:{instance}"
    if window.is_empty:
        commands.append(("HDEL", keys.pods, field))
    else:
        value = f"{gen}:{epoch} {redis_ms} {window.to_text()}"
        commands.append(("HSET", keys.pods, field, value))
    lease = check_int("lease_ms", lease_ms, minimum=1)
    value = instance if not snapshot else f"{instance} {snapshot}"
    commands.append(("SET", keys.tally, value, "NX", "PX", lease, "GET"))
    return PlainCall(
        (keys.state,),
        tuple(commands),
        lambda replies, now_ms: parse_plain_reply(replies[-1], now_ms),
        # A key of another type: the script (the tally) replaces it.
        lambda now_ms: PlainReply(tally=True, now_ms=now_ms),
    )


@dataclass(frozen=True, slots=True)
class TallyRead:
    """What the tally reads: every pod's field, and the state's head."""

    now_ms: int
    fields: dict[bytes, bytes]
    gen: str | None
    """None when the state hash is missing, unusable, or not ours: the script must tally."""
    epoch: int
    state: str
    refreshed_ms: int | None


def _bytes(value: object) -> bytes | None:
    if isinstance(value, str):
        return value.encode()
    return value if isinstance(value, bytes) else None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _parse_tally_read(replies: list[object], now_ms: int) -> TallyRead:
    raw_fields, head = replies
    fields: dict[bytes, bytes] = {}
    if isinstance(raw_fields, dict):
        for raw_field, raw_value in raw_fields.items():
            field, value = _bytes(raw_field), _bytes(raw_value)
            if field is not None and value is not None:
                fields[field] = value
    gen = epoch = state = refreshed = None
    if isinstance(head, list) and len(head) == 4:
        gen, epoch, state = _text(head[0]), parse_count_text(head[1]), _text(head[2])
        refreshed = parse_count_text(head[3])
    if not gen or epoch is None or state not in SHARED_STATES:
        return TallyRead(now_ms, fields, None, 0, "", None)
    return TallyRead(now_ms, fields, gen, epoch, str(state), refreshed)


def tally_read_call(keys: BreakerKeys) -> PlainCall[TallyRead]:
    """The tally's read: ``HGETALL`` of the windows, ``HMGET`` of the state's head."""
    commands: tuple[Command, ...] = (
        ("HGETALL", keys.pods),
        ("HMGET", keys.state, "gen", "epoch", "state", "refreshed"),
    )
    return PlainCall(
        (keys.state,),
        commands,
        _parse_tally_read,
        lambda now_ms: TallyRead(now_ms, {}, None, 0, "", None),
    )


def tally_write_call(
    keys: BreakerKeys, *, snapshot: str, lease_ms: int, cap: int, gone: tuple[bytes, ...]
) -> PlainCall[bool]:
    """The tally's writes; its result is True when the snapshot was left in the lease."""
    commands: list[Command] = [
        ("SET", keys.tally, snapshot, "XX", "PX", check_int("lease_ms", lease_ms, minimum=1)),
        ("LTRIM", keys.stats, -check_int("cap", cap, minimum=1), -1),
    ]
    for start in range(0, len(gone), 1000):
        commands.append(("HDEL", keys.pods, *gone[start : start + 1000]))
    return PlainCall(
        (keys.state,),
        tuple(commands),
        lambda replies, _now: replies[0] is True,
        lambda _now: False,
        timed=False,
    )
