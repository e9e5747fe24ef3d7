"""Adverse events of special interest: pooled counts, exact intervals and disclosure.

Per term a site releases an :class:`AdverseEventStats`: patients at risk, patients with the
event, patient-days at risk, patients by worst grade and a per-day histogram of onset days;
the aggregator adds them. Proportions carry the Clopper-Pearson interval (statsmodels
``proportion_confint(method="beta")``), rates per 100 patient-years the exact Garwood interval
(``chi2(alpha/2, 2k) / 2`` and ``chi2(1 - alpha/2, 2k + 2) / 2`` events; statsmodels
``confint_poisson(method="exact-c")``), and the median onset day is ``numpy.median`` of the
onset days.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from analytics._day_counts import check_horizon, frozen_counts
from analytics._event_table import check_alpha, json_float
from analytics._pooling import Pooled
from analytics.disclosure import suppress_count

__all__ = [
    "DAYS_PER_YEAR",
    "MAX_GRADE",
    "AdverseEventStats",
    "adverse_event_stats",
    "ae_term_result",
    "median_from_histogram",
    "poisson_rate_ci",
    "proportion_ci",
]

DAYS_PER_YEAR = 365.25
MAX_GRADE = 5  # CTCAE grades 1-5; ASTCT grades 1-4


def _check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def proportion_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Clopper-Pearson ``1 - alpha`` interval of the proportion ``k / n``.

    Raises
    ------
    ValueError
        If ``n < 1``, ``k`` is not within ``0..n`` or ``alpha`` is not within (0, 1).
    """
    k, n = _check_count(k, "k"), _check_count(n, "n")
    alpha = check_alpha(alpha)
    if n < 1 or k > n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    lower = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    upper = 1.0 if k == n else float(stats.beta.isf(alpha / 2, k + 1, n - k))
    return lower, upper


