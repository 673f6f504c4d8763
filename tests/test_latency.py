"""The latency histogram: bins, their values, and nearest-rank percentiles."""

from __future__ import annotations

import asyncio
import math

import pytest
from helpers import Boom, on_path
from hypothesis import given
from hypothesis import strategies as st

from distributed_opossum import CircuitBreaker
from distributed_opossum._latency import PERCENTILES, bin_of, percentiles, value_of
from distributed_opossum.testing import FakeClock

RELATIVE_ERROR = 1 / 32  # half a bin of 1/16 of an octave, relative to the octave's bottom
LATENCIES = st.floats(min_value=1e-9, max_value=1e5, allow_nan=False, allow_infinity=False)


def exact_nearest_rank(samples: list[float], point: float) -> float:
    """The textbook nearest-rank percentile of ``samples``."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(point * len(ordered)))
    return ordered[rank - 1]


def histogram_of(samples: list[float]) -> dict[int, int]:
    """Bin ``samples`` the way the window does."""
    histogram: dict[int, int] = {}
    for sample in samples:
        index = bin_of(sample)
        histogram[index] = histogram.get(index, 0) + 1
    return histogram


def test_percentile_points() -> None:
    """The percentiles reported are opossum's nine points."""
    assert PERCENTILES == (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 1.0)


def test_zero_and_negative_share_bin_zero_worth_zero() -> None:
    """Zero (and a negative clock glitch) go to bin 0, whose value is 0.0."""
    assert bin_of(0.0) == 0
    assert bin_of(-0.5) == 0
    assert value_of(0) == 0.0


@given(LATENCIES)
def test_no_positive_latency_lands_in_the_zero_bin(latency: float) -> None:
    """A positive latency never shares the zero bin."""
    assert bin_of(latency) != 0
    assert value_of(bin_of(latency)) > 0.0


@given(LATENCIES)
def test_bin_value_is_within_the_relative_error(latency: float) -> None:
    """The value of a latency's bin is within 1/32 of the latency."""
    estimate = value_of(bin_of(latency))
    assert abs(estimate - latency) <= latency * RELATIVE_ERROR


@given(LATENCIES, LATENCIES)
def test_bins_are_ordered_like_latencies(a: float, b: float) -> None:
    """Bins keep the order of the latencies (so sorting bins sorts samples)."""
    if a <= b:
        assert bin_of(a) <= bin_of(b)
    else:
        assert bin_of(a) >= bin_of(b)


@pytest.mark.parametrize("latency", [0.25, 0.5, 1.0, 2.0, 1024.0, 2.0**-20])
def test_powers_of_two_start_a_bin(latency: float) -> None:
    """A power of two is the lower edge of its bin: just below it is the previous bin."""
    assert bin_of(math.nextafter(latency, 0.0)) < bin_of(latency)
    assert bin_of(latency) == bin_of(latency * (1 + 1 / 32))


def test_no_samples_give_zero_everywhere() -> None:
    """Without samples every percentile is 0.0."""
    assert percentiles([]) == dict.fromkeys(PERCENTILES, 0.0)
    assert percentiles([{}, {}]) == dict.fromkeys(PERCENTILES, 0.0)


def test_single_sample_is_every_percentile() -> None:
    """One sample is the answer at every point."""
    result = percentiles([histogram_of([0.123])])
    assert set(result) == set(PERCENTILES)
    assert set(result.values()) == {value_of(bin_of(0.123))}


def test_zero_latencies_give_zero_percentiles() -> None:
    """Samples of zero latency read as 0.0."""
    result = percentiles([histogram_of([0.0, 0.0, 0.0])])
    assert result == dict.fromkeys(PERCENTILES, 0.0)


def test_zero_and_positive_latencies_mixed() -> None:
    """Zero samples sort first; the top percentile is the largest sample."""
    result = percentiles([histogram_of([0.0, 0.0, 0.0, 1.0])])
    assert result[0.0] == 0.0
    assert result[0.5] == 0.0
    assert result[1.0] == pytest.approx(1.0, rel=RELATIVE_ERROR)


def test_nearest_rank_on_known_data() -> None:
    """1..100 ms: p50 is 50 ms, p90 90 ms, p0 1 ms, p100 100 ms (within a bin)."""
    samples = [i / 1000 for i in range(1, 101)]
    result = percentiles([histogram_of(samples)])
    for point in PERCENTILES:
        exact = exact_nearest_rank(samples, point)
        assert result[point] == pytest.approx(exact, rel=RELATIVE_ERROR)
    assert result[0.5] == value_of(bin_of(0.050))
    assert result[0.9] == value_of(bin_of(0.090))


