"""A site's Cox sums from subjects sorted once (analytics.cox_sums) against a brute-force
reference, and the upper-triangular transport of the symmetric matrices."""

from __future__ import annotations

import numpy as np
import pytest

from analytics import (
    CoxDayStats,
    CoxDerivatives,
    NumericalOverflowError,
    cox_day_stats,
    cox_rows,
    efron_derivatives,
    site_derivatives,
    stratum_derivatives,
)


def _brute_force(t: np.ndarray, e: np.ndarray, x: np.ndarray, beta: np.ndarray, horizon: int,
                 centre: np.ndarray) -> dict[str, np.ndarray]:
    """Every sum of the docstring of analytics.cox_stats, one day and one subject at a time."""
    size, p = horizon + 1, x.shape[1]
    xc = x - centre
    days = np.minimum(t, horizon)
    observed = e.astype(bool) & (t <= horizon)
    out = {k: np.zeros((size, p, p)) if k.endswith("2") else np.zeros((size, p))
           if k.endswith("1") else np.zeros(size) for k in ("s0", "s1", "s2", "e0", "e1", "e2")}
    for i in range(len(t)):
        w = float(np.exp(xc[i] @ beta))
        for day in range(days[i] + 1):
            out["s0"][day] += w
            out["s1"][day] += w * xc[i]
            out["s2"][day] += w * np.outer(xc[i], xc[i])
        if observed[i]:
            out["e0"][days[i]] += w
            out["e1"][days[i]] += w * xc[i]
            out["e2"][days[i]] += w * np.outer(xc[i], xc[i])
    out["d"] = np.bincount(days[observed], minlength=size)
    out["event_x"] = xc[observed].sum(axis=0)
    out["event_xb"] = np.array(float((xc[observed] @ beta).sum()))
    return out


def _site(seed: int, n: int = 150, p: int = 3, horizon: int = 30
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, horizon + 10, n)  # some followed beyond the horizon
    e = rng.random(n) < 0.6
    x = np.column_stack([rng.normal(50, 10, n), rng.integers(0, 2, n),
                         rng.integers(0, 4, n)])[:, :p].astype(float)
    return t, e, x


def test_sorted_rows_give_the_brute_force_sums_at_every_round() -> None:
    t, e, x = _site(1)
    horizon, centre = 30, np.array([50.0, 0.5, 1.5])
    rows = cox_rows(t, e, x, horizon)
    for beta in ([0.0, 0.0, 0.0], [0.02, -0.4, 0.3], [-0.05, 1.0, -0.2]):
        b = np.asarray(beta)
        got = rows.day_stats(b, centre)
        want = _brute_force(t, e, x, b, horizon, centre)
        for key in ("s0", "s1", "s2", "e0", "e1", "e2", "event_x"):
            np.testing.assert_allclose(getattr(got, key), want[key], rtol=1e-12, atol=1e-9)
        np.testing.assert_array_equal(got.d, want["d"])
        assert got.event_xb == pytest.approx(float(want["event_xb"]), rel=1e-12, abs=1e-9)
        assert got == cox_day_stats(t, e, x, b, horizon, centre)


def test_rows_kept_between_rounds_of_changing_centres() -> None:
    """The centred covariates kept for one centre are not used for another."""
    t, e, x = _site(2)
    rows = cox_rows(t, e, x, 30)
    b = np.array([0.01, -0.3, 0.2])
    for centre in ([50.0, 0.5, 1.5], [40.0, 0.0, 1.0], [50.0, 0.5, 1.5], None, [40.0, 0.0, 1.0]):
        c = None if centre is None else np.asarray(centre)
        got = rows.day_stats(b, c)
        want = _brute_force(t, e, x, b, 30, np.zeros(3) if c is None else c)
        for key in ("s0", "s1", "s2", "e0", "e1", "e2", "event_x"):
            np.testing.assert_allclose(getattr(got, key), want[key], rtol=1e-12, atol=1e-9)
        assert got == cox_day_stats(t, e, x, b, 30, c)


def test_sorted_rows_of_sites_pool_to_the_rows_of_the_pooled_data() -> None:
    t, e, x = _site(2, n=240)
    site = np.arange(240) % 3
    beta, centre = np.array([0.01, 0.3, -0.2]), x.mean(axis=0)
    parts = [cox_rows(t[site == s], e[site == s], x[site == s], 30).day_stats(beta, centre)
             for s in range(3)]
    whole = cox_rows(t, e, x, 30).day_stats(beta, centre)
    pooled = sum(parts)
    assert isinstance(pooled, CoxDayStats)
    for key in ("s0", "s1", "s2", "e0", "e1", "e2", "event_x"):
        np.testing.assert_allclose(getattr(pooled, key), getattr(whole, key), rtol=1e-12,
                                   atol=1e-9)
    a, b = efron_derivatives(pooled), efron_derivatives(whole)
    np.testing.assert_allclose(a.hessian, b.hessian, rtol=1e-10)
    d = stratum_derivatives(cox_rows(t, e, x, 30), beta)
    assert d == site_derivatives(t, e, x, beta, 30)


def test_an_empty_site_and_bad_input() -> None:
    empty = cox_rows([], [], np.zeros((0, 2)), 5).day_stats([0.1, 0.2], [1.0, 1.0])
    assert empty.n_events == 0 and not empty.s2.any() and not empty.event_x.any()
    rows = cox_rows([1, 2], [1, 0], [[1.0], [2.0]], 5)
    with pytest.raises(ValueError, match="beta"):
        rows.day_stats([0.1, 0.2])
    with pytest.raises(ValueError, match="centre"):
        rows.day_stats([0.1], [np.nan])
    with pytest.raises(NumericalOverflowError):
        rows.day_stats([800.0])
    with pytest.raises(ValueError, match="whole days"):
        cox_rows([1.5, 2], [1, 0], [[1.0], [2.0]], 5)


def test_symmetric_matrices_travel_as_their_upper_triangle() -> None:
    t, e, x = _site(3, p=3)
    stats = cox_day_stats(t, e, x, [0.01, 0.2, -0.1], 30, x.mean(axis=0))
    vectors = stats.to_vectors()
    assert vectors["s2"].size == vectors["e2"].size == 31 * 6  # p (p + 1) / 2 per day
    deriv = efron_derivatives(stats)
    dv = deriv.to_vectors()
    assert dv["hessian"].size == 6
    iu = np.triu_indices(3)
    np.testing.assert_array_equal(dv["hessian"], deriv.hessian[iu])
    back = CoxDerivatives.from_vectors(dv, 3)
    assert back == deriv
    np.testing.assert_array_equal(back.hessian, back.hessian.T)
    with pytest.raises(ValueError, match="length"):
        CoxDerivatives.from_vectors({**dv, "hessian": deriv.hessian.ravel()}, 3)
