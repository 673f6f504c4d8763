"""The fleet's breakers as an operator sees them: found with SCAN, read, steered.

This is the CLI's transport: the only part of it that knows Redis commands and
the key layout (through :mod:`._keys`). It returns frozen dataclasses; what
Redis holds is validated field by field, and a field that is garbage (another
writer, an old version, a hand edit) comes back as ``None`` ("unknown")
instead of crashing the reader.

Per page of breakers the reads cost three pipelined round trips, whatever the
number of pods: the state of each (the ``read_state`` script, which validates
and carries Redis' clock), which of its keys exist, and its window (each pod's
field of the ``windows`` hash and the last tally's pooled figures, see the
header of ``lua/report_window.lua`` and :func:`read_windows`).

Example::

    fleet = Fleet(redis.asyncio.Redis.from_url(url), "dopossum")
    for status in await fleet.read(await fleet.names()):
        print(status.name, status.state and status.state.state)
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace

from redis.exceptions import ResponseError

from .keys import BreakerKeys, breaker_name_from_key, keys_pattern, validate_prefix
from .replies import PooledWindow, ProtocolError, SharedState, parse_snapshot
from .scripts import DEFAULT_CLEANUP_MAX_AGE_MS, RedisClient, scripts_for

__all__ = [
    "SCAN_COUNT",
    "BreakerStatus",
    "Fleet",
    "PodWindowField",
    "UnknownBreakerError",
    "WindowSums",
    "read_windows",
]

SCAN_COUNT = 1000
"""COUNT hint of each SCAN call: keys Redis looks at per round trip."""

_PAGE = 200
# Breakers read per pipelined round trip: bounded, so a fleet of thousands
# never makes one huge reply (nor one long stall of Redis).
_RESET_KEY_TTL_MS = 60_000
# The TTL reset gives a state hash; the next report of a pod sets its own.
_MAX_EXACT = 2**53
_COUNT = re.compile(rb"[0-9]{1,16}")
# A pod's field (see lua/report_window.lua):
# "<gen>:<epoch> <ts> <volume> <failures> <trips>".
_POD_ROW = re.compile(
    rb"(\S+):([0-9]{1,16}) ([0-9]{1,16}) ([0-9]{1,16}) ([0-9]{1,16}) ([0-9]{1,16})"
)
# The tally's snapshot in the lease:
# "<holder> <gen> <epoch> <state> <ms> <volume> <failures> <reporting> <votes>".
_POD_PREFIX = b"pod:"


class UnknownBreakerError(LookupError):
    """No key of a breaker of that name exists under the prefix."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no such breaker: {name}")
        self.name = name


@dataclass(frozen=True, slots=True)
class PodWindowField:
    """One pod's window as it wrote it: ``None`` where Redis holds garbage."""

    instance: str
    volume: int | None
    """Completed calls (successes + failures)."""
    failures: int | None
    trips: int | None
    """Local trips the pod reported under the current epoch."""
    written_ms: int | None = None
    """When (Redis ms, as the pod estimated it) the pod wrote it."""


@dataclass(frozen=True, slots=True)
class WindowSums:
    """The pooled window of a breaker: the last tally's figures, and each pod's field.

    Every field is ``None`` when unknown (missing or garbage in Redis, or
    ``pending``).
    """

    volume: int | None
    """Pooled completed calls (successes + failures) of every pod."""
    failures: int | None
    trips: int | None
    """Local trips in the pods' windows (summed from the pods listed)."""
    reporting: int | None
    """Pods with calls or a trip in the window (an idle pod has no say)."""
    votes: int | None
    """Pods voting to open under the vote rule."""
    entries: int | None
    """Entries in the stats list."""
    latest_ms: int | None
    """Redis time of the latest pod window written (0: none)."""
    min_pod_volume: float | None
    """Vote rule: calls a pod needs before its rate is a vote (the tallying
    pod's option: not stored, always None here)..."""
    error_threshold_percentage: float | None
    """...and the rate it must exceed (None, as above)."""
    pods: tuple[PodWindowField, ...]
    """The pods whose window is of the current gen and epoch, and those whose
    field does not parse (all ``None``), by instance."""
    tallied_ms: int | None = None
    """Redis time of the tally the pooled figures come from; None without one."""
    pending: bool = False
    """Pods hold windows of the current epoch but no tally of them is in Redis
    yet (a change of state deleted the last one, or its lease just ran out):
    the next report tallies. The pooled figures are then ``None``; this is no
    problem."""

    @property
    def failure_rate(self) -> float | None:
        """failures / volume in [0, 1]; ``None`` when unknown or without calls."""
        if self.volume is None or self.failures is None or self.failures > self.volume:
            return None
        return self.failures / self.volume if self.volume else None


