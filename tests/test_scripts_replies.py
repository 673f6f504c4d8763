"""_script_replies.py: script replies and broadcasts are validated, garbage never crashes."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import pytest

from distributed_opossum._redis.replies import (
    MAX_BROADCAST_BYTES,
    Broadcast,
    PlainReply,
    PooledWindow,
    ProtocolError,
    SharedState,
    parse_broadcast,
    parse_count_reply,
    parse_plain_reply,
    parse_report_reply,
    parse_state_reply,
    parse_time_reply,
    parse_trial_reply,
    protocol_error_counts,
)

GOOD_STATE: list[Any] = [b"g1", 3, b"open", 2_000, 2, 1_000, b"pooled_rate", 1_500, 1, 0, 0]


def with_item(index: int, value: object) -> list[Any]:
    reply = list(GOOD_STATE)
    reply[index] = value
    return reply


def test_good_state_reply() -> None:
    """Bytes or str, the reply becomes a typed SharedState."""
    expected = SharedState(
        gen="g1",
        epoch=3,
        state="open",
        open_until_ms=2_000,
        attempts=2,
        closed_at_ms=1_000,
        reason="pooled_rate",
        now_ms=1_500,
        changed=True,
        lease_expires_ms=0,
        trial_successes=0,
    )
    assert parse_state_reply(GOOD_STATE) == expected
    decoded = [v.decode() if isinstance(v, bytes) else v for v in GOOD_STATE]
    assert parse_state_reply(decoded) == expected
    assert expected.open_remaining_ms == 500
    assert expected.exists


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(None, id="nil"),
        pytest.param(b"OK", id="status"),
        pytest.param(7, id="integer"),
        pytest.param([], id="empty"),
        pytest.param(GOOD_STATE[:-1], id="short"),
        pytest.param([*GOOD_STATE, 0], id="long"),
        pytest.param(tuple(GOOD_STATE), id="tuple"),
        pytest.param(with_item(0, 5), id="gen-int"),
        pytest.param(with_item(0, b"\xff"), id="gen-not-utf8"),
        pytest.param(with_item(1, -1), id="epoch-negative"),
        pytest.param(with_item(1, b"3"), id="epoch-text"),
        pytest.param(with_item(1, True), id="epoch-bool"),
        pytest.param(with_item(2, b"ajar"), id="state-unknown"),
        pytest.param(with_item(2, None), id="state-nil"),
        pytest.param(with_item(3, 1.5), id="open-until-float"),
        pytest.param(with_item(6, [b"x"]), id="reason-list"),
        pytest.param(with_item(8, 2), id="changed-2"),
        pytest.param(with_item(9, -5), id="lease-negative"),
        pytest.param(with_item(10, b""), id="trials-empty"),
    ],
)
def test_bad_state_replies_raise_protocol_error(reply: object) -> None:
    """Anything but the exact shape raises ProtocolError (and is counted), never IndexError."""
    before = protocol_error_counts().get("reply", 0)
    with pytest.raises(ProtocolError):
        parse_state_reply(reply, "read_state")
    assert protocol_error_counts()["reply"] == before + 1


def test_long_reason_is_cut() -> None:
    """A reason is a short label; a huge one is truncated, not carried around."""
    assert len(parse_state_reply(with_item(6, b"x" * 10_000)).reason) == 200


@pytest.mark.parametrize(
    ("head", "granted", "retry_after"),
    [([1, 0], True, 0), ([0, 250], False, 250), ([0, -1], False, None)],
)
def test_trial_replies(head: list[int], granted: bool, retry_after: int | None) -> None:
    """granted and retry_after_ms (-1 meaning forced open: None) precede the state."""
    grant = parse_trial_reply([*head, *GOOD_STATE])
    assert (grant.granted, grant.retry_after_ms) == (granted, retry_after)
    assert grant.state.gen == "g1"


@pytest.mark.parametrize(
    "reply",
    [
        GOOD_STATE,
        [1, *GOOD_STATE],
        [2, 0, *GOOD_STATE],
        [1, -2, *GOOD_STATE],
        [1, b"0", *GOOD_STATE],
        [1, 0, *with_item(2, b"ajar")],
        "nope",
    ],
)
def test_bad_trial_replies_raise_protocol_error(reply: object) -> None:
    """acquire_trial's reply is validated like the others."""
    with pytest.raises(ProtocolError):
        parse_trial_reply(reply)


@pytest.mark.parametrize("reply", [-1, b"3", None, True, [3]])
def test_bad_count_replies_raise_protocol_error(reply: object) -> None:
    """cleanup_stats returns a non-negative integer or it is garbage."""
    with pytest.raises(ProtocolError):
        parse_count_reply(reply)


# --------------------------------------------------------------------------- report replies


def test_report_reply_carries_the_pooled_window() -> None:
    """The state, then volume, failures, reporting pods and votes of the tally."""
    state = parse_report_reply([*GOOD_STATE, 10, 4, 3, 1])
    assert state.window == PooledWindow(volume=10, failures=4, reporting=3, votes=1)
    assert state == dataclasses.replace(parse_state_reply(GOOD_STATE), window=state.window)


