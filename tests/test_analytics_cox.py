"""Federated Cox model versus lifelines ``CoxPHFitter`` on the pooled individual-level data.

Reference: lifelines (>= 0.30) ``CoxPHFitter``, whose only tie method is Efron's; for
``strata: site`` ``CoxPHFitter(strata=["site"])``. Individuals are split at random over 2-10
sites (``split_sites``); every Newton step evaluates per-site statistics at the current beta,
pools them through their flat vectors (as secure aggregation adds them) and steps on the
pooled sums. Coefficients, standard errors, log-likelihood and LR test must match to 1e-6.

lifelines' default stopping rule (Newton decrement below 1e-7) can leave its coefficients
short of the maximum (8e-6 on the kidney data), so the reference fits tighten it (``TIGHT``);
they then agree with the federated fit to ~1e-12 and are compared at ``rtol=1e-6,
atol=1e-9``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, datasets

from analytics import (
    CoxDayStats,
    CoxDerivatives,
    CoxResult,
    cox_day_stats,
    cox_result,
    efron_derivatives,
    fit_cox,
    site_derivatives,
)
from tests.test_analytics_cohorts import split_sites

TOL = {"rtol": 1e-6, "atol": 1e-9}
TIGHT = {"precision": 1e-14, "r_precision": 1e-14}
SEEDS = (1, 2, 3)


@dataclass(frozen=True)
class CoxCohort:
    """Integer durations, 0/1 events, named covariates and the study horizon."""

    name: str
    time: np.ndarray
    event: np.ndarray
    X: np.ndarray
    names: tuple[str, ...]
    horizon: int

    def frame(self, site: np.ndarray | None = None) -> pd.DataFrame:
        """Reference data for lifelines: follow-up censored at the horizon, as sites do."""
        beyond = self.time > self.horizon
        df = pd.DataFrame(self.X, columns=list(self.names))
        df["T"] = np.minimum(self.time, self.horizon)
        df["E"] = np.where(beyond, 0, self.event)
        if site is not None:
            df["site"] = site
        return df


def _indicators(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Indicator columns against the first sorted level (the study's categorical coding)."""
    levels = sorted(df[column].astype(str).unique())
    return pd.DataFrame(
        {f"{column}_{lv}": (df[column].astype(str) == lv).astype(float) for lv in levels[1:]}
    )


def _synthetic(seed: int) -> CoxCohort:
    """Few distinct days (heavy ties), day-0 events, binary/ordinal/continuous covariates."""
    rng = np.random.default_rng(seed)
    n = 400
    treated = rng.integers(0, 2, n).astype(float)
    ecog = rng.integers(0, 4, n).astype(float)
    ldh = rng.lognormal(5.5, 0.5, n)
    rate = np.exp(-3.0 + 0.5 * treated + 0.3 * ecog + 0.002 * ldh)
    time = np.floor(rng.exponential(1.0 / rate) / 4.0).astype(np.int64)
    event = (rng.random(n) < 0.75).astype(np.int64)
    X = np.column_stack([treated, ecog, ldh])
    return CoxCohort("synthetic", time, event, X, ("treated", "ecog", "lab:LDH"), 30)


@cache
def cox_cohort(name: str) -> CoxCohort:
    """One named cohort with covariates."""
    if name == "rossi":  # weeks; horizon 40 truncates (max 52)
        df = datasets.load_rossi()
        names = ("fin", "age", "race", "wexp", "mar", "paro", "prio")
        X = df[list(names)].to_numpy(float)
        return CoxCohort(name, df["week"].to_numpy(), df["arrest"].to_numpy(), X, names, 40)
    if name == "gbsg2":  # days; horizon 1826 truncates (max 2659)
        df = datasets.load_gbsg2()
        cov = pd.concat(
            [df[["age", "tsize", "pnodes", "progrec", "estrec"]].astype(float)]
            + [_indicators(df, c) for c in ("horTh", "menostat", "tgrade")],
            axis=1,
        )
        return CoxCohort(
            name,
            df["time"].to_numpy(np.int64),
            df["cens"].to_numpy(),
            cov.to_numpy(),
            tuple(cov.columns),
            1826,
        )
    if name == "larynx":  # years with one decimal -> months, rounded up
        df = datasets.load_larynx()
        names = ("age", "Stage_II", "Stage_III", "Stage_IV")
        time = np.ceil(df["time"].to_numpy() * 12).astype(np.int64)
        return CoxCohort(
            name, time, df["death"].to_numpy(), df[list(names)].to_numpy(float), names, 130
        )
    if name == "kidney":  # days; horizon 2000 truncates (max 3434)
        df = datasets.load_kidney_transplant()
        names = ("age", "black_male", "white_male", "black_female")
        return CoxCohort(
            name,
            df["time"].to_numpy(np.int64),
            df["death"].to_numpy(),
            df[list(names)].to_numpy(float),
            names,
            2000,
        )
    if name == "synthetic":
        return _synthetic(20260101)
    raise KeyError(name)


