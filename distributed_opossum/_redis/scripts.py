"""Typed access to the Lua scripts in ``lua/``: loading, per-client registry, calls.

The scripts are package data of this subpackage (``distributed_opossum/_redis/lua``,
in a wheel and in a source checkout alike; the repository's top-level ``lua``
links to it, for reading). ``lua/_prelude.lua`` is prepended to each, since
Redis scripts cannot include files. Arguments are validated in :mod:`.params`,
replies in :mod:`.replies`; this module re-exports both, so the coordinator
imports everything transport-related from here.

Calls go out as EVALSHA. When Redis has lost its script cache (restart,
failover, ``SCRIPT FLUSH``) the script is loaded again and the call retried;
should the cache be flushed again between the load and the retry, the call
goes out as EVAL with the script's source, which no flush can come between.
A :class:`ScriptBatch` sends many breakers' calls in one pipelined round trip
and does the same for those of its calls that met NOSCRIPT, and only for
them, so no report is ever applied twice.

Example::

    scripts = scripts_for(client)
    keys = BreakerKeys.for_breaker("dopossum", "payments")
    state = await scripts.read_state(keys)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.abc import Traversable
from typing import Any, Generic, Literal, TypeAlias, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .client import NodeRoute, is_cluster, ready, route_of
from .keys import BreakerKeys
from .params import (
    DecisionParams,
    PodWindow,
    WindowReport,
    check_int,
    check_real,
    check_text,
    to_argv,
)
from .plain import (
    Command,
    PlainCall,
    TallyRead,
    plain_report_call,
    tally_read_call,
    tally_write_call,
)
from .replies import (
    MAX_BROADCAST_BYTES,
    SHARED_STATES,
    Broadcast,
    PlainReply,
    PooledWindow,
    ProtocolError,
    SharedState,
    SharedStateName,
    TrialGrant,
    parse_broadcast,
    parse_count_reply,
    parse_report_reply,
    parse_state_reply,
    parse_time_reply,
    parse_trial_reply,
    protocol_error_counts,
)

__all__ = [
    "DEFAULT_CLEANUP_MAX_AGE_MS",
    "MAX_BROADCAST_BYTES",
    "SCRIPT_NAMES",
    "SHARED_STATES",
    "BatchResult",
    "Broadcast",
    "DecisionParams",
    "PlainReply",
    "PodWindow",
    "PooledWindow",
    "ProtocolError",
    "RedisClient",
    "RedisScripts",
    "ScriptBatch",
    "SharedState",
    "SharedStateName",
    "TallyRead",
    "TrialGrant",
    "TrialOutcome",
    "WindowReport",
    "parse_broadcast",
    "protocol_error_counts",
    "script_source",
    "scripts_for",
]

logger = logging.getLogger(__name__)

RedisClient: TypeAlias = "Redis | RedisCluster"
TrialOutcome = Literal["success", "failure"]

DEFAULT_CLEANUP_MAX_AGE_MS = 30 * 60 * 1000
"""cleanup_stats removes entries older than this by default (30 minutes)."""

SCRIPT_NAMES = (
    "acquire_trial",
    "cleanup_stats",
    "finish_trial",
    "force_open",
    "read_state",
    "release_trial",
    "report_window",
    "reset",
    "touch_state",
)
"""Every script in ``lua/`` (file name without ``.lua``)."""
_PRELUDE = "_prelude"

T = TypeVar("T")

BatchResult: TypeAlias = "SharedState | PlainReply | TallyRead | bool | Exception"
"""One call's result in a :class:`ScriptBatch`: as the call's kind says, or its error."""


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, slots=True)
class _Script:
    name: str
    source: str
    sha: str


def _lua_dir() -> Traversable:
    """The scripts, package data of this subpackage (wheel and source checkout alike)."""
    return resources.files(__package__ or __name__.rpartition(".")[0]).joinpath("lua")


_PUBLISH_CALL = "redis.call('PUBLISH', channel,"
"""The one broadcast of the prelude; a Redis Cluster client's scripts SPUBLISH instead."""


