"""Soak test: a fleet of distributed breakers under load for half an hour, faults in rotation.

Not part of CI. It starts a private ``redis-server``, a pass-through TCP
proxy in front of it (every pod connects through the proxy for the whole
run, so latency can be added without reconnecting anyone), and K processes ×
M pods (one breaker name, a Redis client per pod, the chaos suite's
options: 1 s windows, 0.1 s ticks, ``half_open_max_calls`` 1), each pod
calling a fake downstream ``--rate`` times a second. Every ``--fault-every``
seconds it injects the next fault of the rotation (_soak_faults.py):

    Redis killed and restarted empty · Redis frozen (SIGSTOP) 3 s ·
    CLIENT KILL TYPE pubsub · SCRIPT FLUSH · downstream failing 10 s ·
    200 ms per command through the proxy for 20 s · maxmemory reached for 5 s

It prints progress every minute and, at the end, a summary against the
targets (_soak_report.py): no leaked error, no half-open period with more
than ``half_open_max_calls`` trials while Redis answered; plus memory drift
per process, state agreement outside the fault windows, calls and outcomes,
faults injected. It exits 1 if a target is missed, 130 if interrupted.

Ctrl-C (or SIGTERM) stops the faults (each undoes itself), stops the load,
collects the records, prints the summary and shuts everything down; a second
Ctrl-C skips the summary.

Usage::

    python benchmarks/soak.py [--minutes 30] [--processes 3] [--pods 2] [--rate 200]
                              [--fault-every 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from _chaos_tools import CHAOS_OPTIONS, TICK, ChaosProxy, RedisServer, url_client
from _soak_faults import FaultContext, inject_faults
from _soak_fleet import Sample, SoakFleet, sample_agreement
from _soak_report import MB, OUTCOMES, SoakRecord, agreement_so_far, judge
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

SAMPLE_EVERY_S = 0.5
"""How often state agreement is sampled."""
PROGRESS_EVERY_S = 60.0


def log(message: str) -> None:
    """One line on stdout, flushed (the soak usually runs under nohup)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")
    print(f"[soak {now}] {message}", flush=True)


def _positive(kind: type[int] | type[float], what: str) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{what} must be > 0, got {text}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/soak.py",
        description="Distributed breakers under load for a long run, with faults in rotation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--minutes", type=_positive(float, "--minutes"), default=30.0, help="of load"
    )
    parser.add_argument(
        "--processes", type=_positive(int, "--processes"), default=3, help="pod processes"
    )
    parser.add_argument("--pods", type=_positive(int, "--pods"), default=2, help="per process")
    parser.add_argument(
        "--rate", type=_positive(float, "--rate"), default=200.0, help="calls/s of each pod"
    )
    parser.add_argument(
        "--fault-every", type=_positive(float, "--fault-every"), default=60.0, help="seconds"
    )
    parser.add_argument("--json", type=Path, default=None, help="write every detail here")
    return parser.parse_args(argv)


def _admin(server: RedisServer) -> aioredis.Redis:
    """A client of the soak's own, straight to the server (reconnects after a restart)."""
    return aioredis.Redis.from_url(
        server.url,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 2),
        retry_on_error=[RedisConnectionError],
    )


async def _progress(
    fleet: SoakFleet, ctx: FaultContext, samples: list[Sample], load_started: float
) -> dict[str, Any]:
    replies = await fleet.progress()
    outcomes: Counter[str] = Counter()
    for reply in replies:
        for per_pod in reply["outcomes"].values():
            outcomes.update(per_pod)
    current = ctx.current[1] if ctx.current else None
    agreed, judged = agreement_so_far(samples, ctx.faults, current, 2 * TICK)
    line = {
        "minute": round((time.monotonic() - load_started) / 60, 2),
        "outcomes": dict(outcomes),
        "leaked_errors": sum(r["errors"] for r in replies),
        "trials": sum(r["trials"] for r in replies),
        "registry_down": sum(r["registry_down"] for r in replies),
        "faults": len(ctx.faults),
        "agreed": agreed,
        "judged": judged,
        "rss_mb": {r["process"]: round(r["rss"] / MB, 2) for r in replies},
    }
    calls = sum(outcomes.values())
    share = f"{100 * agreed / judged:.2f} %" if judged else "n/a"
    log(
        f"{line['minute']:5.1f} min | calls {calls:,} ("
        + ", ".join(f"{o} {outcomes[o]:,}" for o in OUTCOMES)
        + f") | leaked {line['leaked_errors']} | trials {line['trials']} | "
        f"registry_down {line['registry_down']} | faults {line['faults']} | "
        f"agreement {share} ({agreed:,}/{judged:,}) | RSS MB "
        + ", ".join(f"{p} {mb:.1f}" for p, mb in sorted(line["rss_mb"].items()))
    )
    return line


