"""Pooled Nelson-Aalen from site counts versus lifelines' NelsonAalenFitter on pooled data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from lifelines import NelsonAalenFitter

from analytics import EstimationError, SurvivalCounts, nelson_aalen, pool_counts, survival_counts
from tests.survival_cohorts import COHORTS, SEEDS, cohort, site_counts, split_sites

TOL = {"rtol": 1e-9, "atol": 1e-9}
APPROX = {"rel": 1e-9, "abs": 1e-9}


def _check_against_lifelines(counts: SurvivalCounts, time: np.ndarray, event: np.ndarray) -> None:
    points = sorted({0, counts.horizon // 2, counts.horizon})
    res = nelson_aalen(counts, timepoints=points)
    # Reference: lifelines NelsonAalenFitter() defaults (nelson_aalen_smoothing=True, alpha 0.05).
    naf = NelsonAalenFitter().fit(time, event)
    np.testing.assert_array_equal(res.time, naf.cumulative_hazard_.index.to_numpy())
    np.testing.assert_allclose(res.cumulative_hazard, naf.cumulative_hazard_.iloc[:, 0], **TOL)
    np.testing.assert_allclose(res.variance, naf._cumulative_sq, **TOL)
    np.testing.assert_allclose(res.ci_lower, naf.confidence_interval_.iloc[:, 0], **TOL)
    np.testing.assert_allclose(res.ci_upper, naf.confidence_interval_.iloc[:, 1], **TOL)
    for t in points:
        tp = res.timepoints[t]
        # lifelines predict(t): the step function read with asof.
        assert tp.cumulative_hazard == pytest.approx(float(naf.predict(t)), **APPROX)
        band = naf.confidence_interval_.asof(t)
        assert tp.ci_lower == pytest.approx(band.iloc[0], **APPROX)
        assert tp.ci_upper == pytest.approx(band.iloc[1], **APPROX)
        assert tp.at_risk == int(np.sum(time >= t))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", COHORTS)
def test_pooled_nelson_aalen_equals_lifelines(name: str, seed: int) -> None:
    c = cohort(name)
    site = split_sites(c.time.size, seed)
    time, event = c.truncated()
    _check_against_lifelines(pool_counts(site_counts(c, site)), time, event)
    for g in np.unique(c.group):
        mask = c.group == g
        _check_against_lifelines(pool_counts(site_counts(c, site, mask)), time[mask], event[mask])


def test_tied_events_are_smoothed_by_hand() -> None:
    # Times 1, 2, 2, 3+, 4 (horizon 5). Smoothed ties (Aalen, Borgan & Gjessing 2008, p. 84):
    #   day 1: 1/5 = 0.2;                 variance 1/25 = 0.04
    #   day 2: 0.2 + 1/4 + 1/3 = 0.783333; variance 0.04 + 1/16 + 1/9 = 0.2136111
    #   day 4: + 1/1 = 1.783333;           variance + 1 = 1.2136111
    # Band: H * exp(+-1.959964 * sqrt(var) / H).
    res = nelson_aalen(survival_counts([1, 2, 2, 3, 4], [1, 1, 1, 0, 1], 5))
    np.testing.assert_array_equal(res.time, [0, 1, 2, 3, 4])
    expected_h = [0.0, 0.2, 0.2 + 1 / 4 + 1 / 3, 0.2 + 1 / 4 + 1 / 3, 0.2 + 1 / 4 + 1 / 3 + 1]
    expected_v = [
        0.0,
        0.04,
        0.04 + 1 / 16 + 1 / 9,
        0.04 + 1 / 16 + 1 / 9,
        0.04 + 1 / 16 + 1 / 9 + 1,
    ]
    np.testing.assert_allclose(res.cumulative_hazard, expected_h, rtol=1e-12)
    np.testing.assert_allclose(res.variance, expected_v, rtol=1e-12)
    z = 1.959963984540054
    h, v = expected_h[2], expected_v[2]
    assert res.ci_lower[2] == pytest.approx(h * math.exp(-z * math.sqrt(v) / h), rel=1e-12)
    assert res.ci_upper[2] == pytest.approx(h * math.exp(z * math.sqrt(v) / h), rel=1e-12)
    assert res.ci_lower[0] == 0.0 and res.ci_upper[0] == 0.0


def test_to_dict_is_json_ready() -> None:
    res = nelson_aalen(survival_counts([1, 2, 2, 3, 4], [1, 1, 1, 0, 1], 5), timepoints=[3])
    out = res.to_dict()
    json.dumps(out, allow_nan=False)
    assert out["n"] == 5 and out["events"] == 4
    assert set(out["table"]) == {"time", "cumulative_hazard", "ci_lower", "ci_upper"}
    assert set(out["timepoints"]["3"]) == {"cumulative_hazard", "ci", "at_risk"}
    assert out["timepoints"]["3"]["at_risk"] == 2


def test_no_subjects_is_an_estimation_error() -> None:
    with pytest.raises(EstimationError):
        nelson_aalen(SurvivalCounts.zeros(3))
