"""The fleet's breakers as an operator sees them: found with SCAN, read, steered.

This is the CLI's transport: the only part of it that knows Redis commands and
the key layout (through :mod:`._keys`). It returns frozen dataclasses; what
Redis holds is validated field by field, and a field that is garbage (another
writer, an old version, a hand edit) comes back as ``None`` ("unknown")
instead of crashing the reader.

Per page of breakers the reads cost three pipelined round trips, whatever the
number of pods: the state of each (the ``read_state`` script, which validates
and carries Redis' clock), which of its keys exist, and its window sums (the
``pods`` hash written by ``lua/report_window.lua``; see :func:`read_windows`).

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
from dataclasses import dataclass

from redis.exceptions import ResponseError

from .keys import BreakerKeys, breaker_name_from_key, keys_pattern, validate_prefix
from .replies import ProtocolError, SharedState
from .scripts import DEFAULT_CLEANUP_MAX_AGE_MS, RedisClient, scripts_for

__all__ = [
    "SCAN_COUNT",
    "BreakerStatus",
    "Fleet",
    "PodWindow",
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
_POD_ROW = re.compile(rb"([0-9]{1,16}) ([0-9]{1,16}) ([0-9]{1,16})(?: [0-9]{1,16})?")
_POD_PREFIX = b"pod:"


class UnknownBreakerError(LookupError):
    """No key of a breaker of that name exists under the prefix."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no such breaker: {name}")
        self.name = name


@dataclass(frozen=True, slots=True)
class PodWindow:
    """One pod's sums over the window: ``None`` where Redis holds garbage."""

    instance: str
    volume: int | None
    """Completed calls (successes + failures)."""
    failures: int | None
    trips: int | None
    """Local trips the pod reported under the current epoch."""


@dataclass(frozen=True, slots=True)
class WindowSums:
    """The pooled sums over a breaker's stats window, as of the latest report.

    Every field is ``None`` when unknown (missing or garbage in Redis).
    """

    volume: int | None
    """Pooled completed calls (successes + failures) of every pod."""
    failures: int | None
    trips: int | None
    reporting: int | None
    """Pods with calls or a trip in the window (an idle pod has no say)."""
    votes: int | None
    """Pods voting to open under the vote rule."""
    entries: int | None
    """Entries in the stats list."""
    latest_ms: int | None
    """Redis time of the latest entry (0: none)."""
    min_pod_volume: float | None
    """Vote rule: calls a pod needs before its rate is a vote..."""
    error_threshold_percentage: float | None
    """...and the rate it must exceed."""
    pods: tuple[PodWindow, ...]

    @property
    def failure_rate(self) -> float | None:
        """failures / volume in [0, 1]; ``None`` when unknown or without calls."""
        if self.volume is None or self.failures is None or self.failures > self.volume:
            return None
        return self.failures / self.volume if self.volume else None


_EMPTY = WindowSums(0, 0, 0, 0, 0, 0, 0, None, None, ())
"""The sums of a breaker without a stats list: nothing in the window."""
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


def _real(raw: bytes) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0 <= value < _MAX_EXACT else None


def _pod(field: bytes, raw: object) -> PodWindow:
    instance = field[len(_POD_PREFIX) :].decode("utf-8", "replace")
    match = _POD_ROW.fullmatch(raw) if isinstance(raw, bytes) else None
    if match is None:
        return PodWindow(instance, None, None, None)
    volume, failures, trips = (_count(group) for group in match.groups())
    if volume is not None and failures is not None and failures > volume:
        volume = failures = None
    return PodWindow(instance, volume, failures, trips)


def _window(fields: dict[bytes, bytes]) -> WindowSums:
    rule = fields.get(b"rule", b"").split(b" ")
    min_pod_volume, threshold = (_real(part) for part in rule) if len(rule) == 2 else (None, None)
    pods = [_pod(field, raw) for field, raw in fields.items() if field.startswith(_POD_PREFIX)]
    return WindowSums(
        volume=_count(fields.get(b"volume")),
        failures=_count(fields.get(b"failures")),
        trips=_count(fields.get(b"trips")),
        reporting=_count(fields.get(b"reporting")),
        votes=_count(fields.get(b"votes")),
        entries=_count(fields.get(b"entries")),
        latest_ms=_count(fields.get(b"latest")),
        min_pod_volume=min_pod_volume,
        error_threshold_percentage=threshold,
        pods=tuple(sorted(pods, key=lambda pod: pod.instance)),
    )


async def read_windows(
    client: RedisClient, keys: Sequence[BreakerKeys]
) -> list[tuple[WindowSums, str | None]]:
    """The window sums of each breaker, in one pipelined round trip.

    The one place that reads the aggregates hash (``<prefix>:{<name>}:pods``,
    see the header of ``lua/report_window.lua``): a change of the report
    protocol changes this function only. As that script does, the sums are
    trusted only if they describe as many entries as the stats list holds.

    Returns:
        Per breaker, its sums and, when they are not to be trusted, why (then
        the unknown fields are ``None``). No list and no hash: empty sums.
    """
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.hgetall(k.pods)
        pipe.llen(k.stats)
    replies = await pipe.execute(raise_on_error=False)
    return [_checked_window(replies[i], replies[i + 1]) for i in range(0, len(replies), 2)]


def _checked_window(fields: object, length: object) -> tuple[WindowSums, str | None]:
    for reply in (fields, length):
        if isinstance(reply, Exception) and not _is_garbage(reply):
            raise reply
    if not isinstance(fields, dict) or not isinstance(length, int):
        return _UNKNOWN, "window sums unreadable (a key of the wrong type)"
    if not fields:
        if length == 0:
            return _EMPTY, None
        return _UNKNOWN, "window sums missing; the next report rebuilds them"
    window = _window(fields)
    header = (window.entries, window.volume, window.failures, window.reporting, window.votes)
    if None in header:
        return window, "window sums unreadable (garbage)"
    counted = _count(fields.get(b"counted"))
    if counted is not None and window.entries is not None and counted < window.entries:
        return _UNKNOWN, f"window sums being rebuilt ({counted} of {window.entries} entries)"
    if window.entries != length:
        stale = f"window sums out of date ({window.entries} entries summed, {length} in the list)"
        return _UNKNOWN, f"{stale}; the next report rebuilds them"
    return window, None


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
        if not await self.client.exists(keys.state, keys.stats, keys.pods):
            raise UnknownBreakerError(name)
        return keys

    async def _read_page(self, names: Sequence[str]) -> list[BreakerStatus]:
        keys = [self.keys(name) for name in names]
        batch = self._scripts.batch()
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            batch.read_state(k)
            pipe.exists(k.state)
        states = await batch.execute()
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
    window: tuple[WindowSums, str | None],
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
    sums, problem = window
    if problem is not None:
        problems.append(problem)
    return BreakerStatus(name, shared, sums, tuple(problems))
