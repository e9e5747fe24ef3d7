"""Pooled cumulative incidence from site counts versus scikit-survival on the pooled data.

Reference: ``sksurv.nonparametric.cumulative_incidence_competing_risks(event, time,
conf_type="log-log", var_type="Aalen")`` (scikit-survival), row 1 (cause 1), on the pooled
individual-level data truncated at the horizon. The variance is checked against a direct
double sum of Pintilie (2006), "Competing Risks: A Practical Perspective", eq. 4.5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from lifelines import KaplanMeierFitter
from sksurv.nonparametric import cumulative_incidence_competing_risks

from analytics import (
    CompetingCounts,
    EstimationError,
    competing_counts,
    cumulative_incidence,
    pool_competing,
)
from tests.competing_cohorts import (
    COMPETING_COHORTS,
    SEEDS,
    competing_cohort,
    site_competing,
    split_sites,
)

TOL = {"rtol": 1e-9, "atol": 1e-9}


def _sksurv(time: np.ndarray, cause: np.ndarray) -> tuple[np.ndarray, ...]:
    """(times, cif, lower, upper) of cause 1 from scikit-survival."""
    times, cif, ci = cumulative_incidence_competing_risks(
        cause, time, conf_type="log-log", var_type="Aalen"
    )
    return times, cif[1], ci[1, 0], ci[1, 1]


def _pintilie_variance(time: np.ndarray, cause: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Aalen variance of F1 at each unique time, written out as Pintilie's double sum."""
    times = np.unique(time)
    n = np.array([(time >= t).sum() for t in times], dtype=float)
    d1 = np.array([((time == t) & (cause == 1)).sum() for t in times], dtype=float)
    d = np.array([((time == t) & (cause > 0)).sum() for t in times], dtype=float)
    surv_before = np.r_[1.0, np.cumprod(1 - d / n)[:-1]]
    f = np.cumsum(surv_before * d1 / n)
    var = np.zeros(times.size)
    for i in range(times.size):
        for j in range(i + 1):
            if (n[j] - 1) * (n[j] - d[j]) > 0:
                var[i] += (f[i] - f[j]) ** 2 * d[j] / ((n[j] - 1) * (n[j] - d[j]))
                var[i] -= (
                    2
                    * (f[i] - f[j])
                    * surv_before[j]
                    * d1[j]
                    * (n[j] - d1[j])
                    / (n[j] * (n[j] - d[j]) * (n[j] - 1))
                )
            if n[j] > 1:
                var[i] += surv_before[j] ** 2 * d1[j] * (n[j] - d1[j]) / (n[j] ** 2 * (n[j] - 1))
    return times, var