@cache
def _scripts(sharded: bool = False) -> dict[str, _Script]:
    """Every script by name: as sent to a single Redis, or (``sharded``) to a Redis Cluster.

    The two differ in one word: a cluster's scripts broadcast with SPUBLISH on
    the breaker's shard channel, which only the shard holding its keys serves
    (plain PUBLISH would travel the whole cluster bus to reach every node).
    """
    directory = _lua_dir()
    prelude = directory.joinpath(f"{_PRELUDE}.lua").read_text("utf-8")
    if prelude.count(_PUBLISH_CALL) != 1:
        raise RuntimeError(f"{_PRELUDE}.lua must hold exactly one {_PUBLISH_CALL!r}")
    if sharded:
        prelude = prelude.replace(_PUBLISH_CALL, _PUBLISH_CALL.replace("PUBLISH", "SPUBLISH"))
    scripts = {}
    for name in SCRIPT_NAMES:
        source = prelude + "\n" + directory.joinpath(f"{name}.lua").read_text("utf-8")
        sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()
        scripts[name] = _Script(name, source, sha)
    return scripts


def script_source(name: str, *, sharded: bool = False) -> str:
    """The full source of a script as sent to Redis (prelude included); ``sharded``: as
    sent to a Redis Cluster."""
    return _scripts(sharded)[name].source


def _check_loaded(script: _Script, sha: object) -> None:
    """``SCRIPT LOAD``'s answer must be the script's own SHA1."""
    if isinstance(sha, bytes):
        sha = sha.decode("ascii", "replace")
    if sha != script.sha:
        raise ProtocolError(f"SCRIPT LOAD of {script.name} answered {sha!r:.60}")


def _for_client(script: _Script, client: object) -> _Script:
    """``script`` as ``client`` runs it: the sharded variant on a Redis Cluster client."""
    if isinstance(client, RedisCluster):
        return _scripts(True)[script.name]
    return script


