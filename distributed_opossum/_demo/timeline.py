"""The live timeline: collects what happens, prints it in time order, answers waits.

Reports from different pods arrive through different pipes, so a pod that
followed another's trip may be read first. The timeline holds each report for
a few tens of milliseconds and prints in the order of the pods' own clocks:
the output reads as it happened, and a ``remote`` change can name the change
it followed (``opened by another pod's trip (pod-0, +2.1 ms)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from .records import (
    ApiChange,
    CallCounts,
    PhaseStart,
    PodExit,
    Record,
    RegistryChange,
    StateChange,
    Trial,
    TrialEnd,
    explained_by_trial,
)
from .words import (
    STATE_LABELS,
    Origin,
    api_words,
    line,
    registry_words,
    state_words,
    trial_words,
)

__all__ = ["Timeline"]

_ORIGIN_WINDOW_S = 2.0  # a remote change names an origin at most this much older
_SLACK_S = 0.05  # ... and not older than the pod's previous change, give or take this


class Timeline:
    """What happened during one run, printed as it happens.

    Args:
        out: where the lines go.
        colour: ANSI colours for the state words.
        quorums: the breakers whose changes are printed, with their quorum (None: none).
        delay: how long a report waits for earlier ones from other pods.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        colour: bool,
        quorums: Mapping[str, int | float | None],
        delay: float = 0.05,
    ) -> None:
        self.t0 = time.monotonic()
        self.records: list[Record] = []
        self.counts: dict[tuple[str, str], CallCounts] = {}
        self._out = out
        self._colour = colour
        self._quorums = dict(quorums)
        self._delay = delay
        self._pending: list[tuple[float, int, Record]] = []
        self._order = itertools.count()
        self._states: dict[tuple[str, str], str] = {}
        self._changed_at: dict[tuple[str, str], float] = {}
        self._attempts: dict[str, int] = {}
        self._origins: dict[str, list[Origin]] = {}
        self._trial_ends: dict[tuple[str, str], TrialEnd] = {}
        self._changed: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None

    # -- clock and lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Time zero of the scenario; start printing reports."""
        self.t0 = time.monotonic()
        self._changed = asyncio.Event()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self) -> None:
        """Print whatever is still held back."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self.flush(everything=True)

    def now(self) -> float:
        """Seconds since time zero."""
        return time.monotonic() - self.t0

    # -- input -----------------------------------------------------------------------------------

    def add(self, record: Record) -> None:
        """A pod's report: printed once reports from before it had time to arrive."""
        heapq.heappush(self._pending, (record.t, next(self._order), record))

    def count(self, counts: CallCounts) -> None:
        """A pod's running totals (the latest one wins)."""
        self.counts[counts.pod, counts.breaker] = counts

    def mark(self, record: ApiChange | PhaseStart) -> None:
        """Something the demo did, now: printed at once, after everything before it."""
        self.flush(everything=True)
        self._apply(record)

    def note(self, text: str) -> None:
        """A line of commentary, printed at once."""
        self.flush(everything=True)
        self._print(f"{'':11}{text}")

    # -- questions -------------------------------------------------------------------------------

    def state(self, pod: str, breaker: str) -> str:
        """The last state printed for that pod's breaker (``closed`` before any change)."""
        return self._states.get((pod, breaker), "closed")

    def attempts(self, breaker: str) -> int:
        """The highest ``attempts`` any pod reported on opening that breaker."""
        return self._attempts.get(breaker, 0)

    async def wait_until(self, predicate: Callable[[], bool], bound: float) -> bool:
        """Wait until ``predicate()`` holds (checked after each printed report).

        Returns:
            False when ``bound`` seconds passed first.
        """
        assert self._changed is not None, "start() first"
        deadline = time.monotonic() + bound
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    # -- printing --------------------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._delay / 2)
            self.flush()

    def flush(self, *, everything: bool = False) -> None:
        """Print the held reports that are old enough (all of them with ``everything``)."""
        horizon = float("inf") if everything else self.now() - self._delay
        while self._pending and self._pending[0][0] <= horizon:
            self._apply(heapq.heappop(self._pending)[2])

    def _apply(self, record: Record) -> None:
        self.records.append(record)
        text = self._describe(record)
        if text is not None:
            self._print(text)
        if self._changed is not None:
            self._changed.set()

    def _describe(self, record: Record) -> str | None:
        colour = self._colour
        if isinstance(record, StateChange):
            return self._state_line(record)
        if isinstance(record, TrialEnd):
            # A trial's end is the origin of the change every other pod follows.
            self._trial_ends[record.pod, record.breaker] = record
            what = "successful trial" if record.ok else "failed trial"
            origin = Origin(record.pod, record.t, what, "" if record.ok else record.outcome)
            self._origins.setdefault(record.breaker, []).append(origin)
            return None
        if isinstance(record, Trial):
            if record.breaker not in self._quorums:
                return None
            words = trial_words(record, quorum=self._quorums[record.breaker])
            return line(record.t, record.pod, "TRIAL", words, colour=colour)
        if isinstance(record, RegistryChange):
            return line(record.t, record.pod, "REDIS", registry_words(record), colour=colour)
        if isinstance(record, PodExit):
            if record.expected:
                return None
            words = f"the pod process ended unexpectedly (exit code {record.code})"
            return line(record.t, record.pod, "EXITED", words, colour=colour)
        if isinstance(record, ApiChange):
            label, words = api_words(record)
            return line(record.t, "API", label, words, colour=colour)
        title = f"── {record.number}. {record.title} "
        title = title + "─" * max(3, 92 - len(title))
        return "\n" + (f"\x1b[1m{title}\x1b[0m" if colour else title)

    def _state_line(self, change: StateChange) -> str | None:
        breaker = change.breaker
        previous_t = self._changed_at.get((change.pod, breaker), float("-inf"))
        self._states[change.pod, breaker] = change.state
        self._changed_at[change.pod, breaker] = change.t
        if change.state == "open":
            self._attempts[breaker] = max(self._attempts.get(breaker, 0), change.attempts)
        trial = self._trial_ends.get((change.pod, breaker))
        if explained_by_trial(change, trial):
            change = dataclasses.replace(change, cause="trial")
        origin = self._origin_of(change, since=previous_t)
        if change.state == "open" and change.cause in ("local", "cluster"):
            what = "trip" if change.cause == "local" else "cluster decision"
            self._origins.setdefault(breaker, []).append(Origin(change.pod, change.t, what))
        if breaker not in self._quorums:
            return None
        words = state_words(change, origin=origin, trial=trial, quorum=self._quorums[breaker])
        label = STATE_LABELS.get(change.state, change.state.upper())
        return line(change.t, change.pod, label, words, colour=self._colour)

    def _origin_of(self, change: StateChange, *, since: float) -> Origin | None:
        """The other pod's change that a ``remote`` change followed (after ``since``)."""
        if change.cause != "remote":
            return None
        wanted = ("successful trial",) if change.state == "closed" else _OPENERS
        for origin in reversed(self._origins.get(change.breaker, [])):
            if origin.t < since - _SLACK_S or change.t - origin.t > _ORIGIN_WINDOW_S:
                break
            if origin.pod != change.pod and origin.what in wanted and origin.t <= change.t:
                return origin
        return None

    def _print(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()


_OPENERS = ("trip", "cluster decision", "failed trial")
