"""The open period: exponential backoff, cap and jitter."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distributed_opossum._backoff import open_period


class Uniform:
    """A deterministic ``uniform(lo, hi)``: the point at ``fraction`` of the range."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def __call__(self, lo: float, hi: float) -> float:
        self.calls.append((lo, hi))
        return lo + (hi - lo) * self.fraction


def test_first_attempt_is_reset_timeout() -> None:
    """The first opening lasts reset_timeout."""
    assert open_period(1, reset_timeout=30.0) == 30.0


def test_multiplier_one_keeps_the_period_fixed() -> None:
    """With the default multiplier every opening lasts reset_timeout (opossum's behaviour)."""
    assert [open_period(a, reset_timeout=7.0) for a in (1, 2, 5, 50)] == [7.0] * 4


def test_multiplier_grows_the_period_per_attempt() -> None:
    """multiplier 2 gives 1, 2, 4, 8 s."""
    periods = [open_period(a, reset_timeout=1.0, multiplier=2.0) for a in (1, 2, 3, 4)]
    assert periods == [1.0, 2.0, 4.0, 8.0]


def test_fractional_multiplier() -> None:
    """multiplier 1.5 gives reset × 1.5^(attempts − 1)."""
    assert open_period(3, reset_timeout=4.0, multiplier=1.5) == pytest.approx(9.0)


def test_cap_limits_the_period() -> None:
    """max_reset_timeout caps the grown period; below the cap it is untouched."""
    periods = [
        open_period(a, reset_timeout=1.0, multiplier=2.0, max_reset_timeout=5.0)
        for a in (1, 2, 3, 4, 10)
    ]
    assert periods == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_cap_below_reset_timeout_wins() -> None:
    """A cap smaller than reset_timeout limits even the first period."""
    assert open_period(1, reset_timeout=10.0, max_reset_timeout=3.0) == 3.0


@pytest.mark.parametrize("attempts", [0, -1, -1000])
def test_attempts_below_one_count_as_the_first(attempts: int) -> None:
    """attempts < 1 gives the first period (no shrinking below reset_timeout)."""
    assert open_period(attempts, reset_timeout=3.0, multiplier=2.0) == 3.0


@pytest.mark.parametrize(("fraction", "factor"), [(0.0, 0.8), (0.5, 1.0), (1.0, 1.2)])
def test_jitter_multiplies_by_uniform_within_bounds(fraction: float, factor: float) -> None:
    """Jitter j multiplies by uniform(1 − j, 1 + j)."""
    uniform = Uniform(fraction)
    period = open_period(2, reset_timeout=10.0, multiplier=2.0, jitter=0.2, uniform=uniform)
    [(lo, hi)] = uniform.calls
    assert lo == pytest.approx(0.8)
    assert hi == pytest.approx(1.2)
    assert period == pytest.approx(20.0 * factor)


def test_no_jitter_does_not_draw() -> None:
    """jitter 0 neither calls uniform nor changes the period."""
    uniform = Uniform(1.0)
    assert open_period(2, reset_timeout=10.0, multiplier=2.0, uniform=uniform) == 20.0
    assert uniform.calls == []


@pytest.mark.parametrize(
    ("draw", "expected"),
    [(1.0, 60.0), (0.0, pytest.approx(30.0))],
    ids=["upwards-clamped-to-the-cap", "downwards-below-the-cap"],
)
def test_jitter_of_a_capped_period(draw: float, expected: object) -> None:
    """Jitter at the cap: upwards it is clamped back to the cap, downwards it goes below."""
    period = open_period(
        10,
        reset_timeout=1.0,
        multiplier=2.0,
        max_reset_timeout=60.0,
        jitter=0.5,
        uniform=Uniform(draw),
    )
    assert period == expected


def test_reset_timeout_zero_stays_zero() -> None:
    """reset_timeout 0 gives a zero period whatever the attempt (the next call is a trial)."""
    assert open_period(1, reset_timeout=0.0) == 0.0
    assert open_period(40, reset_timeout=0.0, multiplier=2.0) == 0.0


