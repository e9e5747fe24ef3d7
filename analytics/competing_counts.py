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

from analytics.survival_counts import _check_horizon, _check_individuals, _frozen_counts

__all__ = ["CompetingCounts", "competing_counts", "pool_competing"]


@dataclass(frozen=True, eq=False)
class CompetingCounts:
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

    def __post_init__(self) -> None:
        arrays = {
            name: _frozen_counts(getattr(self, name), name)
            for name in ("cause1", "cause2", "censored")
        }
        sizes = {a.size for a in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(
                "cause1, cause2 and censored differ in length "
                f"({', '.join(str(a.size) for a in arrays.values())})"
            )
        for name, arr in arrays.items():
            object.__setattr__(self, name, arr)

    @classmethod
    def zeros(cls, horizon: int) -> CompetingCounts:
        """Return empty counts (no subjects) over days ``0..horizon``."""
        horizon = _check_horizon(horizon)
        empty = np.zeros(horizon + 1, dtype=np.int64)
        return cls(cause1=empty, cause2=empty, censored=empty)

    @property
    def horizon(self) -> int:
        """Last day covered by the counts."""
        return int(self.cause1.size - 1)

    @property
    def n(self) -> int:
        """Total number of subjects."""
        return int(self.cause1.sum() + self.cause2.sum() + self.censored.sum())

    @property
    def n_cause1(self) -> int:
        """Total number of events of interest."""
        return int(self.cause1.sum())

    @property
    def n_cause2(self) -> int:
        """Total number of competing events."""
        return int(self.cause2.sum())

    @property
    def at_risk(self) -> NDArray[np.int64]:
        """Numbers at risk: ``at_risk[d]`` subjects have a time ``>= d``."""
        removed = self.cause1 + self.cause2 + self.censored
        out = np.cumsum(removed[::-1])[::-1].astype(np.int64)
        out.setflags(write=False)
        return out

    def __add__(self, other: object) -> CompetingCounts:
        if not isinstance(other, CompetingCounts):
            return NotImplemented
        if other.horizon != self.horizon:
            raise ValueError(
                f"cannot pool counts with different horizons ({self.horizon} != {other.horizon})"
            )
        return CompetingCounts(
            cause1=self.cause1 + other.cause1,
            cause2=self.cause2 + other.cause2,
            censored=self.censored + other.censored,
        )

    def __radd__(self, other: object) -> CompetingCounts:
        # Lets the builtin ``sum`` start from 0.
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self
        return NotImplemented

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompetingCounts):
            return NotImplemented
        return bool(
            np.array_equal(self.cause1, other.cause1)
            and np.array_equal(self.cause2, other.cause2)
            and np.array_equal(self.censored, other.censored)
        )

    def __hash__(self) -> int:
        return hash((self.cause1.tobytes(), self.cause2.tobytes(), self.censored.tobytes()))


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
    horizon = _check_horizon(horizon)
    t, c = _check_individuals(durations, causes, "causes")
    if c.size and (c.dtype == np.bool_ or not np.all((c == 0) | (c == 1) | (c == 2))):
        raise ValueError("causes must be 0 (censored), 1 (event of interest) or 2 (competing)")
    beyond = t > horizon
    cause = np.where(beyond, 0, c).astype(np.int64)
    days = np.where(beyond, horizon, t).astype(np.int64)
    size = horizon + 1
    return CompetingCounts(
        cause1=np.bincount(days[cause == 1], minlength=size),
        cause2=np.bincount(days[cause == 2], minlength=size),
        censored=np.bincount(days[cause == 0], minlength=size),
    )


def pool_competing(counts: Iterable[CompetingCounts]) -> CompetingCounts:
    """Add the competing-risks counts of several sites (all with the same horizon).

    Raises
    ------
    ValueError
        If ``counts`` is empty or the horizons differ.
    """
    items = list(counts)
    if not items:
        raise ValueError("pool_competing needs at least one CompetingCounts")
    total = items[0]
    for item in items[1:]:
        total = total + item
    return total
