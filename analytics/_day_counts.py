"""Per-day count columns over days ``0..horizon`` and their validation (private).

:class:`~analytics.survival_counts.SurvivalCounts` (events, censored) and
:class:`~analytics.competing_counts.CompetingCounts` (cause1, cause2, censored) are both a few
int64 columns, one entry per day, that remove subjects from the risk set; this module holds
what they share: checking and freezing the columns, the horizon, the numbers at risk, pooling,
and tallying individual durations by day.
"""

from __future__ import annotations

from typing import ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analytics._pooling import Pooled

__all__ = [
    "DayCounts",
    "check_horizon",
    "check_individuals",
    "frozen_counts",
    "tally_days",
    "zero_columns",
]


def frozen_counts(values: ArrayLike, name: str) -> NDArray[np.int64]:
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


def check_horizon(horizon: int) -> int:
    """Validate a number of days (``>= 0``) and return it as int."""
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer):
        raise ValueError(f"horizon must be an integer number of days, got {horizon!r}")
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    return int(horizon)


def check_individuals(durations: ArrayLike, outcomes: ArrayLike,
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


def tally_days(
    durations: NDArray[np.integer | np.floating],
    outcomes: NDArray[np.generic],
    horizon: int,
    codes: tuple[int, ...],
) -> list[NDArray[np.int64]]:
    """Per-day numbers of subjects with each outcome code in ``codes`` (0 is a censoring).

    A duration beyond ``horizon`` becomes a censoring (code 0) on day ``horizon``; an event
    exactly on day ``horizon`` keeps its code.
    """
    beyond = durations > horizon
    code = np.where(beyond, 0, outcomes).astype(np.int64)
    days = np.where(beyond, horizon, durations).astype(np.int64)
    return [np.bincount(days[code == c], minlength=horizon + 1) for c in codes]


def zero_columns(horizon: int, columns: int) -> list[NDArray[np.int64]]:
    """``columns`` empty count columns over days ``0..horizon``."""
    empty = np.zeros(check_horizon(horizon) + 1, dtype=np.int64)
    return [empty] * columns


class DayCounts(Pooled):
    """Base of frozen dataclasses whose fields are the count columns named in ``COLUMNS``."""

    COLUMNS: ClassVar[tuple[str, ...]]

    def __post_init__(self) -> None:
        arrays = {name: frozen_counts(getattr(self, name), name) for name in self.COLUMNS}
        sizes = [str(a.size) for a in arrays.values()]
        if len(set(sizes)) != 1:
            names = ", ".join(self.COLUMNS[:-1]) + " and " + self.COLUMNS[-1]
            raise ValueError(f"{names} differ in length ({' != '.join(sizes)})")
        for name, arr in arrays.items():
            object.__setattr__(self, name, arr)

    def _columns(self) -> list[NDArray[np.int64]]:
        return [getattr(self, name) for name in self.COLUMNS]

    @property
    def horizon(self) -> int:
        """Last day covered by the counts."""
        return int(self._columns()[0].size - 1)

    @property
    def n(self) -> int:
        """Total number of subjects."""
        return int(sum(column.sum() for column in self._columns()))

    @property
    def at_risk(self) -> NDArray[np.int64]:
        """Numbers at risk: ``at_risk[d]`` subjects have a time ``>= d``."""
        columns = self._columns()
        removed = columns[0]
        for column in columns[1:]:
            removed = removed + column
        out = np.cumsum(removed[::-1])[::-1].astype(np.int64)
        out.setflags(write=False)
        return out

    def _check_poolable(self, other: Self) -> None:
        if other.horizon != self.horizon:
            raise ValueError(
                f"cannot pool counts with different horizons ({self.horizon} != {other.horizon})"
            )