def test_report_reply_without_a_tally_has_no_window() -> None:
    """Four -1: this call did not tally (another pod holds the lease)."""
    state = parse_report_reply([*GOOD_STATE, -1, -1, -1, -1])
    assert state.window is None
    assert state == parse_state_reply(GOOD_STATE)


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(GOOD_STATE, id="no-window"),
        pytest.param([*GOOD_STATE, 1, 0, 1], id="short"),
        pytest.param([*GOOD_STATE, 1, 0, 1, 0, 0], id="long"),
        pytest.param([*GOOD_STATE, -1, 0, 0, 0], id="one-minus-one"),
        pytest.param([*GOOD_STATE, -1, -1, -1, -2], id="not-four-minus-ones"),
        pytest.param([*GOOD_STATE, b"1", 0, 1, 0], id="text-count"),
        pytest.param([*GOOD_STATE, 1, 0, True, 0], id="bool-count"),
        pytest.param([*with_item(2, b"ajar"), 1, 0, 1, 0], id="bad-state"),
    ],
)
def test_bad_report_replies_raise_protocol_error(reply: object) -> None:
    """report_window's reply is validated like the others, and counted."""
    before = protocol_error_counts().get("reply", 0)
    with pytest.raises(ProtocolError):
        parse_report_reply(reply)
    assert protocol_error_counts()["reply"] == before + 1


# --------------------------------------------------------------------------- plain replies

SNAPSHOT = b"pod-a g1 4 open 1500 20 9 3 2"


def test_a_free_lease_is_won() -> None:
    """SET NX GET answering nil: the lease was free, the pod tallies next."""
    assert parse_plain_reply(None, 1_234) == PlainReply(tally=True, now_ms=1_234)


@pytest.mark.parametrize("snapshot", [SNAPSHOT, SNAPSHOT.decode()])
def test_a_snapshot_is_read(snapshot: bytes | str) -> None:
    """The last tally's snapshot: the state's gen, epoch and name, the pooled window."""
    assert parse_plain_reply(snapshot, 1_600) == PlainReply(
        tally=False,
        now_ms=1_600,
        gen="g1",
        epoch=4,
        state="open",
        window=PooledWindow(volume=20, failures=9, reporting=3, votes=2),
        snapshot="g1 4 open 1500 20 9 3 2",  # passed on by this pod when it wins the lease
    )


