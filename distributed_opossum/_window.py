"""The rolling window: ``rolling_count_buckets`` buckets over ``rolling_count_timeout``.

Pure: every method that depends on time takes ``now``. Buckets advance lazily
when the window is touched (no timer per breaker): a call that finds the
current bucket's end behind it rotates min(elapsed buckets, N) buckets.

The call path's cheapest record is one append to an ``array('d')``: a
successful call adds its latency to the current bucket's ``ok`` array, which
counts as one success and one latency sample (8 bytes); a failed call adds its
latency to ``other`` (its count is a plain counter). When the bucket stops
being current (or the stats are read) those raw samples are folded into the
bucket's histogram in C loops, so raw samples never outlive one bucket
interval, a failure costs no more to record than a success, and reading
percentiles never sorts samples.
"""

from __future__ import annotations

from array import array

from ._latency import PERCENTILES, count_bins, percentiles
from ._stats import COUNTER_NAMES, Stats

__all__ = ["Bucket", "RollingWindow"]


class Bucket:
    """Counters of one bucket interval, plus its latencies.

    Attributes:
        ok: latencies of successful calls not yet folded (an ``array('d')``);
            each one is a success and a latency sample.
        other: latencies of the other calls (failures) not yet folded.
        histogram: folded latency samples by bin (see ``_latency``).
        latency_total: sum of the folded latency samples (seconds).
    """

    __slots__ = (
        *COUNTER_NAMES,
        "histogram",
        "late_failures",
        "latency_total",
        "ok",
        "other",
        "seq",
    )

    def __init__(self) -> None:
        self.seq = 0  # which bucket interval this is, counted from the window's start
        self.ok = array("d")
        self.other = array("d")
        self.histogram: dict[int, int] = {}
        self.clear()

    def clear(self) -> None:
        """Zero every counter."""
        self.fires = 0
        self.successes = 0
        self.failures = 0
        self.timeouts = 0
        self.rejects = 0
        self.fallbacks = 0
        self.semaphore_rejections = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.coalesce_cache_hits = 0
        self.coalesce_cache_misses = 0
        # Failures of calls that started before the latest state change: in the
        # stats, but never in the open decision (nor in the cluster's reports).
        self.late_failures = 0
        self.latency_total = 0.0
        if self.ok:
            self.ok = array("d")
        if self.other:
            self.other = array("d")
        if self.histogram:
            self.histogram = {}

    def fold(self, histograms: bool) -> None:
        """Turn the raw ``ok`` latencies into successes, and every raw latency into samples."""
        ok, other = self.ok, self.other
        if ok:
            self.ok = array("d")
            self.successes += len(ok)
            if histograms:
                self._bin(ok)
        if other:
            self.other = array("d")
            self._bin(other)

    def _bin(self, samples: array[float]) -> None:
        self.latency_total += sum(samples)
        histogram = self.histogram
        for index, count in count_bins(samples).items():
            histogram[index] = histogram.get(index, 0) + count

    @property
    def latency_count(self) -> int:
        """Latency samples in this bucket."""
        return sum(self.histogram.values()) + len(self.ok) + len(self.other)


class RollingWindow:
    """Buckets of counters over the last ``length`` seconds.

    ``head`` is the bucket of the current interval as long as the caller
    checks ``now < bucket_end`` (else :meth:`roll`).
    """

    __slots__ = (
        "_buckets",
        "_index",
        "bucket_end",
        "earlier_failures",
        "earlier_successes",
        "head",
        "head_seq",
        "interval",
        "percentiles_enabled",
    )

    def __init__(
        self, length: float, bucket_count: int, now: float, *, percentiles_enabled: bool = True
    ) -> None:
        self.interval = length / bucket_count
        self.percentiles_enabled = percentiles_enabled
        self._buckets = [Bucket() for _ in range(bucket_count)]
        self._index = 0
        self.head = self._buckets[0]
        self.head_seq = 0
        self.bucket_end = now + self.interval
        # Successes and failures of the buckets before the head: only the head
        # changes between rotations, so the open decision reads O(1) totals.
        self.earlier_successes = 0
        self.earlier_failures = 0

    def roll(self, now: float) -> Bucket:
        """Advance to the bucket that holds ``now`` and return it."""
        if now >= self.bucket_end:
            self._advance(now)
        return self.head

    def _advance(self, now: float) -> None:
        head = self.head
        head.fold(self.percentiles_enabled)
        self.earlier_successes += head.successes
        self.earlier_failures += head.failures - head.late_failures
        steps = int((now - self.bucket_end) // self.interval) + 1
        buckets = self._buckets
        count = len(buckets)
        self.head_seq += steps
        cleared = min(steps, count)
        for offset in range(cleared):
            self._index = (self._index + 1) % count
            bucket = buckets[self._index]
            self.earlier_successes -= bucket.successes
            self.earlier_failures -= bucket.failures - bucket.late_failures
            bucket.clear()
            bucket.seq = self.head_seq - (cleared - 1 - offset)
        self.head = buckets[self._index]
        self.bucket_end += steps * self.interval

    def finished_since(self, seq: int, now: float) -> list[Bucket]:
        """Buckets that ended after bucket ``seq`` and are still in the window, folded."""
        self.roll(now)
        finished = [b for b in self._buckets if seq < b.seq < self.head_seq]
        for bucket in finished:
            bucket.fold(self.percentiles_enabled)
        return finished

    def totals(self, now: float) -> tuple[int, int]:
        """``(successes, failures)`` over the window: what the open decision reads."""
        head = self.roll(now)
        return (
            self.earlier_successes + head.successes + len(head.ok),
            self.earlier_failures + head.failures - head.late_failures,
        )

    def clear(self, now: float) -> None:
        """Forget everything (a close starts a fresh window)."""
        for bucket in self._buckets:
            bucket.clear()
        self.earlier_successes = self.earlier_failures = 0
        self.bucket_end = now + self.interval

    def buckets(self, now: float) -> list[Bucket]:
        """The live buckets, newest first (as opossum's ``window``), folded."""
        self.roll(now)
        count = len(self._buckets)
        ordered = [self._buckets[(self._index - i) % count] for i in range(count)]
        for bucket in ordered:
            bucket.fold(self.percentiles_enabled)
        return ordered

    def snapshot(self, now: float) -> Stats:
        """Sum the window into a :class:`Stats`."""
        buckets = self.buckets(now)
        totals = {name: sum(getattr(b, name) for b in buckets) for name in COUNTER_NAMES}
        if not self.percentiles_enabled:
            return Stats(**totals, latency_mean=-1.0, percentiles=dict.fromkeys(PERCENTILES, -1.0))
        count = sum(b.latency_count for b in buckets)
        mean = sum(b.latency_total for b in buckets) / count if count else 0.0
        histograms = [b.histogram for b in buckets if b.histogram]
        return Stats(**totals, latency_mean=mean, percentiles=percentiles(histograms))
