"""What a soak run measured, judged against its targets, as markdown and as JSON.

Targets (a miss makes the soak exit non-zero):

- no leaked error: no exception reached a caller of ``fire()`` besides the
  breaker's own (OpenCircuitError, CircuitTimeoutError) and the downstream's;
- no crowded trial period: at most ``half_open_max_calls`` trial calls per
  cluster-wide half-open period (shared gen and epoch) while Redis answered
  (trials during a Redis outage, plus the chaos suite's grace, follow the
  local rule and are not judged).

Reported without a target: memory drift of each pod process (median RSS of
the last stretch against the stretch right after warm-up), state agreement
outside the fault windows (plus a grace of two ticks), calls and their
outcomes, the faults injected.
"""

from __future__ import annotations

import datetime
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from _chaos_tools import GRACE, FleetResults, Timeline, Trial, trials_per_period
from _soak_faults import FAULTS, Fault
from _soak_fleet import Sample

__all__ = ["MB", "OUTCOMES", "SoakRecord", "Verdict", "agreement_so_far", "judge"]

MB = 1_000_000
OUTCOMES = ("ok", "rejected", "failed", "timeout", "error")
_LISTED = 20
"""Disagreements, errors and crowded periods listed in full (all are in the JSON)."""


@dataclass
class SoakRecord:
    """Everything a soak run recorded."""

    params: dict[str, Any]
    load_started: float
    """``time.monotonic()`` when the load began."""
    load_ended: float
    wall_offset: float
    """``time.time() - time.monotonic()`` during the run (to print wall-clock times)."""
    faults: list[Fault]
    samples: list[Sample]
    results: FleetResults
    raw: list[dict[str, Any]]
    progress: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False

    def clock(self, t: float) -> str:
        """``mm:ss.mmm`` since the load began, and the wall-clock time (UTC)."""
        since = t - self.load_started
        wall = datetime.datetime.fromtimestamp(t + self.wall_offset, datetime.UTC)
        millis = wall.microsecond // 1000
        return f"{int(since // 60):02d}:{since % 60:06.3f} ({wall:%H:%M:%S}.{millis:03d} UTC)"

    def where(self, t: float) -> str:
        """Which fault ``t`` fell into, or how long after which one."""
        before = [f for f in self.faults if f.start <= t]
        if not before:
            return "before the first fault"
        fault = before[-1]
        if t <= fault.end:
            return f"during {fault.kind} #{fault.number} (+{t - fault.start:.3f} s)"
        return f"{t - fault.end:.3f} s after the end of {fault.kind} #{fault.number}"


@dataclass
class Verdict:
    """The judged run: the summary (markdown), the details (JSON) and whether targets were met."""

    markdown: str
    details: dict[str, Any]
    met: bool


def _drift(
    record: SoakRecord, samples: Sequence[tuple[float, float]], warm_up: float
) -> dict[str, float]:
    start, end = record.load_started, record.load_ended
    first = [rss for t, rss in samples if start + warm_up <= t < start + 2 * warm_up]
    last = [rss for t, rss in samples if end - warm_up <= t <= end]
    during = [rss for t, rss in samples if start <= t <= end]
    if not first or not last:
        return {}
    base, final = statistics.median(first), statistics.median(last)
    return {
        "after_warm_up_mb": base / MB,
        "end_mb": final / MB,
        "drift_mb": (final - base) / MB,
        "drift_pct": 100 * (final - base) / base,
        "peak_mb": max(during) / MB,
    }


def _overlaps(sample: Sample, fault: Fault, grace: float) -> bool:
    return sample.start <= fault.end + grace and sample.end >= fault.start


def agreement_so_far(
    samples: Sequence[Sample], faults: Sequence[Fault], current: float | None, grace: float
) -> tuple[int, int]:
    """(agreed, judged) samples outside the fault windows so far; ``current``: a fault's start."""
    judged = [
        s
        for s in samples
        if not any(_overlaps(s, f, grace) for f in faults) and (current is None or s.end < current)
    ]
    return sum(s.agreed for s in judged), len(judged)


