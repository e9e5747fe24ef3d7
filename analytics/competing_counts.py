"""Per-day counts of competing-risks data: events of interest, competing events, censorings.

A site turns its individual (duration, cause) pairs into a :class:`CompetingCounts`; the
aggregator adds the sites' counts. The Aalen-Johansen cumulative incidence, its Aalen variance
and Gray's test depend on the data only through these counts (per group), so estimators
computed from pooled counts equal the same estimators on the pooled individual-level data.
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

__all__ = ["CompetingCounts", "competing_counts", "pool_competing"]


@dataclass(frozen=True, eq=False)
class CompetingCounts(DayCounts):
    """Numbers of events of each cause and of censorings on each integer day ``0..horizon``.

    Attributes
    ----------
    cause1 : numpy.ndarray
        int64, length ``horizon + 1``; ``cause1[d]`` subjects had the event of interest on
        day ``d``.
    cause2 : numpy.ndarray
        int64, same length; competing events on day ``d``.
    censored : numpy.ndarray
        int64, same length; censorings on day ``d``.

    Notes
    -----
    The arrays are read-only copies. ``a + b`` pools two sets of counts with the same horizon.
    """

    cause1: NDArray[np.int64]
    cause2: NDArray[np.int64]
    censored: NDArray[np.int64]

    COLUMNS = ("cause1", "cause2", "censored")

    @classmethod
    def zeros(cls, horizon: int) -> CompetingCounts:
        """Return empty counts (no subjects) over days ``0..horizon``."""
        return cls(*zero_columns(horizon, 3))

    @property
    def n_cause1(self) -> int:
        """Total number of events of interest."""
        return int(self.cause1.sum())

    @property
    def n_cause2(self) -> int:
        """Total number of competing events."""
        return int(self.cause2.sum())


def competing_counts(durations: ArrayLike, causes: ArrayLike, horizon: int) -> CompetingCounts:
    """Count events of each cause and censorings per day from individual-level data.

    Parameters
    ----------
    durations : array_like
        Integer days since infusion (>= 0), one per subject.
    causes : array_like
        0 when censored, 1 for the event of interest, 2 for a competing event.
    horizon : int
        Last day of follow-up. A duration beyond it becomes a censoring on day ``horizon``;
        an event exactly on day ``horizon`` stays an event.

    Returns
    -------
    CompetingCounts

    Raises
    ------
    ValueError
        On negative, non-integer or non-finite durations, causes other than 0/1/2, or arrays
        of different lengths.
    """
    horizon = check_horizon(horizon)
    t, c = check_individuals(durations, causes, "causes")
    if c.size and (c.dtype == np.bool_ or not np.all((c == 0) | (c == 1) | (c == 2))):
        raise ValueError("causes must be 0 (censored), 1 (event of interest) or 2 (competing)")
    return CompetingCounts(*tally_days(t, c, horizon, (1, 2, 0)))


def pool_competing(counts: Iterable[CompetingCounts]) -> CompetingCounts:
    """Add the competing-risks counts of several sites (all with the same horizon).

    Raises
    ------
    ValueError
        If ``counts`` is empty or the horizons differ.
    """
    return pool(counts, "pool_competing needs at least one CompetingCounts")