_UNKNOWN = WindowSums(None, None, None, None, None, None, None, None, None, ())


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """Everything the CLI shows about one breaker."""

    name: str
    state: SharedState | None
    """The shared state with Redis' clock (``now_ms``); ``None`` when unreadable.
    ``state.exists`` is False when no state hash exists (pods read that as closed)."""
    window: WindowSums
    problems: tuple[str, ...]
    """What was found unreadable, in words (empty when everything parsed)."""


def _count(raw: object) -> int | None:
    if not isinstance(raw, bytes) or not _COUNT.fullmatch(raw):
        return None
    value = int(raw)
    return value if value < _MAX_EXACT else None


@dataclass(frozen=True, slots=True)
class _Field:
    """A pod's field of the windows hash, read."""

    pod: PodWindowField
    history: tuple[bytes, int] | None
    """The gen and epoch it was written under; None when it does not parse."""


def _field(field: bytes, raw: object) -> _Field:
    instance = field[len(_POD_PREFIX) :].decode("utf-8", "replace")
    match = _POD_ROW.fullmatch(raw) if isinstance(raw, bytes) else None
    if match is None:
        return _Field(PodWindowField(instance, None, None, None), None)
    gen, epoch, at, volume, failures, trips = match.groups()
    v, f, t, e = _count(volume), _count(failures), _count(trips), _count(epoch)
    if v is None or f is None or t is None or e is None or f > v:
        return _Field(PodWindowField(instance, None, None, None, _count(at)), None)
    return _Field(PodWindowField(instance, v, f, t, _count(at)), (gen, e))


def _history(state: object) -> tuple[bytes, int] | None:
    """The state hash's gen and epoch (its ``HMGET``), or None: missing or unreadable."""
    if not isinstance(state, list) or len(state) != 2:
        return None
    gen, epoch = state[0], _count(state[1])
    if not isinstance(gen, bytes) or not gen or epoch is None:
        return None
    return gen, epoch


async def read_windows(
    client: RedisClient, keys: Sequence[BreakerKeys]
) -> list[tuple[WindowSums, tuple[str, ...]]]:
    """The window of each breaker, in one pipelined round trip.

    The one place that reads the windows hash and the tally lease's snapshot
    (see the header of ``lua/report_window.lua``): a change of the report
    protocol changes this function only. The pooled figures are the last
    tally's snapshot (in the tally lease: at most one report interval old
    while pods report) when it is of the state's gen and epoch; without one,
    and with pods holding windows of that epoch, they are ``pending`` (the
    next report tallies). The pods listed are those whose window is of the
    current gen and epoch (the others count nowhere), and those whose field
    is garbage.

    Returns:
        Per breaker, its window and what is unreadable, in words (then the
        unknown fields are ``None``). No keys at all: an empty window.
    """
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.hgetall(k.pods)
        pipe.llen(k.stats)
        pipe.hmget(k.state, "gen", "epoch")
        pipe.get(k.tally)
    replies = await pipe.execute(raise_on_error=False)
    return [_checked_window(*replies[i : i + 4]) for i in range(0, len(replies), 4)]


