"""Efron partial log-likelihood of the Cox model with its gradient and Hessian.

From per-day sums (:class:`~analytics.cox_stats.CoxDayStats`), with ``d_t`` events on day
``t`` and ``a_l = l / d_t``::

    phi_tl = s0_t - a_l e0_t
    ll     = event_xb - sum_t sum_{l<d_t} log(phi_tl)
    grad   = event_x  - sum_t sum_l (s1_t - a_l e1_t) / phi_tl
    -hess  = sum_t sum_l [(s2_t - a_l e2_t) / phi_tl - m_tl m_tl']
    m_tl   = (s1_t - a_l e1_t) / phi_tl

which is the log-likelihood lifelines' ``CoxPHFitter`` maximises (Efron ties). Several strata
(a baseline hazard per site) add their log-likelihoods, so their derivatives are summed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analytics._pooling import Pooled, flat_vectors
from analytics.cox_stats import CoxDayStats
from analytics.cox_sums import CoxRows, cox_rows
from analytics.errors import EstimationError, NumericalOverflowError

__all__ = ["CoxDerivatives", "efron_derivatives", "site_derivatives", "stratum_derivatives"]

# Information on a covariate below this fraction of its weighted second moment is rounding
# noise (a covariate constant within every risk set); it is reported as exactly zero.
_NOISE_FLOOR = 1e-10


@dataclass(frozen=True, eq=False)
class CoxDerivatives(Pooled):
    """Log-likelihood, gradient and Hessian of a Cox model at one ``beta``.

    Attributes
    ----------
    loglik : float
        Efron partial log-likelihood.
    gradient : numpy.ndarray
        ``(p,)`` read-only.
    hessian : numpy.ndarray
        ``(p, p)`` read-only, symmetric, negative semi-definite.

    Notes
    -----
    ``a + b`` adds two strata (e.g. sites with their own baseline hazard).
    """

    loglik: float
    gradient: NDArray[np.float64]
    hessian: NDArray[np.float64]

    def __post_init__(self) -> None:
        g = np.array(self.gradient, dtype=np.float64, copy=True)
        h = np.array(self.hessian, dtype=np.float64, copy=True)
        if g.ndim != 1 or g.size < 1:
            raise ValueError(f"gradient must be a non-empty 1-D array, got shape {g.shape}")
        if h.shape != (g.size, g.size):
            raise ValueError(f"hessian must have shape {(g.size, g.size)}, got {h.shape}")
        loglik = float(self.loglik)
        if not (np.isfinite(loglik) and np.all(np.isfinite(g)) and np.all(np.isfinite(h))):
            raise NumericalOverflowError(
                "the Cox log-likelihood or its derivatives are not finite at these coefficients"
            )
        g.setflags(write=False)
        h.setflags(write=False)
        object.__setattr__(self, "loglik", loglik)
        object.__setattr__(self, "gradient", g)
        object.__setattr__(self, "hessian", h)

    @property
    def p(self) -> int:
        """Number of covariates."""
        return int(self.gradient.size)

    def _check_poolable(self, other: CoxDerivatives) -> None:
        if other.p != self.p:
            raise ValueError(f"cannot add derivatives of {self.p} and {other.p} covariates")

    def to_vectors(self) -> dict[str, NDArray[np.float64]]:
        """Flat vectors: ``loglik`` (1), ``gradient`` (p), ``hessian`` (``p (p + 1) / 2``:
        the upper triangle in ``numpy.triu_indices(p)`` order; the matrix is symmetric)."""
        iu = np.triu_indices(self.p)
        return {
            "loglik": np.array([self.loglik]),
            "gradient": self.gradient.copy(),
            "hessian": self.hessian[iu],
        }

    @classmethod
    def from_vectors(cls, vectors: Mapping[str, ArrayLike], p: int) -> CoxDerivatives:
        """Rebuild from :meth:`to_vectors` output (possibly summed over strata); the Hessian
        is the symmetric matrix of the upper triangle sent.

        Raises
        ------
        ValueError
            On a missing or unknown key or a vector of the wrong length.
        """
        if isinstance(p, bool) or not isinstance(p, int | np.integer) or p < 1:
            raise ValueError(f"p must be a positive integer, got {p!r}")
        p = int(p)
        lengths = {"loglik": 1, "gradient": p, "hessian": p * (p + 1) // 2}
        flat = flat_vectors(vectors, lengths, "Cox derivatives", np.float64)
        iu = np.triu_indices(p)
        hessian = np.empty((p, p))
        hessian[iu] = flat["hessian"]
        hessian[iu[1], iu[0]] = flat["hessian"]
        return cls(
            loglik=float(flat["loglik"][0]),
            gradient=flat["gradient"],
            hessian=hessian,
        )


def efron_derivatives(stats: CoxDayStats) -> CoxDerivatives:
    """Efron log-likelihood, gradient and Hessian from (pooled) per-day sums.

    Parameters
    ----------
    stats : CoxDayStats
        Sums at some ``beta`` (one stratum; pool sites first for a common baseline hazard).

    Returns
    -------
    CoxDerivatives
        All zero when there is no event (the stratum contributes nothing). A covariate whose
        information is below ``1e-10`` of its weighted second moment (constant within every
        risk set, up to rounding) gets an exactly zero Hessian row and column.

    Raises
    ------
    EstimationError
        If an event day has no positive weight at risk (inconsistent statistics).
    NumericalOverflowError
        If a result is not finite.
    """
    p = stats.p
    event_days = np.flatnonzero(stats.d)
    if event_days.size == 0:
        return CoxDerivatives(0.0, np.zeros(p), np.zeros((p, p)))
    counts = stats.d[event_days]
    # Each day's sums are divided by its risk-set weight s0: derivatives are ratios and do not
    # change, and 1 / phi**2 can neither underflow nor overflow however large the weights.
    s0 = stats.s0[event_days]
    if not np.all(s0 > 0):
        raise EstimationError(
            "inconsistent Cox statistics: an event day has no positive weight at risk"
        )
    e0 = stats.e0[event_days] / s0
    s1, e1 = stats.s1[event_days] / s0[:, None], stats.e1[event_days] / s0[:, None]
    s2 = stats.s2[event_days] / s0[:, None, None]
    e2 = stats.e2[event_days] / s0[:, None, None]
    # One row per (event day, l): Efron's l-th partial removal of the day's event weight.
    row = np.repeat(np.arange(event_days.size), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    a = (np.arange(row.size) - first) / counts[row]
    phi = 1.0 - a * e0[row]
    if not np.all(phi > 0):
        raise EstimationError(
            "inconsistent Cox statistics: the events of a day outweigh its risk set"
        )
    inv = 1.0 / phi
    inv2 = inv * inv
    m = event_days.size

    def per_day(values: NDArray[np.float64]) -> NDArray[np.float64]:
        # float64 with weights; numpy's stub types every bincount result as intp
        return cast("NDArray[np.float64]", np.bincount(row, weights=values, minlength=m))

    c0, c1 = per_day(inv), per_day(a * inv)
    q0, q1, q2 = per_day(inv2), per_day(a * inv2), per_day(a * a * inv2)

    with np.errstate(over="ignore", invalid="ignore"):
        loglik = stats.event_xb - float(np.log(s0) @ counts) - float(np.log(phi).sum())
        gradient = stats.event_x - (c0 @ s1 - c1 @ e1)
        second = np.einsum("k,kij->ij", c0, s2) - np.einsum("k,kij->ij", c1, e2)
        cross = (s1.T * q1) @ e1
        outer = (s1.T * q0) @ s1 - cross - cross.T + (e1.T * q2) @ e1
        information = second - outer
    information = (information + information.T) / 2.0
    noise = np.diag(information) <= _NOISE_FLOOR * np.diag(second)
    information[noise, :] = 0.0
    information[:, noise] = 0.0
    return CoxDerivatives(loglik=loglik, gradient=gradient, hessian=-information)


def site_derivatives(
    durations: ArrayLike, events: ArrayLike, X: ArrayLike, beta: ArrayLike, horizon: int
) -> CoxDerivatives:
    """One stratum's Efron derivatives at ``beta`` from individual-level data.

    Used when each site has its own baseline hazard (``strata: site``); the aggregator sums
    the sites' results. Equals ``efron_derivatives(cox_day_stats(...))``, with the site's
    covariates centred on their own means: a stratum's derivatives do not depend on the
    centring, which keeps ``exp(x'beta)`` in range and the second moments accurate.

    Raises
    ------
    NumericalOverflowError
        If ``exp(x'beta)`` or a sum overflows float64.
    ValueError
        On malformed input.
    """
    return stratum_derivatives(cox_rows(durations, events, X, horizon), beta)


def stratum_derivatives(rows: CoxRows, beta: ArrayLike) -> CoxDerivatives:
    """:func:`site_derivatives` of subjects sorted once (:func:`~analytics.cox_sums.cox_rows`),
    as a site evaluates them every round."""
    return efron_derivatives(rows.day_stats(beta, centre=rows.means))
