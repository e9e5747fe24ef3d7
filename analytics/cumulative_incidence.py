"""Aalen-Johansen cumulative incidence of the event of interest from (pooled) per-day counts.

Reproduces scikit-survival's
``cumulative_incidence_competing_risks(event, time, conf_type="log-log", var_type="Aalen")``
for cause 1, on its unique observed times:

- all-cause Kaplan-Meier ``S(t) = prod (1 - d_j / n_j)`` and
  ``F(t) = sum_{t_j <= t} S(t_{j-1}) d1_j / n_j`` (tied events of both causes on one day leave
  the risk set together);
- Aalen's variance as in Pintilie (2006, eq. 4.5)::

      var F(t) = sum_j (F(t) - F(t_j))^2 d_j / ((n_j - 1)(n_j - d_j))
               + sum_j S(t_{j-1})^2 d1_j (n_j - d1_j) / (n_j^2 (n_j - 1))
               - 2 sum_j (F(t) - F(t_j)) S(t_{j-1}) d1_j (n_j - d1_j) / (n_j (n_j - d_j)(n_j - 1))

  a term whose denominator is 0 counts as 0;
- the band ``F^exp(+-z sqrt(var) / (F log F))``: ``[F, F]`` when ``var <= eps`` or
  ``log F >= -eps``, and ``[0, 0]`` when ``F <= eps`` (machine epsilon).

The table also holds day 0 (curve 0, band [0, 0]) when nobody leaves on day 0, as the
Kaplan-Meier table does; the sums above are unchanged by that row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from analytics._event_table import (
    check_alpha,
    check_timepoints,
    event_table,
    json_table,
    json_timepoints,
    readonly,
    rows_at,
    z_value,
)
from analytics.competing_counts import CompetingCounts

__all__ = ["CumulativeIncidenceResult", "IncidenceAt", "cumulative_incidence"]


class IncidenceAt(NamedTuple):
    """Cumulative incidence read at one day (step-function value) with its band."""

    cif: float
    ci_lower: float
    ci_upper: float


@dataclass(frozen=True, eq=False)
class CumulativeIncidenceResult:
    """Aalen-Johansen cumulative incidence of cause 1 with its event table.

    Attributes
    ----------
    time, at_risk, cause1, cause2, censored : numpy.ndarray
        Event table: day 0 and every day with an event of either cause or a censoring.
    cif, variance, ci_lower, ci_upper : numpy.ndarray
        Cumulative incidence of cause 1, its Aalen variance and its ``1 - alpha``
        log(-log) band at those days.
    timepoints : dict[int, IncidenceAt]
        Curve values at the requested days.
    """

    time: NDArray[np.int64]
    at_risk: NDArray[np.int64]
    cause1: NDArray[np.int64]
    cause2: NDArray[np.int64]
    censored: NDArray[np.int64]
    cif: NDArray[np.float64]
    variance: NDArray[np.float64]
    ci_lower: NDArray[np.float64]
    ci_upper: NDArray[np.float64]
    timepoints: dict[int, IncidenceAt]

    @property
    def n(self) -> int:
        """Number of subjects."""
        return int(self.at_risk[0])

    def to_dict(self) -> dict[str, Any]:
        """Group entry of a ``cumulative_incidence`` analysis in results.json (JSON-ready)."""
        return {
            "n": self.n,
            "events": int(self.cause1.sum()),
            "competing": int(self.cause2.sum()),
            "table": json_table(self, "time", "at_risk", "cif", "ci_lower", "ci_upper"),
            "timepoints": json_timepoints(self.timepoints, "cif", with_at_risk=False),
        }


def _ratio(d: NDArray[np.int64], n: NDArray[np.int64]) -> NDArray[np.float64]:
    """``d / n`` with 0 where ``d == 0`` (scikit-survival's guard against 0 / 0)."""
    out = np.zeros(d.shape, dtype=np.float64)
    np.divide(d, n, out=out, where=d != 0)
    return out


def _safe_div(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    """``num / den`` with 0 where ``den <= 0``."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _aalen_variance(
    n: NDArray[np.int64],
    d1: NDArray[np.int64],
    d: NDArray[np.int64],
    surv_before: NDArray[np.float64],
    cif: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Aalen variance of the cumulative incidence at each row (Pintilie 2006, eq. 4.5).

    The sums over ``j <= i`` of ``w_j (F_i - F_j)^2`` and ``w_j (F_i - F_j)`` are carried
    forward row by row (``F_i - F_j = (F_{i-1} - F_j) + (F_i - F_{i-1})``), which gives exact
    zeros wherever the curve has not moved and avoids the cancellation of an expanded square.
    """
    nf = n.astype(np.float64)
    weight_a = _safe_div(d.astype(np.float64), (nf - 1) * (nf - d))
    term_b = (nf - d1) * d1 * _safe_div(np.ones_like(nf), (nf - 1) * nf**2) * surv_before**2
    weight_c = d1 * (nf - d1) * _safe_div(surv_before, nf * (nf - d) * (nf - 1))
    var = np.empty_like(cif)
    sum_a0 = sum_a1 = sum_a2 = sum_c0 = sum_c1 = sum_b = 0.0
    previous = 0.0
    for i in range(cif.size):
        step = float(cif[i]) - previous
        previous = float(cif[i])
        # Move the centred sums from F_{i-1} to F_i, then add row i (whose own gap is 0).
        sum_a2 += 2.0 * step * sum_a1 + step * step * sum_a0
        sum_a1 += step * sum_a0
        sum_c1 += step * sum_c0
        sum_a0 += float(weight_a[i])
        sum_c0 += float(weight_c[i])
        sum_b += float(term_b[i])
        var[i] = sum_a2 + sum_b - 2.0 * sum_c1
    return var


def _log_log_band(
    cif: NDArray[np.float64], variance: NDArray[np.float64], z: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """scikit-survival's log(-log) band of a cumulative incidence (``_ci_logmlog``)."""
    eps = np.finfo(np.float64).eps
    sigma = np.zeros_like(variance)
    np.divide(np.sqrt(np.maximum(variance, 0.0)), cif, out=sigma, where=variance > eps)
    positive = cif > eps
    log_f = np.zeros_like(cif)
    np.log(cif, out=log_f, where=positive)
    theta = np.zeros_like(cif)
    np.true_divide(sigma, log_f, out=theta, where=log_f < -eps)
    lower = np.exp(np.exp(-z * theta) * log_f)
    upper = np.exp(np.exp(z * theta) * log_f)
    lower[~positive] = 0.0
    upper[~positive] = 0.0
    return lower, upper


def cumulative_incidence(
    counts: CompetingCounts, timepoints: Sequence[int] = (), alpha: float = 0.05
) -> CumulativeIncidenceResult:
    """Aalen-Johansen cumulative incidence of cause 1 from per-day competing-risks counts.

    Parameters
    ----------
    counts : CompetingCounts
        Per-day events of both causes and censorings (possibly pooled over sites).
    timepoints : sequence of int
        Days (within ``0..counts.horizon``) at which to report the curve.
    alpha : float
        The band is ``1 - alpha`` (default 95%).

    Returns
    -------
    CumulativeIncidenceResult

    Raises
    ------
    EstimationError
        If the counts hold no subjects.
    ValueError
        On an invalid ``alpha`` or a timepoint outside ``0..horizon``.
    """
    alpha = check_alpha(alpha)
    days = check_timepoints(timepoints, counts.horizon)
    time, n, d1, d2, censored = event_table(counts, counts.cause1, counts.cause2, counts.censored)
    d = d1 + d2

    # Same operations as scikit-survival: all-cause KM, then the increments of cause 1.
    surv = np.cumprod(1.0 - _ratio(d, n))
    surv_before = np.r_[1.0, surv[:-1]]
    cif = np.cumsum(_ratio(d1, n) * surv_before)
    variance = _aalen_variance(n, d1, d, surv_before, cif)
    ci_lower, ci_upper = _log_log_band(cif, variance, z_value(alpha))

    points = {
        t: IncidenceAt(float(cif[i]), float(ci_lower[i]), float(ci_upper[i]))
        for t, i in rows_at(time, days).items()
    }
    return CumulativeIncidenceResult(
        time=time,
        at_risk=n,
        cause1=d1,
        cause2=d2,
        censored=censored,
        cif=readonly(cif),
        variance=readonly(variance),
        ci_lower=readonly(ci_lower),
        ci_upper=readonly(ci_upper),
        timepoints=points,
    )
