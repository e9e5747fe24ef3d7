"""Nelson-Aalen cumulative hazard from (pooled) per-day counts.

Reproduces lifelines' ``NelsonAalenFitter()`` defaults: tied events are smoothed
(``nelson_aalen_smoothing=True``: ``d`` tied events among ``n`` at risk add
``sum_{i=0}^{d-1} 1 / (n - i)`` to the hazard and ``sum 1 / (n - i)^2`` to its variance) and the
band is ``H * exp(+-z * sqrt(var) / H)`` (log-transformed, ``H = 0`` gives ``[0, 0]``).
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
    json_table,
    json_timepoints,
    readonly,
    rows_at,
    survival_table,
    z_value,
)
from analytics.survival_counts import SurvivalCounts

__all__ = ["CumulativeHazardEstimate", "NelsonAalenResult", "nelson_aalen"]


@dataclass(frozen=True)
class CumulativeHazardEstimate:
    """Nelson-Aalen curve read at one day (step-function value) with the number at risk."""

    cumulative_hazard: float
    ci_lower: float
    ci_upper: float
    at_risk: int


@dataclass(frozen=True, eq=False)
class NelsonAalenResult(SurvivalTable):
    """Nelson-Aalen estimate with its event table.

    Attributes
    ----------
    time, at_risk, events, censored : numpy.ndarray
        Event table (:class:`SurvivalTable` fields).
    cumulative_hazard, variance, ci_lower, ci_upper : numpy.ndarray
        Cumulative hazard, its variance and its ``1 - alpha`` band at those days.
    timepoints : dict[int, CumulativeHazardEstimate]
        Curve values at the requested days.
    """

    cumulative_hazard: NDArray[np.float64]
    variance: NDArray[np.float64]
    ci_lower: NDArray[np.float64]
    ci_upper: NDArray[np.float64]
    timepoints: dict[int, CumulativeHazardEstimate]

    def to_dict(self) -> dict[str, Any]:
        """Group entry of a ``nelson_aalen`` analysis in results.json (JSON-ready)."""
        return {
            "n": self.n,
            "events": self.n_events,
            "table": json_table(self, "time", "cumulative_hazard", "ci_lower", "ci_upper"),
            "timepoints": json_timepoints(self.timepoints, "cumulative_hazard"),
        }


def _harmonic_increments(
    at_risk: NDArray[np.int64], events: NDArray[np.int64], power: int
) -> NDArray[np.float64]:
    """``sum_{i=0}^{d-1} (n - i)^-power`` per row, via cumulative harmonic sums like lifelines."""
    harmonic = np.cumsum(1.0 / np.arange(1, int(at_risk.max()) + 1) ** power)
    upper = harmonic[at_risk - 1]
    rest = at_risk - events - 1
    lower = np.where(rest >= 0, harmonic[np.maximum(rest, 0)], 0.0)
    return upper - lower


def nelson_aalen(
    counts: SurvivalCounts, timepoints: Sequence[int] = (), alpha: float = 0.05
) -> NelsonAalenResult:
    """Nelson-Aalen cumulative hazard from per-day counts.

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
    NelsonAalenResult

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

    hazard = np.cumsum(_harmonic_increments(at_risk, events, 1))
    variance = np.cumsum(_harmonic_increments(at_risk, events, 2))
    z = z_value(alpha)
    scale = np.where(hazard == 0, 1.0, hazard)
    ci_lower = hazard * np.exp(-z * np.sqrt(variance) / scale)
    ci_upper = hazard * np.exp(z * np.sqrt(variance) / scale)

    full_at_risk = counts.at_risk
    points = {
        t: CumulativeHazardEstimate(
            float(hazard[i]), float(ci_lower[i]), float(ci_upper[i]), int(full_at_risk[t])
        )
        for t, i in rows_at(time, days).items()
    }
    return NelsonAalenResult(
        *table,
        cumulative_hazard=readonly(hazard),
        variance=readonly(variance),
        ci_lower=readonly(ci_lower),
        ci_upper=readonly(ci_upper),
        timepoints=points,
    )