def _checked_window(
    fields: object, length: object, state: object, lease: object
) -> tuple[WindowSums, tuple[str, ...]]:
    for reply in (fields, length, state, lease):
        if isinstance(reply, Exception) and not _is_garbage(reply):
            raise reply
    if not isinstance(fields, dict) or not isinstance(length, int):
        return _UNKNOWN, ("window unreadable (a key of the wrong type)",)
    problems = []
    # No readable state: the next report makes a new history, in which no
    # window written so far counts (pods read a missing state as closed).
    history = _history(state)
    read = [_field(f, raw) for f, raw in fields.items() if f.startswith(_POD_PREFIX)]
    garbage = [r.pod for r in read if r.history is None]
    counted = [r.pod for r in read if r.history is not None and r.history == history]
    if garbage:
        problems.append(
            f"{len(garbage)} pod window(s) unreadable (garbage); they count nowhere,"
            " and the next tally removes them"
        )
    pods = tuple(sorted(counted + garbage, key=lambda pod: pod.instance))
    found = WindowSums(
        volume=None,
        failures=None,
        trips=sum(pod.trips or 0 for pod in counted),
        reporting=None,
        votes=None,
        entries=length,
        latest_ms=max((pod.written_ms or 0 for pod in counted), default=0),
        min_pod_volume=None,
        error_threshold_percentage=None,
        pods=pods,
    )
    if isinstance(lease, Exception):
        problems.append("tally lease unreadable (a key of the wrong type)")
        return found, tuple(problems)
    snapshot = _snapshot(lease, history)
    if isinstance(snapshot, str):
        problems.append(snapshot)
        return found, tuple(problems)
    if snapshot is not None:
        window, tallied_ms = snapshot
        pooled = replace(
            found,
            volume=window.volume,
            failures=window.failures,
            reporting=window.reporting,
            votes=window.votes,
            tallied_ms=tallied_ms,
        )
        return pooled, tuple(problems)
    if not counted:
        # Nothing of this epoch to tally: the next tally finds nothing either.
        return replace(found, volume=0, failures=0, reporting=0, votes=0), tuple(problems)
    return replace(found, pending=True), tuple(problems)


def _snapshot(
    lease: object, history: tuple[bytes, int] | None
) -> tuple[PooledWindow, int] | str | None:
    """The tally's pooled figures in the lease, if it holds a snapshot of ``history``.

    Returns:
        Its pooled window and when it was tallied (Redis ms); None when the lease
        holds no snapshot of the current state, which is no problem (it is
        free, a pod's tally is under way, or the state changed between the
        reads); or, when it holds garbage, why.
    """
    if not isinstance(lease, bytes) or b" " not in lease:
        return None  # free, or held by a pod whose tally is under way
    snapshot = parse_snapshot(lease)
    if snapshot is None or snapshot.window is None:
        return "pooled window unreadable (garbage in the tally lease)"
    gen = snapshot.gen.encode()
    if history is None or (gen, snapshot.epoch) != history:
        return None  # the state changed between the reads: the next tally follows it
    return snapshot.window, snapshot.tallied_ms


def _is_garbage(reply: object) -> bool:
    # A key of the wrong type is data trouble, shown as unknown; any other
    # error (NOPERM, a lost connection) is the operator's to see.
    return isinstance(reply, ProtocolError) or (
        isinstance(reply, ResponseError) and str(reply).startswith("WRONGTYPE")
    )