@pytest.mark.parametrize("attempts", [1025, 10_000, 10**9])
def test_huge_attempts_do_not_overflow_with_a_cap(attempts: int) -> None:
    """multiplier^attempts beyond float range gives the cap, not OverflowError."""
    period = open_period(attempts, reset_timeout=1.0, multiplier=2.0, max_reset_timeout=300.0)
    assert period == 300.0


def test_huge_attempts_without_a_cap_do_not_raise() -> None:
    """Without a cap, a huge attempt gives an unbounded (not NaN, not negative) period."""
    period = open_period(10**9, reset_timeout=1.0, multiplier=2.0)
    assert not math.isnan(period)
    assert period >= open_period(1000, reset_timeout=1.0, multiplier=2.0)


def test_huge_attempts_with_jitter_and_cap_are_clamped() -> None:
    """Jitter on an overflowed period still ends at the cap."""
    period = open_period(
        10**6,
        reset_timeout=1.0,
        multiplier=3.0,
        max_reset_timeout=120.0,
        jitter=0.3,
        uniform=Uniform(1.0),
    )
    assert period == 120.0


@pytest.mark.parametrize("attempts", [1025, 10**6])
def test_reset_timeout_zero_with_huge_attempts_stays_zero(attempts: int) -> None:
    """0 × multiplier^huge is still 0: the overflow must not turn it into an endless period."""
    assert open_period(attempts, reset_timeout=0.0, multiplier=2.0) == 0.0


@given(
    attempts=st.integers(-5, 2000),
    reset_timeout=st.floats(0.001, 1e4),
    multiplier=st.floats(1.0, 10.0),
    cap=st.none() | st.floats(0.001, 1e5),
    jitter=st.floats(0.0, 0.99),
    fraction=st.floats(0.0, 1.0),
)
def test_period_matches_the_formula(
    attempts: int,
    reset_timeout: float,
    multiplier: float,
    cap: float | None,
    jitter: float,
    fraction: float,
) -> None:
    """period = min(min(rt × m^(a−1), cap) × uniform(1 − j, 1 + j), cap), never negative."""
    uniform = Uniform(fraction)
    period = open_period(
        attempts,
        reset_timeout=reset_timeout,
        multiplier=multiplier,
        max_reset_timeout=cap,
        jitter=jitter,
        uniform=uniform,
    )
    exponent = max(attempts, 1) - 1
    try:
        base = reset_timeout * multiplier**exponent
    except OverflowError:
        base = math.inf
    if cap is not None:
        base = min(base, cap)
    assert period >= 0.0
    if cap is not None:
        assert period <= cap
    if jitter:
        factor = uniform.calls[0][0] + (uniform.calls[0][1] - uniform.calls[0][0]) * fraction
        expected = base * factor
        if cap is not None:
            expected = min(expected, cap)
        assert period == pytest.approx(expected, rel=1e-9)
        assert period >= base * (1 - jitter) * (1 - 1e-9)
        assert period <= base * (1 + jitter) * (1 + 1e-9)
    else:
        assert period == pytest.approx(base, rel=1e-9)


@given(
    reset_timeout=st.floats(0.001, 1e3),
    multiplier=st.floats(1.0, 4.0),
    cap=st.none() | st.floats(0.001, 1e5),
    attempts=st.integers(1, 3000),
)
def test_period_never_shrinks_with_more_attempts(
    reset_timeout: float, multiplier: float, cap: float | None, attempts: int
) -> None:
    """Without jitter, one more attempt never gives a shorter period."""
    before = open_period(
        attempts, reset_timeout=reset_timeout, multiplier=multiplier, max_reset_timeout=cap
    )
    after = open_period(
        attempts + 1, reset_timeout=reset_timeout, multiplier=multiplier, max_reset_timeout=cap
    )
    assert after >= before