# --------------------------------------------------------------------------- calls


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One script invocation, ready to run alone or in a batch."""

    script: _Script
    keys: tuple[str, ...]
    args: tuple[str | bytes, ...]
    parse: Callable[[object], T]

    @property
    def keys_and_args(self) -> tuple[str | bytes, ...]:
        return self.keys + self.args


def _state_call(name: str, keys: tuple[str, ...], args: tuple[str, ...]) -> _Call[SharedState]:
    return _Call(_scripts()[name], keys, args, lambda reply: parse_state_reply(reply, name))


def _new_gen() -> str:
    # Scripts may not draw random numbers; a fresh gen comes with every call
    # that might have to create the state hash.
    return secrets.token_hex(8)


def _jitter(jitter: float) -> float:
    return check_real("jitter", jitter, 0, float("inf"))


def _report_call(
    keys: BreakerKeys,
    report: WindowReport,
    *,
    instance: str,
    known_epoch: int,
    known_gen: str,
    params: DecisionParams,
    jitter: float,
    window: PodWindow | None,
    holds_lease: bool,
    lease_ms: int,
    window_written: bool = False,
) -> _Call[SharedState]:
    if not isinstance(known_gen, str):
        raise TypeError(f"known_gen must be a str, got {known_gen!r:.40}")
    if window is None:
        window = PodWindow.of(report)
    elif not isinstance(window, PodWindow):
        raise TypeError(f"window must be a PodWindow, got {window!r:.60}")
    args = (
        check_text("instance", instance),
        *report.to_argv(),
        *to_argv(check_int("known_epoch", known_epoch, minimum=0), _jitter(jitter)),
        _new_gen(),
        keys.events,
        keys.name,
        *params.argv_bytes,
        known_gen,
        "" if window_written else window.to_text(),
        "1" if holds_lease else "0",
        *to_argv(check_int("lease_ms", lease_ms, minimum=1)),
    )
    return _Call(
        _scripts()["report_window"],
        (keys.stats, keys.state, keys.pods, keys.tally),
        args,
        parse_report_reply,
    )


def _read_call(keys: BreakerKeys) -> _Call[SharedState]:
    return _state_call("read_state", (keys.state,), ())


def _touch_call(keys: BreakerKeys, key_ttl_ms: int) -> _Call[SharedState]:
    args = to_argv(check_int("key_ttl_ms", key_ttl_ms, minimum=1))
    return _state_call("touch_state", (keys.state, keys.stats, keys.pods), args)


def _awaited(value: object) -> Awaitable[object]:
    # redis-py types its commands as "awaitable or value" for both flavours;
    # on an asyncio client they are always awaitable.
    return cast(Awaitable[object], value)


# --------------------------------------------------------------------------- registry

_registry: weakref.WeakKeyDictionary[Any, RedisScripts] = weakref.WeakKeyDictionary()


def scripts_for(client: RedisClient) -> RedisScripts:
    """The :class:`RedisScripts` of ``client``: one per client, made on first use.

    Keyed by the client object's identity and held weakly, so the registry
    never keeps a client alive.
    """
    scripts = _registry.get(client)
    if scripts is None:
        scripts = _registry[client] = RedisScripts(client)
    return scripts


class RedisScripts:
    """The scripts, callable on one client. Get it from :func:`scripts_for`.

    Every method is one round trip (two more after Redis lost its script
    cache). Connection trouble raises redis-py's exceptions; a reply that is
    not what the script returns raises :class:`ProtocolError`; bad arguments
    raise ``ValueError``/``TypeError`` before anything is sent.

    It holds its client weakly (see :func:`scripts_for`): whoever uses it
    keeps the client alive.
    """

    __slots__ = ("_client_ref",)

    def __init__(self, client: RedisClient) -> None:
        # Weak: the registry's value must not keep its own key alive.
        self._client_ref: weakref.ref[RedisClient] = weakref.ref(client)

    @property
    def client(self) -> RedisClient:
        """The client these scripts run on."""
        client = self._client_ref()
        if client is None:
            raise RuntimeError("the Redis client of these scripts was garbage-collected")
        return client

    async def load(self, names: Sequence[str] = SCRIPT_NAMES) -> None:
        """SCRIPT LOAD the scripts (all by default), e.g. right after a reconnect."""
        client = self.client
        scripts = _scripts(isinstance(client, RedisCluster))
        for name in names:
            script = scripts[name]
            _check_loaded(script, await _awaited(client.script_load(script.source)))

    async def _run(self, call: _Call[T]) -> T:
        script = _for_client(call.script, self.client)
        sha = script.sha
        try:
            reply = await _awaited(self.client.evalsha(sha, len(call.keys), *call.keys_and_args))
        except NoScriptError:
            logger.debug("script %s not in Redis' cache; loading it", call.script.name)
            if is_cluster(self.client):
                # SCRIPT LOAD would go to every master (and fail with any one
                # of them down); EVAL goes to the key's master alone, and
                # leaves the script in its cache for the next EVALSHA.
                reply = await _awaited(
                    self.client.eval(script.source, len(call.keys), *call.keys_and_args)
                )
                return call.parse(reply)
            await self.load([call.script.name])
            try:
                reply = await _awaited(
                    self.client.evalsha(sha, len(call.keys), *call.keys_and_args)
                )
            except NoScriptError:  # flushed again since the load
                source = script.source
                reply = await _awaited(
                    self.client.eval(source, len(call.keys), *call.keys_and_args)
                )
        return call.parse(reply)

    def batch(self, route: NodeRoute | None = None) -> ScriptBatch:
        """A batch of calls run in one pipelined round trip; see :class:`ScriptBatch`.

        On a Redis Cluster every call of a batch must live on ``route``'s node
        (see :func:`.client.route_of`): the batch goes to that node alone.
        """
        return ScriptBatch(self, route)

    async def load_on(self, route: NodeRoute, names: Sequence[str]) -> None:
        """SCRIPT LOAD ``names`` on ``route``'s node (every server for a plain client)."""
        if route.node is None:
            await self.load(names)
            return
        scripts = _scripts(sharded=True)  # a node: a Redis Cluster's
        for name in names:
            script = scripts[name]
            _check_loaded(script, await route.node.execute_command("SCRIPT", "LOAD", script.source))

    async def report_window(
        self,
        keys: BreakerKeys,
        report: WindowReport,
        *,
        instance: str,
        known_epoch: int,
        params: DecisionParams,
        jitter: float = 1.0,
        known_gen: str = "",
        window: PodWindow | None = None,
        holds_lease: bool = False,
        lease_ms: int = 1000,
        window_written: bool = False,
    ) -> SharedState:
        """Append this pod's bucket, write its window, tally and decide, return the shared state.

        Args:
            keys: the breaker's keys.
            report: the finished bucket; an empty one is not appended, but the
                window is still trimmed and judged, and the TTLs refreshed.
            instance: this pod's id.
            known_epoch: the epoch this pod knows; its local trip counts only
                while that is still the current epoch.
            known_gen: the gen this pod knows ("" before its first sync); a
                trip vote made in another history counts in the current one.
            params: the decision parameters.
            jitter: factor on the open period should this report open the
                breaker, drawn by the caller from ``reset_timeout_jitter``.
            window: the pod's own entries of its epoch in the window, this
                bucket included; None: this bucket alone.
            holds_lease: the pod won the tally lease (in a plain report):
                tally whatever the lease says. Otherwise the script tallies
                if it wins the lease itself, or to judge a trip.
            lease_ms: how long a tally lease lasts (the report interval).
            window_written: the pod's plain report has just written its
                window (this is that report's tally): ``window`` is not sent.
        """
        call = _report_call(
            keys,
            report,
            instance=instance,
            known_epoch=known_epoch,
            known_gen=known_gen,
            params=params,
            jitter=jitter,
            window=window,
            holds_lease=holds_lease,
            lease_ms=lease_ms,
            window_written=window_written,
        )
        return await self._run(call)

    async def acquire_trial(
        self, keys: BreakerKeys, *, holder: str, params: DecisionParams
    ) -> TrialGrant:
        """Ask for a half-open trial permit (turning an elapsed open into half_open).

        ``holder`` names this one trial call; asking again with the same
        holder renews its permit instead of taking another.
        """
        args = to_argv(
            check_text("holder", holder),
            params.half_open_max_calls,
            params.lease_ttl_ms,
            params.key_ttl_ms,
        )
        call = _Call(_scripts()["acquire_trial"], (keys.state,), args, parse_trial_reply)
        return await self._run(call)

    async def finish_trial(
        self,
        keys: BreakerKeys,
        *,
        holder: str,
        epoch: int,
        outcome: TrialOutcome,
        instance: str,
        params: DecisionParams,
        jitter: float = 1.0,
    ) -> SharedState:
        """Report a trial's outcome: enough successes close, a failure re-opens.

        Ignored (``changed`` False) unless the state is half_open under
        ``epoch`` and ``holder`` still holds a live permit. A close deletes the
        stats list and its sums (the window starts over).
        """
        if outcome not in ("success", "failure"):
            raise ValueError(f"outcome must be 'success' or 'failure', got {outcome!r}")
        p = params.argv_values()
        args = to_argv(
            check_text("holder", holder),
            check_int("epoch", epoch, minimum=0),
            outcome,
            p["half_open_max_calls"],
            p["reset_timeout_ms"],
            p["reset_timeout_multiplier"],
            p["max_reset_timeout_ms"],
            _jitter(jitter),
            p["key_ttl_ms"],
            keys.events,
            keys.name,
            check_text("instance", instance),
        )
        call = _state_call("finish_trial", (keys.state, keys.stats, keys.pods), args)
        return await self._run(call)

    async def release_trial(self, keys: BreakerKeys, *, holder: str) -> SharedState:
        """Give a permit back without an outcome (the trial's caller was cancelled)."""
        args = (check_text("holder", holder),)
        return await self._run(_state_call("release_trial", (keys.state,), args))

    async def force_open(self, keys: BreakerKeys, *, instance: str) -> SharedState:
        """Hold the breaker open cluster-wide, with no trials, until :meth:`reset`."""
        args = (_new_gen(), keys.events, keys.name, check_text("instance", instance))
        return await self._run(_state_call("force_open", (keys.state,), args))

    async def reset(self, keys: BreakerKeys, *, instance: str, key_ttl_ms: int) -> SharedState:
        """Close the breaker cluster-wide, clear its attempts and start a new window.

        The stats list and its sums are deleted in the same script, so the
        first report after the close has nothing to trim.
        """
        args = to_argv(
            _new_gen(),
            check_int("key_ttl_ms", key_ttl_ms, minimum=1),
            keys.events,
            keys.name,
            check_text("instance", instance),
        )
        return await self._run(_state_call("reset", (keys.state, keys.stats, keys.pods), args))

    async def read_state(self, keys: BreakerKeys) -> SharedState:
        """The shared state and Redis' clock; writes nothing."""
        return await self._run(_read_call(keys))

    async def touch_state(self, keys: BreakerKeys, *, key_ttl_ms: int) -> SharedState:
        """The shared state and Redis' clock; renews the keys' TTLs, creates nothing."""
        return await self._run(_touch_call(keys, key_ttl_ms))

    async def cleanup_stats(
        self, keys: BreakerKeys, *, max_age_ms: int = DEFAULT_CLEANUP_MAX_AGE_MS
    ) -> int:
        """Remove stats entries older than ``max_age_ms``; returns how many went."""
        args = to_argv(check_int("max_age_ms", max_age_ms, minimum=0))
        call = _Call(_scripts()["cleanup_stats"], (keys.stats,), args, parse_count_reply)
        return await self._run(call)


