"""The multi-pod demo: pod processes, a real HTTP downstream, one breaker through Redis.

    python -m distributed_opossum demo                          # 5 pods, about half a minute
    python -m distributed_opossum demo --pods 8 --duration 60
    python -m distributed_opossum demo --url redis://127.0.0.1:6379 --no-picture
    python -m distributed_opossum.demo                          # the same program

It starts a Redis (a private ``redis-server`` if one is on PATH, else an
embedded fakeredis server; or the one of ``--url``), a small HTTP "payments API"
that it makes healthy, failing or slow, and N pod processes that call the API
through one distributed breaker, ``payments``. Then five phases:

1. healthy;
2. the API goes down: one pod trips, every pod opens within milliseconds;
3. backoff: one trial call per open period, cluster-wide, each period twice the last;
4. the API recovers: one successful trial closes every pod;
5. one sick pod (only its calls fail), on a second breaker with ``quorum=2``:
   only that pod opens, the others keep serving.

A live timeline says what each pod does and why; at the end, a summary of
measured numbers (calls that reached the sick API with coordination and with
independent local breakers fed the same traffic, propagation times, trials per
open period) and an SVG swimlane picture of every pod's state over time.
Ctrl-C stops every process the demo started.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ._demo.fleet import Fleet
from ._demo.redis_target import DemoError, RedisTarget, choose_redis
from ._demo.scenario import Stopped, run
from ._demo.settings import DEFAULT_DURATION, Settings, new_token

__all__ = ["main"]

MIN_PODS, MAX_PODS = 2, 20
MIN_DURATION, MAX_DURATION = 4.0, 600.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distributed_opossum demo",
        description=(
            "Pods in separate processes share one circuit breaker through Redis: watch an "
            "outage open every pod at once, one trial per open period with backoff, recovery, "
            "and quorum keeping one sick pod from opening the others."
        ),
    )
    parser.add_argument(
        "--pods",
        type=int,
        default=5,
        help=f"pod processes to start ({MIN_PODS}-{MAX_PODS}, default 5)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION,
        help="rough length of the scenario in seconds; every phase and the breakers' open "
        f"periods scale with it (default {DEFAULT_DURATION:g}; 8 is a quick run)",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="a Redis to use (default: a private redis-server if one is on PATH, else an "
        "embedded fakeredis server); the demo's keys get a prefix of their own and are "
        "deleted at the end",
    )
    picture = parser.add_mutually_exclusive_group()
    picture.add_argument(
        "--picture",
        type=Path,
        default=None,
        metavar="PATH",
        help="where to write the SVG picture (default: a file in the temporary directory)",
    )
    picture.add_argument("--no-picture", action="store_true", help="write no picture")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo with command-line arguments ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        0 when every phase showed what it is about; 1 when one did not within its
        bound (the output says which); 2 when the demo could not run; 130 after
        Ctrl-C, 128 + the signal after SIGTERM or SIGHUP.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not MIN_PODS <= args.pods <= MAX_PODS:
        parser.error(f"--pods must be between {MIN_PODS} and {MAX_PODS}, got {args.pods}")
    if not MIN_DURATION <= args.duration <= MAX_DURATION:
        parser.error(
            f"--duration must be between {MIN_DURATION:g} and {MAX_DURATION:g} seconds, "
            f"got {args.duration:g}"
        )
    token = new_token()
    picture: Path | None = None
    if not args.no_picture:
        picture = args.picture or Path(tempfile.gettempdir()) / f"{token}.svg"
    settings = Settings(
        pods=args.pods, duration=args.duration, url=args.url, picture=picture, token=token
    )
    fleets: list[Fleet] = []
    target: RedisTarget | None = None
    stopped_by = ""
    code = 2
    began = time.monotonic()
    try:
        # Before any thread exists: a private redis-server is spawned with a preexec_fn.
        target = choose_redis(args.url, token, log=lambda text: print(text, file=sys.stderr))
        code = asyncio.run(run(settings, target, sys.stdout, fleets))
    except KeyboardInterrupt:
        stopped_by, code = "Ctrl-C", 130
    except Stopped as stop:
        stopped_by, code = f"signal {stop.signum}", 128 + stop.signum
    except DemoError as error:
        print(f"demo: {error}", file=sys.stderr)
    finally:
        for fleet in fleets:  # if the orderly stop was cut short
            fleet.kill_now()
        if target is not None:
            target.close()
    if stopped_by:
        print(f"\nStopped by {stopped_by}: every process the demo started is stopped.", flush=True)
    elif code in (0, 1):
        took = time.monotonic() - began
        print(f"Finished in {took:.1f} s; every process it started is stopped.", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
