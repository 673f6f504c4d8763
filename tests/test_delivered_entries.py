"""DeliveredEntries: the running sums a pod writes as its window equal the entries summed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from distributed_opossum._redis.delivered import DeliveredEntries

ENTRY = st.tuples(
    st.floats(min_value=0.0, max_value=5.0),  # time since the previous entry
    st.integers(min_value=0, max_value=50),  # volume
    st.integers(min_value=0, max_value=50),  # failures (capped at volume below)
    st.booleans(),  # trip
    st.integers(min_value=-1, max_value=3),  # epoch
)
STEP = st.one_of(
    st.tuples(st.just("add"), ENTRY),
    st.tuples(st.just("forget"), st.floats(min_value=0.0, max_value=20.0)),
)


@given(st.lists(STEP, max_size=60))
def test_sums_equal_the_entries_left_summed(steps: list[tuple[str, object]]) -> None:
    delivered = DeliveredEntries()
    kept: list[tuple[float, int, int, int, int]] = []  # at, volume, failures, trips, epoch
    now = 0.0
    for action, value in steps:
        if action == "add":
            assert isinstance(value, tuple)
            gap, volume, failures, trip, epoch = value
            now += gap
            failures = min(failures, volume)
            delivered.add(at=now, volume=volume, failures=failures, trip=trip, epoch=epoch)
            kept.append((now, volume, failures, 1 if trip else 0, epoch))
        else:
            assert isinstance(value, float)
            oldest = now - value
            delivered.forget_until(oldest)
            kept = [entry for entry in kept if entry[0] > oldest]
        assert len(delivered) == len(kept)
        for epoch in range(-1, 4):
            mine = [entry for entry in kept if entry[4] == epoch]
            assert delivered.sums(epoch) == (
                sum(e[1] for e in mine),
                sum(e[2] for e in mine),
                sum(e[3] for e in mine),
            )


def test_an_epoch_whose_entries_left_sums_to_nothing() -> None:
    delivered = DeliveredEntries()
    delivered.add(at=1.0, volume=4, failures=2, trip=True, epoch=7)
    delivered.add(at=2.0, volume=3, failures=0, trip=False, epoch=8)
    assert delivered.sums(7) == (4, 2, 1)
    delivered.forget_until(1.0)  # delivered at or before: gone
    assert delivered.sums(7) == (0, 0, 0)
    assert delivered.sums(8) == (3, 0, 0)
    assert len(delivered) == 1
