"""Gray's test from pooled per-group counts versus published values and a direct reference.

References:
- R cmprsk ``cuminc(ftime, Status, D)`` on the bmtcrr data (Scrucca, Santucci and Aversa 2010,
  Bone Marrow Transplant 45:1388-1395), as printed in that paper's worked example::

      Tests:
              stat         pv df
      1 2.8623325 0.09067592  1
      2 0.4481279 0.50322531  1

  Gray's test is rank-based, so times in hundredths of a month are integer "days" here.
- ``_crst_reference``: a line-by-line transcription, on individual-level data sorted by time,
  of the Fortran subroutine ``crst`` in R cmprsk (R. Gray, GPL), which ``cuminc`` calls with one
  stratum. It shares no code with ``analytics.gray`` (which is vectorised over days).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from analytics import (
    CompetingCounts,
    EstimationError,
    competing_counts,
    gray_test,
    pool_competing,
)
from tests.competing_cohorts import (
    COMPETING_COHORTS,
    SEEDS,
    bmtcrr,
    competing_cohort,
    site_competing,
    split_sites,
)


def _crst_reference(
    time: np.ndarray, cause: np.ndarray, group: np.ndarray, rho: float = 0.0
) -> tuple[float, int]:
    """Gray's statistic and df by cmprsk's ``crst`` loop on individual data (groups sorted)."""
    labels = sorted(set(group.tolist()))
    ng = len(labels)
    ng1 = ng - 1
    order = np.argsort(time, kind="stable")
    y = time[order].astype(float)
    m = cause[order].astype(int)
    ig = np.array([labels.index(g) for g in group[order]])
    n = y.size
    rs = np.bincount(ig, minlength=ng).astype(float)
    s = np.zeros(ng1)
    v = np.zeros((ng1, ng1))
    f1m = np.zeros(ng)
    f1 = np.zeros(ng)
    skmm = np.ones(ng)
    skm = np.ones(ng)
    v3 = np.zeros(ng)
    v2 = np.zeros((ng1, ng))
    c = np.zeros((ng, ng))
    a = np.zeros((ng, ng))
    fm = f = 0.0
    ll = 0
    while ll < n:
        lu = ll
        while lu + 1 < n and y[lu + 1] <= y[ll]:
            lu += 1
        d = np.zeros((3, ng))
        for i in range(ll, lu + 1):
            d[m[i], ig[i]] += 1
        nd1, nd2 = d[1].sum(), d[2].sum()
        if nd1 > 0 or nd2 > 0:
            tr = tq = 0.0
            for i in range(ng):
                if rs[i] <= 0:
                    continue
                td = d[1, i] + d[2, i]
                skm[i] = skmm[i] * (rs[i] - td) / rs[i]
                f1[i] = f1m[i] + (skmm[i] * d[1, i]) / rs[i]
                tr += rs[i] / skmm[i]
                tq += rs[i] * (1 - f1m[i]) / skmm[i]
            f = fm + nd1 / tr
            fb = (1 - fm) ** rho
            for i in range(ng):
                for j in range(i, ng):
                    a[i, j] = 0.0
                if rs[i] <= 0:
                    continue
                t1 = rs[i] / skmm[i]
                a[i, i] = fb * t1 * (1 - t1 / tr)
                c[i, i] += a[i, i] * nd1 / (tr * (1 - fm))
                for j in range(i + 1, ng):
                    if rs[j] <= 0:
                        continue
                    a[i, j] = -fb * t1 * rs[j] / (skmm[j] * tr)
                    c[i, j] += a[i, j] * nd1 / (tr * (1 - fm))
            for i in range(1, ng):
                for j in range(i):
                    a[i, j] = a[j, i]
                    c[i, j] = c[j, i]
            for i in range(ng1):
                if rs[i] > 0:
                    s[i] += fb * (d[1, i] - nd1 * rs[i] * (1 - f1m[i]) / (skmm[i] * tq))
            if nd1 > 0:
                for k in range(ng):
                    if rs[k] <= 0:
                        continue
                    t4 = 1 - (1 - f) / skm[k] if skm[k] > 0 else 1.0
                    t5 = 1 - (nd1 - 1) / (tr * skmm[k] - 1) if nd1 > 1 else 1.0
                    t3 = t5 * skmm[k] * nd1 / (tr * rs[k])
                    v3[k] += t4 * t4 * t3
                    for i in range(ng1):
                        t1 = a[i, k] - t4 * c[i, k]
                        v2[i, k] += t1 * t4 * t3
                        for j in range(i + 1):
                            t2 = a[j, k] - t4 * c[j, k]
                            v[i, j] += t1 * t2 * t3
            if nd2 > 0:
                for k in range(ng):
                    if skm[k] <= 0 or d[2, k] <= 0:
                        continue
                    t4 = (1 - f) / skm[k]
                    t5 = 1 - (d[2, k] - 1) / (rs[k] - 1) if d[2, k] > 1 else 1.0
                    t3 = t5 * (skmm[k] ** 2 * d[2, k]) / rs[k] ** 2
                    v3[k] += t4 * t4 * t3
                    for i in range(ng1):
                        t1 = t4 * c[i, k]
                        v2[i, k] -= t1 * t4 * t3
                        for j in range(i + 1):
                            v[i, j] += t1 * t4 * c[j, k] * t3
        for i in range(ll, lu + 1):
            rs[ig[i]] -= 1
        fm = f
        f1m[:] = f1
        skmm[:] = skm
        ll = lu + 1
    for i in range(ng1):
        for j in range(i + 1):
            for k in range(ng):
                v[i, j] += c[i, k] * c[j, k] * v3[k] + c[i, k] * v2[j, k] + c[j, k] * v2[i, k]
            v[j, i] = v[i, j]
    return float(s @ np.linalg.solve(v, s)), ng1


def _bmtcrr_groups(cause_of_interest: int) -> tuple[dict[str, CompetingCounts], tuple]:
    df = bmtcrr()
    time = np.round(df["ftime"].to_numpy() * 100).astype(np.int64)  # hundredths of a month
    status = df["Status"].to_numpy()
    cause = np.where(status == 0, 0, np.where(status == cause_of_interest, 1, 2))
    group = df["D"].to_numpy()
    horizon = int(time.max())
    groups = {
        g: competing_counts(time[group == g], cause[group == g], horizon) for g in ("ALL", "AML")
    }
    return groups, (time, cause, group)


@pytest.mark.parametrize(
    ("cause_of_interest", "statistic", "p_value"),
    [(1, 2.8623325, 0.09067592), (2, 0.4481279, 0.50322531)],
)
def test_bmtcrr_equals_published_cuminc(
    cause_of_interest: int, statistic: float, p_value: float
) -> None:
    groups, individual = _bmtcrr_groups(cause_of_interest)
    res = gray_test(groups)
    assert res.df == 1
    # Published to 8 significant digits.
    assert res.statistic == pytest.approx(statistic, abs=5e-8)
    assert res.p_value == pytest.approx(p_value, abs=5e-9)
    assert res.p_value == pytest.approx(chi2.sf(res.statistic, 1), rel=1e-12)
    # The transcription of crst reproduces the published values too.
    ref, df = _crst_reference(*individual)
    assert df == 1 and ref == pytest.approx(statistic, abs=5e-8)
    assert res.statistic == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", COMPETING_COHORTS)
def test_pooled_sites_equal_crst_on_pooled_data(name: str, seed: int) -> None:
    c = competing_cohort(name)
    site = split_sites(c.time.size, seed)
    groups = {g: pool_competing(site_competing(c, site, c.group == g)) for g in np.unique(c.group)}
    time, cause = c.truncated()
    for rho in (0.0, 1.0):
        res = gray_test(groups, rho=rho)
        ref, df = _crst_reference(time, cause, c.group, rho=rho)
        assert res.df == df == np.unique(c.group).size - 1
        assert res.statistic == pytest.approx(ref, rel=1e-9, abs=1e-12)
        assert res.p_value == pytest.approx(chi2.sf(ref, df), rel=1e-9, abs=1e-12)


def test_group_order_and_relabelling_do_not_matter() -> None:
    c = competing_cohort("synthetic")
    groups = {
        g: competing_counts(c.time[c.group == g], c.cause[c.group == g], c.horizon)
        for g in ("a", "b", "c")
    }
    base = gray_test(groups)
    renamed = gray_test({"z": groups["a"], "y": groups["b"], "x": groups["c"]})
    assert renamed.statistic == pytest.approx(base.statistic, rel=1e-9)
    # An empty group is left out.
    with_empty = gray_test({**groups, "empty": CompetingCounts.zeros(c.horizon)})
    assert with_empty.statistic == pytest.approx(base.statistic, rel=1e-12)
    assert with_empty.df == 2
    out = base.to_dict()
    assert set(out) == {"statistic", "df", "p_value"} and out["df"] == 2


def test_errors() -> None:
    one = competing_counts([1, 2, 3], [1, 2, 0], 5)
    with pytest.raises(EstimationError):
        gray_test({"a": one})
    with pytest.raises(EstimationError):
        gray_test({"a": one, "b": CompetingCounts.zeros(5)})
    with pytest.raises(EstimationError):
        no_cause1 = competing_counts([1, 2], [2, 0], 5)
        gray_test({"a": no_cause1, "b": no_cause1})
    with pytest.raises(ValueError):
        gray_test({"a": one, "b": competing_counts([1], [1], 6)})
