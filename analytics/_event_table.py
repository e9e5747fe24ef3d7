"""Helpers shared by the non-parametric estimators (private)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from analytics.errors import EstimationError
from analytics.survival_counts import SurvivalCounts

_ScalarT = TypeVar("_ScalarT", bound=np.generic)


def readonly(values: NDArray[_ScalarT]) -> NDArray[_ScalarT]:
    """Return ``values`` marked read-only."""
    values.setflags(write=False)
    return values


def event_table(
    counts: SurvivalCounts,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Rows of the life table: day 0 and every day with an event or a censoring.

    Returns
    -------
    time, at_risk, events, censored : numpy.ndarray
        The index of lifelines' ``event_table`` for the equivalent individual-level data.

    Raises
    ------
    EstimationError
        If the counts hold no subjects.
    """
    if counts.n == 0:
        raise EstimationError("no subjects: the estimator needs at least one")
    removed = counts.events + counts.censored
    days = np.flatnonzero(removed)
    time = np.union1d([0], days).astype(np.int64)
    return (
        readonly(time),
        readonly(counts.at_risk[time].copy()),
        readonly(counts.events[time].copy()),
        readonly(counts.censored[time].copy()),
    )


def check_alpha(alpha: float) -> float:
    """Validate a significance level and return it as float."""
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return float(alpha)


def z_value(alpha: float) -> float:
    """Two-sided standard normal quantile ``Phi^-1(1 - alpha / 2)``."""
    return float(norm.ppf(1.0 - alpha / 2.0))


def check_timepoints(timepoints: Sequence[int], horizon: int) -> tuple[int, ...]:
    """Validate report days: integers within ``0..horizon``, returned in the given order."""
    out: list[int] = []
    for t in timepoints:
        if isinstance(t, bool) or not isinstance(t, int | np.integer):
            raise ValueError(f"timepoints must be integer days, got {t!r}")
        if not 0 <= t <= horizon:
            raise ValueError(f"timepoint {t} lies outside days 0..{horizon}")
        out.append(int(t))
    return tuple(out)


def step_index(time: NDArray[np.int64], t: int) -> int:
    """Row of a right-continuous step function holding its value at day ``t`` (pandas ``asof``)."""
    return int(np.searchsorted(time, t, side="right")) - 1


def json_float(value: float | None) -> float | None:
    """Plain float for JSON, ``None`` for missing or non-finite values."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def json_floats(values: NDArray[np.floating]) -> list[float | None]:
    """List of plain floats for JSON (non-finite entries become ``None``)."""
    return [json_float(v) for v in values.tolist()]


def json_ints(values: NDArray[np.integer]) -> list[int]:
    """List of plain ints for JSON."""
    return [int(v) for v in values.tolist()]
