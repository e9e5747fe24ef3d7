"""Log-rank test from site counts versus lifelines (plain) and statsmodels (stratified by site)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lifelines.statistics import logrank_test, multivariate_logrank_test
from statsmodels.duration.survfunc import _survdiff, survdiff

from analytics import EstimationError, SurvivalCounts, logrank, pool_counts, survival_counts
from tests.survival_cohorts import COHORTS, SEEDS, cohort, split_sites

APPROX = {"rel": 1e-9, "abs": 1e-9}


def _per_site_by_group(name: str, seed: int) -> tuple[list[dict[str, SurvivalCounts]], np.ndarray]:
    c = cohort(name)
    site = split_sites(c.time.size, seed)
    strata = []
    for s in np.unique(site):
        in_site = site == s
        strata.append(
            {
                str(g): survival_counts(
                    c.time[in_site & (c.group == g)], c.event[in_site & (c.group == g)], c.horizon
                )
                for g in np.unique(c.group[in_site])  # groups absent at a site are left out
            }
        )
    return strata, site


def _pooled_by_group(strata: list[dict[str, SurvivalCounts]]) -> dict[str, SurvivalCounts]:
    groups = sorted({g for stratum in strata for g in stratum})
    return {g: pool_counts(st[g] for st in strata if g in st) for g in groups}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", COHORTS)
def test_pooled_logrank_equals_lifelines_multivariate(name: str, seed: int) -> None:
    c = cohort(name)
    time, event = c.truncated()
    strata, _ = _per_site_by_group(name, seed)
    res = logrank([_pooled_by_group(strata)])
    # Reference: lifelines multivariate_logrank_test on the pooled individual data.
    ref = multivariate_logrank_test(time, c.group, event)
    assert res.statistic == pytest.approx(ref.test_statistic, **APPROX)
    assert res.p_value == pytest.approx(ref.p_value, **APPROX)
    assert res.df == ref.degrees_of_freedom == np.unique(c.group).size - 1
    # Observed: events per group counted on the individual data; expected sums to the total.
    for g in np.unique(c.group):
        assert res.observed[str(g)] == event[c.group == g].sum()
    assert sum(res.expected.values()) == pytest.approx(event.sum(), **APPROX)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", COHORTS)
def test_site_stratified_logrank_equals_statsmodels_survdiff(name: str, seed: int) -> None:
    c = cohort(name)
    time, event = c.truncated()
    strata, site = _per_site_by_group(name, seed)
    res = logrank(strata)
    # Reference: statsmodels survdiff(time, status, group, strata=site) on individual data.
    stat, p_value = survdiff(time, event, c.group, strata=site)
    assert res.statistic == pytest.approx(stat, **APPROX)
    assert res.p_value == pytest.approx(p_value, **APPROX)
    # statsmodels' per-stratum O - E vectors (groups after the first, in sorted order),
    # summed over sites, give the expected counts of those groups.
    groups = np.unique(c.group)
    o_minus_e = sum(
        _survdiff(time[site == s], event[site == s], c.group[site == s], None, groups)[0]
        for s in np.unique(site)
    )
    for g, ome in zip(groups[1:], o_minus_e, strict=True):
        assert res.observed[str(g)] - res.expected[str(g)] == pytest.approx(ome, **APPROX)


@pytest.mark.parametrize("name", ["waltons", "rossi", "lung"])
def test_two_groups_equal_lifelines_logrank_test(name: str) -> None:
    c = cohort(name)
    time, event = c.truncated()
    a, b = np.unique(c.group)
    res = logrank(
        [
            {
                str(g): survival_counts(c.time[c.group == g], c.event[c.group == g], c.horizon)
                for g in (a, b)
            }
        ]
    )
    ref = logrank_test(
        time[c.group == a], time[c.group == b], event[c.group == a], event[c.group == b]
    )
    assert res.statistic == pytest.approx(ref.test_statistic, **APPROX)
    assert res.p_value == pytest.approx(ref.p_value, **APPROX)
    assert res.df == 1


def test_small_example_by_hand() -> None:
    # Group a: 1, 3, 4+; group b: 2, 2+, 5 (horizon 6).
    # day 1: n = 6 (a 3, b 3), d = 1: E_a = 3/6 = 0.5, V = 3*3*1*5 / (36*5) = 0.25
    # day 2: n = 5 (a 2, b 3), d = 1: E_a = 2/5 = 0.4, V = 2*3*1*4 / (25*4) = 0.24
    # day 3: n = 3 (a 2, b 1), d = 1: E_a = 2/3,       V = 2*1*1*2 / (9*2) = 2/9
    # day 5: n = 1 (b 1),      d = 1: E_a = 0,         V = 0
    # O_a = 2, E_a = 0.5 + 0.4 + 2/3 = 1.5666667; O_b = 2, E_b = 4 - E_a = 2.4333333
    # chi2 = (O_a - E_a)^2 / V = 0.4333333^2 / (0.25 + 0.24 + 2/9) = 0.18777778 / 0.71222222
    res = logrank(
        [
            {
                "a": survival_counts([1, 3, 4], [1, 1, 0], 6),
                "b": survival_counts([2, 2, 5], [1, 0, 1], 6),
            }
        ]
    )
    e_a = 0.5 + 0.4 + 2 / 3
    assert res.expected["a"] == pytest.approx(e_a, rel=1e-12)
    assert res.expected["b"] == pytest.approx(4 - e_a, rel=1e-12)
    assert res.observed == {"a": 2.0, "b": 2.0}
    assert res.statistic == pytest.approx((2 - e_a) ** 2 / (0.25 + 0.24 + 2 / 9), rel=1e-12)


def test_group_absent_from_a_stratum_contributes_nothing() -> None:
    a1 = survival_counts([1, 3, 4, 6], [1, 1, 0, 1], 8)
    b1 = survival_counts([2, 2, 5], [1, 0, 1], 8)
    c2 = survival_counts([1, 2, 7], [1, 1, 0], 8)
    a2 = survival_counts([3, 5], [1, 1], 8)
    with_empty = logrank([{"a": a1, "b": b1}, {"a": a2, "c": c2, "b": SurvivalCounts.zeros(8)}])
    without = logrank([{"a": a1, "b": b1}, {"a": a2, "c": c2}])
    assert with_empty == without
    # Reference: statsmodels survdiff stratified on the same individual data.
    time = np.array([1, 3, 4, 6, 2, 2, 5, 1, 2, 7, 3, 5])
    event = np.array([1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1])
    group = np.array(list("aaaabbbcccaa"))
    stratum = np.array([1] * 7 + [2] * 5)
    stat, p_value = survdiff(time, event, group, strata=stratum)
    assert without.statistic == pytest.approx(stat, **APPROX)
    assert without.p_value == pytest.approx(p_value, **APPROX)
    assert without.df == 2


def test_to_dict_shape() -> None:
    c = cohort("waltons")
    res = logrank(
        [
            {
                g: survival_counts(c.time[c.group == g], c.event[c.group == g], c.horizon)
                for g in np.unique(c.group)
            }
        ]
    )
    out = res.to_dict()
    json.dumps(out, allow_nan=False)
    assert set(out) == {"statistic", "df", "p_value", "groups"}
    assert set(out["groups"]) == set(np.unique(c.group))
    assert all(set(v) == {"observed", "expected"} for v in out["groups"].values())


def test_errors() -> None:
    one = survival_counts([1, 2, 3], [1, 1, 0], 5)
    with pytest.raises(EstimationError, match="two groups"):
        logrank([{"a": one}])
    with pytest.raises(EstimationError, match="two groups"):
        logrank([{"a": one, "b": SurvivalCounts.zeros(5)}])
    with pytest.raises(EstimationError, match="event"):
        logrank([{"a": survival_counts([1, 2], [0, 0], 5), "b": survival_counts([3], [0], 5)}])
    with pytest.raises(ValueError, match="horizon"):
        logrank([{"a": one, "b": survival_counts([1], [1], 6)}])


def test_a_bare_mapping_is_rejected() -> None:
    one = survival_counts([1, 2, 3], [1, 1, 0], 5)
    with pytest.raises(TypeError, match="sequence"):
        logrank({"a": one, "b": one})  # type: ignore[arg-type]
