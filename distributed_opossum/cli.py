"""Operator commands for distributed breakers: ``python -m distributed_opossum.cli``.

Examples::

    python -m distributed_opossum.cli --url redis://127.0.0.1:6379 status payments
    python -m distributed_opossum.cli force-open payments
    python -m distributed_opossum.cli reset payments
    python -m distributed_opossum.cli cleanup payments --max-age 1800

They call the same Lua scripts as the breakers, so every pod follows a
``force-open`` or ``reset`` within milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import Sequence
from dataclasses import asdict

import redis.asyncio as aioredis

from ._keys import DEFAULT_PREFIX, BreakerKeys
from ._scripts import scripts_for

__all__ = ["main"]

_KEY_TTL_MS = 60_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distributed_opossum.cli",
        description="Inspect and steer the distributed breakers of a fleet.",
    )
    parser.add_argument("--url", default="redis://127.0.0.1:6379", help="Redis URL")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="key prefix of the breakers")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("status", "print the shared state of a breaker as JSON"),
        ("force-open", "hold a breaker open on every pod until reset"),
        ("reset", "close a breaker on every pod and clear its backoff"),
        ("cleanup", "remove old entries from a breaker's stats list"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("name", help="the breaker's name")
        if name == "cleanup":
            command.add_argument(
                "--max-age", type=float, default=1800.0, help="seconds (default 30 minutes)"
            )
    return parser


async def _run(args: argparse.Namespace) -> str:
    client = aioredis.Redis.from_url(args.url)
    try:
        scripts = scripts_for(client)
        keys = BreakerKeys.for_breaker(args.prefix, args.name)
        instance = f"cli:{socket.gethostname()}"
        if args.command == "status":
            return json.dumps(asdict(await scripts.read_state(keys)))
        if args.command == "force-open":
            return json.dumps(asdict(await scripts.force_open(keys, instance=instance)))
        if args.command == "reset":
            state = await scripts.reset(keys, instance=instance, key_ttl_ms=_KEY_TTL_MS)
            return json.dumps(asdict(state))
        removed = await scripts.cleanup_stats(keys, max_age_ms=round(args.max_age * 1000))
        return json.dumps({"removed": removed})
    finally:
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; prints JSON, returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        print(asyncio.run(_run(args)))
    except (OSError, aioredis.RedisError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