class ScriptBatch:
    """Script calls of many breakers, sent in one pipelined round trip.

    Queue calls, then :meth:`execute` once. Results come back in queue order,
    each the parsed state or the exception of that call alone (a bad reply
    for one breaker does not fail the others).

    Example::

        batch = scripts.batch()
        for b in due:
            batch.report_window(b.keys, b.report, instance=me, known_epoch=b.epoch,
                                params=b.params)
        for b, result in zip(due, await batch.execute()):
            ...
    """

    __slots__ = ("_calls", "_route", "_scripts")

    def __init__(
        self,
        scripts: RedisScripts,
        route: NodeRoute | None = None,
        calls: Sequence[_Call[SharedState] | PlainCall[Any]] = (),
    ) -> None:
        self._scripts = scripts
        self._route = route
        self._calls: list[_Call[SharedState] | PlainCall[Any]] = list(calls)

    def __len__(self) -> int:
        return len(self._calls)

    def report_window(
        self,
        keys: BreakerKeys,
        report: WindowReport,
        *,
        instance: str,
        known_epoch: int,
        params: DecisionParams,
        jitter: float = 1.0,
        known_gen: str = "",
        window: PodWindow | None = None,
        holds_lease: bool = False,
        lease_ms: int = 1000,
        window_written: bool = False,
    ) -> None:
        """Queue :meth:`RedisScripts.report_window` (same arguments, validated now)."""
        call = _report_call(
            keys,
            report,
            instance=instance,
            known_epoch=known_epoch,
            known_gen=known_gen,
            params=params,
            jitter=jitter,
            window=window,
            holds_lease=holds_lease,
            lease_ms=lease_ms,
            window_written=window_written,
        )
        self._calls.append(call)

    def plain_report(
        self,
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
    ) -> None:
        """Queue a report in plain commands: its result is a :class:`PlainReply`.

        For a pod that knows the shared state (``gen``, ``epoch``) and has no
        trip to report: RPUSH of its entry (none for an empty bucket; stamped
        ``redis_ms``, its estimate of Redis' clock), HSET of its window (HDEL
        when empty), and ``SET NX PX GET`` of the tally lease, which answers
        the last tally's snapshot of the state, or wins the lease: then the
        pod tallies next (see :mod:`.plain` and :mod:`.tally`).
        """
        self._calls.append(
            plain_report_call(
                keys,
                report,
                instance=instance,
                gen=gen,
                epoch=epoch,
                window=window,
                redis_ms=redis_ms,
                lease_ms=lease_ms,
                snapshot=snapshot,
            )
        )

    def tally_read(self, keys: BreakerKeys) -> None:
        """Queue the tally's read (see :mod:`.plain`): its result is a :class:`TallyRead`."""
        self._calls.append(tally_read_call(keys))

    def tally_write(
        self, keys: BreakerKeys, *, snapshot: str, lease_ms: int, cap: int, gone: tuple[bytes, ...]
    ) -> None:
        """Queue the tally's writes (see :mod:`.plain`): its result is a bool."""
        self._calls.append(
            tally_write_call(keys, snapshot=snapshot, lease_ms=lease_ms, cap=cap, gone=gone)
        )

    def read_state(self, keys: BreakerKeys) -> None:
        """Queue :meth:`RedisScripts.read_state`."""
        self._calls.append(_read_call(keys))

    def touch_state(self, keys: BreakerKeys, *, key_ttl_ms: int) -> None:
        """Queue :meth:`RedisScripts.touch_state`."""
        self._calls.append(_touch_call(keys, key_ttl_ms))

    async def execute(self) -> list[BatchResult]:
        """Run every queued call and empty the batch.

        Results come in queue order: a :class:`SharedState` per script call, a
        :class:`PlainReply` per plain report, or that call's exception alone.

        Raises:
            redis.exceptions.RedisError: the round trip itself failed
                (connection lost, timeout); no result is known. On a
                cluster, only the batch's node was asked.
        """
        calls, self._calls = self._calls, []
        if self._route is None and is_cluster(self._scripts.client):
            return await self._execute_per_node(calls)
        results = await self._send(calls)
        # A call that met NOSCRIPT did not run, so sending it again cannot
        # apply anything twice; calls that did run are left alone.
        for source in (False, True):  # load and retry; then send the source
            missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if not missing:
                break
            logger.debug("%d batched calls met NOSCRIPT; retrying them", len(missing))
            retry = [cast(_Call[SharedState], calls[i]) for i in missing]
            if not source:
                names = sorted({call.script.name for call in retry})
                if self._route is None:
                    await self._scripts.load(names)
                else:
                    await self._scripts.load_on(self._route, names)
            retried = await self._send(list(retry), source=source)
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        return results

    async def execute_states(self) -> list[SharedState | Exception]:
        """:meth:`execute` for a batch of script calls only (no plain report).

        Raises:
            TypeError: a plain report was queued.
        """
        if any(isinstance(call, PlainCall) for call in self._calls):
            raise TypeError("execute_states() runs script calls only; use execute()")
        results = await self.execute()
        return [cast(SharedState | Exception, result) for result in results]

    async def _execute_per_node(
        self, calls: list[_Call[SharedState] | PlainCall[Any]]
    ) -> list[BatchResult]:
        """A batch of a cluster client spanning nodes: one batch per node, concurrently.

        Raises the first node's error, as one failed round trip would.
        """
        client = self._scripts.client
        await ready(client)
        routes: dict[str, NodeRoute] = {}
        groups: dict[str, list[int]] = {}
        for i, call in enumerate(calls):
            route = route_of(client, call.keys[0])
            routes.setdefault(route.name, route)
            groups.setdefault(route.name, []).append(i)
        replies = await asyncio.gather(
            *(
                ScriptBatch(self._scripts, routes[name], [calls[i] for i in indices]).execute()
                for name, indices in groups.items()
            )
        )
        results: list[BatchResult] = [ProtocolError("not sent")] * len(calls)
        for indices, reply in zip(groups.values(), replies, strict=True):
            for i, result in zip(indices, reply, strict=True):
                results[i] = result
        return results

    async def _send(
        self, calls: Sequence[_Call[SharedState] | PlainCall[Any]], *, source: bool = False
    ) -> list[BatchResult]:
        """One round trip; each call's parsed result, or its error (NOSCRIPT included)."""
        if not calls:
            return []
        client = self._scripts.client
        # Plain reports read Redis' clock once per round trip, first.
        timed = any(isinstance(call, PlainCall) and call.timed for call in calls)
        commands: list[Command] = [("TIME",)] if timed else []
        for call in calls:
            if isinstance(call, PlainCall):
                commands.extend(call.commands)
            else:
                script = _for_client(call.script, client)
                head = ("EVAL", script.source) if source else ("EVALSHA", script.sha)
                commands.append((*head, len(call.keys), *call.keys_and_args))
        node = None if self._route is None else self._route.node
        if node is not None:
            replies = await _send_to_node(node, commands)
        elif len(commands) == 1:
            # One command (a lone breaker's report, a trip): no pipeline to build,
            # which costs redis-py more than the command (a trip's report goes
            # out sooner). Its refusal is its result, as in a pipeline.
            command = commands[0]
            try:
                replies = [await client.execute_command(*command, **_options(command))]
            except ResponseError as refused:
                replies = [refused]
        else:
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command, **_options(command))
            replies = list(await pipe.execute(raise_on_error=False))
        return _regroup(calls, replies, timed)


