"""Adverse-event summaries: exact intervals, pooling across sites and suppression.

References: statsmodels ``proportion_confint(k, n, alpha, method="beta")`` (Clopper-Pearson),
statsmodels ``confint_poisson(k, exposure, method="exact-c", alpha)`` and Garwood's (1936)
chi-square formula written out here for the exact Poisson interval, ``numpy.median`` for the
median onset day.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.rates import confint_poisson

from analytics import (
    AdverseEventStats,
    adverse_event_stats,
    ae_term_result,
    median_from_histogram,
    poisson_rate_ci,
    proportion_ci,
)

CASES = [
    (0, 1),
    (1, 1),
    (0, 20),
    (1, 20),
    (3, 20),
    (10, 20),
    (19, 20),
    (20, 20),
    (240, 350),
    (5, 1000),
    (999, 1000),
]


def _garwood(k: int, exposure: float, alpha: float) -> tuple[float, float]:
    """Garwood (1936): chi2(alpha/2; 2k) / 2 and chi2(1 - alpha/2; 2k + 2) / 2 events."""
    lower = 0.0 if k == 0 else chi2.ppf(alpha / 2, 2 * k) / 2
    return lower / exposure, chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2 / exposure


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.01])
@pytest.mark.parametrize(("k", "n"), CASES)
def test_proportion_ci_equals_statsmodels_beta(k: int, n: int, alpha: float) -> None:
    expected = proportion_confint(k, n, alpha=alpha, method="beta")
    np.testing.assert_allclose(proportion_ci(k, n, alpha), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize("exposure", [1.0, 0.37, 12.5, 981.25])
@pytest.mark.parametrize("k", [0, 1, 2, 5, 17, 240, 3000])
def test_poisson_rate_ci_equals_statsmodels_exact_and_garwood(
    k: int, exposure: float, alpha: float
) -> None:
    got = poisson_rate_ci(k, exposure, alpha)
    np.testing.assert_allclose(
        got, confint_poisson(k, exposure, method="exact-c", alpha=alpha), rtol=1e-12, atol=0
    )
    np.testing.assert_allclose(got, _garwood(k, exposure, alpha), rtol=1e-9, atol=0)


def test_interval_errors() -> None:
    for bad in [(-1, 5), (6, 5), (0, 0), (1.5, 5)]:
        with pytest.raises(ValueError):
            proportion_ci(*bad)
    with pytest.raises(ValueError):
        poisson_rate_ci(1, 0.0)
    with pytest.raises(ValueError):
        poisson_rate_ci(-1, 1.0)
    with pytest.raises(ValueError):
        proportion_ci(1, 5, alpha=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=30))
def test_median_from_histogram_equals_numpy_median(days: list[int]) -> None:
    hist = np.bincount(days, minlength=41)
    assert median_from_histogram(hist) == float(np.median(days))


def test_median_from_histogram_edge_cases() -> None:
    assert median_from_histogram(np.zeros(5, dtype=int)) is None
    assert median_from_histogram([0, 0, 3]) == 2.0
    assert median_from_histogram([1, 0, 0, 1]) == 1.5
    with pytest.raises(ValueError):
        median_from_histogram([1, -1])


def _patients(rng: np.random.Generator, n: int, window: int) -> tuple[np.ndarray, ...]:
    """Onset day (NaN without event), worst grade (some missing), patient-days at risk."""
    has = rng.random(n) < 0.6
    onset = np.where(has, rng.integers(0, window + 1, n), np.nan)
    grade = rng.choice(
        [1.0, 2.0, 3.0, 4.0, 5.0, np.nan], size=n, p=[0.4, 0.3, 0.15, 0.08, 0.02, 0.05]
    )
    follow = rng.integers(0, window + 1, n)
    days = np.where(has, onset, follow).astype(np.int64)
    return onset, grade, days


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pooled_sites_equal_pooled_individual_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    window = 28
    onset, grade, days = _patients(rng, 400, window)
    site = rng.integers(0, int(rng.integers(2, 11)), size=onset.size)
    per_site = [
        adverse_event_stats(onset[site == s], grade[site == s], days[site == s], window)
        for s in np.unique(site)
    ]
    pooled = sum(per_site)
    direct = adverse_event_stats(onset, grade, days, window)
    assert pooled == direct
    # Counts computed independently on the pooled individual data.
    has = ~np.isnan(onset)
    assert pooled.at_risk == 400 and pooled.with_event == int(has.sum())
    assert pooled.person_days == int(days.sum())
    for g in range(1, 6):
        assert pooled.grades[g - 1] == int(np.sum(has & (grade == g)))
    out = pooled.to_dict(min_cell=5)
    k, n = int(has.sum()), onset.size
    person_years = days.sum() / 365.25
    assert out["with_event"] == k and out["at_risk"] == n
    assert out["proportion"] == pytest.approx(k / n, rel=1e-15)
    np.testing.assert_allclose(out["ci"], proportion_confint(k, n, method="beta"), rtol=1e-12)
    assert out["person_years"] == pytest.approx(person_years, rel=1e-15)
    assert out["rate_per_100py"] == pytest.approx(100 * k / person_years, rel=1e-12)
    expected = 100 * np.asarray(confint_poisson(k, person_years, method="exact-c"))
    np.testing.assert_allclose(out["rate_ci"], expected, rtol=1e-12)
    np.testing.assert_allclose(
        out["rate_ci"], 100 * np.asarray(_garwood(k, person_years, 0.05)), rtol=1e-9
    )
    assert out["median_onset_day"] == float(np.median(onset[has]))
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_suppression_of_small_counts() -> None:
    out = ae_term_result(
        at_risk=350,
        with_event=3,
        person_days=9000.0,
        grades={"1": 2, "2": 1, "3": 0, "4": 0},
        onset_histogram=np.bincount([1, 2, 2], minlength=29),
        min_cell=5,
    )
    assert out["at_risk"] == 350 and out["with_event"] == "<5"
    assert out["proportion"] is None and out["ci"] is None
    assert out["rate_per_100py"] is None and out["rate_ci"] is None
    assert out["grades"] == {"1": "<5", "2": "<5", "3": 0, "4": 0}
    assert out["median_onset_day"] is None  # 3 onsets < min_cell
    assert out["person_years"] == pytest.approx(9000 / 365.25)


def test_released_counts_keep_their_statistics() -> None:
    hist = np.bincount([1, 1, 2, 3, 3, 3, 5, 8], minlength=29)
    out = ae_term_result(350, 240, 20000.0, {"1": 130, "2": 80, "3": 22, "4": 8}, hist, 5)
    assert out["with_event"] == 240
    assert out["proportion"] == pytest.approx(240 / 350)
    np.testing.assert_allclose(out["ci"], proportion_confint(240, 350, method="beta"))
    assert out["grades"] == {"1": 130, "2": 80, "3": 22, "4": 8}
    assert out["median_onset_day"] == 3.0
    # Without a histogram or grades.
    out = ae_term_result(350, 240, 20000.0, None, None, 5)
    assert out["grades"] is None and out["median_onset_day"] is None
    # Zero events: a released 0 with its interval; no exposure: no rate.
    out = ae_term_result(40, 0, 0.0, {"1": 0}, np.zeros(29, dtype=int), 5)
    assert out["with_event"] == 0 and out["proportion"] == 0.0
    assert out["ci"] == [0.0, pytest.approx(proportion_confint(0, 40, method="beta")[1])]
    assert out["rate_per_100py"] is None and out["rate_ci"] is None
    # min_cell 1 suppresses nothing.
    assert ae_term_result(10, 1, 100.0, {"4": 1}, None, 1)["grades"] == {"4": 1}


def test_stats_to_dict_grades_and_errors() -> None:
    stats = adverse_event_stats([0, 3, np.nan], [2, 5, np.nan], [0, 3, 10], window_days=7)
    assert stats.grades.tolist() == [0, 1, 0, 0, 1]
    assert list(stats.to_dict(min_cell=1)["grades"]) == ["1", "2", "3", "4", "5"]
    no_five = adverse_event_stats([0, 3], [2, 4], [0, 3], window_days=7)
    assert list(no_five.to_dict(min_cell=1)["grades"]) == ["1", "2", "3", "4"]
    assert no_five.to_dict(min_cell=1, by_grade=False)["grades"] is None
    with pytest.raises(ValueError):
        adverse_event_stats([8], [1], [8], window_days=7)  # onset outside the window
    with pytest.raises(ValueError):
        adverse_event_stats([1], [1], [-1], window_days=7)
    with pytest.raises(ValueError):
        adverse_event_stats([1, 2], [1], [1], window_days=7)
    with pytest.raises(ValueError):
        stats + adverse_event_stats([1], [1], [1], window_days=8)
    with pytest.raises(ValueError):
        AdverseEventStats(
            at_risk=1,
            with_event=2,
            person_days=0,
            grades=np.zeros(5, int),
            onset_histogram=np.zeros(3, int),
        )
    with pytest.raises(ValueError):
        ae_term_result(5, 6, 10.0, None, None, 5)
