"""Pooled Kaplan-Meier from site counts versus lifelines on the pooled individual data."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from lifelines import KaplanMeierFitter
from lifelines.utils import median_survival_times, restricted_mean_survival_time

from analytics import EstimationError, SurvivalCounts, kaplan_meier, pool_counts, survival_counts
from tests.survival_cohorts import COHORTS, SEEDS, cohort, site_counts, split_sites

TOL = {"rtol": 1e-9, "atol": 1e-9}
APPROX = {"rel": 1e-9, "abs": 1e-9}


def _inf_to_none(value: float) -> float | None:
    return None if math.isinf(value) else float(value)


def _r_survmean_se(kmf: KaplanMeierFitter, horizon: float) -> float:
    """se(rmean) as R survival's survmean (print.survfit.R) computes it, on lifelines' table.

    hh = d / (n (n - d)) (0 when n == d); rectangles under the curve from 0 to the horizon;
    varmean = sum(cumsum(rev(rectangles[-1]))^2 * rev(hh)[-1]).
    """
    table = kmf.event_table
    time = table.index.to_numpy(dtype=float)
    n = table["at_risk"].to_numpy(dtype=float)
    d = table["observed"].to_numpy(dtype=float)
    surv = kmf.survival_function_.iloc[:, 0].to_numpy()
    keep = time <= horizon
    hh = np.append(np.where(n - d == 0, 0.0, d / (n * np.where(n - d == 0, 1, n - d)))[keep], 0)
    temptime = np.append(time[keep], horizon)
    tempsurv = np.append(surv[keep], surv[keep][-1])
    delta = np.diff(np.concatenate([[0.0], temptime]))
    rectangles = delta * np.concatenate([[1.0], tempsurv[:-1]])
    varmean = np.sum(np.cumsum(rectangles[1:][::-1]) ** 2 * hh[::-1][1:])
    return float(np.sqrt(varmean))


def _check_against_lifelines(counts: SurvivalCounts, time: np.ndarray, event: np.ndarray) -> None:
    horizon = counts.horizon
    points = sorted({0, 1, horizon // 3, horizon // 2, horizon})
    res = kaplan_meier(counts, timepoints=points)
    kmf = KaplanMeierFitter().fit(time, event)
    table = kmf.event_table

    # Event table: lifelines' survival_function_ / event_table index and columns.
    np.testing.assert_array_equal(res.time, kmf.survival_function_.index.to_numpy())
    np.testing.assert_array_equal(res.at_risk, table["at_risk"].to_numpy())
    np.testing.assert_array_equal(res.events, table["observed"].to_numpy())
    np.testing.assert_array_equal(res.censored, table["censored"].to_numpy())
    # Survival and lifelines' default (exponential Greenwood) confidence_interval_.
    np.testing.assert_allclose(res.survival, kmf.survival_function_.iloc[:, 0], **TOL)
    np.testing.assert_allclose(res.ci_lower, kmf.confidence_interval_.iloc[:, 0], **TOL)
    np.testing.assert_allclose(res.ci_upper, kmf.confidence_interval_.iloc[:, 1], **TOL)
    # Median: lifelines median_survival_time_; CI: median_survival_times(confidence_interval_).
    assert res.median == _inf_to_none(kmf.median_survival_time_)
    band_medians = median_survival_times(kmf.confidence_interval_).to_numpy().ravel()
    assert res.median_ci == (_inf_to_none(band_medians[0]), _inf_to_none(band_medians[1]))
    # Timepoints: lifelines survival_function_at_times and the band read with asof (ffill);
    # at risk as R's summary(fit, times=t)$n.risk, i.e. subjects with time >= t.
    for t in points:
        tp = res.timepoints[t]
        assert tp.survival == pytest.approx(kmf.survival_function_at_times(t).iloc[0], **APPROX)
        band = kmf.confidence_interval_.asof(t)
        assert tp.ci_lower == pytest.approx(band.iloc[0], **APPROX)
        assert tp.ci_upper == pytest.approx(band.iloc[1], **APPROX)
        assert tp.at_risk == int(np.sum(time >= t))
    # RMST: lifelines restricted_mean_survival_time(kmf, t=horizon); SE: R's survmean.
    assert res.rmst.horizon == horizon
    assert res.rmst.estimate == pytest.approx(
        restricted_mean_survival_time(kmf, t=horizon), **APPROX
    )
    assert res.rmst.se == pytest.approx(_r_survmean_se(kmf, horizon), **APPROX)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", COHORTS)
def test_pooled_km_equals_lifelines_on_pooled_data(name: str, seed: int) -> None:
    c = cohort(name)
    site = split_sites(c.time.size, seed)
    time, event = c.truncated()
    # Overall curve.
    _check_against_lifelines(pool_counts(site_counts(c, site)), time, event)
    # Per group.
    for g in np.unique(c.group):
        mask = c.group == g
        pooled = pool_counts(site_counts(c, site, mask))
        _check_against_lifelines(pooled, time[mask], event[mask])


def test_all_censored_group_has_flat_curve_and_no_median() -> None:
    c = cohort("synthetic")
    mask = c.group == "c"
    time, event = c.truncated()
    counts = survival_counts(c.time[mask], c.event[mask], c.horizon)
    _check_against_lifelines(counts, time[mask], event[mask])
    res = kaplan_meier(counts)
    assert np.all(res.survival == 1.0) and np.all(res.ci_lower == 1.0)
    assert res.median is None and res.median_ci == (None, None)
    assert res.rmst.estimate == c.horizon and res.rmst.se == 0.0


def test_curve_reaching_zero_matches_lifelines() -> None:
    # Everyone dies: lifelines gives survival 0 and the band [0, 0] at the last death.
    time = np.array([0, 0, 2, 3, 3, 7])
    event = np.ones(6, dtype=int)
    counts = survival_counts(time, event, 10)
    _check_against_lifelines(counts, time, event)
    res = kaplan_meier(counts)
    assert res.survival[-1] == 0.0 and res.ci_lower[-1] == 0.0 and res.ci_upper[-1] == 0.0


def test_median_tie_at_exactly_one_half() -> None:
    # S drops to exactly 0.5 at day 2 (4 subjects, deaths on days 1 and 2): lifelines takes the
    # first time with S <= 0.5, i.e. day 2 (R would average 2 and the next death, 3).
    time = np.array([1, 2, 3, 4])
    counts = survival_counts(time, np.ones(4, dtype=int), 5)
    _check_against_lifelines(counts, time, np.ones(4, dtype=int))
    assert kaplan_meier(counts).median == 2.0


def test_greenwood_and_loglog_band_by_hand() -> None:
    # Times 1, 2, 2, 3+, 4 (horizon 5).
    # Day 1: n=5, d=1 -> S = 4/5 = 0.8;  Greenwood sum V = 1/(5*4) = 0.05.
    # Day 2: n=4, d=2 -> S = 0.8 * 2/4 = 0.4;  V = 0.05 + 2/(4*2) = 0.3.
    # Log(-log) band (Kalbfleisch-Prentice; lifelines default):
    #   S ** exp(+-z sqrt(V) / |log S|), lower with +, upper with -, z = 1.959963984540054.
    counts = survival_counts([1, 2, 2, 3, 4], [1, 1, 1, 0, 1], 5)
    res = kaplan_meier(counts)
    z = 1.959963984540054
    for day, s, v in [(1, 0.8, 0.05), (2, 0.4, 0.3)]:
        i = int(np.flatnonzero(res.time == day)[0])
        assert res.survival[i] == pytest.approx(s, rel=1e-12)
        w = z * math.sqrt(v) / abs(math.log(s))
        assert res.ci_lower[i] == pytest.approx(s ** math.exp(w), rel=1e-12)
        assert res.ci_upper[i] == pytest.approx(s ** math.exp(-w), rel=1e-12)
    # Day 2 numerically: w = 1.959964 * 0.547723 / 0.916291 = 1.171589;
    # lower = 0.4 ** exp(w) = 0.4 ** 3.227118 = 0.051976, upper = 0.4 ** 0.309874 = 0.752816.
    i = int(np.flatnonzero(res.time == 2)[0])
    assert res.ci_lower[i] == pytest.approx(0.051976, abs=5e-6)
    assert res.ci_upper[i] == pytest.approx(0.752816, abs=5e-6)


def test_rmst_and_its_standard_error_by_hand() -> None:
    # Times 1, 2, 2, 3+, 4 with horizon 5; survival 1 on [0,1), 0.8 on [1,2), 0.4 on [2,4),
    # 0 on [4,5].
    # RMST = 1*1 + 1*0.8 + 2*0.4 + 1*0 = 2.6.
    # R survmean: var = sum_j A_j^2 d_j / (n_j (n_j - d_j)), A_j = area from t_j to 5:
    #   day 1: A = 0.8 + 0.8 + 0 = 1.6, d/(n(n-d)) = 1/(5*4) = 0.05  -> 2.56 * 0.05 = 0.128
    #   day 2: A = 0.8,                 d/(n(n-d)) = 2/(4*2) = 0.25  -> 0.64 * 0.25 = 0.160
    #   day 3: no event -> 0;  day 4: n == d (1 of 1 dies) -> term skipped (0), as R does.
    #   var = 0.288, se = sqrt(0.288) = 0.5366563145999496.
    res = kaplan_meier(survival_counts([1, 2, 2, 3, 4], [1, 1, 1, 0, 1], 5))
    assert res.rmst.estimate == pytest.approx(2.6, rel=1e-12)
    assert res.rmst.se == pytest.approx(math.sqrt(0.288), rel=1e-12)
    assert res.rmst.se == pytest.approx(0.5366563145999496, rel=1e-12)


def test_timepoints_read_the_step_function_and_the_risk_set() -> None:
    # Times 1, 2, 2, 3+, 4 (horizon 5): at day 3 the curve still holds S(2) = 0.4 and the
    # subjects with time >= 3 are 3+ and 4, so 2 at risk; at day 0 all 5.
    res = kaplan_meier(survival_counts([1, 2, 2, 3, 4], [1, 1, 1, 0, 1], 5), timepoints=[0, 3])
    assert res.timepoints[3].survival == pytest.approx(0.4, rel=1e-12)
    assert res.timepoints[3].at_risk == 2
    assert res.timepoints[0].survival == 1.0 and res.timepoints[0].at_risk == 5


def test_to_dict_is_json_ready_and_shaped_like_results_json() -> None:
    c = cohort("waltons")
    res = kaplan_meier(survival_counts(c.time, c.event, c.horizon), timepoints=[30])
    out = res.to_dict()
    json.dumps(out, allow_nan=False)
    assert set(out) == {"n", "events", "table", "median", "median_ci", "timepoints", "rmst"}
    assert set(out["table"]) == {
        "time",
        "at_risk",
        "events",
        "censored",
        "survival",
        "ci_lower",
        "ci_upper",
    }
    assert out["n"] == c.time.size and out["events"] == int(c.event.sum())
    assert set(out["timepoints"]["30"]) == {"survival", "ci", "at_risk"}
    assert set(out["rmst"]) == {"horizon", "estimate", "se"}
    assert all(type(v) is int for v in out["table"]["at_risk"])
    assert all(type(v) is float for v in out["table"]["survival"])
    flat = kaplan_meier(survival_counts([3, 4], [0, 0], 5)).to_dict()
    assert flat["median"] is None and flat["median_ci"] == [None, None]
    json.dumps(flat, allow_nan=False)


def test_result_arrays_are_read_only() -> None:
    res = kaplan_meier(survival_counts([1, 2, 3], [1, 0, 1], 4))
    with pytest.raises(ValueError):
        res.survival[0] = 0.5


def test_invalid_inputs() -> None:
    counts = survival_counts([1, 2, 3], [1, 0, 1], 4)
    with pytest.raises(EstimationError):
        kaplan_meier(SurvivalCounts.zeros(4))
    with pytest.raises(ValueError):
        kaplan_meier(counts, timepoints=[5])
    with pytest.raises(ValueError):
        kaplan_meier(counts, timepoints=[1.5])
    with pytest.raises(ValueError):
        kaplan_meier(counts, alpha=1.5)


def test_alpha_changes_the_band_like_lifelines() -> None:
    c = cohort("lung")
    time, event = c.truncated()
    res = kaplan_meier(survival_counts(c.time, c.event, c.horizon), alpha=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kmf = KaplanMeierFitter(alpha=0.1).fit(time, event)
    np.testing.assert_allclose(res.ci_lower, kmf.confidence_interval_.iloc[:, 0], **TOL)
    np.testing.assert_allclose(res.ci_upper, kmf.confidence_interval_.iloc[:, 1], **TOL)


def test_rmst_matches_r_print_survfit_on_aml() -> None:
    # R survival, print(survfit(Surv(time, status) ~ x, data = aml), rmean = "common") prints
    # (restricted mean with upper limit = 161):
    #   x=Maintained     n=11 events=7   *rmean 52.6 *se(rmean) 19.83 median 31
    #   x=Nonmaintained  n=12 events=11  *rmean 22.7 *se(rmean)  4.18 median 23
    maintained = survival_counts(
        [9, 13, 13, 18, 23, 28, 31, 34, 45, 48, 161], [1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0], 161
    )
    nonmaintained = survival_counts(
        [5, 5, 8, 8, 12, 16, 23, 27, 30, 33, 43, 45], [1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1], 161
    )
    for counts, rmean, se, median in [
        (maintained, 52.6, 19.83, 31.0),
        (nonmaintained, 22.7, 4.18, 23.0),
    ]:
        res = kaplan_meier(counts)
        assert round(res.rmst.estimate, 1) == rmean
        assert round(res.rmst.se, 2) == se
        assert res.median == median
