"""Every Redis key and channel name of distributed_opossum, built in one place.

A breaker named ``payments`` under the default prefix owns::

    dopossum:{payments}:distributedStats   list: one JSON entry per pod per bucket
    dopossum:{payments}:windows            hash: each pod's own entries in the window, summed
    dopossum:{payments}:state              hash: the cluster-wide state
    dopossum:{payments}:tally              string: who tallies the windows now (a short lease)
    dopossum:{payments}:events             pub/sub channel: state broadcasts

The ``{...}`` part is a Redis Cluster hash tag: all keys of one breaker hash to
the same slot, so one Lua script can touch them atomically on one shard. The
name inside it is percent-encoded (every byte outside ``[A-Za-z0-9._-]`` of its
UTF-8 form becomes ``%XX``), so no name can close the tag early, empty it, or
collide with another name: ``a:b`` is ``a%3Ab`` and ``a%3Ab`` is ``a%253Ab``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BREAKER_KEY_SUFFIXES",
    "DEFAULT_PREFIX",
    "BreakerKeys",
    "breaker_name_from_channel",
    "breaker_name_from_key",
    "decode_name",
    "encode_name",
    "events_pattern",
    "keys_pattern",
    "validate_prefix",
]

DEFAULT_PREFIX = "dopossum"
"""Namespace of every key and channel unless the user picks another."""

STATS_SUFFIX = "distributedStats"
PODS_SUFFIX = "windows"
STATE_SUFFIX = "state"
TALLY_SUFFIX = "tally"
EVENTS_SUFFIX = "events"
BREAKER_KEY_SUFFIXES = (STATE_SUFFIX, STATS_SUFFIX, PODS_SUFFIX, TALLY_SUFFIX)
"""The suffixes of a breaker's keys (its events channel is no key)."""

_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
# Precomputed so encoding a name is one lookup per byte.
_BYTE_TO_TEXT = tuple(chr(b) if b in _SAFE_BYTES else f"%{b:02X}" for b in range(256))
_ENCODED = re.compile(r"(?:[A-Za-z0-9._-]|%[0-9A-F]{2})+")
# Redis glob metacharacters (stringmatchlen): * ? [ ] and the escape itself.
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def encode_name(name: str) -> str:
    """Percent-encode a breaker name for use inside a hash tag.

    Args:
        name: the breaker's name; any non-empty string of valid Unicode.

    Returns:
        The name with every UTF-8 byte outside ``[A-Za-z0-9._-]`` written as
        ``%XX`` (upper-case hex), e.g. ``"a:b" -> "a%3Ab"``; ``payments-v2``
        is unchanged.

    Raises:
        ValueError: the name is empty (``{}`` is no hash tag to Redis
            Cluster: the keys would land on different shards) or holds a lone
            surrogate, which has no UTF-8 form.
        TypeError: the name is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(f"breaker name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("breaker name must not be empty")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"breaker name {name!r} is not valid Unicode: {exc.reason}") from None
    return "".join([_BYTE_TO_TEXT[b] for b in raw])


def decode_name(encoded: str) -> str:
    """Invert :func:`encode_name`.

    Raises:
        ValueError: ``encoded`` is not exactly what :func:`encode_name` makes
            (lower-case hex, a byte left encoded that needs no encoding, or
            invalid UTF-8), so every name has one spelling only.
    """
    if not _ENCODED.fullmatch(encoded):
        raise ValueError(f"not an encoded breaker name: {encoded!r}")
    raw = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "%":
            raw.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(encoded[i]))
            i += 1
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"not an encoded breaker name: {encoded!r}") from None
    canonical = encode_name(name)
    if canonical != encoded:
        raise ValueError(f"not an encoded breaker name (that is {canonical!r}): {encoded!r}")
    return name


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can namespace keys, else raise ValueError.

    A prefix must be a non-empty string without ``{`` or ``}``: a brace in it
    would become the key's hash tag instead of the breaker's name.
    """
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix must be a non-empty str, got {prefix!r}")
    if "{" in prefix or "}" in prefix:
        raise ValueError(
            f"prefix must not contain '{{' or '}}' (it would break the hash tag): {prefix!r}"
        )
    return prefix


