"""Kaplan-Meier estimator from (pooled) per-day counts.

Reproduces lifelines' ``KaplanMeierFitter`` (survival function, exponential Greenwood
"log(-log)" confidence interval, median and median CI) and R survival's restricted mean
survival time with its standard error (``print(fit, rmean=horizon)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analytics._event_table import (
    SurvivalTable,
    check_alpha,
    check_timepoints,
    json_float,
    json_table,
    json_timepoints,
    readonly,
    rows_at,
    survival_table,
    z_value,
)
from analytics.survival_counts import SurvivalCounts

__all__ = ["RMST", "KaplanMeierResult", "TimepointEstimate", "kaplan_meier"]


@dataclass(frozen=True)
class TimepointEstimate:
    """Kaplan-Meier curve read at one day.

    Attributes
    ----------
    survival, ci_lower, ci_upper : float
        Step-function values at the day (as lifelines ``survival_function_at_times``).
    at_risk : int
        Subjects with time >= the day (as R ``summary(fit, times=t)$n.risk``).
    """

    survival: float
    ci_lower: float
    ci_upper: float
    at_risk: int


@dataclass(frozen=True)
class RMST:
    """Restricted mean survival time: area under the curve on ``[0, horizon]`` and its SE."""

    horizon: int
    estimate: float
    se: float


@dataclass(frozen=True, eq=False)
class KaplanMeierResult(SurvivalTable):
    """Kaplan-Meier estimate with its event table.

    Attributes
    ----------
    time, at_risk, events, censored : numpy.ndarray
        Event table (:class:`SurvivalTable` fields).
    survival, ci_lower, ci_upper : numpy.ndarray
        Survival and its ``1 - alpha`` exponential Greenwood (log(-log)) band at those days.
    median : float or None
        First day with survival <= 0.5; None when not reached.
    median_ci : tuple
        Medians of the lower and upper band curves (None when not reached).
    timepoints : dict[int, TimepointEstimate]
        Curve values at the requested days.
    rmst : RMST
        Restricted mean survival time to the horizon of the counts.
    """

    survival: NDArray[np.float64]
    ci_lower: NDArray[np.float64]
    ci_upper: NDArray[np.float64]
    median: float | None
    median_ci: tuple[float | None, float | None]
    timepoints: dict[int, TimepointEstimate]
    rmst: RMST

    def to_dict(self) -> dict[str, Any]:
        """Group entry of a ``kaplan_meier`` analysis in results.json (JSON-ready)."""
        out: dict[str, Any] = {
            "n": self.n,
            "events": self.n_events,
            "table": json_table(
                self, "time", "at_risk", "events", "censored", "survival", "ci_lower", "ci_upper"
            ),
            "median": json_float(self.median),
            "median_ci": [json_float(self.median_ci[0]), json_float(self.median_ci[1])],
            "timepoints": json_timepoints(self.timepoints, "survival"),
            "rmst": {
                "horizon": int(self.rmst.horizon),
                "estimate": json_float(self.rmst.estimate),
                "se": json_float(self.rmst.se),
            },
        }
        return out


def _median(time: NDArray[np.int64], curve: NDArray[np.float64]) -> float | None:
    """First time the curve is <= 0.5 (lifelines ``qth_survival_time``); None if never."""
    if curve[-1] > 0.5:
        return None
    # Same search as lifelines: binary search on the negated curve, first position >= -0.5.
    return float(time[int(np.searchsorted(-curve, -0.5, side="left"))])


def _rmst(
    time: NDArray[np.int64],
    at_risk: NDArray[np.int64],
    events: NDArray[np.int64],
    survival: NDArray[np.float64],
    horizon: int,
) -> RMST:
    """Area under the step curve on ``[0, horizon]`` and R survival's ``se(rmean)``.

    ``var = sum_j A_j^2 d_j / (n_j (n_j - d_j))`` over table days ``t_j``, with ``A_j`` the
    area under the curve from ``t_j`` to the horizon; a term with ``n_j == d_j`` is 0 (R's
    ``survmean``).
    """
    widths = np.diff(np.append(time, horizon)).astype(np.float64)
    rectangles = widths * survival
    estimate = float(rectangles.sum())
    tail_area = np.cumsum(rectangles[::-1])[::-1]
    n = at_risk.astype(np.float64)
    d = events.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        hazard_term = np.where(at_risk > events, d / (n * (n - d)), 0.0)
    variance = float(np.sum(tail_area**2 * hazard_term))
    return RMST(horizon=int(horizon), estimate=estimate, se=float(np.sqrt(variance)))


def kaplan_meier(
    counts: SurvivalCounts, timepoints: Sequence[int] = (), alpha: float = 0.05
) -> KaplanMeierResult:
    """Kaplan-Meier survival curve from per-day counts.

    Parameters
    ----------
    counts : SurvivalCounts
        Per-day events and censorings (possibly pooled over sites).
    timepoints : sequence of int
        Days (within ``0..counts.horizon``) at which to report the curve and numbers at risk.
    alpha : float
        The band is ``1 - alpha`` (default 95%).

    Returns
    -------
    KaplanMeierResult

    Raises
    ------
    EstimationError
        If the counts hold no subjects.
    ValueError
        On an invalid ``alpha`` or a timepoint outside ``0..horizon``.
    """
    alpha = check_alpha(alpha)
    days = check_timepoints(timepoints, counts.horizon)
    table = survival_table(counts)
    time, at_risk, events, _ = table

    # Same floating-point operations as lifelines (_additive_estimate / _bounds) so that ties
    # at exactly 0.5 resolve the median the same way.
    with np.errstate(divide="ignore", invalid="ignore"):
        log_survival = np.cumsum(np.log(at_risk - events) - np.log(at_risk))
        survival = np.exp(log_survival)
        greenwood = events / (at_risk * (at_risk - events)).astype(np.float64)
        greenwood[np.isinf(greenwood)] = 0.0
        variance = np.cumsum(greenwood)
        z = z_value(alpha)
        v = np.log(survival)
        ci_lower = np.exp(-np.exp(np.log(-v) - z * np.sqrt(variance) / v))
        ci_upper = np.exp(-np.exp(np.log(-v) + z * np.sqrt(variance) / v))
    ci_lower[np.isnan(ci_lower)] = 1.0
    ci_upper[np.isnan(ci_upper)] = 1.0

    full_at_risk = counts.at_risk
    points = {
        t: TimepointEstimate(
            float(survival[i]), float(ci_lower[i]), float(ci_upper[i]), int(full_at_risk[t])
        )
        for t, i in rows_at(time, days).items()
    }
    return KaplanMeierResult(
        *table,
        survival=readonly(survival),
        ci_lower=readonly(ci_lower),
        ci_upper=readonly(ci_upper),
        median=_median(time, survival),
        median_ci=(_median(time, ci_lower), _median(time, ci_upper)),
        timepoints=points,
        rmst=_rmst(time, at_risk, events, survival, counts.horizon),
    )
