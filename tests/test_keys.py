"""Key and channel names: encoding, hash tags, prefixes, the PSUBSCRIBE pattern."""

from __future__ import annotations

import re

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot
from transport_support import close_pubsub

from distributed_opossum._redis.keys import (
    DEFAULT_PREFIX,
    BreakerKeys,
    breaker_name_from_channel,
    breaker_name_from_key,
    decode_name,
    encode_name,
    events_pattern,
    keys_pattern,
    validate_prefix,
)

NASTY_NAMES = ["{", "}", "}{", "{}", "a}b", "{a}", "a:b", "a%3Ab", " ", "é", "💥", "\n", "%", "*"]


def redis_hash_tag(key: str) -> str | None:
    """The hash tag as Redis Cluster reads it: first '{', next '}', non-empty between."""
    start = key.find("{")
    end = key.find("}", start + 1)
    if start < 0 or end < 0 or end == start + 1:
        return None
    return key[start + 1 : end]


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("payments-v2", "payments-v2"),
        ("Svc_1.get", "Svc_1.get"),
        ("a:b", "a%3Ab"),
        ("a%3Ab", "a%253Ab"),
        ("{x}", "%7Bx%7D"),
        ("a b", "a%20b"),
        ("~", "%7E"),
        ("é", "%C3%A9"),
        ("💥", "%F0%9F%92%A5"),
    ],
)
def test_encode_name(name: str, encoded: str) -> None:
    """Safe characters stay; every other UTF-8 byte becomes upper-case %XX."""
    assert encode_name(name) == encoded
    assert decode_name(encoded) == name


@pytest.mark.parametrize(
    ("name", "error"), [("", ValueError), ("\ud800", ValueError), (b"x", TypeError)]
)
def test_encode_name_refuses(name: object, error: type[Exception]) -> None:
    """Empty names (an empty tag is no tag), lone surrogates and non-strings are refused."""
    with pytest.raises(error, match="breaker name"):
        encode_name(name)  # type: ignore[arg-type]


@given(st.text(min_size=1))
def test_encoding_is_injective_and_tag_safe(name: str) -> None:
    """Every name round-trips and encodes to tag-safe characters only."""
    encoded = encode_name(name)
    assert re.fullmatch(r"[A-Za-z0-9._%-]+", encoded)
    assert decode_name(encoded) == name


@pytest.mark.parametrize("bad", ["", "a b", "%2", "%2g", "%3a", "%41", "%C3", "a{b"])
def test_decode_name_accepts_only_canonical_encodings(bad: str) -> None:
    """Lower-case hex, needlessly encoded bytes or invalid UTF-8 have no name."""
    with pytest.raises(ValueError, match="encoded"):
        decode_name(bad)


def test_breaker_keys_layout() -> None:
    """Every name under one hash tag, as ARCHITECTURE.md §5 lays them out."""
    keys = BreakerKeys.for_breaker(DEFAULT_PREFIX, "payments")
    assert keys.stats == "dopossum:{payments}:distributedStats"
    assert keys.pods == "dopossum:{payments}:windows"
    assert keys.tally == "dopossum:{payments}:tally"
    assert keys.state == "dopossum:{payments}:state"
    assert keys.events == "dopossum:{payments}:events"
    assert (keys.prefix, keys.name) == ("dopossum", "payments")


@pytest.mark.parametrize("name", NASTY_NAMES)
@pytest.mark.parametrize("prefix", ["dopossum", "a:b", "x*y"])
def test_hash_tag_cannot_be_broken(prefix: str, name: str) -> None:
    """Whatever the name, the tag is its encoding and every key lands on one slot."""
    keys = BreakerKeys.for_breaker(prefix, name)
    every = (keys.stats, keys.state, keys.pods, keys.tally, keys.events)
    for key in every:
        assert redis_hash_tag(key) == encode_name(name)
    slots = {key_slot(k.encode()) for k in every}
    assert slots == {key_slot(encode_name(name).encode())}


def test_lookalike_names_do_not_collide() -> None:
    """Names that would collide under naive joining get distinct keys."""
    names = ["a:b", "a%3Ab", "a", "a:b}:state", "a}:state", "A:b", "a:b "]
    keys = [BreakerKeys.for_breaker("p", n) for n in names]
    all_keys = [k for b in keys for k in (b.stats, b.state, b.pods, b.events)]
    assert len(set(all_keys)) == len(all_keys)