def poisson_rate_ci(k: int, exposure: float, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Garwood) ``1 - alpha`` interval of the Poisson rate ``k / exposure``.

    Equal to ``chi2.ppf(alpha / 2, 2k) / (2 exposure)`` and
    ``chi2.ppf(1 - alpha / 2, 2k + 2) / (2 exposure)``, computed as gamma quantiles.

    Raises
    ------
    ValueError
        If ``k`` is not a non-negative integer, ``exposure <= 0`` or ``alpha`` is invalid.
    """
    k = _check_count(k, "k")
    alpha = check_alpha(alpha)
    exposure = float(exposure)
    if not (math.isfinite(exposure) and exposure > 0):
        raise ValueError(f"exposure must be positive and finite, got {exposure!r}")
    lower = 0.0 if k == 0 else float(stats.gamma.ppf(alpha / 2, k)) / exposure
    upper = float(stats.gamma.isf(alpha / 2, k + 1)) / exposure
    return lower, upper


def median_from_histogram(hist: ArrayLike) -> float | None:
    """Median of the values ``d`` repeated ``hist[d]`` times (``numpy.median``); None if empty."""
    counts = np.asarray(hist)
    if counts.ndim != 1 or np.any(counts < 0):
        raise ValueError("hist must be a 1-D array of non-negative counts")
    total = int(counts.sum())
    if total == 0:
        return None
    cumulative = np.cumsum(counts)
    # Values at sorted positions (total - 1) // 2 and total // 2 (0-based); mean of the two.
    low = int(np.searchsorted(cumulative, (total - 1) // 2 + 1))
    high = int(np.searchsorted(cumulative, total // 2 + 1))
    return (low + high) / 2.0


@dataclass(frozen=True, eq=False)
class AdverseEventStats(Pooled):
    """Per-term sufficient statistics of adverse events at one site or pooled.

    Attributes
    ----------
    at_risk : int
        Patients at risk of the event.
    with_event : int
        Patients with at least one event of the term.
    person_days : int
        Patient-days at risk summed over patients.
    grades : numpy.ndarray
        int64, length :data:`MAX_GRADE`; ``grades[g - 1]`` patients had worst grade ``g``.
    onset_histogram : numpy.ndarray
        int64, length ``window_days + 1``; ``onset_histogram[d]`` patients had their first
        event on day ``d``.
    """

    at_risk: int
    with_event: int
    person_days: int
    grades: NDArray[np.int64]
    onset_histogram: NDArray[np.int64]

    def __post_init__(self) -> None:
        for name in ("at_risk", "with_event", "person_days"):
            object.__setattr__(self, name, _check_count(getattr(self, name), name))
        grades = frozen_counts(self.grades, "grades")
        if grades.size != MAX_GRADE:
            raise ValueError(f"grades must hold {MAX_GRADE} counts, got {grades.size}")
        object.__setattr__(self, "grades", grades)
        object.__setattr__(self, "onset_histogram", frozen_counts(self.onset_histogram, "onset"))
        if self.with_event > self.at_risk:
            raise ValueError("with_event exceeds at_risk")

    def _check_poolable(self, other: AdverseEventStats) -> None:
        if other.onset_histogram.size != self.onset_histogram.size:
            raise ValueError("cannot pool onset histograms of different windows")

    def to_dict(self, min_cell: int, by_grade: bool = True, alpha: float = 0.05) -> dict[str, Any]:
        """Term entry of an ``adverse_events`` analysis (see :func:`ae_term_result`).

        With ``by_grade`` the grades are "1".."4", and "5" when any patient had grade 5.
        """
        # Grades 1-4 always (ASTCT and CTCAE share them); grade 5 (CTCAE, fatal) when present.
        shown = MAX_GRADE if self.grades[MAX_GRADE - 1] > 0 else MAX_GRADE - 1
        grades = {str(g + 1): int(self.grades[g]) for g in range(shown)} if by_grade else None
        return ae_term_result(
            self.at_risk,
            self.with_event,
            float(self.person_days),
            grades,
            self.onset_histogram,
            min_cell,
            alpha=alpha,
        )


def adverse_event_stats(
    onset_days: ArrayLike, worst_grades: ArrayLike, days_at_risk: ArrayLike, window_days: int
) -> AdverseEventStats:
    """Statistics of one term from individual data (one entry per patient at risk).

    Parameters
    ----------
    onset_days : array_like
        Day of the first event of the term (0..window_days), NaN for patients without one.
    worst_grades : array_like
        Worst grade of the term for patients with an event (ignored otherwise); a patient whose
        grade is missing (NaN) or outside ``1..MAX_GRADE`` counts under no grade.
    days_at_risk : array_like
        Integer patient-days at risk of each patient (as the study defines them).
    window_days : int
        Last onset day counted; the onset histogram covers days ``0..window_days``.

    Raises
    ------
    ValueError
        On arrays of different lengths, onsets outside the window or negative or fractional
        days at risk.
    """
    window_days = check_horizon(window_days)
    onset = np.asarray(onset_days, dtype=np.float64)
    grade = np.asarray(worst_grades, dtype=np.float64)
    days = np.asarray(days_at_risk, dtype=np.float64)
    if not (onset.ndim == grade.ndim == days.ndim == 1) or not (
        onset.size == grade.size == days.size
    ):
        raise ValueError("onset_days, worst_grades and days_at_risk must be 1-D of equal length")
    has = ~np.isnan(onset)
    if np.any((onset[has] < 0) | (onset[has] > window_days) | (onset[has] % 1 != 0)):
        raise ValueError(f"onset days must be whole days within 0..{window_days}")
    g = grade[has]
    g = g[np.isin(g, np.arange(1, MAX_GRADE + 1))]
    if np.any(~np.isfinite(days) | (days < 0) | (days % 1 != 0)):
        raise ValueError("days at risk must be non-negative whole days")
    return AdverseEventStats(
        at_risk=int(onset.size),
        with_event=int(has.sum()),
        person_days=int(days.sum()),
        grades=np.bincount(g.astype(np.int64) - 1, minlength=MAX_GRADE),
        onset_histogram=np.bincount(onset[has].astype(np.int64), minlength=window_days + 1),
    )


def ae_term_result(
    at_risk: int,
    with_event: int,
    person_days: float,
    grades: Mapping[str, int] | None,
    onset_histogram: ArrayLike | None,
    min_cell: int,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """JSON-ready summary of one adverse-event term, with small counts suppressed.

    ``with_event`` and grade counts within ``1..min_cell - 1`` become ``"<{min_cell}"``; the
    proportion, its interval, the rate and its interval are None when ``with_event`` is
    suppressed (they would reveal it), as is the median onset day when the histogram is None or
    holds fewer than ``min_cell`` onsets. Rates are per 100 patient-years
    (``person_days / 365.25``).

    Returns
    -------
    dict
        ``at_risk, with_event, proportion, ci, rate_per_100py, rate_ci, person_years,
        median_onset_day, grades`` (``grades`` is None when not asked for).
    """
    at_risk = _check_count(at_risk, "at_risk")
    with_event = _check_count(with_event, "with_event")
    if with_event > at_risk:
        raise ValueError(f"with_event ({with_event}) exceeds at_risk ({at_risk})")
    person_days = float(person_days)
    if not (math.isfinite(person_days) and person_days >= 0):
        raise ValueError(f"person_days must be non-negative and finite, got {person_days!r}")
    released = suppress_count(with_event, min_cell)
    hidden = isinstance(released, str)
    person_years = person_days / DAYS_PER_YEAR

    proportion = ci = rate = rate_ci = None
    if not hidden and at_risk > 0:
        proportion = with_event / at_risk
        ci = list(proportion_ci(with_event, at_risk, alpha))
    if not hidden and person_years > 0:
        rate = 100.0 * with_event / person_years
        lo, hi = poisson_rate_ci(with_event, person_years / 100.0, alpha)
        rate_ci = [lo, hi]

    median = None
    if onset_histogram is not None and not hidden:
        hist = np.asarray(onset_histogram)
        if int(hist.sum()) >= min_cell:
            median = median_from_histogram(hist)

    return {
        "at_risk": at_risk,
        "with_event": released,
        "proportion": json_float(proportion),
        "ci": None if ci is None else [json_float(v) for v in ci],
        "rate_per_100py": json_float(rate),
        "rate_ci": None if rate_ci is None else [json_float(v) for v in rate_ci],
        "person_years": json_float(person_years),
        "median_onset_day": median,
        "grades": None
        if grades is None
        else {str(g): suppress_count(int(c), min_cell) for g, c in grades.items()},
    }