@dataclass(frozen=True, slots=True)
class BreakerKeys:
    """The Redis keys and channel of one breaker.

    Build it with :meth:`for_breaker`; the fields are plain strings.

    Example::

        >>> keys = BreakerKeys.for_breaker("dopossum", "payments")
        >>> keys.state
        'dopossum:{payments}:state'
    """

    prefix: str
    name: str
    stats: str
    """List of the pods' JSON stats entries, oldest first."""
    state: str
    """Hash of the shared state (see ``lua/_prelude.lua`` for its fields)."""
    pods: str
    """Hash of each pod's window (its own entries of the current epoch in the
    window, summed), one field per pod, written by the pod at every report and
    tallied by ``lua/report_window.lua`` (see its header). Deleted with the
    list by every close."""
    tally: str
    """The tally lease: the pod whose ``SET NX PX`` of it succeeds tallies the
    windows and decides, once per report interval."""
    events: str
    """Pub/sub channel of state broadcasts (a channel, not a key)."""

    @classmethod
    def for_breaker(cls, prefix: str, name: str) -> BreakerKeys:
        """Build the keys of breaker ``name`` under ``prefix``.

        Raises:
            ValueError: bad prefix (see :func:`validate_prefix`) or name (see
                :func:`encode_name`).
        """
        base = f"{validate_prefix(prefix)}:{{{encode_name(name)}}}:"
        return cls(
            prefix=prefix,
            name=name,
            stats=base + STATS_SUFFIX,
            state=base + STATE_SUFFIX,
            pods=base + PODS_SUFFIX,
            tally=base + TALLY_SUFFIX,
            events=base + EVENTS_SUFFIX,
        )


def events_pattern(prefix: str) -> str:
    """The PSUBSCRIBE pattern matching the events channel of every breaker of ``prefix``.

    Glob metacharacters in the prefix are escaped, so prefix ``a*`` does not
    listen to prefix ``ab``.
    """
    escaped = _GLOB_SPECIAL.sub(r"\\\1", validate_prefix(prefix))
    return f"{escaped}:{{*}}:{EVENTS_SUFFIX}"


def keys_pattern(prefix: str) -> str:
    """The SCAN MATCH pattern of every key of every breaker of ``prefix``.

    Glob metacharacters in the prefix are escaped, as in :func:`events_pattern`.
    Some matches may be no breaker's key: check each with :func:`breaker_name_from_key`.
    """
    escaped = _GLOB_SPECIAL.sub(r"\\\1", validate_prefix(prefix))
    return f"{escaped}:{{*}}:*"


def _text(value: str | bytes) -> str | None:
    """``value`` as text; None for bytes that are not UTF-8."""
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def breaker_name_from_key(prefix: str, key: str | bytes) -> str | None:
    """The breaker name a key of ``prefix`` belongs to, or None.

    Returns None for any key this module would not have built (another
    suffix, a name that is not canonically encoded, bytes that are not UTF-8).
    """
    text = _text(key)
    if text is None:
        return None
    head = f"{prefix}:{{"
    if not text.startswith(head):
        return None
    # An encoded name holds no brace, so the tag ends at the first "}:".
    encoded, found, suffix = text[len(head) :].partition("}:")
    if not found or suffix not in BREAKER_KEY_SUFFIXES:
        return None
    try:
        return decode_name(encoded)
    except ValueError:
        return None


def breaker_name_from_channel(prefix: str, channel: str | bytes) -> str | None:
    """The breaker name an events channel of ``prefix`` belongs to, or None.

    Useful with :func:`events_pattern`: trust the channel a message came on,
    not the name inside it. Returns None for any channel this module would
    not have built.
    """
    text = _text(channel)
    if text is None:
        return None
    head = f"{prefix}:{{"
    tail = f"}}:{EVENTS_SUFFIX}"
    if not (text.startswith(head) and text.endswith(tail)):
        return None
    encoded = text[len(head) : len(text) - len(tail)]
    try:
        return decode_name(encoded)
    except ValueError:
        return None
