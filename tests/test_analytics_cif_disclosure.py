"""Disclosure control for competing-risks counts: coarsening to safe time bins.

The pooled cumulative incidence of coarsened site counts is compared with scikit-survival's
``cumulative_incidence_competing_risks(..., conf_type="log-log", var_type="Aalen")`` on the
pooled individual times rounded up to each site's bin ends.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sksurv.nonparametric import cumulative_incidence_competing_risks

from analytics import (
    CompetingCounts,
    DisclosureError,
    coarsen_competing,
    competing_counts,
    cumulative_incidence,
    pool_competing,
    round_up_to_bins,
)
from tests.competing_cohorts import SEEDS, competing_cohort, split_sites

TOL = {"rtol": 1e-9, "atol": 1e-9}


def _counts(horizon: int, c1: dict[int, int], c2: dict[int, int], ce: dict[int, int]):
    arrays = []
    for cells in (c1, c2, ce):
        arr = np.zeros(horizon + 1, dtype=np.int64)
        for day, k in cells.items():
            arr[day] = k
        arrays.append(arr)
    return CompetingCounts(cause1=arrays[0], cause2=arrays[1], censored=arrays[2])


def _expand(counts: CompetingCounts) -> tuple[np.ndarray, np.ndarray]:
    days = np.arange(counts.horizon + 1)
    time = np.concatenate(
        [np.repeat(days, a) for a in (counts.censored, counts.cause1, counts.cause2)]
    )
    cause = np.repeat([0, 1, 2], [counts.censored.sum(), counts.n_cause1, counts.n_cause2])
    return time, cause


def test_unit_thresholds_release_day_resolution_unchanged() -> None:
    c = competing_cohort("synthetic")
    counts = competing_counts(c.time, c.cause, c.horizon)
    out = coarsen_competing(counts, min_bin_events=1, min_cell=1)
    assert out.counts == counts
    assert out.bin_ends == tuple(range(c.horizon + 1))
    assert out.max_bin_width == 1


def test_greedy_bins_by_hand() -> None:
    # Days 1-2: 3 + 3 of cause 1         -> bin 0..2 (6, 0, 0) closes.
    # Day 3: 5 of cause 1, 2 of cause 2    -> 7 events but 2 competing: keep growing;
    # day 4: 3 of cause 2                  -> bin 3..4 (5, 5, 0) closes.
    # Day 6: 5 of cause 1                  -> bin 5..6 (5, 0, 0) closes.
    # Remainder 7..20 holds censorings only: merged backwards until every cell is safe.
    # With 1 censoring no bin can ever be safe.
    counts = _counts(20, {1: 3, 2: 3, 3: 5, 6: 5}, {3: 2, 4: 3}, {7: 1})
    with pytest.raises(DisclosureError):  # a single censoring can never be released
        coarsen_competing(counts, 5, 5)
    # With 1 + 4 censorings the remainder (0, 0, 5) merges into 5..20 (5, 0, 5).
    counts = _counts(20, {1: 3, 2: 3, 3: 5, 6: 5}, {3: 2, 4: 3}, {7: 1, 9: 4})
    out = coarsen_competing(counts, 5, 5)
    assert out.bin_ends == (2, 4, 20)
    assert out.max_bin_width == 16
    assert out.counts == _counts(20, {2: 6, 4: 5, 20: 5}, {4: 5}, {20: 5})


def test_remainder_merges_until_every_cell_is_safe() -> None:
    # Greedy bins 0..1 (5, 0, 0) and 2..2 (0, 5, 0); remainder 3..9 (2, 0, 6) exposes 2 events
    # of cause 1 and holds too few events: merged into 2..9 (2, 5, 6), still 2: into 0..9.
    counts = _counts(9, {1: 5, 4: 2}, {2: 5}, {6: 6})
    out = coarsen_competing(counts, 5, 5)
    assert out.bin_ends == (9,)
    assert out.counts == _counts(9, {9: 7}, {9: 5}, {9: 6})


def test_trailing_days_without_subjects_form_an_empty_bin() -> None:
    counts = _counts(30, {1: 3, 3: 4}, {3: 5}, {2: 5})
    out = coarsen_competing(counts, 5, 5)
    assert out.bin_ends == (3, 30)
    assert out.max_bin_width == 4
    assert out.counts == _counts(30, {3: 7}, {3: 5}, {3: 5})


def test_single_bin_fallback_and_refusals() -> None:
    # 6 events (>= min_cell, < min_bin_events=10), 6 censored: one releasable bin.
    out = coarsen_competing(_counts(10, {1: 6}, {}, {5: 6}), 10, 5)
    assert out.bin_ends == (10,) and out.counts == _counts(10, {10: 6}, {}, {10: 6})
    with pytest.raises(DisclosureError):  # fewer than min_cell subjects
        coarsen_competing(_counts(10, {1: 2}, {2: 1}, {3: 1}), 5, 5)
    with pytest.raises(DisclosureError):  # 3 competing events can never be released
        coarsen_competing(_counts(10, {1: 9}, {2: 3}, {3: 9}), 5, 5)
    assert coarsen_competing(CompetingCounts.zeros(10), 5, 5).counts == CompetingCounts.zeros(10)
    with pytest.raises(ValueError):
        coarsen_competing(CompetingCounts.zeros(10), 5, 0)


@st.composite
def competing_data(draw: st.DrawFn) -> CompetingCounts:
    horizon = draw(st.integers(0, 60))
    n = draw(st.integers(0, 90))
    days = draw(st.lists(st.integers(0, horizon), min_size=n, max_size=n))
    causes = draw(st.lists(st.sampled_from([0, 1, 1, 2]), min_size=n, max_size=n))
    return competing_counts(np.array(days, dtype=np.int64), np.array(causes), horizon)


@settings(max_examples=300, deadline=None)
@given(competing_data(), st.sampled_from([(5, 5), (10, 5), (3, 5), (5, 3), (1, 2)]))
def test_released_counts_are_never_small(counts: CompetingCounts, thresholds) -> None:
    min_bin_events, min_cell = thresholds
    totals = (counts.n, counts.n_cause1, counts.n_cause2, int(counts.censored.sum()))
    # Impossible exactly when a whole-group total is in 1..min_cell-1 (any binning releases it
    # in parts, one of them small); otherwise one bin over everything is safe.
    impossible = any(0 < k < min_cell for k in totals)
    try:
        out = coarsen_competing(counts, min_bin_events, min_cell)
    except DisclosureError:
        assert impossible
        return
    assert not impossible
    released = out.counts
    for values in (
        released.cause1,
        released.cause2,
        released.censored,
        released.at_risk,
        [released.n],
    ):
        values = np.asarray(values)
        assert not np.any((values >= 1) & (values < min_cell))
    assert (released.n, released.n_cause1, released.n_cause2) == totals[:3]
    ends = np.array(out.bin_ends)
    assert ends[-1] == counts.horizon and np.all(np.diff(ends) > 0)
    off_ends = np.setdiff1d(np.arange(counts.horizon + 1), ends)
    for arr in (released.cause1, released.cause2, released.censored):
        assert arr[off_ends].sum() == 0
    # Each bin holding subjects has >= max(min_bin_events, min_cell) events of either cause,
    # unless it is the single bin over everything.
    events = released.cause1[ends] + released.cause2[ends]
    holding = (events + released.censored[ends]) > 0
    if holding.sum() > 1:
        assert np.all(events[holding] >= max(min_bin_events, min_cell))
    # The release equals the individual times rounded up to the bin ends.
    time, cause = _expand(counts)
    assert competing_counts(round_up_to_bins(time, out.bin_ends), cause, counts.horizon) == (
        released
    )


@pytest.mark.parametrize("seed", SEEDS)
# cgvhd and bmt are too small: the sites that can release hold no competing event, which
# scikit-survival's estimator cannot take.
@pytest.mark.parametrize("name", ["bmtcrr", "flchain", "synthetic"])
def test_pooled_coarsened_cif_equals_sksurv_on_rounded_times(name: str, seed: int) -> None:
    c = competing_cohort(name)
    site = split_sites(c.time.size, seed)
    time, cause = c.truncated()
    released, rounded, kept = [], np.zeros_like(time), np.zeros(time.size, dtype=bool)
    for s in np.unique(site):
        at_site = site == s
        try:
            out = coarsen_competing(
                competing_counts(c.time[at_site], c.cause[at_site], c.horizon), 5, 5
            )
        except DisclosureError:
            continue  # the site refuses; it is left out of both sides
        released.append(out.counts)
        kept |= at_site
        rounded[at_site] = round_up_to_bins(time[at_site], out.bin_ends)
    assert released, "every site refused"
    res = cumulative_incidence(pool_competing(released))
    times, cif, ci = cumulative_incidence_competing_risks(
        cause[kept], rounded[kept], conf_type="log-log", var_type="Aalen"
    )
    rows = np.isin(res.time, times)
    np.testing.assert_array_equal(res.time[rows], times)
    np.testing.assert_allclose(res.cif[rows], cif[1], **TOL)
    np.testing.assert_allclose(res.ci_lower[rows], ci[1, 0], **TOL)
    np.testing.assert_allclose(res.ci_upper[rows], ci[1, 1], **TOL)
    for counts in released:
        for values in (counts.cause1, counts.cause2, counts.censored, counts.at_risk):
            assert not np.any((values >= 1) & (values <= 4))