@pytest.mark.parametrize("prefix", ["", "a{b", "b}", "{}", None, 5])
def test_bad_prefix_is_refused(prefix: object) -> None:
    """An empty prefix or one with braces (it would steal the hash tag) is refused."""
    with pytest.raises(ValueError, match="prefix"):
        BreakerKeys.for_breaker(prefix, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefix"):
        events_pattern(prefix)  # type: ignore[arg-type]


def test_validate_prefix_returns_good_prefixes() -> None:
    """Colons and glob characters are fine in a prefix."""
    assert validate_prefix("team:a*[1]") == "team:a*[1]"


def test_events_pattern_escapes_glob_characters() -> None:
    """*, ?, [, ] and backslash in a prefix match only themselves."""
    assert events_pattern("dopossum") == "dopossum:{*}:events"
    assert events_pattern("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\:{*}:events"


async def test_events_pattern_matches_only_its_prefix(any_redis_client: aioredis.Redis) -> None:
    """PSUBSCRIBE with the pattern hears its breakers, not a prefix that merely globs alike."""
    prefix = "p*[x]?"
    ours = BreakerKeys.for_breaker(prefix, "a:b")
    other = BreakerKeys.for_breaker("pZZx?", "a:b")
    pubsub = any_redis_client.pubsub()
    await pubsub.psubscribe(events_pattern(prefix))
    try:
        while (await pubsub.get_message(timeout=2.0) or {}).get("type") != "psubscribe":
            pass
        await any_redis_client.publish(other.events, b"not for us")
        await any_redis_client.publish(ours.stats, b"not a channel of ours")
        await any_redis_client.publish(ours.events, b"ours")
        message = await pubsub.get_message(timeout=2.0)
        while message is not None and message["type"] != "pmessage":
            message = await pubsub.get_message(timeout=2.0)
        assert message is not None
        assert (message["channel"], message["data"]) == (ours.events.encode(), b"ours")
    finally:
        await pubsub.punsubscribe()
        await close_pubsub(pubsub)


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_breaker_name_from_channel_round_trips(name: str) -> None:
    """The channel a message came on names its breaker, str or bytes."""
    channel = BreakerKeys.for_breaker("pre:fix", name).events
    assert breaker_name_from_channel("pre:fix", channel) == name
    assert breaker_name_from_channel("pre:fix", channel.encode()) == name


@pytest.mark.parametrize(
    "channel",
    [
        "other:{a}:events",
        "pre:{a}:state",
        "pre:{}:events",
        "pre:{a b}:events",
        "pre:{%zz}:events",
        b"pre:{\xff}:events",
        "pre:{a}:events:extra",
    ],
)
def test_breaker_name_from_foreign_channel_is_none(channel: str | bytes) -> None:
    """Channels this module would not have built name no breaker."""
    assert breaker_name_from_channel("pre", channel) is None


def test_keys_pattern_escapes_glob_characters() -> None:
    """The SCAN pattern of a prefix: its glob characters match only themselves."""
    assert keys_pattern("dopossum") == "dopossum:{*}:*"
    assert keys_pattern("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\:{*}:*"


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_breaker_name_from_key_round_trips(name: str) -> None:
    """Every key of a breaker (str or bytes) names that breaker; its channel does not."""
    keys = BreakerKeys.for_breaker("pre:fix", name)
    for key in (keys.state, keys.stats, keys.pods, keys.tally):
        assert breaker_name_from_key("pre:fix", key) == name
        assert breaker_name_from_key("pre:fix", key.encode()) == name
    assert breaker_name_from_key("pre:fix", keys.events) is None


@pytest.mark.parametrize(
    "key",
    [
        "other:{a}:state",
        "pre:{a}:other",
        "pre:{}:state",
        "pre:{a b}:state",
        "pre:{%zz}:state",
        "pre:{a%41}:state",
        b"pre:{\xff}:state",
        "pre:{a}:state:extra",
        "pre:{a}state",
    ],
)
def test_breaker_name_from_foreign_key_is_none(key: str | bytes) -> None:
    """Keys this module would not have built name no breaker."""
    assert breaker_name_from_key("pre", key) is None
