"""Helpers shared by the non-parametric estimators (private)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from analytics.competing_counts import CompetingCounts
from analytics.errors import EstimationError
from analytics.survival_counts import SurvivalCounts

_ScalarT = TypeVar("_ScalarT", bound=np.generic)


def readonly(values: NDArray[_ScalarT]) -> NDArray[_ScalarT]:
    """Return ``values`` marked read-only."""
    values.setflags(write=False)
    return values


@dataclass(frozen=True, eq=False)
class SurvivalTable:
    """Event table of a survival estimate (the leading fields of its result).

    Attributes
    ----------
    time, at_risk, events, censored : numpy.ndarray
        Day 0 and every day with an event or a censoring, and the counts on those days.
    """

    time: NDArray[np.int64]
    at_risk: NDArray[np.int64]
    events: NDArray[np.int64]
    censored: NDArray[np.int64]

    @property
    def n(self) -> int:
        """Number of subjects."""
        return int(self.at_risk[0])

    @property
    def n_events(self) -> int:
        """Number of events."""
        return int(self.events.sum())


def event_table(
    counts: SurvivalCounts | CompetingCounts, *columns: NDArray[np.int64]
) -> tuple[NDArray[np.int64], ...]:
    """Rows of the life table: day 0 and every day with a count in one of ``columns``.

    Parameters
    ----------
    counts : SurvivalCounts or CompetingCounts
        The per-day counts (their ``n`` and ``at_risk``).
    *columns : numpy.ndarray
        Per-day count columns of ``counts`` that remove subjects from the risk set (events of
        each cause and censorings).

    Returns
    -------
    time, at_risk, *columns : numpy.ndarray
        Read-only; ``time`` and ``at_risk`` are the index of lifelines' ``event_table`` for
        the equivalent individual-level data, then each column at those days.

    Raises
    ------
    EstimationError
        If the counts hold no subjects.
    """
    if counts.n == 0:
        raise EstimationError("no subjects: the estimator needs at least one")
    removed = columns[0]
    for column in columns[1:]:
        removed = removed + column
    time = np.union1d([0], np.flatnonzero(removed)).astype(np.int64)
    rows = (counts.at_risk, *columns)
    return (readonly(time), *(readonly(column[time].copy()) for column in rows))


_Rows = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]


def survival_table(counts: SurvivalCounts) -> _Rows:
    """The :class:`SurvivalTable` fields of ``counts``: time, at_risk, events, censored."""
    time, at_risk, events, censored = event_table(counts, counts.events, counts.censored)
    return time, at_risk, events, censored


def rows_at(time: NDArray[np.int64], days: Sequence[int]) -> dict[int, int]:
    """Row of the table holding each report day's value (right-continuous steps)."""
    return {t: step_index(time, t) for t in days}


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


def json_table(result: object, *names: str) -> dict[str, list[int] | list[float | None]]:
    """Columns ``names`` of a result's event table for JSON (ints stay ints)."""
    out: dict[str, list[int] | list[float | None]] = {}
    for name in names:
        column = getattr(result, name)
        out[name] = json_ints(column) if np.issubdtype(column.dtype, np.integer) else json_floats(
            column
        )
    return out


def json_timepoints(
    points: Mapping[int, Any], value: str, with_at_risk: bool = True
) -> dict[str, dict[str, Any]]:
    """Curve readings by day for JSON: ``{value, ci: [lower, upper]}`` (and ``at_risk``)."""
    out: dict[str, dict[str, Any]] = {}
    for t, point in points.items():
        entry: dict[str, Any] = {
            value: json_float(getattr(point, value)),
            "ci": [json_float(point.ci_lower), json_float(point.ci_upper)],
        }
        if with_at_risk:
            entry["at_risk"] = int(point.at_risk)
        out[str(t)] = entry
    return out
