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

__all__ = ["SurvivalCounts", "pool_counts", "survival_counts"]


def _frozen_counts(values: ArrayLike, name: str) -> NDArray[np.int64]:
    """Return a read-only int64 copy of ``values``, checking it is a 1-D non-negative count."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got {arr.ndim} dimensions")
    if arr.size == 0:
        raise ValueError(f"{name} must hold at least day 0")
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must hold integer counts, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and (
        not np.all(np.isfinite(arr)) or np.any(arr != np.floor(arr))
    ):
        raise ValueError(f"{name} must hold integer counts")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative")
    out = arr.astype(np.int64, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class SurvivalCounts:
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

    def __post_init__(self) -> None:
        events = _frozen_counts(self.events, "events")
        censored = _frozen_counts(self.censored, "censored")
        if events.shape != censored.shape:
            raise ValueError(
                f"events and censored differ in length ({events.size} != {censored.size})"
            )
        object.__setattr__(self, "events", events)
        object.__setattr__(self, "censored", censored)

    @classmethod
    def zeros(cls, horizon: int) -> SurvivalCounts:
        """Return empty counts (no subjects) over days ``0..horizon``."""
        horizon = _check_horizon(horizon)
        empty = np.zeros(horizon + 1, dtype=np.int64)
        return cls(events=empty, censored=empty)

    @property
    def horizon(self) -> int:
        """Last day covered by the counts."""
        return int(self.events.size - 1)

    @property
    def n(self) -> int:
        """Total number of subjects."""
        return int(self.events.sum() + self.censored.sum())

    @property
    def n_events(self) -> int:
        """Total number of events."""
        return int(self.events.sum())

    @property
    def at_risk(self) -> NDArray[np.int64]:
        """Numbers at risk: ``at_risk[d]`` subjects have a time ``>= d``."""
        removed = self.events + self.censored
        out = np.cumsum(removed[::-1])[::-1].astype(np.int64)
        out.setflags(write=False)
        return out

    def __add__(self, other: object) -> SurvivalCounts:
        if not isinstance(other, SurvivalCounts):
            return NotImplemented
        if other.horizon != self.horizon:
            raise ValueError(
                f"cannot pool counts with different horizons ({self.horizon} != {other.horizon})"
            )
        return SurvivalCounts(
            events=self.events + other.events, censored=self.censored + other.censored
        )

    def __radd__(self, other: object) -> SurvivalCounts:
        # Lets the builtin ``sum`` start from 0.
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self
        return NotImplemented

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SurvivalCounts):
            return NotImplemented
        return bool(
            np.array_equal(self.events, other.events)
            and np.array_equal(self.censored, other.censored)
        )

    def __hash__(self) -> int:
        return hash((self.events.tobytes(), self.censored.tobytes()))


def _check_individuals(durations: ArrayLike, outcomes: ArrayLike,
                       name: str) -> tuple[NDArray[np.integer | np.floating], NDArray[np.generic]]:
    """Durations (whole, finite days >= 0) and a 1-D outcome array of the same length."""
    t = np.asarray(durations)
    o = np.asarray(outcomes)
    if t.ndim != 1 or o.ndim != 1:
        raise ValueError(f"durations and {name} must be 1-D")
    if t.size != o.size:
        raise ValueError(f"durations and {name} differ in length ({t.size} != {o.size})")
    if t.size and not (np.issubdtype(t.dtype, np.integer) or np.issubdtype(t.dtype, np.floating)):
        raise ValueError(f"durations must be numeric, got dtype {t.dtype}")
    if t.size and np.issubdtype(t.dtype, np.floating):
        if not np.all(np.isfinite(t)):
            raise ValueError("durations must be finite")
        if np.any(t != np.floor(t)):
            raise ValueError("durations must be whole days")
    if t.size and np.any(t < 0):
        raise ValueError("durations must be >= 0")
    return t, o


def _check_horizon(horizon: int) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer):
        raise ValueError(f"horizon must be an integer number of days, got {horizon!r}")
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    return int(horizon)


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
    horizon = _check_horizon(horizon)
    t, e = _check_individuals(durations, events, "events")
    if e.size and not np.all((e == 0) | (e == 1)):
        raise ValueError("events must be 0/1 or boolean")
    beyond = t > horizon
    observed = e.astype(bool) & ~beyond
    days = np.where(beyond, horizon, t).astype(np.int64)
    size = horizon + 1
    return SurvivalCounts(
        events=np.bincount(days[observed], minlength=size),
        censored=np.bincount(days[~observed], minlength=size),
    )


def pool_counts(counts: Iterable[SurvivalCounts]) -> SurvivalCounts:
    """Add the counts of several sites (all with the same horizon).

    Raises
    ------
    ValueError
        If ``counts`` is empty or the horizons differ.
    """
    items = list(counts)
    if not items:
        raise ValueError("pool_counts needs at least one SurvivalCounts")
    total = items[0]
    for item in items[1:]:
        total = total + item
    return total
