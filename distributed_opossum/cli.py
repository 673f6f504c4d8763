"""The operator CLI: ``dopossum`` (or ``python -m distributed_opossum``).

Examples::

    dopossum status                          # every breaker under the prefix, as a table
    dopossum status payments                 # one breaker, with a row per pod
    dopossum --json watch --interval 2       # one JSON document per refresh, until Ctrl-C
    dopossum force-open payments             # every pod opens, no trials, until reset
    dopossum reset payments                  # every pod closes, backoff cleared
    dopossum cleanup --max-age 1800          # drop old stats entries of every breaker
    dopossum demo --pods 6                   # the multi-pod demo

``--url`` (default ``$REDIS_URL``, else ``redis://127.0.0.1:6379``; with
``--cluster``, any node of a Redis Cluster), ``--prefix`` and ``--json`` go
before or after the command. Exit status: 0 done, 1 no such
breaker, 2 bad arguments, 3 Redis cannot be reached, 4 Redis refused (a wrong
password, missing ACL rights, an error reply), 130 interrupted (``watch``
stops on Ctrl-C with 0). Errors are one line on stderr.

Reading lives in :mod:`._fleet`, printing in :mod:`._cli_render`; this module
parses arguments, runs one command and turns failures into exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
)

from . import _cli_render as render
from ._redis.fleet import Fleet, UnknownBreakerError
from ._redis.keys import DEFAULT_PREFIX, encode_name, validate_prefix
from ._redis.replies import ProtocolError

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNKNOWN_BREAKER",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_UNKNOWN_BREAKER = 1
"""No key of a breaker of that name exists under the prefix."""
EXIT_USAGE = 2
"""Bad arguments (as argparse)."""
EXIT_UNREACHABLE = 3
"""Redis cannot be reached: refused, timed out, name not resolved."""
EXIT_REFUSED = 4
"""Redis answered but refused: a wrong password, missing ACL rights, an error reply."""
EXIT_INTERRUPTED = 130
"""Ctrl-C during any command but ``watch`` (128 + SIGINT, as shells report it)."""

_PROG = "dopossum"
_DEFAULT_URL = "redis://127.0.0.1:6379"
_TIMEOUT_S = 5.0
_CLEAR = "\x1b[H\x1b[J"  # cursor home, clear to the end of the screen


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{_PROG}: {message} (see {self.prog} --help)\n")


def _positive(kind: type[int] | type[float]) -> Any:
    def check(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise ValueError(text)
        return value

    check.__name__ = f"positive {kind.__name__}"  # argparse names it in the error
    return check


def _parser() -> argparse.ArgumentParser:
    # The common options are accepted before and after the command. In the
    # subcommands they default to SUPPRESS, so they never undo the main ones.
    def common(suppress: bool) -> _Parser:
        parent = _Parser(add_help=False)
        options: tuple[tuple[str, object, str], ...] = (
            ("--url", None, f"Redis URL (default: $REDIS_URL, else {_DEFAULT_URL})"),
            ("--prefix", DEFAULT_PREFIX, f"key prefix of the breakers (default: {DEFAULT_PREFIX})"),
        )
        for flag, default, text in options:
            parent.add_argument(flag, default=argparse.SUPPRESS if suppress else default, help=text)
        parent.add_argument(
            "--cluster",
            action="store_true",
            default=argparse.SUPPRESS if suppress else False,
            help="--url is one node of a Redis Cluster (every master is scanned)",
        )
        parent.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS if suppress else False,
            help="print one JSON document per command (per refresh for watch)",
        )
        return parent

    parser = _Parser(
        prog=_PROG,
        description="Inspect and steer the distributed breakers of a fleet.",
        epilog="exit status: 0 ok, 1 no such breaker, 2 bad arguments, "
        "3 cannot reach Redis, 4 refused by Redis, 130 interrupted",
        parents=[common(suppress=False)],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(
            name, help=text, description=text, parents=[common(suppress=True)]
        )
        return sub

    status = command("status", "every breaker as a table, or one breaker in detail")
    status.add_argument("name", nargs="?", help="one breaker (default: all)")
    watch = command("watch", "status, refreshed until Ctrl-C")
    watch.add_argument("name", nargs="?", help="one breaker (default: all)")
    watch.add_argument("--interval", type=_positive(float), default=1.0, help="seconds (default 1)")
    watch.add_argument("--count", type=_positive(int), help="stop after this many refreshes")
    force = command("force-open", "hold a breaker open on every pod, with no trials, until reset")
    force.add_argument("name")
    force.add_argument("--create", action="store_true", help="also for a name Redis has not seen")
    command("reset", "close a breaker on every pod and clear its backoff").add_argument("name")
    cleanup = command("cleanup", "remove old entries from the stats lists")
    cleanup.add_argument("name", nargs="?", help="one breaker (default: all)")
    cleanup.add_argument("--max-age", type=float, default=1800.0, help="seconds (default 1800)")
    # Listed for --help only: main() hands everything after "demo" to the demo
    # itself (argparse's REMAINDER would refuse a leading "--pods").
    commands.add_parser("demo", help="run the multi-pod demo (dopossum demo --help)")
    return parser


def _demo_arguments(argv: Sequence[str]) -> list[str] | None:
    """The arguments after a ``demo`` command, or None when the command is another."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in ("--url", "--prefix"):
            i += 2
        elif token == "--json" or token.startswith(("--url=", "--prefix=")):
            i += 1
        else:
            return list(argv[i + 1 :]) if token == "demo" else None
    return None


