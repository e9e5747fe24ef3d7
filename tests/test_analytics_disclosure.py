"""Disclosure control: coarsening of per-day counts for unmasked releases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines import KaplanMeierFitter, NelsonAalenFitter

from analytics import (
    DisclosureError,
    SurvivalCounts,
    coarsen_counts,
    kaplan_meier,
    nelson_aalen,
    pool_counts,
    round_up_to_bins,
    suppress_count,
    survival_counts,
)
from tests.survival_cohorts import SEEDS, cohort, split_sites

TOL = {"rtol": 1e-9, "atol": 1e-9}


def _counts(horizon: int, events: dict[int, int], censored: dict[int, int]) -> SurvivalCounts:
    ev = np.zeros(horizon + 1, dtype=np.int64)
    ce = np.zeros(horizon + 1, dtype=np.int64)
    for day, k in events.items():
        ev[day] = k
    for day, k in censored.items():
        ce[day] = k
    return SurvivalCounts(events=ev, censored=ce)


def _expand(counts: SurvivalCounts) -> tuple[np.ndarray, np.ndarray]:
    """Individual (time, event) rows reproducing the counts."""
    days = np.arange(counts.horizon + 1)
    time = np.concatenate([np.repeat(days, counts.events), np.repeat(days, counts.censored)])
    event = np.concatenate(
        [np.ones(counts.n_events, int), np.zeros(counts.n - counts.n_events, int)]
    )
    return time, event


def test_unit_thresholds_release_day_resolution_unchanged() -> None:
    c = cohort("synthetic")
    counts = survival_counts(c.time, c.event, c.horizon)
    out = coarsen_counts(counts, min_bin_events=1, min_cell=1)
    assert out.counts == counts
    assert out.bin_ends == tuple(range(c.horizon + 1))
    assert out.max_bin_width == 1


def test_greedy_bins_by_hand() -> None:
    # Day 2: 3 events, day 4: 3 events        -> bin 0..4 closes with 6 events, 0 censored.
    # Day 5: 2 censored; day 6: 5 events       -> 5 events but 2 censored: keep growing;
    # day 7: 3 censored                        -> bin 5..7 closes with 5 events, 5 censored.
    # Day 10: 4 events, day 12: 1 censored     -> remainder 8..20 (4 events, 1 censored) is
    #                                             merged: bin 5..20 with 9 events, 6 censored.
    counts = _counts(20, {2: 3, 4: 3, 6: 5, 10: 4}, {5: 2, 7: 3, 12: 1})
    out = coarsen_counts(counts, min_bin_events=5, min_cell=5)
    assert out.bin_ends == (4, 20)
    assert out.max_bin_width == 16
    assert out.counts == _counts(20, {4: 6, 20: 9}, {20: 6})


def test_remainder_merge_cascades_until_censored_count_is_safe() -> None:
    # Greedy bins 0..1 (5, 0), 2..2 (5, 5), 3..3 (5, 0); remainder 4..9 (0 events, 2 censored).
    # Merged into 3..9: (5, 2) still exposes 2 censorings -> merged again: 2..9 (10, 7).
    counts = _counts(9, {1: 5, 2: 5, 3: 5}, {2: 5, 4: 2})
    out = coarsen_counts(counts, min_bin_events=5, min_cell=5)
    assert out.bin_ends == (1, 9)
    assert out.counts == _counts(9, {1: 5, 9: 10}, {9: 7})


def test_trailing_days_without_subjects_form_an_empty_bin() -> None:
    # Bin 0..3 holds everyone; days 4..30 hold nobody and are not pushed onto the subjects.
    counts = _counts(30, {1: 3, 3: 4}, {3: 5})
    out = coarsen_counts(counts, min_bin_events=5, min_cell=5)
    assert out.bin_ends == (3, 30)
    assert out.max_bin_width == 4
    assert out.counts == _counts(30, {3: 7}, {3: 5})


def test_min_cell_above_min_bin_events_raises_the_events_per_bin() -> None:
    # min_bin_events 2 alone would release bins of 2 events; min_cell 5 forbids a count of 2,
    # so bins need 5 events: days 0..3 close with 6; the remainder 4..10 holds 4 (< 5) and is
    # merged back: one bin of 10 events on day 10.
    counts = _counts(10, {1: 2, 2: 2, 3: 2, 4: 2, 5: 2}, {})
    out = coarsen_counts(counts, min_bin_events=2, min_cell=5)
    assert out.bin_ends == (10,)
    assert out.counts == _counts(10, {10: 10}, {})
    # With 6 more events on day 8 the remainder holds 10 and stands as its own bin.
    out = coarsen_counts(_counts(10, {1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 8: 6}, {}), 2, 5)
    assert out.bin_ends == (3, 8, 10)
    assert out.counts == _counts(10, {3: 6, 8: 10}, {})


def test_single_bin_fallback_and_refusals() -> None:
    # No events, 12 censorings: one bin over everything, released on the horizon day.
    out = coarsen_counts(_counts(10, {}, {2: 6, 7: 6}), 5, 5)
    assert out.bin_ends == (10,) and out.counts == _counts(10, {}, {10: 12})
    # 7 events (>= min_cell, < min_bin_events=10) and 6 censorings: one bin is releasable.
    out = coarsen_counts(_counts(10, {1: 3, 4: 4}, {5: 6}), 10, 5)
    assert out.bin_ends == (10,) and out.counts == _counts(10, {10: 7}, {10: 6})
    with pytest.raises(DisclosureError):  # fewer than min_cell subjects
        coarsen_counts(_counts(10, {1: 2}, {3: 2}), 5, 5)
    with pytest.raises(DisclosureError):  # 3 events can never be released
        coarsen_counts(_counts(10, {1: 3}, {3: 20}), 5, 5)
    with pytest.raises(DisclosureError):  # 2 censorings can never be released
        coarsen_counts(_counts(10, {1: 9}, {3: 2}), 5, 5)
    # An empty group releases zeros.
    assert coarsen_counts(SurvivalCounts.zeros(10), 5, 5).counts == SurvivalCounts.zeros(10)
    with pytest.raises(ValueError):
        coarsen_counts(SurvivalCounts.zeros(10), 0, 5)


def test_suppress_count() -> None:
    assert suppress_count(0, 5) == 0
    assert suppress_count(3, 5) == "<5"
    assert suppress_count(5, 5) == 5
    assert suppress_count(1, 10) == "<10"
    with pytest.raises(ValueError):
        suppress_count(-1, 5)


def test_round_up_to_bins() -> None:
    assert round_up_to_bins([0, 4, 5, 9, 20], (4, 9, 20)).tolist() == [4, 4, 9, 9, 20]
    with pytest.raises(ValueError):
        round_up_to_bins([21], (4, 9, 20))


@st.composite
def cohorts(draw: st.DrawFn) -> SurvivalCounts:
    horizon = draw(st.integers(0, 60))
    n = draw(st.integers(0, 80))
    days = draw(st.lists(st.integers(0, horizon), min_size=n, max_size=n))
    events = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return survival_counts(np.array(days, dtype=np.int64), np.array(events, dtype=int), horizon)


@settings(max_examples=300, deadline=None)
@given(cohorts())
def test_default_thresholds_never_release_a_small_count(counts: SurvivalCounts) -> None:
    n, n_events = counts.n, counts.n_events
    n_censored = n - n_events
    # Releasing is impossible exactly when a whole-group total (any bin holding that kind of
    # count holds part of it) is in 1..4; otherwise one bin over everything is always safe.
    impossible = any(0 < k < 5 for k in (n, n_events, n_censored))
    try:
        out = coarsen_counts(counts, min_bin_events=5, min_cell=5)
    except DisclosureError:
        assert impossible
        return
    assert not impossible
    released = out.counts
    for values in (released.events, released.censored, released.at_risk, [released.n]):
        values = np.asarray(values)
        assert not np.any((values >= 1) & (values <= 4))
    # Totals preserved; counts only on bin ends; each bin holding subjects has >= 5 events
    # unless it is the single bin over everything.
    assert released.n == n and released.n_events == n_events
    ends = np.array(out.bin_ends)
    assert ends[-1] == counts.horizon and np.all(np.diff(ends) > 0)
    off_ends = np.setdiff1d(np.arange(counts.horizon + 1), ends)
    assert released.events[off_ends].sum() == 0 and released.censored[off_ends].sum() == 0
    holding = (released.events[ends] + released.censored[ends]) > 0
    if holding.sum() > 1:
        assert np.all(released.events[ends][holding] >= 5)
    # The release equals the individual times rounded up to the bin ends.
    time, event = _expand(counts)
    rounded = [min(b for b in out.bin_ends if b >= t) for t in time]
    assert survival_counts(np.array(rounded, dtype=np.int64), event, counts.horizon) == released


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["rossi", "lung", "gbsg2", "kidney", "synthetic"])
def test_pooled_coarsened_km_equals_lifelines_on_rounded_times(name: str, seed: int) -> None:
    c = cohort(name)
    site = split_sites(c.time.size, seed)
    time, event = c.truncated()
    released, rounded, kept = [], np.zeros_like(time), np.zeros(time.size, dtype=bool)
    for s in np.unique(site):
        at_site = site == s
        try:
            out = coarsen_counts(
                survival_counts(c.time[at_site], c.event[at_site], c.horizon), 5, 5
            )
        except DisclosureError:
            continue  # the site refuses; it is left out of both sides
        released.append(out.counts)
        kept |= at_site
        # Reference side: each subject's (horizon-truncated) time rounded up to its site's bins.
        rounded[at_site] = [min(b for b in out.bin_ends if b >= t) for t in time[at_site]]
        assert out.max_bin_width >= 1
    assert released, "every site refused"
    pooled = pool_counts(released)
    res = kaplan_meier(pooled, timepoints=[c.horizon // 2])
    # Reference: lifelines KaplanMeierFitter / NelsonAalenFitter on the rounded pooled data.
    kmf = KaplanMeierFitter().fit(rounded[kept], event[kept])
    np.testing.assert_array_equal(res.time, kmf.survival_function_.index.to_numpy())
    np.testing.assert_array_equal(res.at_risk, kmf.event_table["at_risk"].to_numpy())
    np.testing.assert_allclose(res.survival, kmf.survival_function_.iloc[:, 0], **TOL)
    np.testing.assert_allclose(res.ci_lower, kmf.confidence_interval_.iloc[:, 0], **TOL)
    np.testing.assert_allclose(res.ci_upper, kmf.confidence_interval_.iloc[:, 1], **TOL)
    median = kmf.median_survival_time_
    assert res.median == (None if np.isinf(median) else median)
    naf = NelsonAalenFitter().fit(rounded[kept], event[kept])
    np.testing.assert_allclose(
        nelson_aalen(pooled).cumulative_hazard, naf.cumulative_hazard_.iloc[:, 0], **TOL
    )
    # Every released count at every site is 0 or >= 5, and so is every number at risk.
    for counts in released:
        for values in (counts.events, counts.censored, counts.at_risk):
            assert not np.any((values >= 1) & (values <= 4))


def test_round_up_to_bins_reproduces_the_release() -> None:
    c = cohort("gbsg2")
    time, event = c.truncated()
    out = coarsen_counts(survival_counts(c.time, c.event, c.horizon), 5, 5)
    assert survival_counts(round_up_to_bins(time, out.bin_ends), event, c.horizon) == out.counts
