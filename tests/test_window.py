"""The rolling window: lazy bucket rotation, totals, clearing, snapshots."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_opossum._latency import PERCENTILES, bin_of, percentiles, value_of
from distributed_opossum._stats import COUNTER_NAMES
from distributed_opossum._window import Bucket, RollingWindow

T0 = 1000.0


def window(length: float = 10.0, buckets: int = 10, *, histograms: bool = True) -> RollingWindow:
    """A window starting at T0 (1 s buckets by default)."""
    return RollingWindow(length, buckets, T0, percentiles_enabled=histograms)


# -- Bucket --------------------------------------------------------------------------------------


def test_new_bucket_is_empty() -> None:
    """Every counter starts at zero with no latencies."""
    bucket = Bucket()
    assert all(getattr(bucket, name) == 0 for name in COUNTER_NAMES)
    assert len(bucket.ok) == 0
    assert bucket.histogram == {}
    assert bucket.latency_total == 0.0
    assert bucket.latency_count == 0


def test_bucket_clear_zeroes_everything() -> None:
    """clear() forgets counters, raw latencies and the histogram."""
    bucket = Bucket()
    for name in COUNTER_NAMES:
        setattr(bucket, name, 3)
    bucket.ok.append(0.1)
    bucket.other.append(0.2)
    bucket.clear()
    assert all(getattr(bucket, name) == 0 for name in COUNTER_NAMES)
    assert len(bucket.ok) == 0
    assert bucket.histogram == {}
    assert bucket.latency_total == 0.0


def test_other_latency_adds_one_sample() -> None:
    """A latency in ``other`` is a sample that the fold bins and totals, without a success."""
    bucket = Bucket()
    bucket.other.append(0.3)
    bucket.other.append(0.3)
    assert bucket.latency_count == 2
    bucket.fold(True)
    assert bucket.histogram == {bin_of(0.3): 2}
    assert bucket.latency_total == pytest.approx(0.6)
    assert bucket.latency_count == 2
    assert bucket.successes == 0


def test_fold_turns_ok_latencies_into_successes_and_samples() -> None:
    """fold() counts each raw ok latency as a success and a histogram sample."""
    bucket = Bucket()
    bucket.ok.extend([0.1, 0.2, 0.2, 0.0])
    assert bucket.latency_count == 4
    bucket.fold(True)
    assert len(bucket.ok) == 0
    assert bucket.successes == 4
    assert bucket.histogram == {bin_of(0.1): 1, bin_of(0.2): 2, 0: 1}
    assert bucket.latency_total == pytest.approx(0.5)
    assert bucket.latency_count == 4


def test_fold_without_histograms_counts_successes_only() -> None:
    """With percentiles disabled, fold() counts successes and records no latency."""
    bucket = Bucket()
    bucket.ok.extend([0.1, 0.2])
    bucket.fold(False)
    assert bucket.successes == 2
    assert bucket.histogram == {}
    assert bucket.latency_total == 0.0


def test_fold_twice_counts_once() -> None:
    """Folding an already folded bucket changes nothing."""
    bucket = Bucket()
    bucket.ok.append(0.1)
    bucket.fold(True)
    bucket.fold(True)
    assert bucket.successes == 1
    assert bucket.latency_count == 1


# -- rotation ------------------------------------------------------------------------------------


def test_interval_is_length_over_buckets() -> None:
    """The bucket interval is rolling_count_timeout / rolling_count_buckets."""
    assert window(10.0, 10).interval == 1.0
    assert window(10.0, 4).interval == 2.5
    assert window(3.0, 1).interval == 3.0


def test_roll_within_the_interval_keeps_the_head() -> None:
    """Before bucket_end, roll() returns the same bucket."""
    w = window()
    head = w.roll(T0)
    assert w.roll(T0 + 0.999) is head
    assert w.bucket_end == T0 + 1.0


def test_roll_at_bucket_end_moves_to_a_fresh_bucket() -> None:
    """At bucket_end, a new empty bucket becomes the head; the old one still counts."""
    w = window()
    w.roll(T0).failures += 2
    head = w.roll(T0 + 1.0)
    assert head.failures == 0
    assert w.bucket_end == T0 + 2.0
    assert w.totals(T0 + 1.0) == (0, 2)


def test_roll_skips_several_intervals_at_once() -> None:
    """A roll after k intervals clears exactly k buckets and aligns bucket_end."""
    w = window()
    for second in range(10):
        w.roll(T0 + second).failures += 1
    assert w.totals(T0 + 9.5) == (0, 10)
    assert w.totals(T0 + 13.2) == (0, 6)  # buckets of T0+0..T0+3 gone
    assert w.bucket_end == T0 + 14.0


def test_roll_after_a_long_idle_clears_everything_once() -> None:
    """After more than a window of idleness every bucket is cleared (min(elapsed, N) steps)."""
    w = window()
    for second in range(10):
        w.roll(T0 + second).successes += 1
    head = w.roll(T0 + 1e6 + 0.5)
    assert head.successes == 0
    assert w.totals(T0 + 1e6 + 0.5) == (0, 0)
    assert w.bucket_end - w.interval <= T0 + 1e6 + 0.5 < w.bucket_end


def test_roll_after_exactly_the_window_clears_everything() -> None:
    """Rolling exactly N intervals ahead clears every old bucket."""
    w = window(10.0, 10)
    w.roll(T0).failures += 1
    w.roll(T0 + 5.0).failures += 1
    assert w.totals(T0 + 10.0) == (0, 1)
    assert w.totals(T0 + 15.0) == (0, 0)


def test_single_bucket_window() -> None:
    """With one bucket, each interval starts from zero."""
    w = window(2.0, 1)
    w.roll(T0).failures += 1
    assert w.totals(T0 + 1.9) == (0, 1)
    assert w.totals(T0 + 2.0) == (0, 0)


def test_totals_count_unfolded_ok_latencies_as_successes() -> None:
    """totals() includes raw ok latencies as successes without folding first."""
    w = window()
    head = w.roll(T0)
    head.ok.extend([0.1, 0.2])
    head.successes += 1
    head.failures += 4
    assert w.totals(T0) == (3, 4)


def test_rotation_folds_the_old_head() -> None:
    """When the head stops being current, its ok latencies are folded into it."""
    w = window()
    old = w.roll(T0)
    old.ok.extend([0.1, 0.3])
    w.roll(T0 + 1.0)
    assert len(old.ok) == 0
    assert old.successes == 2
    assert old.latency_count == 2


def test_totals_ignore_other_counters() -> None:
    """Rejects, fires, fallbacks and cache counters are not part of the totals."""
    w = window()
    head = w.roll(T0)
    head.fires += 10
    head.rejects += 5
    head.fallbacks += 5
    head.cache_hits += 5
    head.timeouts += 1
    head.failures += 1
    assert w.totals(T0) == (0, 1)


def test_clear_forgets_everything_and_restarts_the_interval() -> None:
    """clear(now) empties every bucket and starts a bucket at now."""
    w = window()
    for second in range(5):
        bucket = w.roll(T0 + second)
        bucket.failures += 1
        bucket.ok.append(0.1)
        bucket.other.append(0.2)
    w.clear(T0 + 4.5)
    assert w.totals(T0 + 4.5) == (0, 0)
    assert w.bucket_end == T0 + 5.5
    snapshot = w.snapshot(T0 + 4.5)
    assert all(getattr(snapshot, name) == 0 for name in COUNTER_NAMES)
    assert snapshot.percentiles == dict.fromkeys(PERCENTILES, 0.0)


def test_buckets_are_newest_first() -> None:
    """buckets() lists the current bucket first, then older ones."""
    w = window(4.0, 4)
    for second in range(4):
        w.roll(T0 + second).fires += second + 1
    assert [b.fires for b in w.buckets(T0 + 3.0)] == [4, 3, 2, 1]


# -- snapshot ------------------------------------------------------------------------------------


def test_snapshot_sums_every_counter() -> None:
    """Each stats counter is the sum over the live buckets."""
    w = window(4.0, 4)
    for second in range(4):
        bucket = w.roll(T0 + second)
        for offset, name in enumerate(COUNTER_NAMES):
            setattr(bucket, name, getattr(bucket, name) + offset + second)
    snapshot = w.snapshot(T0 + 3.0)
    for offset, name in enumerate(COUNTER_NAMES):
        assert getattr(snapshot, name) == sum(offset + s for s in range(4)), name


def test_snapshot_counts_ok_latencies_once() -> None:
    """Raw ok latencies appear as successes and samples exactly once, read after read."""
    w = window()
    w.roll(T0).ok.extend([0.1, 0.1, 0.4])
    first = w.snapshot(T0)
    second = w.snapshot(T0)
    assert first.successes == second.successes == 3
    assert first.latency_mean == pytest.approx(0.2)
    assert second.latency_mean == pytest.approx(0.2)
    assert first.percentiles == second.percentiles


def test_snapshot_latency_mean_and_percentiles() -> None:
    """The mean is exact; percentiles are binned nearest-rank over every sample in the window."""
    w = window()
    samples = [0.01, 0.02, 0.03, 0.04, 1.0]
    for second, sample in enumerate(samples):
        bucket = w.roll(T0 + second)
        if second % 2:
            bucket.other.append(sample)
            bucket.failures += 1
        else:
            bucket.ok.append(sample)
    snapshot = w.snapshot(T0 + 4.0)
    assert snapshot.successes == 3
    assert snapshot.failures == 2
    assert snapshot.latency_mean == pytest.approx(sum(samples) / 5)
    histogram: dict[int, int] = {}
    for sample in samples:
        histogram[bin_of(sample)] = histogram.get(bin_of(sample), 0) + 1
    assert snapshot.percentiles == percentiles([histogram])
    assert snapshot.percentiles[1.0] == value_of(bin_of(1.0))


def test_snapshot_drops_latencies_that_left_the_window() -> None:
    """Samples in rotated-out buckets no longer count in mean or percentiles."""
    w = window()
    w.roll(T0).ok.append(5.0)
    w.roll(T0 + 5.0).ok.append(0.5)
    assert w.snapshot(T0 + 5.0).latency_mean == pytest.approx(2.75)
    assert w.snapshot(T0 + 10.0).latency_mean == pytest.approx(0.5)
    assert w.snapshot(T0 + 10.0).percentiles[0.0] == value_of(bin_of(0.5))


def test_snapshot_zero_latency() -> None:
    """Zero-latency samples give mean 0.0 and percentiles 0.0."""
    w = window()
    w.roll(T0).ok.extend([0.0, 0.0])
    snapshot = w.snapshot(T0)
    assert snapshot.successes == 2
    assert snapshot.latency_mean == 0.0
    assert snapshot.percentiles == dict.fromkeys(PERCENTILES, 0.0)


def test_snapshot_without_samples_reads_zero() -> None:
    """No samples: latency_mean 0.0 and every percentile 0.0."""
    snapshot = window().snapshot(T0)
    assert snapshot.latency_mean == 0.0
    assert snapshot.percentiles == dict.fromkeys(PERCENTILES, 0.0)


def test_snapshot_with_percentiles_disabled_reads_minus_one() -> None:
    """Percentiles disabled: mean and every percentile are -1, counters still sum."""
    w = window(histograms=False)
    head = w.roll(T0)
    head.ok.extend([0.1, 0.2])
    head.failures += 1
    snapshot = w.snapshot(T0)
    assert snapshot.successes == 2
    assert snapshot.failures == 1
    assert snapshot.latency_mean == -1
    assert snapshot.percentiles == dict.fromkeys(PERCENTILES, -1)


# -- against a model -----------------------------------------------------------------------------


@settings(max_examples=150)
@given(
    buckets=st.sampled_from([1, 2, 4, 8]),
    events=st.lists(
        st.tuples(
            st.integers(0, 40),  # time step in quarters of a second
            st.sampled_from(["success", "failure", "ok"]),
        ),
        max_size=80,
    ),
)
def test_totals_match_a_model(buckets: int, events: list[tuple[int, str]]) -> None:
    """Totals equal a direct count of the events whose bucket is among the last N."""
    length = 8.0  # bucket intervals of 1, 2, 4 or 8 s: exact in binary
    w = RollingWindow(length, buckets, 0.0)
    interval = length / buckets
    now = 0.0
    log: list[tuple[int, str]] = []
    for quarters, kind in events:
        now += quarters / 4
        bucket = w.roll(now)
        if kind == "success":
            bucket.successes += 1
        elif kind == "failure":
            bucket.failures += 1
        else:
            bucket.ok.append(0.01)
        log.append((math.floor(now / interval), kind))
        current = math.floor(now / interval)
        live = [k for index, k in log if index > current - buckets]
        expected = (sum(k != "failure" for k in live), sum(k == "failure" for k in live))
        assert w.totals(now) == expected
        assert w.bucket_end == (current + 1) * interval
