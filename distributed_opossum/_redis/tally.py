"""The tally of every pod's window, read with plain commands and summed here.

``lua/report_window.lua`` tallies the windows hash inside Redis: atomic, and
the only place a shared breaker is ever opened. But a script call costs Redis
dozens of times a plain command before it has read anything (its arguments,
its setup, the state it parses), and a tally runs once per report interval
per breaker. So the pod that wins the tally lease reads the windows with one
``HGETALL`` and sums them here, with the script's rules exactly (a test
compares the two on random fields): when the sums say *open*, or the state
needs more than a read (its TTLs are due, it is gone), the pod runs the
script, which tallies again and decides; otherwise the pod writes what the
script would have (the lease's snapshot, the list's cap, the removal of old
fields) with plain commands.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .params import DecisionParams
from .replies import PooledWindow

__all__ = ["MAX_COUNT", "Tally", "decide", "list_cap", "snapshot", "tally_windows"]

MAX_COUNT = 100_000_000
"""No pod reports more than this many calls at once (as ``MAX_COUNT`` in the script)."""

# The script's patterns (Lua's %d is [0-9], %S is not [ \t\n\v\f\r], $ is the end).
_COUNTS = re.compile(rb"([0-9]+) ([0-9]+) ([0-9]+) ([0-9]+)")
_OTHER = re.compile(rb"[^ \t\n\v\f\r]+:[0-9]+ ([0-9]+) [0-9]+ [0-9]+ [0-9]+")


@dataclass(frozen=True, slots=True)
class Tally:
    """Every pod's window that counts now, summed, as ``tally()`` in the script sums it."""

    volume: int = 0
    failures: int = 0
    trips: int = 0
    trip_pods: int = 0
    """Pods whose window holds a trip."""
    reporting: int = 0
    """Pods with calls or a trip in their window (an idle pod has no say)."""
    votes: int = 0
    pods: int = 0
    """Young fields, of any epoch: what the list's cap is sized by."""
    gone: tuple[bytes, ...] = ()
    """Fields too old, from too far ahead, or that do not parse: to remove."""

    @property
    def window(self) -> PooledWindow:
        """The pooled figures, as a report's reply gives them."""
        return PooledWindow(
            volume=self.volume, failures=self.failures, reporting=self.reporting, votes=self.votes
        )


def _young(ts: int, now_ms: int, window_ms: int) -> bool:
    # A pod's clock estimate is off by a round trip, not by a window.
    return now_ms - window_ms < ts <= now_ms + window_ms


def tally_windows(
    fields: Mapping[bytes, bytes], *, gen: str, epoch: int, now_ms: int, params: DecisionParams
) -> Tally:
    """Sum the windows hash ``fields`` for state ``gen``/``epoch`` at Redis' ``now_ms``."""
    values = params.argv_values()
    window_ms = params.window_ms
    min_pod_volume = values["min_pod_volume"]
    threshold = values["error_threshold_percentage"]
    head = f"{gen}:{epoch} ".encode()
    pods = volume = failures = trips = trip_pods = reporting = votes = 0
    gone: list[bytes] = []
    for field, value in fields.items():
        if value.startswith(head):
            match = _COUNTS.fullmatch(value, len(head))
            if match is None or not _young(int(match[1]), now_ms, window_ms):
                gone.append(field)
                continue
            v, f, t = int(match[2]), int(match[3]), int(match[4])
            if f > v or v > MAX_COUNT or t > MAX_COUNT:
                gone.append(field)
                continue
            pods += 1
            if v > 0 or t > 0:
                volume, failures, trips = volume + v, failures + f, trips + t
                reporting += 1
                if t > 0:
                    trip_pods += 1
                    votes += 1
                elif v >= min_pod_volume and f * 100 > threshold * v:
                    votes += 1
        else:
            other = _OTHER.fullmatch(value)
            if other is None or not _young(int(other[1]), now_ms, window_ms):
                gone.append(field)
            else:
                pods += 1
    return Tally(volume, failures, trips, trip_pods, reporting, votes, pods, tuple(gone))


def decide(tally: Tally, params: DecisionParams) -> str | None:
    """Why ``tally`` opens a closed breaker (the script's ``decide``), or None."""
    values = params.argv_values()
    quorum_count, quorum_fraction = values["quorum_count"], values["quorum_fraction"]
    if not quorum_count and not quorum_fraction:
        if tally.trips > 0:
            return "local_trip"
        threshold = values["error_threshold_percentage"]
        failing = tally.volume > 0 and tally.failures * 100 > threshold * tally.volume
        if tally.volume >= params.volume_threshold and failing:
            return "pooled_rate"
        return None
    needed = int(quorum_count)
    if needed == 0:
        # As the script: the epsilon keeps 0.28 * 25 at 7 votes.
        needed = max(1, math.ceil(quorum_fraction * tally.reporting - 1e-9))
    return "quorum" if tally.votes >= needed else None


def list_cap(tally: Tally, params: DecisionParams) -> int:
    """The stats list's length bound after this tally (the script's ``cap``)."""
    return max(params.max_entries, (tally.pods + 1) * params.pod_entries)


def snapshot(holder: str, *, gen: str, epoch: int, state: str, now_ms: int, tally: Tally) -> str:
    """The lease's value after a tally: what plain reports read (the script writes the same)."""
    return (
        f"{holder} {gen} {epoch} {state} {now_ms} {tally.volume} {tally.failures} "
        f"{tally.reporting} {tally.votes}"
    )