COHORTS = ("rossi", "gbsg2", "larynx", "kidney", "synthetic")


def pooled_fn(c: CoxCohort, site: np.ndarray, centre: bool = True):
    """``beta -> pooled derivatives``: each site's day sums, added as flat vectors.

    With ``centre`` every site subtracts the same covariate means, read off the pooled
    ``beta = 0`` statistics (``s1[0] / s0[0]``), as the aggregator does to keep uncentred
    covariates from overflowing.
    """
    parts = [site == s for s in np.unique(site)]
    p = c.X.shape[1]

    def pooled(beta: np.ndarray, means: np.ndarray | None) -> CoxDayStats:
        vectors = [
            cox_day_stats(c.time[m], c.event[m], c.X[m], beta, c.horizon, means).to_vectors()
            for m in parts
        ]
        with np.errstate(over="ignore"):  # an overflowing sum is refused by from_vectors
            summed = {k: sum(v[k] for v in vectors) for k in vectors[0]}
        return CoxDayStats.from_vectors(summed, c.horizon, p)

    null = pooled(np.zeros(p), None)
    means = null.s1[0] / null.s0[0] if centre else None

    def derivatives(beta: np.ndarray) -> CoxDerivatives:
        return efron_derivatives(pooled(beta, means))

    return derivatives


def stratified_fn(c: CoxCohort, site: np.ndarray):
    """``beta -> sum of per-site derivatives`` (a baseline hazard per site)."""
    parts = [site == s for s in np.unique(site)]

    def derivatives(beta: np.ndarray) -> CoxDerivatives:
        return sum(site_derivatives(c.time[m], c.event[m], c.X[m], beta, c.horizon) for m in parts)

    return derivatives


def _fit(c: CoxCohort, site: np.ndarray, strata: str) -> CoxResult:
    fn = pooled_fn(c, site) if strata == "none" else stratified_fn(c, site)
    state, deriv = fit_cox(fn, c.X.shape[1])
    assert state.status == "converged", state.message
    df = c.frame()
    return cox_result(
        c.names,
        state.beta,
        deriv,
        state.null_loglik,
        n=len(df),
        events=int(df["E"].sum()),
        iterations=state.iteration,
        strata=strata,
    )


