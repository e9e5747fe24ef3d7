"""Cox proportional hazards model (Efron ties) from pooled sufficient statistics.

The federated fit runs in three pieces, each pure:

* sites compute :func:`~analytics.cox_sums.cox_day_stats` (one baseline hazard over all
  sites, ``strata: none``) or :func:`~analytics.efron.site_derivatives` (a baseline hazard
  per site, ``strata: site``) at the coefficients the aggregator sent;
* the aggregator pools them (``sum``), turns pooled day sums into derivatives with
  :func:`~analytics.efron.efron_derivatives` and steps with
  :func:`~analytics.newton.newton_update`;
* at convergence :func:`cox_result` forms the reported table.

The estimates equal lifelines' ``CoxPHFitter`` on the pooled individual-level data
(``CoxPHFitter(strata=["site"])`` for ``strata: site``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import chi2, norm

from analytics._event_table import json_float, readonly
from analytics.cox_stats import CoxDayStats
from analytics.cox_sums import cox_day_stats
from analytics.efron import CoxDerivatives, efron_derivatives, site_derivatives
from analytics.errors import EstimationError

__all__ = [
    "CoxDayStats",
    "CoxDerivatives",
    "CoxResult",
    "cox_day_stats",
    "cox_result",
    "efron_derivatives",
    "site_derivatives",
]

Z_95 = 1.959963984540054  # standard normal 0.975 quantile
Strata = Literal["none", "site"]


@dataclass(frozen=True, eq=False)
class CoxResult:
    """Fitted Cox model.

    Attributes
    ----------
    names : tuple of str
        Covariate names, in the order of the coefficients.
    coef, se, z, p : numpy.ndarray
        Coefficients, standard errors (inverse of the negative Hessian at the optimum), Wald
        statistics and two-sided normal p-values.
    hr, hr_lower, hr_upper : numpy.ndarray
        Hazard ratios ``exp(coef)`` and their 95% interval ``exp(coef -/+ 1.96 se)``.
    log_likelihood, null_log_likelihood : float
        Efron partial log-likelihood at the optimum and at ``beta = 0``.
    lr_statistic : float
        ``2 (log_likelihood - null_log_likelihood)``, chi-square on ``lr_df = p`` df.
    lr_p_value : float
    n, events : int
        Subjects and events in the fit.
    strata : {"none", "site"}
    iterations : int
        Newton steps taken.
    converged : bool
    """

    names: tuple[str, ...]
    coef: NDArray[np.float64]
    se: NDArray[np.float64]
    z: NDArray[np.float64]
    p: NDArray[np.float64]
    hr: NDArray[np.float64]
    hr_lower: NDArray[np.float64]
    hr_upper: NDArray[np.float64]
    log_likelihood: float
    null_log_likelihood: float
    lr_statistic: float
    lr_df: int
    lr_p_value: float
    n: int
    events: int
    strata: Strata
    iterations: int
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        """Body of a ``cox`` analysis in results.json (JSON-ready)."""
        return {
            "kind": "cox",
            "n": int(self.n),
            "events": int(self.events),
            "strata": self.strata,
            "coefficients": {
                name: {
                    "coef": json_float(self.coef[i]),
                    "se": json_float(self.se[i]),
                    "hr": json_float(self.hr[i]),
                    "hr_ci": [json_float(self.hr_lower[i]), json_float(self.hr_upper[i])],
                    "z": json_float(self.z[i]),
                    "p": json_float(self.p[i]),
                }
                for i, name in enumerate(self.names)
            },
            "log_likelihood": json_float(self.log_likelihood),
            "lr_test": {
                "statistic": json_float(self.lr_statistic),
                "df": int(self.lr_df),
                "p_value": json_float(self.lr_p_value),
            },
            "iterations": int(self.iterations),
            "converged": bool(self.converged),
        }


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def cox_result(
    names: Sequence[str],
    beta: ArrayLike,
    derivatives_at_beta: CoxDerivatives,
    null_loglik: float,
    n: int,
    events: int,
    iterations: int,
    strata: Strata,
    converged: bool = True,
) -> CoxResult:
    """Coefficient table and likelihood-ratio test at the fitted ``beta``.

    Parameters
    ----------
    names : sequence of str
        One unique name per covariate.
    beta : array_like
        Fitted coefficients (``NewtonState.beta``).
    derivatives_at_beta : CoxDerivatives
        Pooled derivatives evaluated at ``beta``.
    null_loglik : float
        Log-likelihood at ``beta = 0`` (``NewtonState.null_loglik``).
    n, events : int
        Subjects and events in the fit.
    iterations : int
        Newton steps taken (``NewtonState.iteration``).
    strata : {"none", "site"}
        Whether there was one baseline hazard or one per site.
    converged : bool
        Whether the Newton iterations converged.

    Returns
    -------
    CoxResult

    Raises
    ------
    EstimationError
        If the negative Hessian is not positive definite (no standard errors).
    ValueError
        On mismatched sizes, duplicate names or an unknown ``strata``.
    """
    labels = tuple(str(name) for name in names)
    coef = np.array(beta, dtype=np.float64)
    p = len(labels)
    if coef.shape != (p,) or derivatives_at_beta.p != p:
        raise ValueError(
            f"{p} names, beta of shape {coef.shape} and derivatives for "
            f"{derivatives_at_beta.p} covariates do not match"
        )
    if p == 0 or len(set(labels)) != p:
        raise ValueError(f"covariate names must be non-empty and unique, got {list(labels)}")
    if strata not in ("none", "site"):
        raise ValueError(f"strata must be 'none' or 'site', got {strata!r}")
    if not np.all(np.isfinite(coef)) or not np.isfinite(null_loglik):
        raise ValueError("beta and null_loglik must be finite")

    information = -derivatives_at_beta.hessian
    try:
        np.linalg.cholesky(information)
    except np.linalg.LinAlgError:
        raise EstimationError(
            "the information matrix is singular at the fitted coefficients: no standard errors"
        ) from None
    variance = np.linalg.inv(information)
    se = np.sqrt(np.diag(variance))
    z = coef / se
    loglik = derivatives_at_beta.loglik
    statistic = 2.0 * (loglik - float(null_loglik))
    return CoxResult(
        names=labels,
        coef=readonly(coef),
        se=readonly(se),
        z=readonly(z),
        p=readonly(2.0 * norm.sf(np.abs(z))),
        hr=readonly(np.exp(coef)),
        hr_lower=readonly(np.exp(coef - Z_95 * se)),
        hr_upper=readonly(np.exp(coef + Z_95 * se)),
        log_likelihood=loglik,
        null_log_likelihood=float(null_loglik),
        lr_statistic=statistic,
        lr_df=p,
        lr_p_value=float(chi2.sf(statistic, p)),
        n=_count(n, "n"),
        events=_count(events, "events"),
        strata=strata,
        iterations=_count(iterations, "iterations"),
        converged=bool(converged),
    )
