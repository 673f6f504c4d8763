"""The entries one pod delivered to Redis within the window, summed per epoch.

What a pod writes as its window (``pod:<instance>`` in the windows hash) is
the sum of its delivered entries of the epoch it knows that are still within
``window_ms``. A busy pod delivers an entry per finished bucket, so a window
holds dozens to hundreds of them; the sums are kept as entries come and go,
so that each report reads them in O(1) rather than adding them up again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["DeliveredEntries"]


@dataclass(slots=True)
class _Entry:
    at: float
    """Local monotonic time of the delivery."""
    volume: int
    failures: int
    trips: int
    epoch: int
    """The epoch it was counted under (a first report's is the one its reply names)."""


class DeliveredEntries:
    """A pod's delivered entries, oldest first, with running sums per epoch."""

    __slots__ = ("_entries", "_sums")

    def __init__(self) -> None:
        self._entries: deque[_Entry] = deque()
        self._sums: dict[int, list[int]] = {}  # epoch -> [entries, volume, failures, trips]

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, *, at: float, volume: int, failures: int, trip: bool, epoch: int) -> None:
        """One more entry, delivered at ``at`` under ``epoch``."""
        trips = 1 if trip else 0
        self._entries.append(_Entry(at, volume, failures, trips, epoch))
        sums = self._sums.get(epoch)
        if sums is None:
            self._sums[epoch] = [1, volume, failures, trips]
        else:
            sums[0] += 1
            sums[1] += volume
            sums[2] += failures
            sums[3] += trips

    def forget_until(self, oldest: float) -> None:
        """Drop the entries delivered at or before ``oldest`` (they left the window)."""
        entries = self._entries
        while entries and entries[0].at <= oldest:
            entry = entries.popleft()
            sums = self._sums[entry.epoch]
            if sums[0] == 1:
                del self._sums[entry.epoch]  # its last entry
            else:
                sums[0] -= 1
                sums[1] -= entry.volume
                sums[2] -= entry.failures
                sums[3] -= entry.trips

    def sums(self, epoch: int) -> tuple[int, int, int]:
        """``(volume, failures, trips)`` of the entries delivered under ``epoch``."""
        sums = self._sums.get(epoch)
        return (0, 0, 0) if sums is None else (sums[1], sums[2], sums[3])