def _options(command: Command) -> dict[str, bool]:
    """redis-py's reply options: a SET ... GET answers the old value, not OK."""
    return {"get": True} if command[0] == "SET" and command[-1] == "GET" else {}


def _regroup(
    calls: Sequence[_Call[SharedState] | PlainCall[Any]], replies: list[object], timed: bool
) -> list[BatchResult]:
    """Each call's result from the replies of the round trip's commands."""
    at = 0
    now_ms: int | Exception = ProtocolError("no TIME")
    if timed:
        clock = replies[0]
        at = 1
        try:
            now_ms = clock if isinstance(clock, Exception) else parse_time_reply(clock)
        except ProtocolError as bad_clock:
            now_ms = bad_clock
    results: list[BatchResult] = []
    for call in calls:
        if isinstance(call, PlainCall):
            mine = replies[at : at + len(call.commands)]
            at += len(call.commands)
            failed = next((r for r in mine if isinstance(r, Exception)), None)
            if isinstance(failed, ResponseError) and str(failed).startswith("WRONGTYPE"):
                # A key that is not ours: what the call says then (a script replaces it).
                results.append(call.wrong_type(now_ms if isinstance(now_ms, int) else 0))
                continue
            if failed is None and call.timed and isinstance(now_ms, Exception):
                failed = now_ms
            if failed is not None:
                results.append(failed)
                continue
            try:
                results.append(call.parse(mine, now_ms if isinstance(now_ms, int) else 0))
            except ProtocolError as exc:
                results.append(exc)
        else:
            results.append(_parse_or_error(call, replies[at]))
            at += 1
    return results


async def _send_to_node(node: Any, commands: list[Command]) -> list[object]:
    """One pipelined round trip to one cluster node (redis-py's cluster pipeline
    refuses EVALSHA, and would span every shard: one dead shard would stall all).

    MOVED, ASK, TRYAGAIN and CLUSTERDOWN come back as that command's exception.
    """
    pipeline = [
        PipelineCommand(i, *command, **_options(command)) for i, command in enumerate(commands)
    ]
    await node.execute_pipeline(pipeline)
    results: list[object] = [command.result for command in pipeline]
    for result in results:
        # The connection broke while reading: the round trip failed, as a plain
        # client's pipeline says by raising.
        if isinstance(result, RedisConnectionError | RedisTimeoutError):
            raise result
    return results


def _parse_or_error(call: _Call[SharedState], result: object) -> SharedState | Exception:
    if isinstance(result, Exception):
        return result
    try:
        return call.parse(result)
    except ProtocolError as exc:
        return exc