def _redacted(url: str) -> str:
    """The URL without its password, fit for an error message."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the given URL"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


async def _status(fleet: Fleet, args: argparse.Namespace) -> str:
    if args.name is None:
        statuses = await fleet.read(await fleet.names())
        if args.json:
            return _dump(render.status_document(fleet.prefix, statuses))
        return render.table_text(fleet.prefix, statuses)
    status = (await fleet.read([args.name]))[0]
    if args.json:
        document = render.breaker_document(status)
        return _dump({"v": render.JSON_VERSION, "prefix": fleet.prefix, "breaker": document})
    return render.detail_text(fleet.prefix, status)


async def _watch(fleet: Fleet, args: argparse.Namespace) -> None:
    if args.name is not None:
        await fleet.require(args.name)  # a typo fails at once, not after a screen of "?"
    clear = not args.json and sys.stdout.isatty()
    refreshes = 0
    while True:
        frame = await _status(fleet, args)
        refreshes += 1
        if clear:
            frame = f"{_CLEAR}{_PROG} watch: every {args.interval:g} s, Ctrl-C to stop\n\n{frame}"
        elif not args.json and refreshes > 1:
            frame = f"\n{frame}"
        print(frame, flush=True)
        if args.count is not None and refreshes >= args.count:
            return
        await asyncio.sleep(args.interval)  # a local pause: no time is compared


async def _run(client: aioredis.Redis | aioredis.RedisCluster, args: argparse.Namespace) -> None:
    fleet = Fleet(client, args.prefix)
    command: str = args.command
    name: str | None = getattr(args, "name", None)
    if command == "status":
        if name is not None:
            await fleet.require(name)
        print(await _status(fleet, args))
    elif command == "watch":
        await _watch(fleet, args)
    elif command in ("force-open", "reset"):
        assert name is not None  # a required argument of both
        if command == "force-open":
            state = await fleet.force_open(name, create=args.create)
        else:
            state = await fleet.reset(name)
        doc = render.action_document(command, name, state)
        print(_dump(doc) if args.json else render.action_text(command, name, state))
    else:  # cleanup
        names = [(await fleet.require(name)).name] if name is not None else await fleet.names()
        removed = await fleet.cleanup(names, max_age_ms=round(args.max_age * 1000))
        print(
            _dump(render.cleanup_document(removed)) if args.json else render.cleanup_text(removed)
        )


async def _run_with_client(
    client: aioredis.Redis | aioredis.RedisCluster, args: argparse.Namespace
) -> None:
    try:
        await _run(client, args)
    finally:
        await client.aclose()


def _error(message: str, code: int) -> int:
    # One line, whatever the server, the OS or a breaker's name put in it.
    print(f"{_PROG}: {render.printable(' '.join(message.split()))}", file=sys.stderr)
    return code


def _client(args: argparse.Namespace) -> aioredis.Redis | aioredis.RedisCluster:
    """The client of ``--url``; ValueError for what argparse cannot see (URL, prefix, name)."""
    validate_prefix(args.prefix)
    if getattr(args, "name", None) is not None:
        encode_name(args.name)
    if getattr(args, "max_age", 0) < 0:
        raise ValueError(f"--max-age must be >= 0 seconds, got {args.max_age:g}")
    # Parses the URL, connects to nothing yet.
    if args.cluster:
        return aioredis.RedisCluster.from_url(
            args.url, socket_connect_timeout=_TIMEOUT_S, socket_timeout=_TIMEOUT_S
        )
    return aioredis.Redis.from_url(
        args.url, socket_connect_timeout=_TIMEOUT_S, socket_timeout=_TIMEOUT_S
    )


def _refusal(error: RedisError, url: str) -> str:
    if isinstance(error, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        if urlsplit(url).password is None:
            return f"Redis at {url} requires a password: redis://[USER]:PASSWORD@HOST:PORT in --url"
        return f"Redis at {url} refused the login: {error}"
    # A script's command refused by ACL is a plain ERR, not NOPERM.
    if isinstance(error, NoPermissionError) or "user executing the script can't" in str(error):
        hint = "the README's Operator CLI section lists the ACL rights each command needs"
        return f"Redis at {url} refused a command: {error} ({hint})"
    return f"Redis at {url} answered with an error: {error}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command of the operator CLI; returns the exit status.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    demo_arguments = _demo_arguments(argv)
    if demo_arguments is not None:
        from . import demo  # noqa: PLC0415  (imported only when asked for)

        try:
            return demo.main(demo_arguments)
        except SystemExit as exit_:  # the demo's own usage errors and --help
            return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.url is None:
        args.url = os.environ.get("REDIS_URL") or _DEFAULT_URL
    url = _redacted(args.url)
    try:
        client = _client(args)
    except (ValueError, TypeError) as error:
        return _error(f"{error} (see {_PROG} --help)", EXIT_USAGE)
    try:
        asyncio.run(_run_with_client(client, args))
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "watch" else EXIT_INTERRUPTED
    except UnknownBreakerError as error:
        return _error(str(error), EXIT_UNKNOWN_BREAKER)
    except (AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError) as error:
        return _error(_refusal(error, url), EXIT_REFUSED)
    except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as error:
        return _error(f"cannot reach Redis at {url}: {error}", EXIT_UNREACHABLE)
    except RedisClusterException as error:  # no node answered: not a RedisError
        return _error(f"cannot use the Redis Cluster at {url}: {error}", EXIT_UNREACHABLE)
    except RedisError as error:
        return _error(_refusal(error, url), EXIT_REFUSED)
    except ProtocolError as error:
        return _error(f"Redis at {url} sent a reply this CLI cannot use: {error}", EXIT_REFUSED)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
