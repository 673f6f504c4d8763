"""What comes back from Redis: script replies and broadcasts, validated into dataclasses.

A script reply of the wrong shape raises :class:`ProtocolError` (never an
``IndexError`` deep in the caller); a broadcast that is not ours is dropped by
:func:`parse_broadcast` (returns None). Both are counted, see
:func:`protocol_error_counts`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, cast

__all__ = [
    "MAX_BROADCAST_BYTES",
    "SHARED_STATES",
    "Broadcast",
    "PlainReply",
    "PooledWindow",
    "ProtocolError",
    "SharedState",
    "SharedStateName",
    "Snapshot",
    "TrialGrant",
    "parse_broadcast",
    "parse_count_reply",
    "parse_count_text",
    "parse_plain_reply",
    "parse_report_reply",
    "parse_snapshot",
    "parse_state_reply",
    "parse_time_reply",
    "parse_trial_reply",
    "protocol_error_counts",
]

logger = logging.getLogger(__name__)

SharedStateName = Literal["closed", "open", "half_open", "forced_open"]
SHARED_STATES: frozenset[str] = frozenset({"closed", "open", "half_open", "forced_open"})

MAX_BROADCAST_BYTES = 8192
"""Broadcasts longer than this are dropped unread. Ours are ~250 bytes plus the
name and the instance id, which are bounded (``_names.MAX_NAME_LENGTH``
characters, up to 4 bytes each in UTF-8, and ``MAX_INSTANCE_ID_LENGTH``), so
every name a breaker may have is broadcast."""

_STATE_REPLY_LEN = 11
# Scripts keep every number an exact integer in a Lua double; a broadcast
# claiming more (say, an epoch no real one could ever overtake) is forged.
_MAX_EXACT = 2**53
_MAX_REASON_LEN = 200
_protocol_errors: Counter[str] = Counter()


class ProtocolError(Exception):
    """Redis answered with something the transport cannot use.

    Raised for a script reply of the wrong shape or type (another writer's
    script, a proxy, a client with custom response callbacks). Not a
    connection problem: the command did run.
    """


def protocol_error_counts() -> dict[str, int]:
    """How many bad script replies (``"reply"``) and broadcasts (``"broadcast"``) were rejected."""
    return dict(_protocol_errors)


@dataclass(frozen=True, slots=True)
class PooledWindow:
    """Every pod's reports in the window, summed (what the decision is made on)."""

    volume: int
    """Completed calls (successes + failures) of every pod."""
    failures: int
    reporting: int
    """Pods with completed calls or a trip in the window (an idle pod has no say)."""
    votes: int
    """Pods voting to open (their own trip, or their own rate with enough volume)."""


@dataclass(frozen=True, slots=True)
class SharedState:
    """The cluster-wide state of one breaker, as a script returned it.

    Times are Redis ``TIME`` in ms; turn them into local deadlines with
    ``local_now + (open_until_ms - now_ms)``, never by comparing clocks.
    An empty ``gen`` means Redis holds no (usable) state: read it as closed.
    """

    gen: str
    epoch: int
    state: SharedStateName
    open_until_ms: int
    attempts: int
    closed_at_ms: int
    reason: str
    now_ms: int
    changed: bool
    """True when this very call moved the state (opened, closed, half-opened)."""
    lease_expires_ms: int
    """Expiry of the latest live trial lease, 0 when none."""
    trial_successes: int
    window: PooledWindow | None = None
    """The pooled window as the report just made sees it (report replies only)."""

    @property
    def exists(self) -> bool:
        """False when Redis had no shared state for this breaker."""
        return self.gen != ""

    @property
    def open_remaining_ms(self) -> int:
        """Ms left of the open period at ``now_ms`` (0 when over or not open)."""
        return max(0, self.open_until_ms - self.now_ms) if self.state == "open" else 0


@dataclass(frozen=True, slots=True)
class TrialGrant:
    """Answer to a request for a half-open trial permit."""

    granted: bool
    retry_after_ms: int | None
    """When not granted: ms until a permit may free up; None when forced open."""
    state: SharedState