@pytest.mark.parametrize(
    "lease",
    [
        pytest.param(b"pod-a", id="bare-holder"),
        pytest.param(b"", id="empty"),
        pytest.param(b"pod-a g1 4 ajar 1500 20 9 3 2", id="unknown-state"),
        pytest.param(b"pod-a  4 open 1500 20 9 3 2", id="empty-gen"),
        pytest.param(b"pod-a g1 -4 open 1500 20 9 3 2", id="negative-epoch"),
        pytest.param(b"pod-a g1 4 open 1500 20 9 3", id="short"),
        pytest.param(b"pod-a g1 4 open 1500 20 9 3 2 1", id="long"),
        pytest.param(b"pod-a g1 4 open 1500 2.5 9 3 2", id="fraction"),
        pytest.param(b"pod-a g1 99999999999999999 open 1500 20 9 3 2", id="huge-epoch"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(7, id="integer"),
        pytest.param([b"x"], id="list"),
    ],
)
def test_an_unreadable_lease_teaches_nothing(lease: object) -> None:
    """Anything but a snapshot: no tally (the lease is taken), nothing learnt."""
    assert parse_plain_reply(lease, 1_600) == PlainReply(tally=False, now_ms=1_600)


@pytest.mark.parametrize(
    "snapshot", [b"pod-a g1 4 closed 1500 20 21 3 2", b"pod-a g1 4 closed 1500 20 9 3 4"]
)
def test_an_impossible_pooled_window_is_dropped(snapshot: bytes) -> None:
    """More failures than calls, or more votes than pods: the state stands, the window not."""
    reply = parse_plain_reply(snapshot, 1_600)
    assert (reply.tally, reply.gen, reply.epoch, reply.state) == (False, "g1", 4, "closed")
    assert reply.window is None


@pytest.mark.parametrize(
    ("reply", "ms"),
    [
        ([b"1700000000", b"123456"], 1_700_000_000_123),
        (["1700000000", "999"], 1_700_000_000_000),
        ((1_700_000_000, 999_999), 1_700_000_000_999),
        ([0, 0], 0),
    ],
)
def test_time_reply(reply: object, ms: int) -> None:
    """TIME's seconds and microseconds, as bytes, text or integers, in ms."""
    assert parse_time_reply(reply) == ms


@pytest.mark.parametrize(
    "reply",
    [
        None,
        b"1700000000",
        [b"1700000000"],
        [b"1", b"2", b"3"],
        [b"x", b"1"],
        [b"-1", b"0"],
        [1.5, 0],
    ],
)
def test_bad_time_replies_raise_protocol_error(reply: object) -> None:
    """Anything but two non-negative integers."""
    with pytest.raises(ProtocolError):
        parse_time_reply(reply)


# --------------------------------------------------------------------------- broadcasts

GOOD_MESSAGE: dict[str, Any] = {
    "v": 1,
    "name": "payments",
    "gen": "g1",
    "epoch": 4,
    "state": "open",
    "open_until": 1_795_000_030_000,
    "now": 1_795_000_000_000,
    "attempts": 2,
    "origin": "pod-1",
    "reason": "local_trip",
}


def test_good_broadcast() -> None:
    """A v1 message becomes a Broadcast, from bytes or str."""
    expected = Broadcast(
        name="payments",
        gen="g1",
        epoch=4,
        state="open",
        open_until_ms=1_795_000_030_000,
        now_ms=1_795_000_000_000,
        attempts=2,
        origin="pod-1",
        reason="local_trip",
    )
    assert parse_broadcast(json.dumps(GOOD_MESSAGE).encode()) == expected
    assert parse_broadcast(json.dumps(GOOD_MESSAGE)) == expected


def test_broadcast_tolerates_integral_floats_and_extra_fields() -> None:
    """1e+12-style integers (some JSON encoders) and unknown fields are fine."""
    message = GOOD_MESSAGE | {"now": 1.795e12, "future": [1, 2]}
    broadcast = parse_broadcast(json.dumps(message))
    assert broadcast is not None
    assert broadcast.now_ms == 1_795_000_000_000


def changed(**fields: Any) -> bytes:
    return json.dumps(GOOD_MESSAGE | fields).encode()


def without(field: str) -> bytes:
    return json.dumps({k: v for k, v in GOOD_MESSAGE.items() if k != field}).encode()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"marker", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b"null", id="null"),
        pytest.param(b"[" * 3000, id="deep-nesting"),
        pytest.param(
            json.dumps(GOOD_MESSAGE).replace('"epoch": 4', '"epoch": ' + "9" * 3500),
            id="huge-int",
        ),
        pytest.param(changed(epoch=2**53), id="epoch-beyond-lua-integers"),
        pytest.param(changed(name="x" * MAX_BROADCAST_BYTES), id="oversized"),
        pytest.param("é" * (MAX_BROADCAST_BYTES // 2 + 1), id="oversized-in-utf8"),
        pytest.param(changed(v=2), id="v2"),
        pytest.param(changed(v=True), id="v-true"),
        pytest.param(changed(v="1"), id="v-text"),
        pytest.param(without("v"), id="no-v"),
        pytest.param(changed(state="ajar"), id="unknown-state"),
        pytest.param(changed(state=None), id="state-null"),
        pytest.param(changed(gen=""), id="empty-gen"),
        pytest.param(changed(gen=7), id="gen-int"),
        pytest.param(changed(epoch=-1), id="negative-epoch"),
        pytest.param(changed(epoch=1.5), id="fractional-epoch"),
        pytest.param(changed(epoch="4"), id="text-epoch"),
        pytest.param(changed(epoch=True), id="bool-epoch"),
        pytest.param(changed(epoch=float("nan")), id="nan"),
        pytest.param(changed(open_until=float("inf")), id="inf"),
        pytest.param(changed(name=None), id="name-null"),
        pytest.param(changed(origin=5), id="origin-int"),
        pytest.param(changed(reason={"a": 1}), id="reason-object"),
        *(pytest.param(without(f), id=f"no-{f}") for f in GOOD_MESSAGE if f != "v"),
    ],
)
def test_bad_broadcasts_are_dropped_and_counted(
    payload: bytes | str, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage gives None, a debug log line and a count; never an exception."""
    before = protocol_error_counts().get("broadcast", 0)
    with caplog.at_level(logging.DEBUG, logger="distributed_opossum._redis.replies"):
        assert parse_broadcast(payload) is None
    assert protocol_error_counts()["broadcast"] == before + 1
    assert "ignoring bad broadcast" in caplog.text


@pytest.mark.parametrize(
    "lease",
    [
        pytest.param("pod-a g1 ² open 1500 20 9 3 2".encode(), id="superscript-epoch"),
        pytest.param("pod-a g1 4 open 1500 ٢٠ 9 3 2".encode(), id="arabic-digits"),
        pytest.param(b"pod-a g1 4 open soon 20 9 3 2", id="no-time"),
    ],
)
def test_digits_that_are_not_ascii_are_no_snapshot(lease: bytes) -> None:
    """Python calls '²' and '٢' digits; Redis never writes them: a forged snapshot, no crash."""
    assert parse_plain_reply(lease, 1_600) == PlainReply(tally=False, now_ms=1_600)


def test_a_holder_with_spaces_still_passes_a_snapshot() -> None:
    """An instance id may hold spaces: the snapshot is read from the right."""
    reply = parse_plain_reply(b"pod a  1 g1 4 open 1500 20 9 3 2", 1_600)
    assert (reply.gen, reply.epoch, reply.state) == ("g1", 4, "open")
    assert reply.window == PooledWindow(volume=20, failures=9, reporting=3, votes=2)
    assert reply.snapshot == "g1 4 open 1500 20 9 3 2"
