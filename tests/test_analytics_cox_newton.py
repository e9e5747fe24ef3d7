"""Newton-Raphson state machine of the federated Cox fit: failures, halving, persistence.

Fits that converge are checked against lifelines ``CoxPHFitter`` (Efron ties) on the pooled
individual-level data, as in ``test_analytics_cox``.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from lifelines import CoxPHFitter
from statsmodels.duration.hazard_regression import PHReg

from analytics import (
    CoxDerivatives,
    NewtonState,
    NumericalOverflowError,
    cox_day_stats,
    efron_derivatives,
    fit_cox,
    newton_start,
    newton_update,
    site_derivatives,
)
from tests.cox_cohorts import TIGHT, CoxCohort, cox_cohort, pooled_fn
from tests.survival_cohorts import split_sites

SEPARATION = "separation: the likelihood has no maximum in covariate {} (monotone likelihood)"


def _rossi_with(column: np.ndarray, at: int) -> CoxCohort:
    """Rossi (fin, age, prio) with an extra covariate inserted at index ``at``."""
    c = cox_cohort("rossi")
    base = c.X[:, [0, 1, 6]]
    X = np.insert(base, at, column, axis=1)
    names = list(("fin", "age", "prio"))
    names.insert(at, "extra")
    return CoxCohort("rossi+", c.time, c.event, X, tuple(names), c.horizon)


def _early_arrest() -> np.ndarray:
    c = cox_cohort("rossi")
    return ((c.time < 20) & (c.event == 1)).astype(float)


def _fit(c: CoxCohort, seed: int = 1, **kwargs) -> tuple[NewtonState, CoxDerivatives]:
    return fit_cox(pooled_fn(c, split_sites(c.time.size, seed)), c.X.shape[1], **kwargs)


@pytest.mark.parametrize("at", [0, 3])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_separation_fails_naming_the_covariate(at: int, sign: float) -> None:
    # Every arrest before week 20 has extra = 1 (or -1), everyone still at risk then has a
    # lower value: the likelihood increases without bound along that coefficient.
    c = _rossi_with(sign * _early_arrest(), at)
    state, _ = _fit(c)
    assert state.status == "failed"
    assert state.message == SEPARATION.format(at)
    assert state.covariate == at
    assert state.explain(c.names) == SEPARATION.format("extra")
    assert np.sign(state.beta[at]) == sign and abs(state.beta[at]) > 10


def test_separation_by_a_continuous_covariate_with_common_centring() -> None:
    # Early arrests ordered by an uncentred covariate (values 31..50, 20 otherwise); the
    # sites centre the covariates on the pooled means sent by the aggregator.
    c = cox_cohort("rossi")
    early = _early_arrest() == 1
    sep = _rossi_with(np.where(early, 50.0 - c.time, 20.0), 3)
    site = split_sites(sep.time.size, 2)
    state, _ = fit_cox(pooled_fn(sep, site), 4)
    assert state.status == "failed" and state.covariate == 3
    assert state.message == SEPARATION.format(3)


@pytest.mark.parametrize("k", [0, 10, -1])
def test_near_separation_converges_to_the_finite_maximum(k: int) -> None:
    # One early arrest (the k-th by time) breaks the separation: the maximum is finite but
    # far out (coefficient ~7); the first Newton step overshoots to ~23 and must come back.
    extra = _early_arrest()
    early = np.flatnonzero(extra == 1)
    c0 = cox_cohort("rossi")
    extra[early[np.argsort(c0.time[early], kind="stable")[k]]] = 0.0
    c = _rossi_with(extra, 3)
    state, deriv = _fit(c)
    assert state.status == "converged", state.message
    assert state.iteration <= 20
    cph = CoxPHFitter().fit(c.frame(), "T", "E", fit_options=TIGHT)
    np.testing.assert_allclose(state.beta, cph.params_.to_numpy(), rtol=1e-6, atol=1e-9)
    assert state.beta[3] > 5
    assert deriv.loglik == pytest.approx(cph.log_likelihood_, rel=1e-9)


@pytest.mark.parametrize("column", [np.full(432, 3.7), np.zeros(432)])
def test_constant_covariate_fails_at_the_start(column: np.ndarray) -> None:
    state, _ = _fit(_rossi_with(column, 2))
    assert state.status == "failed" and state.iteration == 0
    assert state.message == "covariate 2 is constant or collinear" and state.covariate == 2
    assert state.null_loglik is not None and state.beta == (0.0,) * 4


def test_collinear_covariate_fails_at_the_start() -> None:
    c = cox_cohort("rossi")
    state, _ = _fit(_rossi_with(c.X[:, 0] + 2.0 * c.X[:, 6], 3))  # fin + 2 prio
    assert state.status == "failed" and state.message == "covariate 3 is constant or collinear"


def test_no_events_fails() -> None:
    c = cox_cohort("rossi")
    no_events = CoxCohort("none", c.time, np.zeros_like(c.event), c.X, c.names, c.horizon)
    state, _ = _fit(no_events)
    assert state.status == "failed" and "at least one event" in state.message


def test_too_few_steps_fail_with_a_plain_message() -> None:
    state, deriv = _fit(cox_cohort("rossi"), max_iter=2)
    assert state.status == "failed"
    assert state.message == "did not converge after 2 Newton steps"
    assert state.iteration == 2 and deriv.loglik == state.best_loglik


def test_state_survives_json_and_resuming_gives_the_same_fit() -> None:
    c = cox_cohort("gbsg2")
    fn = pooled_fn(c, split_sites(c.time.size, 3))
    p = c.X.shape[1]
    straight, straight_deriv = fit_cox(fn, p)
    assert straight.status == "converged"

    state = newton_start(p)
    for _ in range(3):  # three network rounds, then the aggregator restarts
        state = newton_update(state, fn(np.array(state.beta)))
    stored = json.dumps(state.to_dict())
    restored = NewtonState.from_dict(json.loads(stored))
    assert restored == state and restored.status == "running" and restored.iteration == 3
    resumed, resumed_deriv = fit_cox(fn, p, state=restored)
    assert resumed == straight
    assert resumed_deriv == straight_deriv
    final = NewtonState.from_dict(json.loads(json.dumps(resumed.to_dict())))
    assert final == resumed and final.status == "converged"


def test_from_dict_rejects_malformed_states() -> None:
    good = newton_start(2).to_dict()
    with pytest.raises(ValueError, match="keys"):
        NewtonState.from_dict({**good, "extra": 1})
    with pytest.raises(ValueError, match="status"):
        NewtonState.from_dict({**good, "status": "done"})
    with pytest.raises(ValueError, match="length"):
        NewtonState.from_dict({**good, "best_beta": [0.0]})


def test_finished_state_cannot_be_updated() -> None:
    state, deriv = _fit(cox_cohort("larynx"))
    with pytest.raises(ValueError, match="converged"):
        newton_update(state, deriv)
    with pytest.raises(ValueError, match="covariates"):
        newton_update(newton_start(3), deriv)


def test_overflow_and_worse_steps_are_halved_to_the_same_optimum() -> None:
    c = cox_cohort("rossi")
    fn = pooled_fn(c, split_sites(c.time.size, 1))
    reference, reference_deriv = fit_cox(fn, c.X.shape[1])
    calls = {"n": 0}

    def flaky(beta: np.ndarray) -> CoxDerivatives:
        calls["n"] += 1
        if calls["n"] == 2:  # the first full step "overflows" at some site
            raise NumericalOverflowError("test")
        d = fn(beta)
        if calls["n"] == 4:  # a later step looks worse than it is
            return replace(d, loglik=d.loglik - 1.0)
        return d

    state, deriv = fit_cox(flaky, c.X.shape[1])
    assert state.status == "converged" and state.iteration > reference.iteration
    np.testing.assert_allclose(state.beta, reference.beta, rtol=1e-10, atol=1e-12)
    assert deriv.loglik == pytest.approx(reference_deriv.loglik, rel=1e-13)


def test_halving_gives_up_after_thirty_halvings() -> None:
    c = cox_cohort("larynx")
    fn = pooled_fn(c, split_sites(c.time.size, 1))

    def wall(beta: np.ndarray) -> CoxDerivatives:
        if np.any(beta):
            raise NumericalOverflowError("test")
        return fn(beta)

    state, deriv = fit_cox(wall, 4)
    assert state.status == "failed" and "30 halvings" in state.message
    assert state.beta == (0.0,) * 4 and deriv.loglik == state.null_loglik


def _years() -> CoxCohort:
    """Synthetic cohort with an uncentred calendar-year covariate (x'beta > 700)."""
    rng = np.random.default_rng(5)
    n = 500
    year = rng.integers(2018, 2026, n).astype(float)
    treated = rng.integers(0, 2, n).astype(float)
    rate = np.exp(-4.0 + 0.4 * (year - 2021) + 0.5 * treated)
    time = np.floor(rng.exponential(1.0 / rate)).astype(np.int64)
    event = (rng.random(n) < 0.8).astype(np.int64)
    return CoxCohort(
        "years", time, event, np.column_stack([year, treated]), ("infusion_year", "treated"), 200
    )


def test_uncentred_covariate_overflows_without_and_fits_with_common_centring() -> None:
    c = _years()
    beta = np.array([0.4, 0.5])
    with pytest.raises(NumericalOverflowError, match="float64"):
        cox_day_stats(c.time, c.event, c.X, beta, c.horizon)
    df = c.frame()
    # Centring leaves the derivatives unchanged (statsmodels PHReg as the reference).
    model = PHReg(df["T"].to_numpy(float), c.X, status=df["E"].to_numpy(), ties="efron")
    deriv = efron_derivatives(cox_day_stats(c.time, c.event, c.X, beta, c.horizon, [2021.0, 0.5]))
    assert deriv.loglik == pytest.approx(model.loglike(beta), rel=1e-10)
    np.testing.assert_allclose(deriv.gradient, model.score(beta), rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(deriv.hessian, model.hessian(beta), rtol=1e-7, atol=1e-7)

    site = split_sites(c.time.size, 4)
    # Without common centring the steps hit the float64 range and the fit cannot finish.
    stuck, _ = fit_cox(pooled_fn(c, site, centre=False), 2)
    assert stuck.status == "failed"
    assert stuck.message.startswith("did not converge after 50 Newton steps (exp(x'beta) overf")
    state, deriv = fit_cox(pooled_fn(c, site), 2)
    assert state.status == "converged", state.message
    cph = CoxPHFitter().fit(df, "T", "E", fit_options=TIGHT)
    np.testing.assert_allclose(state.beta, cph.params_.to_numpy(), rtol=1e-6, atol=1e-9)
    se = np.sqrt(np.diag(np.linalg.inv(-deriv.hessian)))
    np.testing.assert_allclose(se, cph.standard_errors_.to_numpy(), rtol=1e-6)
    assert deriv.loglik == pytest.approx(cph.log_likelihood_, rel=1e-9)

    # With a baseline hazard per site each site centres on its own: no overflow either.
    strat = CoxPHFitter(strata=["site"]).fit(c.frame(site), "T", "E", fit_options=TIGHT)
    parts = [site == s for s in np.unique(site)]
    state, deriv = fit_cox(
        lambda b: sum(site_derivatives(c.time[m], c.event[m], c.X[m], b, c.horizon) for m in parts),
        2,
    )
    assert state.status == "converged"
    np.testing.assert_allclose(state.beta, strat.params_.to_numpy(), rtol=1e-6, atol=1e-9)
    assert deriv.loglik == pytest.approx(strat.log_likelihood_, rel=1e-9)
