"""SurvivalCounts: construction, validation, horizon truncation, pooling."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines.utils import survival_table_from_events

from analytics import SurvivalCounts, pool_counts, survival_counts
from tests.survival_cohorts import cohort, split_sites


def test_counts_by_hand_with_horizon_truncation() -> None:
    # Horizon 5: event on day 7 -> censoring on day 5; censoring on day 9 -> censoring on
    # day 5; event exactly on day 5 stays an event; day-0 event and censoring kept.
    counts = survival_counts([0, 0, 2, 2, 5, 7, 9], [1, 0, 1, 1, 1, 1, 0], 5)
    assert counts.events.tolist() == [1, 0, 2, 0, 0, 1]
    assert counts.censored.tolist() == [1, 0, 0, 0, 0, 2]
    assert counts.horizon == 5 and counts.n == 7 and counts.n_events == 4
    # at_risk[d] = subjects with time >= d (after truncation: 0,0,2,2,5,5,5).
    assert counts.at_risk.tolist() == [7, 5, 5, 3, 3, 3]


def test_at_risk_matches_lifelines_survival_table() -> None:
    c = cohort("lung")
    time, event = c.truncated()
    counts = survival_counts(c.time, c.event, c.horizon)
    # Reference: lifelines.utils.survival_table_from_events (rows at observed times).
    table = survival_table_from_events(time, event)
    days = table.index.to_numpy().astype(int)
    np.testing.assert_array_equal(counts.at_risk[days], table["at_risk"].to_numpy())
    np.testing.assert_array_equal(counts.events[days], table["observed"].to_numpy())
    np.testing.assert_array_equal(counts.censored[days], table["censored"].to_numpy())


def test_pooling_sites_equals_counting_pooled_data() -> None:
    c = cohort("gbsg2")
    site = split_sites(c.time.size, 7)
    parts = [survival_counts(c.time[site == s], c.event[site == s], c.horizon) for s in set(site)]
    whole = survival_counts(c.time, c.event, c.horizon)
    assert pool_counts(parts) == whole
    assert sum(parts) == whole
    assert parts[0] + parts[1] == parts[1] + parts[0]


def test_arrays_are_immutable_copies() -> None:
    events = np.array([1, 0, 2])
    counts = SurvivalCounts(events=events, censored=np.array([0, 1, 0]))
    events[0] = 5
    assert counts.events[0] == 1
    with pytest.raises(ValueError):
        counts.events[0] = 3
    with pytest.raises(ValueError):
        counts.at_risk[0] = 3
    with pytest.raises(AttributeError):
        counts.events = np.zeros(3)  # type: ignore[misc]
    assert counts.events.dtype == np.int64


def test_hashable_and_comparable() -> None:
    a = survival_counts([1, 2], [1, 0], 3)
    b = survival_counts([2, 1], [0, 1], 3)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != survival_counts([1, 2], [1, 1], 3)


@pytest.mark.parametrize(
    ("durations", "events"),
    [
        ([-1, 2], [1, 0]),  # negative day
        ([1.5, 2], [1, 0]),  # not a whole day
        ([np.nan, 2], [1, 0]),  # missing
        ([1, 2], [1, 2]),  # event not 0/1
        ([1, 2], [1]),  # lengths differ
        (["1", "2"], [1, 0]),  # not numeric
    ],
)
def test_survival_counts_rejects_bad_input(durations: list, events: list) -> None:
    with pytest.raises(ValueError):
        survival_counts(durations, events, 5)


def test_whole_float_days_and_booleans_are_accepted() -> None:
    counts = survival_counts(np.array([1.0, 3.0]), np.array([True, False]), 4)
    assert counts == survival_counts([1, 3], [1, 0], 4)
    assert survival_counts([], [], 4) == SurvivalCounts.zeros(4)


def test_invalid_counts_and_horizons() -> None:
    with pytest.raises(ValueError):
        SurvivalCounts(events=np.array([1, -1]), censored=np.array([0, 0]))
    with pytest.raises(ValueError):
        SurvivalCounts(events=np.array([1, 0]), censored=np.array([0, 0, 0]))
    with pytest.raises(ValueError):
        SurvivalCounts(events=np.array([0.5, 0]), censored=np.array([0, 0]))
    with pytest.raises(ValueError):
        SurvivalCounts(events=np.array([]), censored=np.array([]))
    with pytest.raises(ValueError):
        survival_counts([1], [1], -1)
    with pytest.raises(ValueError):
        survival_counts([1], [1], 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="horizon"):
        _ = SurvivalCounts.zeros(3) + SurvivalCounts.zeros(4)
    with pytest.raises(ValueError):
        pool_counts([])
