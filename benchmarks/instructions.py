"""Per-call overhead counted in CPU instructions (valgrind's callgrind), not in seconds.

Instruction counts do not move with the machine's load, so the ratios here are
stable where ``overhead.py``'s timings swing with whatever else runs. Each
variant of ``overhead.py`` runs in a child process under
``valgrind --tool=callgrind`` twice, with 0 and with ``--calls`` calls; the
difference divided by ``--calls`` is its cost per call.

Instructions are not time: a system call (``getpid`` inside
``asyncio.get_running_loop()`` on 3.11) or a cache miss costs time the count
does not show. Read both tables together.
"""

from __future__ import annotations

import asyncio
import gc
import re
import shutil
import subprocess
import sys
from pathlib import Path

from _harness import base_parser, fmt_ratio, header, md_table, verdict, versions
from overhead import (
    BARE,
    LIMIT_DEFAULT_RATIO,
    LIMIT_NO_TIMEOUT_RATIO,
    OURS_DEFAULT,
    OURS_NO_TIMEOUT,
    PEERS,
    f,
    variants,
)

_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


async def _child(name: str, calls: int) -> None:
    setup = dict(variants(f))[name]
    loop = await setup()
    await loop(calls)
    # Our breaker bins success latencies when a bucket rotates or the stats are
    # read; read them, so that work is counted however long the run took.
    for thing in gc.get_objects():
        if type(thing).__name__ == "CircuitBreaker" and hasattr(thing, "to_json"):
            thing.stats  # noqa: B018


def _instructions(name: str, calls: int) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__)),
        "--child",
        name,
        "--calls",
        str(calls),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    match = _REFS.search(done.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count for {name!r}: {done.stderr[-500:]}")
    return int(match.group(1).replace(",", ""))


def main() -> None:
    """Print the instruction table (or run one child when called with ``--child``)."""
    parser = base_parser(__doc__ or "", calls=20_000, repeats=1)
    parser.add_argument("--child", default=None, help=argparse_hidden())
    args = parser.parse_args()
    if args.child is not None:
        asyncio.run(_child(args.child, args.calls))
        return
    print(header())
    if shutil.which("valgrind") is None:
        print("\nvalgrind is not installed: no instruction counts.")
        return
    per_call: dict[str, float] = {}
    for name, _ in variants(f):
        try:
            baseline = _instructions(name, 0)
            per_call[name] = (_instructions(name, args.calls) - baseline) / args.calls
        except (subprocess.CalledProcessError, RuntimeError) as error:
            print(f"\n{name}: n/a ({error})")
    bare = per_call.get(BARE)
    if not bare:
        return
    rows = [[name, f"{count:,.0f}", fmt_ratio(count / bare)] for name, count in per_call.items()]
    print(f"\n**`f()`, instructions per call** ({args.calls:,} calls, callgrind)\n")
    print(md_table(["variant", "instructions/call", "x bare"], rows))
    peers = [per_call[p] / bare for p in PEERS if p in per_call]
    default = per_call.get(OURS_DEFAULT, 0.0) / bare
    no_timeout = per_call.get(OURS_NO_TIMEOUT, 0.0) / bare
    print()
    print(
        md_table(
            ["target (by instructions)", "measured", "verdict"],
            [
                [
                    f"defaults ≤ {LIMIT_DEFAULT_RATIO:g}x bare",
                    fmt_ratio(default),
                    verdict(default <= LIMIT_DEFAULT_RATIO),
                ],
                [
                    f"`timeout=None` ≤ {LIMIT_NO_TIMEOUT_RATIO:g}x bare",
                    fmt_ratio(no_timeout),
                    verdict(no_timeout <= LIMIT_NO_TIMEOUT_RATIO),
                ],
                [
                    "`timeout=None` lowest of all",
                    f"{fmt_ratio(no_timeout)} vs best peer {fmt_ratio(min(peers or [0.0]))}",
                    verdict(bool(peers) and no_timeout < min(peers)),
                ],
            ],
        )
    )
    print(f"\n{versions(['aiobreaker', 'purgatory', 'circuitbreaker', 'hyx'])}")


def argparse_hidden() -> str:
    """Help text of the internal ``--child`` option."""
    return "internal: run one variant's calls (used under valgrind)"


if __name__ == "__main__":
    main()