def _check(res: CoxResult, cph: CoxPHFitter) -> None:
    names = list(res.names)
    np.testing.assert_allclose(res.coef, cph.params_[names].to_numpy(), **TOL)
    np.testing.assert_allclose(res.se, cph.standard_errors_[names].to_numpy(), **TOL)
    summary = cph.summary.loc[names]
    np.testing.assert_allclose(res.z, summary["z"].to_numpy(), **TOL)
    np.testing.assert_allclose(res.p, summary["p"].to_numpy(), **TOL)
    np.testing.assert_allclose(res.hr_lower, summary["exp(coef) lower 95%"].to_numpy(), **TOL)
    np.testing.assert_allclose(res.hr_upper, summary["exp(coef) upper 95%"].to_numpy(), **TOL)
    assert res.log_likelihood == pytest.approx(cph.log_likelihood_, rel=1e-9, abs=1e-6)
    lr = cph.log_likelihood_ratio_test()
    assert res.lr_statistic == pytest.approx(lr.test_statistic, rel=1e-6, abs=1e-6)
    assert res.lr_df == lr.degrees_freedom
    assert res.lr_p_value == pytest.approx(lr.p_value, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", COHORTS)
def test_pooled_day_sums_equal_lifelines(name: str, seed: int) -> None:
    c = cox_cohort(name)
    res = _fit(c, split_sites(c.time.size, seed), "none")
    _check(res, CoxPHFitter().fit(c.frame(), "T", "E", fit_options=TIGHT))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", COHORTS)
def test_site_strata_equal_lifelines_stratified(name: str, seed: int) -> None:
    c = cox_cohort(name)
    site = split_sites(c.time.size, seed)
    res = _fit(c, site, "site")
    cph = CoxPHFitter(strata=["site"]).fit(c.frame(site), "T", "E", fit_options=TIGHT)
    _check(res, cph)


@pytest.mark.parametrize("name", COHORTS)
def test_derivatives_equal_statsmodels_at_any_beta(name: str) -> None:
    # Second reference for the gradient and Hessian away from the optimum: statsmodels PHReg.
    from statsmodels.duration.hazard_regression import PHReg

    c = cox_cohort(name)
    df = c.frame()
    model = PHReg(df["T"].to_numpy(float), c.X, status=df["E"].to_numpy(), ties="efron")
    beta = np.random.default_rng(7).normal(0.0, 0.05, c.X.shape[1]) / c.X.std(axis=0)
    site = split_sites(c.time.size, 11)
    deriv = pooled_fn(c, site)(beta)
    assert deriv.loglik == pytest.approx(model.loglike(beta), rel=1e-10)
    np.testing.assert_allclose(deriv.gradient, model.score(beta), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(deriv.hessian, model.hessian(beta), rtol=1e-8, atol=1e-8)


def test_result_dict_has_the_results_json_shape() -> None:
    c = cox_cohort("rossi")
    res = _fit(c, split_sites(c.time.size, 1), "none")
    out = json.loads(json.dumps(res.to_dict()))
    assert set(out) == {
        "kind",
        "n",
        "events",
        "strata",
        "coefficients",
        "log_likelihood",
        "lr_test",
        "iterations",
        "converged",
    }
    assert out["kind"] == "cox" and out["strata"] == "none" and out["converged"] is True
    assert out["n"] == 432 and out["events"] == int(c.frame()["E"].sum())
    assert list(out["coefficients"]) == list(c.names)
    fin = out["coefficients"]["fin"]
    assert set(fin) == {"coef", "se", "hr", "hr_ci", "z", "p"}
    assert fin["hr"] == pytest.approx(np.exp(fin["coef"]))
    assert fin["hr_ci"][0] == pytest.approx(np.exp(fin["coef"] - 1.959963984540054 * fin["se"]))
    assert set(out["lr_test"]) == {"statistic", "df", "p_value"} and out["lr_test"]["df"] == 7
    assert 3 <= out["iterations"] <= 10


def test_cox_day_stats_hand_example() -> None:
    # Four subjects, one covariate, beta = ln 2 (weights 2^x), horizon 3:
    #   a: day 1 event x=1 (w 2); b: day 1 event x=0 (w 1); c: day 2 censored x=2 (w 4);
    #   d: day 5 event x=1 (w 2) -> beyond the horizon: censored on day 3.
    stats = cox_day_stats(
        [1, 1, 2, 5], [1, 1, 0, 1], [[1.0], [0.0], [2.0], [1.0]], [np.log(2.0)], horizon=3
    )
    assert stats.horizon == 3 and stats.p == 1 and stats.n_events == 2
    np.testing.assert_allclose(stats.s0, [9, 9, 6, 2])
    np.testing.assert_allclose(stats.s1[:, 0], [12, 12, 10, 2])
    np.testing.assert_allclose(stats.s2[:, 0, 0], [20, 20, 18, 2])
    np.testing.assert_allclose(stats.e0, [0, 3, 0, 0])
    np.testing.assert_allclose(stats.e1[:, 0], [0, 2, 0, 0])
    np.testing.assert_allclose(stats.e2[:, 0, 0], [0, 2, 0, 0])
    np.testing.assert_array_equal(stats.d, [0, 2, 0, 0])
    np.testing.assert_allclose(stats.event_x, [1.0])
    assert stats.event_xb == pytest.approx(np.log(2.0))
    # Efron on day 1 (d = 2): log-lik = ln2 - ln(9) - ln(9 - 3/2).
    deriv = efron_derivatives(stats)
    assert deriv.loglik == pytest.approx(np.log(2.0) - np.log(9.0) - np.log(7.5))
    # gradient = 1 - 12/9 - (12 - 2/2)/7.5
    assert deriv.gradient[0] == pytest.approx(1.0 - 12.0 / 9.0 - 11.0 / 7.5)
    # -hessian = 20/9 - (12/9)^2 + 19/7.5 - (11/7.5)^2
    expected = 20 / 9 - (12 / 9) ** 2 + 19 / 7.5 - (11 / 7.5) ** 2
    assert -deriv.hessian[0, 0] == pytest.approx(expected)


def test_cox_day_stats_is_read_only_and_pools_by_addition() -> None:
    c = cox_cohort("synthetic")
    beta = np.array([0.3, 0.2, 0.001])
    site = split_sites(c.time.size, 5)
    parts = [
        cox_day_stats(c.time[site == s], c.event[site == s], c.X[site == s], beta, c.horizon)
        for s in np.unique(site)
    ]
    whole = cox_day_stats(c.time, c.event, c.X, beta, c.horizon)
    pooled = sum(parts)
    for key in ("s0", "s1", "s2", "e0", "e1", "e2", "event_x"):
        np.testing.assert_allclose(getattr(pooled, key), getattr(whole, key), rtol=1e-12)
    np.testing.assert_array_equal(pooled.d, whole.d)
    with pytest.raises(ValueError):
        whole.s0[0] = 1.0
    with pytest.raises(ValueError, match="different shapes"):
        _ = whole + cox_day_stats(c.time, c.event, c.X, beta, c.horizon + 1)
    with pytest.raises(ValueError, match="different shapes"):
        _ = whole + cox_day_stats(c.time, c.event, c.X[:, :2], beta[:2], c.horizon)


def test_vectors_round_trip_with_fixed_lengths() -> None:
    c = cox_cohort("larynx")
    beta = np.array([0.01, 0.1, 0.5, 1.5])
    stats = cox_day_stats(c.time, c.event, c.X, beta, c.horizon)
    vectors = stats.to_vectors()
    size, p = c.horizon + 1, 4
    lengths = {
        "s0": size,
        "s1": size * p,
        "s2": size * 10,
        "e0": size,
        "e1": size * p,
        "e2": size * 10,
        "d": size,
        "event_x": p,
        "event_xb": 1,
    }
    assert {k: v.shape for k, v in vectors.items()} == {k: (n,) for k, n in lengths.items()}
    assert vectors["d"].dtype == np.int64
    assert all(v.dtype == np.float64 for k, v in vectors.items() if k != "d")
    assert CoxDayStats.from_vectors(vectors, c.horizon, p) == stats
    # An empty site has the same lengths.
    empty = cox_day_stats([], [], np.zeros((0, p)), beta, c.horizon).to_vectors()
    assert {k: v.shape for k, v in empty.items()} == {k: v.shape for k, v in vectors.items()}
    with pytest.raises(ValueError, match="length"):
        CoxDayStats.from_vectors({**vectors, "s0": vectors["s0"][:-1]}, c.horizon, p)
    with pytest.raises(ValueError, match="exactly"):
        CoxDayStats.from_vectors({k: v for k, v in vectors.items() if k != "d"}, c.horizon, p)

    deriv = efron_derivatives(stats)
    dv = deriv.to_vectors()
    assert {k: v.shape for k, v in dv.items()} == {
        "loglik": (1,),
        "gradient": (p,),
        "hessian": (p * p,),
    }
    assert CoxDerivatives.from_vectors(dv, p) == deriv
    assert CoxDerivatives.from_vectors({k: 2 * v for k, v in dv.items()}, p) == deriv + deriv


def test_no_events_contribute_nothing_and_stats_need_events_at_risk() -> None:
    stats = cox_day_stats([3, 4], [0, 0], [[1.0], [2.0]], [0.5], horizon=5)
    deriv = efron_derivatives(stats)
    assert deriv.loglik == 0.0 and not deriv.gradient.any() and not deriv.hessian.any()
    assert efron_derivatives(cox_day_stats([], [], np.zeros((0, 2)), [0.0, 0.0], 5)).loglik == 0


def test_cox_result_refuses_a_singular_information_matrix() -> None:
    from analytics import EstimationError

    deriv = CoxDerivatives(-10.0, np.zeros(2), np.array([[-1.0, -1.0], [-1.0, -1.0]]))
    with pytest.raises(EstimationError, match="singular"):
        cox_result(["a", "b"], [0.0, 0.0], deriv, -10.0, 10, 5, 1, "none")
    with pytest.raises(ValueError, match="unique"):
        cox_result(["a", "a"], [0.0, 0.0], deriv, -10.0, 10, 5, 1, "none")
    with pytest.raises(ValueError, match="strata"):
        cox_result(["a", "b"], [0.0, 0.0], deriv, -10.0, 10, 5, 1, "sites")  # type: ignore[arg-type]