def _agreement(record: SoakRecord, grace: float) -> dict[str, Any]:
    outside = [s for s in record.samples if not any(_overlaps(s, f, grace) for f in record.faults)]
    odd = [s for s in outside if not s.agreed]
    inside: dict[str, dict[str, int]] = {}
    for kind in FAULTS:
        faults = [f for f in record.faults if f.kind == kind.name]
        hit = [s for s in record.samples if any(_overlaps(s, f, 0.0) for f in faults)]
        if hit:
            inside[kind.name] = {"samples": len(hit), "agreed": sum(s.agreed for s in hit)}
    judged = {id(s) for s in outside}
    return {
        "samples": len(record.samples),
        "outside": len(outside),
        "agreed": len(outside) - len(odd),
        "fraction": (len(outside) - len(odd)) / len(outside) if outside else None,
        "settled_within_two_ticks": sum(bool(s.settled) for s in odd),
        "disagreements": [
            {
                "at": record.clock(s.start),
                "where": record.where(s.start),
                "detail": s.detail,
                "settled_two_ticks_later": s.settled,
            }
            for s in odd
        ],
        "inside_fault_windows": inside,
        "disagreements_inside_fault_windows": [
            {
                "at": record.clock(s.start),
                "where": record.where(s.start),
                "detail": s.detail,
                "settled_two_ticks_later": s.settled,
            }
            for s in record.samples
            if not s.agreed and id(s) not in judged
        ],
    }


def _trial_row(record: SoakRecord, trial: Trial) -> dict[str, Any]:
    return {
        "at": record.clock(trial.t),
        "where": record.where(trial.t),
        "instance": trial.instance,
        "gen": trial.gen,
        "epoch": trial.epoch,
        "down": trial.down,
        "shared": trial.shared,
        "state": trial.state,
    }


def _trials(record: SoakRecord, half_open_max_calls: int) -> dict[str, Any]:
    timeline = Timeline()
    for fault in record.faults:
        if fault.redis_outage:
            timeline.add(fault.start, fault.end)
    periods = trials_per_period(record.results.trials, timeline, grace=GRACE)
    judged = sum(len(trials) for trials in periods.values())
    crowded = {
        f"{gen}:{epoch}": [_trial_row(record, t) for t in trials]
        for (gen, epoch), trials in periods.items()
        if len(trials) > half_open_max_calls
    }
    return {
        "trials": len(record.results.trials),
        "judged": judged,
        "during_redis_outages": len(record.results.trials) - judged,
        "periods": len(periods),
        "crowded": crowded,
    }


def _errors(record: SoakRecord) -> dict[str, Any]:
    timed = sorted(
        (row for process in record.raw for row in process.get("error_log", [])),
        key=lambda row: row[0],
    )
    return {
        "count": sum(e["count"] for e in record.results.errors.values()),
        "by_type": {kind: e["count"] for kind, e in record.results.errors.items()},
        "samples": {kind: e["samples"] for kind, e in record.results.errors.items()},
        "first": [
            {"at": record.clock(t), "where": record.where(t), "instance": i, "type": k, "error": r}
            for t, i, k, r in timed
        ],
    }


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.2f} %" if whole else "n/a"