class Broadcast(NamedTuple):
    """A validated state message from a breaker's events channel.

    (A named tuple: immutable, and made for every broadcast by every pod that
    holds the breaker, at a third of a frozen dataclass's cost.)
    """

    name: str
    gen: str
    epoch: int
    state: SharedStateName
    open_until_ms: int
    now_ms: int
    attempts: int
    origin: str
    """Instance id of the pod whose call changed the state."""
    reason: str


# --------------------------------------------------------------------------- replies


def _reply_text(value: object, what: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not UTF-8: {value[:40]!r}") from None
    if isinstance(value, str):
        return value
    raise ProtocolError(f"{what} should be a string, got {type(value).__name__}")


def _reply_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"{what} should be a non-negative integer, got {value!r:.40}")
    return value


def _reply_flag(value: object, what: str) -> bool:
    if isinstance(value, bool) or value not in (0, 1):
        raise ProtocolError(f"{what} should be 0 or 1, got {value!r:.40}")
    return value == 1


def _reply_list(reply: object, length: int, script: str) -> list[object]:
    if not isinstance(reply, list) or len(reply) != length:
        raise ProtocolError(f"{script}: expected a list of {length}, got {reply!r:.200}")
    return reply


def _parse_state(items: Sequence[object]) -> SharedState:
    gen, epoch, state, open_until, attempts, closed_at, reason, now, changed, lease, trials = items
    state_name = _reply_text(state, "state")
    if state_name not in SHARED_STATES:
        raise ProtocolError(f"unknown state {state_name[:40]!r}")
    return SharedState(
        gen=_reply_text(gen, "gen"),
        epoch=_reply_count(epoch, "epoch"),
        state=cast(SharedStateName, state_name),
        open_until_ms=_reply_count(open_until, "open_until"),
        attempts=_reply_count(attempts, "attempts"),
        closed_at_ms=_reply_count(closed_at, "closed_at"),
        reason=_reply_text(reason, "reason")[:_MAX_REASON_LEN],
        now_ms=_reply_count(now, "now"),
        changed=_reply_flag(changed, "changed"),
        lease_expires_ms=_reply_count(lease, "lease expiry"),
        trial_successes=_reply_count(trials, "trial_successes"),
    )


def parse_state_reply(reply: object, script: str = "script") -> SharedState:
    """Validate a state-returning script's reply (``state_reply`` in ``lua/_prelude.lua``).

    Raises:
        ProtocolError: the reply is not exactly what the scripts return.
    """
    try:
        return _parse_state(_reply_list(reply, _STATE_REPLY_LEN, script))
    except ProtocolError:
        _protocol_errors["reply"] += 1
        raise


def parse_report_reply(reply: object) -> SharedState:
    """Validate ``report_window``'s reply: the state, then the pooled window's four sums.

    The sums are four -1 when the call did not tally (another pod holds the
    tally lease): the state's ``window`` is then None.

    Raises:
        ProtocolError: the reply is not exactly what the script returns.
    """
    try:
        items = _reply_list(reply, _STATE_REPLY_LEN + 4, "report_window")
        state = _parse_state(items[:_STATE_REPLY_LEN])
        sums = items[_STATE_REPLY_LEN:]
        if sums == [-1, -1, -1, -1]:
            return state
        volume, failures, reporting, votes = (
            _reply_count(value, what)
            for value, what in zip(sums, ("volume", "failures", "reporting", "votes"), strict=True)
        )
    except ProtocolError:
        _protocol_errors["reply"] += 1
        raise
    window = PooledWindow(volume=volume, failures=failures, reporting=reporting, votes=votes)
    return dataclasses.replace(state, window=window)