def test_custom_points() -> None:
    """Only the points asked for are returned."""
    result = percentiles([histogram_of([1.0, 2.0, 3.0])], points=(0.5,))
    assert list(result) == [0.5]


@given(st.lists(LATENCIES, min_size=1, max_size=300))
def test_percentiles_track_exact_nearest_rank(samples: list[float]) -> None:
    """Every percentile is within ~3.2 % of the exact nearest-rank value."""
    result = percentiles([histogram_of(samples)])
    for point in PERCENTILES:
        exact = exact_nearest_rank(samples, point)
        assert abs(result[point] - exact) <= exact * 0.032


@given(st.lists(st.lists(LATENCIES, max_size=50), min_size=1, max_size=6))
def test_merging_histograms_equals_one_histogram(parts: list[list[float]]) -> None:
    """Percentiles over several histograms equal those over their union."""
    union = [sample for part in parts for sample in part]
    merged = percentiles([histogram_of(part) for part in parts])
    assert merged == percentiles([histogram_of(union)])


# -- the breaker's latency samples go through the same bins --------------------------------------


@pytest.mark.parametrize("path", ["plain", "gated"])
@pytest.mark.parametrize("latency", [0.0, 0.0371, 0.25, 0.5, 1.0, 2.0, 3.3, 0.000123])
async def test_breaker_success_latency_uses_bin_of(path: str, latency: float) -> None:
    """A success taking a known fake-clock latency reads back as value_of(bin_of(latency))."""
    clock = FakeClock()

    async def action() -> str:
        if latency:
            await clock.sleep(latency)
        return "ok"

    breaker = on_path(path, action, clock=clock, timeout=None)
    start = clock.monotonic()
    task = asyncio.create_task(breaker.fire())
    await clock.advance(latency)
    assert await task == "ok"
    measured = (start + latency) - start
    stats = breaker.stats
    assert stats.successes == 1
    assert stats.percentiles == dict.fromkeys(PERCENTILES, value_of(bin_of(measured)))
    assert stats.latency_mean == pytest.approx(measured, abs=1e-12)


async def test_breaker_failure_latency_uses_bin_of() -> None:
    """A failure's latency sample lands in the same bin as bin_of says."""
    clock = FakeClock()

    async def action() -> str:
        await clock.sleep(0.7)
        raise Boom("slow failure")

    breaker = CircuitBreaker(action, clock=clock, timeout=None, error_threshold_percentage=100)
    task = asyncio.create_task(breaker.fire())
    await clock.advance(0.7)
    with pytest.raises(Boom):
        await task
    measured = (1000.0 + 0.7) - 1000.0
    assert breaker.stats.percentiles[0.5] == value_of(bin_of(measured))


async def test_breaker_mixed_latencies_percentiles() -> None:
    """Several calls of known latencies give the binned nearest-rank percentiles."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock.sleep, clock=clock, timeout=None)
    latencies = [0.01 * i for i in range(1, 21)]
    for latency in latencies:
        task = asyncio.create_task(breaker.fire(latency))
        await clock.advance(latency)
        await task
    stats = breaker.stats
    assert stats.successes == 20
    for point in PERCENTILES:
        exact = exact_nearest_rank(latencies, point)
        assert stats.percentiles[point] == pytest.approx(exact, rel=RELATIVE_ERROR)
    assert stats.latency_mean == pytest.approx(sum(latencies) / 20, rel=1e-9)


async def test_breaker_percentiles_disabled_read_minus_one() -> None:
    """With rolling_percentiles_enabled=False, mean and percentiles are -1."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        clock.sleep, clock=clock, timeout=None, rolling_percentiles_enabled=False
    )
    task = asyncio.create_task(breaker.fire(0.5))
    await clock.advance(0.5)
    await task
    stats = breaker.stats
    assert stats.successes == 1
    assert stats.latency_mean == -1
    assert stats.percentiles == dict.fromkeys(PERCENTILES, -1)


async def test_breaker_without_samples_reads_zero() -> None:
    """A breaker that ran nothing has mean and percentiles 0.0."""
    breaker = CircuitBreaker(FakeClock().sleep, clock=FakeClock())
    stats = breaker.stats
    assert stats.latency_mean == 0.0
    assert stats.percentiles == dict.fromkeys(PERCENTILES, 0.0)
