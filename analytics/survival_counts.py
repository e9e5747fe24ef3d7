"""Per-day event and censoring counts: the sufficient statistics of right-censored data.

A site turns its individual durations into a :class:`SurvivalCounts`; the aggregator adds the
sites' counts. Kaplan-Meier, Nelson-Aalen and the log-rank test depend on the data only through
these counts, so estimators computed from pooled counts equal the same estimators on the pooled
individual-level data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analytics._day_counts import (
    DayCounts,
    check_horizon,
    check_individuals,
    tally_days,
    zero_columns,
)
from analytics._pooling import pool

__all__ = ["SurvivalCounts", "pool_counts", "survival_counts"]


@dataclass(frozen=True, eq=False)
class SurvivalCounts(DayCounts):
    """Numbers of events and censorings on each integer day ``0..horizon``.

    Attributes
    ----------
    events : numpy.ndarray
        int64, length ``horizon + 1``; ``events[d]`` subjects had the event on day ``d``.
    censored : numpy.ndarray
        int64, length ``horizon + 1``; ``censored[d]`` subjects were censored on day ``d``.

    Notes
    -----
    Both arrays are read-only copies. ``a + b`` pools two sets of counts with the same horizon.
    """

    events: NDArray[np.int64]
    censored: NDArray[np.int64]

    COLUMNS = ("events", "censored")

    @classmethod
    def zeros(cls, horizon: int) -> SurvivalCounts:
        """Return empty counts (no subjects) over days ``0..horizon``."""
        return cls(*zero_columns(horizon, 2))

    @property
    def n_events(self) -> int:
        """Total number of events."""
        return int(self.events.sum())


def survival_counts(durations: ArrayLike, events: ArrayLike, horizon: int) -> SurvivalCounts:
    """Count events and censorings per day from individual-level data.

    Parameters
    ----------
    durations : array_like
        Integer days since infusion (>= 0), one per subject.
    events : array_like
        1 (or True) when the subject's duration ends with the event, 0 when censored.
    horizon : int
        Last day of follow-up. A duration beyond it becomes a censoring on day ``horizon``;
        an event exactly on day ``horizon`` stays an event.

    Returns
    -------
    SurvivalCounts

    Raises
    ------
    ValueError
        On negative, non-integer or non-finite durations, events other than 0/1, or arrays of
        different lengths.
    """
    horizon = check_horizon(horizon)
    t, e = check_individuals(durations, events, "events")
    if e.size and not np.all((e == 0) | (e == 1)):
        raise ValueError("events must be 0/1 or boolean")
    return SurvivalCounts(*tally_days(t, e, horizon, (1, 0)))


def pool_counts(counts: Iterable[SurvivalCounts]) -> SurvivalCounts:
    """Add the counts of several sites (all with the same horizon).

    Raises
    ------
    ValueError
        If ``counts`` is empty or the horizons differ.
    """
    return pool(counts, "pool_counts needs at least one SurvivalCounts")