@dataclass(frozen=True, slots=True)
class PlainReply:
    """What a plain report (no script) learnt from the tally lease's ``SET NX PX GET``.

    Either the lease was free and this pod won it (``tally``: it must tally
    now, and the tally's reply brings the state), or the lease holds the last
    tally's snapshot: the state's gen, epoch and name then, and the pooled
    window. ``gen`` is None when there was no snapshot to read (a tally under
    way, or something that is not ours).
    """

    tally: bool
    now_ms: int
    """Redis' clock in the same round trip (its ``TIME``)."""
    gen: str | None = None
    epoch: int | None = None
    state: SharedStateName | None = None
    window: PooledWindow | None = None
    snapshot: str | None = None
    """The snapshot as read, without its holder: what this pod passes on when it
    wins the lease next (see :func:`.plain.plain_report_call`)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The last tally's snapshot, as the tally lease holds it (``lua/report_window.lua``):
    ``<holder> <gen> <epoch> <state> <ms> <volume> <failures> <reporting> <votes>``."""

    gen: str
    epoch: int
    state: SharedStateName
    tallied_ms: int
    window: PooledWindow | None
    """None when the figures cannot be (more failures than calls, or votes than pods)."""
    text: str
    """Everything after the holder: what a pod passes on when it wins the lease."""


def parse_snapshot(value: object) -> Snapshot | None:
    """The tally lease's value as a :class:`Snapshot`, or None for anything else (a
    bare holder, garbage). Read from the right: a holder (an instance id) may hold
    spaces; nothing else does."""
    text = _text_of(value)
    if text is None:
        return None
    parts = text.rsplit(" ", 8)
    if len(parts) != 9 or not parts[1] or parts[3] not in SHARED_STATES:
        return None
    epoch, ms, volume, failures, reporting, votes = (
        parse_count_text(part) for part in (parts[2], *parts[4:])
    )
    if epoch is None or ms is None or volume is None or failures is None:
        return None
    if reporting is None or votes is None:
        return None
    window = None
    if failures <= volume and votes <= reporting:
        window = PooledWindow(volume=volume, failures=failures, reporting=reporting, votes=votes)
    return Snapshot(
        gen=parts[1],
        epoch=epoch,
        state=cast(SharedStateName, parts[3]),
        tallied_ms=ms,
        window=window,
        text=" ".join(parts[1:]),
    )


def parse_plain_reply(lease: object, now_ms: int) -> PlainReply:
    """A plain report's answer: the reply of ``SET <tally> <instance> NX PX <ms> GET``
    (None: the lease was free, this pod holds it now), and ``TIME`` of the round trip.

    A snapshot that does not parse reads as no snapshot (nothing learnt).
    """
    if lease is None:
        return PlainReply(tally=True, now_ms=now_ms)
    snapshot = parse_snapshot(lease)
    if snapshot is None:
        return PlainReply(tally=False, now_ms=now_ms)
    return PlainReply(
        tally=False,
        now_ms=now_ms,
        gen=snapshot.gen,
        epoch=snapshot.epoch,
        state=snapshot.state,
        window=snapshot.window,
        snapshot=snapshot.text,
    )


