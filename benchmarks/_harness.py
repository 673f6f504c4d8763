"""Shared helpers for the benchmark scripts: timing, medians, markdown output.

Every script in this folder is run as ``python benchmarks/<name>.py``; this module is
imported from the script's own directory. It puts ``tests/`` on the import path too, so
the benchmarks share the tests' support (the private ``redis-server`` launcher and the
test doubles) instead of keeping copies.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import importlib
import importlib.metadata
import os
import platform
import shlex
import statistics
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.append(str(TESTS))  # last: the script's folder and installed packages come first

#: ``await loop(n)`` performs ``n`` sequential calls of the thing being measured.
Loop = Callable[[int], Awaitable[None]]
#: Builds a loop; may raise (library missing, option unknown), which marks the variant n/a.
Setup = Callable[[], Awaitable[Loop]]


def header() -> str:
    """One line: Python version, date and the command that produced the output."""
    command = shlex.join(["python", *sys.argv])
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"_{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {now}, `{command}`_"
    )


def machine() -> str:
    """One line about the machine: CPUs, processor, and how CPython was built."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    config = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    build = "with" if "--enable-optimizations" in config else "without"
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"_Machine: {os.cpu_count()} CPUs, {model}; CPython {platform.python_version()} "
        f"built {build} PGO (`--enable-optimizations`); load average at start {load}._"
    )


def base_parser(
    description: str,
    *,
    calls: int,
    repeats: int,
    calls_help: str = "calls per run",
    repeats_help: str = "timed runs per variant",
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--calls", type=int, default=calls, help=f"{calls_help} (default {calls})")
    parser.add_argument(
        "--repeats", type=int, default=repeats, help=f"{repeats_help} (default {repeats})"
    )
    return parser


def load_ours() -> Any:
    """The project's ``CircuitBreaker`` class; raises ImportError/AttributeError if unavailable."""
    module = importlib.import_module("distributed_opossum")
    return module.CircuitBreaker


def describe_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def time_once(loop: Loop, calls: int) -> float:
    """ns per call for one run of ``loop``, gc collected beforehand and disabled meanwhile."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        await loop(calls)
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed / calls


@dataclass
class Result:
    name: str
    samples: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


async def measure_interleaved(
    variants: Sequence[tuple[str, Setup]],
    *,
    calls: int,
    repeats: int,
    warmup_calls: int | None = None,
    setup_each_run: bool = False,
) -> list[Result]:
    """Time every variant ``repeats`` times, interleaved so they share the machine's noise.

    Each round runs every variant once; the order rotates from round to round so that no
    variant always runs first or last. A variant whose setup or loop raises is reported
    with its error instead of numbers.

    With ``setup_each_run`` every timed run gets a fresh loop from its setup (the setup is
    not timed), so runs do not see the state left by earlier ones; the warm-up pass then
    runs on a throwaway instance.
    """
    results = [Result(name) for name, _ in variants]
    loops: list[Loop | None] = []
    for (_, setup), result in zip(variants, results, strict=True):
        try:
            loop = await setup()
            await loop(warmup_calls if warmup_calls is not None else calls)
        except Exception as exc:
            result.error = describe_error(exc)
            loops.append(None)
        else:
            loops.append(loop)
        await asyncio.sleep(0)

    count = len(variants)
    for round_no in range(repeats):
        for offset in range(count):
            index = (round_no + offset) % count
            prepared = loops[index]
            if prepared is None:
                continue
            try:
                if setup_each_run:
                    prepared = await variants[index][1]()
                    await asyncio.sleep(0)
                results[index].samples.append(await time_once(prepared, calls))
            except Exception as exc:
                results[index].error = describe_error(exc)
                loops[index] = None
            # Let the event loop run anything the variant scheduled (timers, callbacks).
            await asyncio.sleep(0)
    return results


def paired_ratio(result: Result, base: Result) -> float:
    """Median over rounds of ``result / base``; both were timed in the same rounds, so
    slow drifts of the machine (other processes, frequency changes) cancel out."""
    pairs = zip(result.samples, base.samples, strict=True)
    return statistics.median(value / reference for value, reference in pairs)


def paired_difference(result: Result, base: Result) -> float:
    """Median over rounds of ``result - base`` (see :func:`paired_ratio`)."""
    pairs = zip(result.samples, base.samples, strict=True)
    return statistics.median(value - reference for value, reference in pairs)


def fmt_ns(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.1f}x"


def fmt_bytes(value: float) -> str:
    return f"{value:,.0f}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table; the first column is left-aligned, the rest right."""
    align = [":---"] + ["---:"] * (len(headers) - 1)
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(align) + " |",
    ]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def versions(distributions: Sequence[str]) -> str:
    """``name version`` for each installed distribution, ``name n/a`` for missing ones."""
    parts = []
    for name in distributions:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} n/a")
    return ", ".join(parts)


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "n/a"
    return "met" if ok else "**missed**"