async def _run(
    args: argparse.Namespace,
    server: RedisServer,
    proxy: ChaosProxy,
    workdir: Path,
    stop: asyncio.Event,
) -> int:
    options = dict(CHAOS_OPTIONS)
    fleet = SoakFleet(
        workdir,
        client=url_client(proxy.url),
        options=options,
        distributed={"sync_interval": TICK},
        processes=args.processes,
        pods_per_process=args.pods,
        rate=args.rate,
        name="soak",
        prefix="soak",
    )
    injector, sampler = _admin(server), _admin(server)
    tasks: list[asyncio.Task[None]] = []
    try:
        async with fleet:
            load_started = await fleet.start_load()
            wall_offset = time.time() - time.monotonic()
            end = load_started + args.minutes * 60
            log(
                f"load started: {len(fleet.instances)} pods calling {args.rate:g}/s each; "
                f"faults from {args.fault_every:g} s on"
            )
            ctx = FaultContext(server, proxy, fleet.switch, injector)
            samples: list[Sample] = []
            progress: list[dict[str, Any]] = []
            loop = asyncio.get_running_loop()
            tasks = [
                loop.create_task(
                    sample_agreement(fleet, sampler, samples, interval=SAMPLE_EVERY_S, tick=TICK)
                ),
                loop.create_task(
                    inject_faults(
                        ctx,
                        first_at=load_started + args.fault_every,
                        every=args.fault_every,
                        end=end,
                        log=log,
                    )
                ),
            ]
            next_progress = load_started + PROGRESS_EVERY_S
            while (now := time.monotonic()) < end and not stop.is_set():
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise RuntimeError("a soak task failed") from task.exception()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(end, next_progress, now + 1.0) - now):
                        await stop.wait()
                if time.monotonic() >= next_progress and not stop.is_set():
                    progress.append(await _progress(fleet, ctx, samples, load_started))
                    next_progress += PROGRESS_EVERY_S
            for task in tasks:
                task.cancel()  # a fault under way undoes itself
            await asyncio.gather(*tasks, return_exceptions=True)
            load_ended = time.monotonic()
            log("collecting the records")
            results, raw = await fleet.collect()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await injector.aclose()
        await sampler.aclose()

    record = SoakRecord(
        params={
            "minutes": args.minutes,
            "processes": args.processes,
            "pods": args.pods,
            "rate": args.rate,
            "fault_every": args.fault_every,
            "half_open_max_calls": options.get("half_open_max_calls", 1),
            "tick": TICK,
            "sample_every": SAMPLE_EVERY_S,
            "options": options,
            "started": datetime.datetime.fromtimestamp(
                load_started + wall_offset, datetime.UTC
            ).isoformat(timespec="seconds"),
        },
        load_started=load_started,
        load_ended=load_ended,
        wall_offset=wall_offset,
        faults=ctx.faults,
        samples=samples,
        results=results,
        raw=raw,
        progress=progress,
        interrupted=stop.is_set(),
    )
    verdict = judge(record)
    print("\n" + verdict.markdown, flush=True)
    if args.json is not None:
        details = {**verdict.details, "summary": verdict.markdown}
        args.json.write_text(json.dumps(details, indent=1, default=str))
        log(f"details written to {args.json}")
    if record.interrupted:
        return 130
    return 0 if verdict.met else 1


async def soak(args: argparse.Namespace) -> int:
    """Run the soak; its exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.current_task()
    assert main is not None

    def on_signal(name: str) -> None:
        if stop.is_set():
            log(f"{name} again: stopping without a summary")
            main.cancel()
            return
        log(f"{name}: stopping (undoing the fault under way, collecting the records)")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    workdir = Path(tempfile.mkdtemp(prefix="dopossum-soak-"))
    server = RedisServer()
    try:
        await asyncio.to_thread(server.start)
        with ChaosProxy(server.port) as proxy:
            log(
                f"redis-server pid {server.pid} on port {server.port}; pods connect through "
                f"the proxy on port {proxy.port}; {args.processes} processes × {args.pods} pods, "
                f"{args.minutes:g} min"
            )
            return await _run(args, server, proxy, workdir, stop)
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    try:
        return asyncio.run(soak(args))
    except asyncio.CancelledError:
        return 130


if __name__ == "__main__":
    sys.exit(main())