def _text_of(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def parse_count_text(value: object) -> int | None:
    """A count Redis holds as text (bytes or str): ASCII digits, below 10^16; else None.

    ``str.isdigit`` alone would take ``"²"`` (which ``int`` refuses) and other
    scripts' digits, which nothing of ours writes.
    """
    text = _text_of(value)
    if text is not None and text.isascii() and text.isdigit() and len(text) < 17:
        return int(text)
    return None


def _time_part(item: object) -> int | None:
    if isinstance(item, int) and not isinstance(item, bool):
        return item
    return parse_count_text(item)


def parse_time_reply(reply: object) -> int:
    """Redis ``TIME`` (seconds, microseconds) in ms.

    Raises:
        ProtocolError: not what TIME answers.
    """
    if isinstance(reply, tuple):
        reply = list(reply)
    items = _reply_list(reply, 2, "TIME")
    seconds, micros = (_time_part(item) for item in items)
    if seconds is None or micros is None:
        raise ProtocolError(f"TIME: expected two integers, got {reply!r:.80}")
    return seconds * 1000 + micros // 1000


def parse_trial_reply(reply: object) -> TrialGrant:
    """Validate ``acquire_trial``'s reply: granted, retry_after_ms, then the state.

    Raises:
        ProtocolError: the reply is not exactly what the script returns.
    """
    try:
        items = _reply_list(reply, _STATE_REPLY_LEN + 2, "acquire_trial")
        granted = _reply_flag(items[0], "granted")
        retry_after = None if items[1] == -1 else _reply_count(items[1], "retry_after_ms")
        state = _parse_state(items[2:])
    except ProtocolError:
        _protocol_errors["reply"] += 1
        raise
    return TrialGrant(granted=granted, retry_after_ms=retry_after, state=state)


def parse_count_reply(reply: object) -> int:
    """Validate ``cleanup_stats``'s reply: a non-negative integer.

    Raises:
        ProtocolError: it is not one.
    """
    try:
        return _reply_count(reply, "cleanup_stats")
    except ProtocolError:
        _protocol_errors["reply"] += 1
        raise


# --------------------------------------------------------------------------- broadcasts


def _message_int(message: dict[str, Any], field: str) -> int:
    value = message[field]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a JSON encoder may print a large integer as 1e+15
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_EXACT:
        raise ValueError(f"{field} is not an integer in [0, 2**53)")
    return value


def _message_text(message: dict[str, Any], field: str) -> str:
    value = message[field]
    if not isinstance(value, str):
        raise ValueError(f"{field} is not a string")
    return value


_JSON = json.JSONDecoder()
"""``json.loads`` without its per-call checks (every pod decodes every broadcast it holds)."""


def _decode_broadcast(payload: bytes | str) -> Broadcast:
    # Checked before encoding or parsing, so a huge payload costs nothing.
    if len(payload) > MAX_BROADCAST_BYTES:
        raise ValueError(f"longer than {MAX_BROADCAST_BYTES}")
    if isinstance(payload, str):
        text = payload
        if len(payload.encode("utf-8")) > MAX_BROADCAST_BYTES:
            raise ValueError(f"longer than {MAX_BROADCAST_BYTES} bytes")
    else:
        text = payload.decode("utf-8")  # strict: bad UTF-8 is a ValueError
    message = _JSON.decode(text)
    if type(message) is not dict:
        raise ValueError("not a JSON object")
    version = message.get("v")
    if isinstance(version, bool) or version != 1:
        raise ValueError(f"unknown version {version!r:.20}")
    # Every pod decodes every broadcast of the breakers it holds: the usual
    # message (what the scripts write) is checked in one pass; JSON yields
    # exact types, so `type(...) is` says what isinstance would. Anything
    # else (a float for an integer, say) gets the field-by-field checks.
    name, gen, state = message["name"], message["gen"], message["state"]
    origin, reason = message["origin"], message["reason"]
    if not (
        type(name) is str
        and type(gen) is str
        and type(state) is str
        and type(origin) is str
        and type(reason) is str
    ):
        for field in ("name", "gen", "state", "origin", "reason"):
            _message_text(message, field)
    if state not in SHARED_STATES:
        raise ValueError(f"unknown state {state!r:.40}")
    if not gen:
        raise ValueError("empty gen")
    epoch, open_until, now = message["epoch"], message["open_until"], message["now"]
    attempts = message["attempts"]
    if not (
        type(epoch) is int
        and type(open_until) is int
        and type(now) is int
        and type(attempts) is int
        and 0 <= epoch < _MAX_EXACT
        and 0 <= open_until < _MAX_EXACT
        and 0 <= now < _MAX_EXACT
        and 0 <= attempts < _MAX_EXACT
    ):
        epoch = _message_int(message, "epoch")
        open_until = _message_int(message, "open_until")
        now = _message_int(message, "now")
        attempts = _message_int(message, "attempts")
    return Broadcast(
        name=name,
        gen=gen,
        epoch=epoch,
        state=cast(SharedStateName, state),
        open_until_ms=open_until,
        now_ms=now,
        attempts=attempts,
        origin=origin,
        reason=reason[:_MAX_REASON_LEN],
    )


def parse_broadcast(payload: bytes | str) -> Broadcast | None:
    """Validate a message from an events channel.

    Returns:
        The broadcast, or None for anything that is not a v1 broadcast of a
        known state (too long, not JSON, wrong types, missing fields). Each
        rejection is logged at debug level and counted in
        :func:`protocol_error_counts` under ``"broadcast"``.
    """
    try:
        return _decode_broadcast(payload)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        # ValueError also covers bad JSON, bad UTF-8 and over-long integers.
        _protocol_errors["broadcast"] += 1
        logger.debug("ignoring bad broadcast (%s): %r", exc, payload[:100])
        return None