def _check(counts: CompetingCounts, time: np.ndarray, cause: np.ndarray) -> None:
    points = sorted({0, 1, counts.horizon // 3, counts.horizon // 2, counts.horizon})
    res = cumulative_incidence(counts, timepoints=points)
    times, cif, lower, upper = _sksurv(time, cause)
    # sksurv returns the unique observed times; heron's table adds day 0 when nobody left then.
    rows = res.time if times[0] == 0 else res.time[1:]
    np.testing.assert_array_equal(rows, times)
    keep = slice(0, None) if times[0] == 0 else slice(1, None)
    np.testing.assert_array_equal(res.at_risk[keep], [(time >= t).sum() for t in times])
    np.testing.assert_allclose(res.cif[keep], cif, **TOL)
    np.testing.assert_allclose(res.ci_lower[keep], lower, **TOL)
    np.testing.assert_allclose(res.ci_upper[keep], upper, **TOL)
    if times[0] != 0:
        assert (res.cif[0], res.ci_lower[0], res.ci_upper[0], res.variance[0]) == (0, 0, 0, 0)
    # Values at timepoints: the step function of sksurv's curve (0 before its first time).
    for t in points:
        i = np.searchsorted(times, t, side="right") - 1
        expected = (0.0, 0.0, 0.0) if i < 0 else (cif[i], lower[i], upper[i])
        np.testing.assert_allclose(res.timepoints[t], expected, **TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", COMPETING_COHORTS)
def test_pooled_sites_equal_sksurv_on_pooled_data(name: str, seed: int) -> None:
    c = competing_cohort(name)
    site = split_sites(c.time.size, seed)
    pooled = pool_competing(site_competing(c, site))
    time, cause = c.truncated()
    assert pooled == competing_counts(time, cause, c.horizon)
    _check(pooled, time, cause)
    # Per group, where the group has events of both causes (sksurv needs every cause present).
    for g in np.unique(c.group):
        in_group = c.group == g
        if not {1, 2} <= set(cause[in_group]):
            continue
        grouped = pool_competing(site_competing(c, site, in_group))
        _check(grouped, time[in_group], cause[in_group])


@pytest.mark.parametrize("name", ["bmt", "bmtcrr", "cgvhd", "synthetic"])
def test_variance_equals_pintilie_double_sum(name: str) -> None:
    c = competing_cohort(name)
    time, cause = c.truncated()
    res = cumulative_incidence(competing_counts(time, cause, c.horizon))
    times, var = _pintilie_variance(time, cause)
    keep = np.isin(res.time, times)
    np.testing.assert_allclose(res.variance[keep], var, rtol=1e-9, atol=1e-15)


def test_alpha_changes_the_band_like_sksurv_conf_level() -> None:
    c = competing_cohort("cgvhd")
    time, cause = c.truncated()
    res = cumulative_incidence(competing_counts(time, cause, c.horizon), alpha=0.1)
    times, _, ci = cumulative_incidence_competing_risks(
        cause, time, conf_level=0.9, conf_type="log-log", var_type="Aalen"
    )
    keep = np.isin(res.time, times)
    assert keep.sum() == times.size
    np.testing.assert_allclose(res.ci_lower[keep], ci[1, 0], **TOL)
    np.testing.assert_allclose(res.ci_upper[keep], ci[1, 1], **TOL)


def test_without_competing_events_the_curve_is_one_minus_kaplan_meier() -> None:
    rng = np.random.default_rng(7)
    time = rng.integers(0, 50, size=200)
    cause = rng.integers(0, 2, size=200)
    res = cumulative_incidence(competing_counts(time, cause, 60))
    kmf = KaplanMeierFitter().fit(time, cause)
    np.testing.assert_array_equal(res.time, kmf.survival_function_.index.to_numpy())
    np.testing.assert_allclose(res.cif, 1 - kmf.survival_function_.iloc[:, 0], **TOL)


def test_without_events_of_interest_the_curve_is_zero() -> None:
    res = cumulative_incidence(competing_counts([0, 3, 3, 9], [2, 0, 2, 0], 10), timepoints=[5])
    assert res.cif.tolist() == [0.0, 0.0, 0.0]
    assert res.ci_lower.tolist() == res.ci_upper.tolist() == [0.0, 0.0, 0.0]
    assert res.timepoints[5] == (0.0, 0.0, 0.0)


def test_hand_computed_small_example() -> None:
    # Day 2: 1 event of interest among 4; day 3: 1 competing among 3; day 5: 1 of interest
    # among 2 (the last subject is censored on day 6).
    res = cumulative_incidence(competing_counts([2, 3, 5, 6], [1, 2, 1, 0], 10), timepoints=[4])
    assert res.time.tolist() == [0, 2, 3, 5, 6]
    assert res.at_risk.tolist() == [4, 4, 3, 2, 1]
    # F(2) = 1/4; F(5) = 1/4 + S(3) * 1/2 with S(3) = 3/4 * 2/3 = 1/2.
    np.testing.assert_allclose(res.cif, [0, 0.25, 0.25, 0.5, 0.5], rtol=1e-15)
    assert res.timepoints[4].cif == 0.25


def test_to_dict_is_plain_json() -> None:
    c = competing_cohort("bmt")
    res = cumulative_incidence(competing_counts(c.time, c.cause, c.horizon), timepoints=[30])
    out = res.to_dict()
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    assert set(out) == {"n", "events", "competing", "table", "timepoints"}
    assert set(out["table"]) == {"time", "at_risk", "cif", "ci_lower", "ci_upper"}
    assert out["n"] == 35 and out["events"] == int((c.cause == 1).sum())
    assert out["competing"] == int((c.cause == 2).sum())
    # bmt has an event of interest on day 0: the first row is day 0 with 1/35.
    assert out["table"]["time"][0] == 0 and out["table"]["cif"][0] == pytest.approx(1 / 35)
    assert out["timepoints"]["30"] == {
        "cif": res.timepoints[30].cif,
        "ci": [res.timepoints[30].ci_lower, res.timepoints[30].ci_upper],
    }
    assert all(type(v) is float for v in out["table"]["cif"])


def test_competing_counts_from_individual_data() -> None:
    counts = competing_counts([0, 0, 2, 5, 7, 9], [1, 0, 2, 1, 2, 1], horizon=6)
    assert counts.cause1.tolist() == [1, 0, 0, 0, 0, 1, 0]
    assert counts.cause2.tolist() == [0, 0, 1, 0, 0, 0, 0]
    # Times 7 and 9 lie beyond the horizon: censored on day 6 whatever their cause.
    assert counts.censored.tolist() == [1, 0, 0, 0, 0, 0, 2]
    assert counts.at_risk.tolist() == [6, 4, 4, 3, 3, 3, 2]
    assert (counts.horizon, counts.n, counts.n_cause1, counts.n_cause2) == (6, 6, 2, 1)
    assert sum([counts, counts]) == counts + counts
    assert CompetingCounts.zeros(6) + counts == counts
    with pytest.raises(ValueError):
        competing_counts([1, 2], [1, 3], 5)
    with pytest.raises(ValueError):
        competing_counts([1.5], [1], 5)
    with pytest.raises(ValueError):
        competing_counts([-1], [1], 5)
    with pytest.raises(ValueError):
        competing_counts([1, 2], [1], 5)
    with pytest.raises(ValueError):
        counts + CompetingCounts.zeros(7)
    with pytest.raises(ValueError):
        pool_competing([])
    with pytest.raises(ValueError):
        CompetingCounts(cause1=[1], cause2=[0, 1], censored=[0])
    assert counts.cause1.flags.writeable is False


def test_errors() -> None:
    with pytest.raises(EstimationError):
        cumulative_incidence(CompetingCounts.zeros(5))
    counts = competing_counts([1, 2], [1, 2], 5)
    with pytest.raises(ValueError):
        cumulative_incidence(counts, timepoints=[6])
    with pytest.raises(ValueError):
        cumulative_incidence(counts, alpha=1.5)