def judge(record: SoakRecord) -> Verdict:
    """Measure the run, judge the targets, and lay both out."""
    params = record.params
    max_calls = int(params["half_open_max_calls"])
    tick = float(params["tick"])
    minutes = (record.load_ended - record.load_started) / 60
    warm_up = min(30.0, (record.load_ended - record.load_started) / 6)
    results = record.results

    errors = _errors(record)
    trials = _trials(record, max_calls)
    agreement = _agreement(record, 2 * tick)
    drift = {p: _drift(record, samples, warm_up) for p, samples in sorted(results.rss.items())}
    outcomes: Counter[str] = Counter()
    for per_pod in results.outcomes.values():
        outcomes.update(per_pod)
    calls = sum(outcomes.values())
    fault_counts = Counter(f.kind for f in record.faults)
    events = Counter(e.name for e in results.events)
    log_levels = Counter(level for _, _, level, _, _ in results.logs)
    log_messages = Counter(f"{level} {msg[:120]}" for _, _, level, msg, _ in results.logs)

    errors_met = errors["count"] == 0
    trials_met = not trials["crowded"]
    met = errors_met and trials_met and not record.interrupted

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    rows = [
        (
            "leaked errors (exceptions other than the breaker's own and the downstream's)",
            f"{errors['count']:,}"
            + (
                f": {', '.join(f'{k} {n:,}' for k, n in errors['by_type'].items())}"
                if errors["count"]
                else ""
            ),
            "0",
            verdict(errors_met),
        ),
        (
            f"trial periods with more than {max_calls} trial(s) while Redis answered",
            f"{len(trials['crowded'])} of {trials['periods']} periods with trials "
            f"({trials['judged']:,} trials judged; {trials['during_redis_outages']:,} during "
            "Redis outages, not judged)",
            "0",
            verdict(trials_met),
        ),
    ]
    for process, d in drift.items():
        rows.append(
            (
                f"memory drift {process} (RSS, last {warm_up:.0f} s vs. {warm_up:.0f}–"
                f"{2 * warm_up:.0f} s)",
                f"{d['drift_mb']:+.2f} MB ({d['drift_pct']:+.1f} %): {d['after_warm_up_mb']:.1f} → "
                f"{d['end_mb']:.1f} MB, peak {d['peak_mb']:.1f} MB"
                if d
                else "too few RSS samples",
                "—",
                "reported",
            )
        )
    settled = agreement["settled_within_two_ticks"]
    odd = agreement["outside"] - agreement["agreed"]
    rows += [
        (
            "state agreement outside fault windows (+2 ticks)",
            f"{_pct(agreement['agreed'], agreement['outside'])} ({agreement['agreed']:,} of "
            f"{agreement['outside']:,} samples)"
            + (f"; {odd} disagreement(s), {settled} settled two ticks later" if odd else ""),
            "—",
            "reported",
        ),
        (
            "calls and outcomes",
            f"{calls:,}: " + ", ".join(f"{o} {outcomes[o]:,}" for o in OUTCOMES),
            "—",
            "",
        ),
        (
            "faults injected",
            f"{len(record.faults)}"
            + "".join(
                f"{', ' if i else ': '}{k.name} {fault_counts[k.name]}"
                for i, k in enumerate(k for k in FAULTS if fault_counts[k.name])
            ),
            "—",
            "",
        ),
    ]

    lines = [
        f"Soak: {params['processes']} processes × {params['pods']} pods, {params['rate']:g} "
        f"calls/s each, {minutes:.1f} min of load from {params['started']}, a fault every "
        f"{params['fault_every']:g} s" + (" — INTERRUPTED" if record.interrupted else ""),
        "",
        "| measure | result | target | verdict |",
        "| :--- | :--- | :---: | :---: |",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        "Agreement inside the fault windows (no target): "
        + (
            ", ".join(
                f"{kind} {_pct(v['agreed'], v['samples'])} of {v['samples']}"
                for kind, v in agreement["inside_fault_windows"].items()
            )
            or "no samples"
        ),
        "Events: " + (", ".join(f"{name} {n:,}" for name, n in sorted(events.items())) or "none"),
        "Library log records: "
        + (", ".join(f"{level} {n:,}" for level, n in sorted(log_levels.items())) or "none"),
        "Max event-loop lag: "
        + ", ".join(f"{p} {lag * 1000:.0f} ms" for p, lag in sorted(results.max_lag.items())),
    ]
    if not met or agreement["disagreements"]:
        lines += ["", *_evidence(record, errors, trials, agreement)]

    details = {
        "params": params,
        "interrupted": record.interrupted,
        "minutes_of_load": minutes,
        "targets": {"leaked_errors": errors_met, "trials_per_period": trials_met},
        "leaked_errors": errors,
        "trials": trials,
        "memory": {"warm_up_s": warm_up, "processes": drift},
        "agreement": agreement,
        "outcomes": dict(outcomes),
        "calls": calls,
        "faults": [
            {**asdict(f), "at": record.clock(f.start), "seconds": f.end - f.start}
            for f in record.faults
        ],
        "events": dict(events),
        "log_levels": dict(log_levels),
        "log_messages": dict(log_messages.most_common(30)),
        "max_lag_s": results.max_lag,
        "recent_fire_latency_s": results.latency,
        "coordinator_stats": results.coordinator_stats,
        "progress": record.progress,
    }
    return Verdict("\n".join(lines), details, met)


def _evidence(
    record: SoakRecord, errors: dict[str, Any], trials: dict[str, Any], agreement: dict[str, Any]
) -> list[str]:
    lines: list[str] = []
    if errors["count"]:
        lines.append(f"Leaked errors (first {_LISTED} of {errors['count']:,}, with times):")
        lines += [
            f"- {e['at']}, {e['where']}: {e['instance']} {e['type']}: {e['error']}"
            for e in errors["first"][:_LISTED]
        ]
    if trials["crowded"]:
        lines.append(f"Crowded trial periods ({len(trials['crowded'])}):")
        for period, rows in list(trials["crowded"].items())[:_LISTED]:
            lines.append(f"- period {period}: {len(rows)} trials")
            lines += [
                f"  - {r['at']}, {r['where']}: {r['instance']} state={r['state']} "
                f"shared={r['shared']} down={r['down']}"
                for r in rows
            ]
    if agreement["disagreements"]:
        lines.append(
            f"Disagreements outside the fault windows ({len(agreement['disagreements'])}):"
        )
        lines += [
            f"- {d['at']}, {d['where']}: {d['detail']} "
            f"(settled two ticks later: {d['settled_two_ticks_later']})"
            for d in agreement["disagreements"][:_LISTED]
        ]
    return lines