class Fleet:
    """The breakers of one prefix on one Redis client, read and steered as an operator.

    On a Redis Cluster (a ``redis.asyncio.RedisCluster``) the listing scans
    every master, and the scripts go to the master of each breaker's keys.

    Args:
        client: a ``redis.asyncio.Redis`` or ``RedisCluster`` (replies as bytes:
            no ``decode_responses``).
        prefix: the breakers' key prefix (``distributed["prefix"]``).

    Raises:
        ValueError: the prefix cannot be one (see :func:`validate_prefix`).
    """

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self.client = client
        self.prefix = validate_prefix(prefix)
        self._scripts = scripts_for(client)
        # Origin of the broadcasts of force_open / reset, as a pod's instance id.
        self.instance = f"cli:{socket.gethostname()}:{os.getpid()}"

    def keys(self, name: str) -> BreakerKeys:
        """The keys of breaker ``name`` (ValueError for an empty name)."""
        return BreakerKeys.for_breaker(self.prefix, name)

    async def names(self) -> list[str]:
        """Every breaker name with a key under the prefix, sorted; SCAN, never KEYS."""
        found: set[str] = set()
        async for key in self.client.scan_iter(match=keys_pattern(self.prefix), count=SCAN_COUNT):
            name = breaker_name_from_key(self.prefix, key)
            if name is not None:
                found.add(name)
        return sorted(found)

    async def read(self, names: Sequence[str]) -> list[BreakerStatus]:
        """The status of each breaker, in order (a missing one reads as empty)."""
        statuses: list[BreakerStatus] = []
        for start in range(0, len(names), _PAGE):
            statuses.extend(await self._read_page(names[start : start + _PAGE]))
        return statuses

    async def require(self, name: str) -> BreakerKeys:
        """The keys of ``name``, or :class:`UnknownBreakerError` when none exists."""
        keys = self.keys(name)
        if not await self.client.exists(keys.state, keys.stats, keys.pods, keys.tally):
            raise UnknownBreakerError(name)
        return keys

    async def _read_page(self, names: Sequence[str]) -> list[BreakerStatus]:
        keys = [self.keys(name) for name in names]
        batch = self._scripts.batch()
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            batch.read_state(k)
            pipe.exists(k.state)
        states = await batch.execute_states()
        present = await pipe.execute(raise_on_error=False)
        windows = await read_windows(self.client, keys)
        return [
            _status(k.name, state, state_present, window)
            for k, state, state_present, window in zip(keys, states, present, windows, strict=True)
        ]

    async def force_open(self, name: str, *, create: bool = False) -> SharedState:
        """Hold breaker ``name`` open on every pod, with no trials, until :meth:`reset`.

        Raises:
            UnknownBreakerError: no such breaker and not ``create``.
        """
        keys = self.keys(name) if create else await self.require(name)
        return await self._scripts.force_open(keys, instance=self.instance)

    async def reset(self, name: str) -> SharedState:
        """Close breaker ``name`` on every pod and clear its backoff.

        Raises:
            UnknownBreakerError: no such breaker.
        """
        keys = await self.require(name)
        return await self._scripts.reset(keys, instance=self.instance, key_ttl_ms=_RESET_KEY_TTL_MS)

    async def cleanup(
        self, names: Sequence[str], *, max_age_ms: int = DEFAULT_CLEANUP_MAX_AGE_MS
    ) -> dict[str, int]:
        """Remove stats entries older than ``max_age_ms``; entries removed per breaker."""
        removed = {}
        for name in names:
            removed[name] = await self._scripts.cleanup_stats(
                self.keys(name), max_age_ms=max_age_ms
            )
        return removed


def _status(
    name: str,
    state: SharedState | Exception,
    state_present: object,
    window: tuple[WindowSums, tuple[str, ...]],
) -> BreakerStatus:
    problems = []
    shared: SharedState | None = None
    for reply in (state, state_present):
        if isinstance(reply, Exception) and not _is_garbage(reply):
            raise reply
    if isinstance(state, Exception):
        problems.append(f"state unreadable: {state}")
    elif state_present == 1 and not state.exists:
        problems.append("state hash unreadable (garbage); pods recreate it at their next report")
    else:
        shared = state
    sums, found = window
    problems.extend(found)
    return BreakerStatus(name, shared, sums, tuple(problems))
