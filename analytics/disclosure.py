"""Disclosure control for unmasked releases of per-day counts.

A site that releases its counts in the clear (secure aggregation off) first coarsens them to time
bins: days ``0..horizon`` are cut into consecutive bins and every subject's time is rounded up to
the last day of its bin, so events and censorings are released only at bin ends. Bins are grown
greedily from day 0 until they hold at least ``max(min_bin_events, min_cell)`` events and a
censored count that is 0 or at least ``min_cell``; a remainder that cannot form a bin of its own
is merged backwards into the preceding bins.

Guarantee (checked before returning): with ``n >= min_cell`` subjects, every released event count,
censored count and number at risk is 0 or at least ``min_cell``. Proof sketch: each bin with
subjects holds ``>= min_cell`` events (or is the only bin and its non-zero counts are each
``>= min_cell``), and the number at risk on any day of bin ``k`` is the number of subjects in bins
``k, k+1, ...``, which is 0 or at least the events of bin ``k`` (or ``n`` for a single bin).

Estimators on the coarsened counts equal the same estimators on individual times rounded up to
the bin ends (:func:`round_up_to_bins`). With ``min_bin_events == min_cell == 1`` the counts are
released unchanged at day resolution (a site's explicit choice).

The algorithm is written once, over a per-day matrix of ``k`` count columns whose leading columns
are events (:func:`coarsen_columns`): :func:`coarsen_counts` applies it to ``[events, censored]``
and :func:`coarsen_competing` to ``[cause1, cause2, censored]``, counting events of both causes
towards a bin and keeping each cause's count and the censored count safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analytics.competing_counts import CompetingCounts
from analytics.errors import DisclosureError
from analytics.survival_counts import SurvivalCounts

__all__ = [
    "COMPETING_COLUMNS",
    "SURVIVAL_COLUMNS",
    "CoarsenedColumns",
    "CoarsenedCompeting",
    "CoarsenedCounts",
    "CountColumns",
    "coarsen_columns",
    "coarsen_competing",
    "coarsen_counts",
    "round_up_to_bins",
    "suppress_count",
]


@dataclass(frozen=True)
class CountColumns:
    """The count columns of a per-day matrix.

    Attributes
    ----------
    names : tuple of str
        Name of each column (for instance the attributes of a counts class).
    described : tuple of str
        How an error message names each column's count ("3 events, 2 censored").
    events : int
        How many leading columns hold events; their sum is what a bin must collect.
    """

    names: tuple[str, ...]
    described: tuple[str, ...]
    events: int

    def __post_init__(self) -> None:
        if len(self.described) != len(self.names) or not 1 <= self.events <= len(self.names):
            raise ValueError("CountColumns needs one description per column and >= 1 event column")


SURVIVAL_COLUMNS = CountColumns(("events", "censored"), ("events", "censored"), events=1)
"""Columns of :class:`~analytics.survival_counts.SurvivalCounts`."""
COMPETING_COLUMNS = CountColumns(
    ("cause1", "cause2", "censored"), ("events", "competing", "censored"), events=2
)
"""Columns of :class:`~analytics.competing_counts.CompetingCounts` (both causes are events)."""


@dataclass(frozen=True, eq=False)
class CoarsenedColumns:
    """A per-day count matrix released at bin resolution.

    Attributes
    ----------
    counts : numpy.ndarray
        int64, shape ``(horizon + 1, k)``, read-only; rows are non-zero only on bin ends.
    bin_ends : tuple of int
        Last day of each bin, increasing, the last one equal to the horizon. Bin ``k`` covers
        days ``bin_ends[k-1] + 1 .. bin_ends[k]`` (the first starts at day 0).
    max_bin_width : int
        Widest bin, in days, among bins holding subjects (1 at day resolution or with no
        subjects): the time resolution of the release.
    """

    counts: NDArray[np.int64]
    bin_ends: tuple[int, ...]
    max_bin_width: int


C = TypeVar("C", SurvivalCounts, CompetingCounts)


@dataclass(frozen=True, eq=False)
class _Coarsened(Generic[C]):
    counts: C
    bin_ends: tuple[int, ...]
    max_bin_width: int

    @property
    def coarsened(self) -> bool:
        """Whether the release is coarser than day resolution."""
        return len(self.bin_ends) < self.counts.horizon + 1


class CoarsenedCounts(_Coarsened[SurvivalCounts]):
    """Counts released at bin resolution.

    Attributes
    ----------
    counts : SurvivalCounts
        Released counts; non-zero only on bin ends.
    bin_ends : tuple of int
        Last day of each bin, as in :class:`CoarsenedColumns`.
    max_bin_width : int
        Widest bin, in days, among bins holding subjects (1 at day resolution or with no
        subjects): the time resolution of the release.
    """


class CoarsenedCompeting(_Coarsened[CompetingCounts]):
    """Competing-risks counts released at bin resolution (attributes as
    :class:`CoarsenedCounts`, with :class:`CompetingCounts`)."""


def _check_threshold(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def suppress_count(value: int, min_cell: int) -> int | str:
    """Return ``value``, or ``"<{min_cell}"`` when ``0 < value < min_cell``.

    Raises
    ------
    ValueError
        If ``value`` is negative or not an integer, or ``min_cell < 1``.
    """
    min_cell = _check_threshold(min_cell, "min_cell")
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"a count must be a non-negative integer, got {value!r}")
    if 0 < value < min_cell:
        return f"<{min_cell}"
    return int(value)


def round_up_to_bins(durations: ArrayLike, bin_ends: tuple[int, ...]) -> NDArray[np.int64]:
    """Round integer days up to the end of their bin.

    Parameters
    ----------
    durations : array_like
        Integer days within ``0..bin_ends[-1]`` (truncate at the horizon first).
    bin_ends : tuple of int
        Bin ends of a :class:`CoarsenedCounts`.

    Returns
    -------
    numpy.ndarray
        int64 days, each the last day of the bin holding the input day.
    """
    days = np.asarray(durations)
    ends = np.asarray(bin_ends, dtype=np.int64)
    if ends.ndim != 1 or ends.size == 0 or np.any(np.diff(ends) <= 0) or ends[0] < 0:
        raise ValueError("bin_ends must be a non-empty increasing sequence of days >= 0")
    if days.size and (np.any(days < 0) or np.any(days > ends[-1])):
        raise ValueError(f"durations must lie within days 0..{int(ends[-1])}")
    if days.size and np.any(days != np.floor(days)):
        raise ValueError("durations must be whole days")
    return ends[np.searchsorted(ends, days, side="left")].astype(np.int64)


@dataclass(frozen=True)
class _Rules:
    """The thresholds a released bin must meet."""

    events: int  # leading event columns
    min_events: int
    min_cell: int

    def safe(self, cells: Sequence[int]) -> bool:
        """Every count is 0 or at least ``min_cell``."""
        return all(c == 0 or c >= self.min_cell for c in cells)

    def closes(self, cells: Sequence[int]) -> bool:
        """A bin holding ``cells`` may be released on its own."""
        return sum(cells[: self.events]) >= self.min_events and self.safe(cells)


def _bins(
    rows: list[list[int]], rules: _Rules, columns: CountColumns, n: int
) -> list[tuple[int, int, list[int]]]:
    """Bins ``(start, end, cells)``: grown greedily, the remainder merged backwards.

    Bins close as soon as :meth:`_Rules.closes`. A trailing remainder without subjects stays an
    empty bin; any other remainder is merged into the bins before it until the merged bin
    closes. One bin over everything is released when each of its counts is safe.
    """
    width = len(columns.names)
    bins: list[tuple[int, int, list[int]]] = []
    start, cells = 0, [0] * width
    for day, row in enumerate(rows):
        cells = [c + r for c, r in zip(cells, row, strict=True)]
        if rules.closes(cells):
            bins.append((start, day, cells))
            start, cells = day + 1, [0] * width
    if start == len(rows):
        return bins
    end = len(rows) - 1
    if sum(cells) == 0 and bins:
        bins.append((start, end, cells))  # trailing days without subjects: an empty bin
        return bins
    while bins and not rules.closes(cells):
        start, _, before = bins.pop()
        cells = [b + c for b, c in zip(before, cells, strict=True)]
    if not bins and not rules.safe(cells):
        # the reason travels to the aggregator: it names the rule, never the counts
        raise DisclosureError(
            f"cannot coarsen into bins with at least {rules.min_events} events and no count "
            f"below {rules.min_cell}"
        )
    bins.append((start, end, cells))
    return bins


def _check_released(released: NDArray[np.int64], columns: CountColumns, min_cell: int) -> None:
    """Enforce the guarantee: every non-zero count and number at risk is ``>= min_cell``."""
    at_risk = np.cumsum(released.sum(axis=1)[::-1])[::-1]
    for name, values in (*zip(columns.names, released.T, strict=True), ("at_risk", at_risk)):
        if np.any((values > 0) & (values < min_cell)):
            raise DisclosureError(f"coarsened {name} would hold a count below {min_cell}")


def _count_matrix(counts: ArrayLike, columns: CountColumns) -> NDArray[np.int64]:
    matrix = np.asarray(counts)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] != len(columns.names):
        raise ValueError(f"counts must be a (days, {len(columns.names)}) matrix")
    if not np.issubdtype(matrix.dtype, np.integer) or np.any(matrix < 0):
        raise ValueError("counts must be non-negative integers")
    out = matrix.astype(np.int64, copy=True)
    out.setflags(write=False)
    return out


def coarsen_columns(
    counts: ArrayLike, columns: CountColumns, min_bin_events: int, min_cell: int
) -> CoarsenedColumns:
    """Coarsen a per-day count matrix to time bins that satisfy the site's disclosure rules.

    Bins grow greedily from day 0 and close once they hold at least
    ``max(min_bin_events, min_cell)`` events (the leading ``columns.events`` columns together)
    and each of their counts is 0 or at least ``min_cell``; a trailing remainder that misses
    this is merged backwards until the merged bin meets it (one without subjects stays an empty
    bin). One bin over everything is released when each of its non-zero counts is at least
    ``min_cell``. Every released non-zero count, ``n`` and number at risk is then at least
    ``min_cell`` (checked before returning). With ``min_bin_events == min_cell == 1`` the counts
    are returned unchanged at day resolution.

    Parameters
    ----------
    counts : array_like
        Non-negative integers, shape ``(horizon + 1, k)``: one group's per-day counts.
    columns : CountColumns
        What the ``k`` columns are (:data:`SURVIVAL_COLUMNS`, :data:`COMPETING_COLUMNS`).
    min_bin_events : int
        Fewest events per time bin.
    min_cell : int
        Smallest non-zero count that may be released.

    Returns
    -------
    CoarsenedColumns

    Raises
    ------
    DisclosureError
        If the group has fewer than ``min_cell`` subjects (but at least one), or no binning can
        satisfy the rules.
    ValueError
        If a threshold is not an integer >= 1, or ``counts`` is not such a matrix.
    """
    min_bin_events = _check_threshold(min_bin_events, "min_bin_events")
    min_cell = _check_threshold(min_cell, "min_cell")
    matrix = _count_matrix(counts, columns)
    horizon = matrix.shape[0] - 1
    n = int(matrix.sum())
    if min_bin_events == 1 and min_cell == 1:
        return CoarsenedColumns(matrix, tuple(range(horizon + 1)), max_bin_width=1)
    if n == 0:
        return CoarsenedColumns(matrix, (horizon,), max_bin_width=1)
    if n < min_cell:
        raise DisclosureError(f"fewer than min_cell={min_cell} subjects")
    rules = _Rules(columns.events, max(min_bin_events, min_cell), min_cell)
    bins = _bins(matrix.tolist(), rules, columns, n)
    released = np.zeros_like(matrix)
    for _, end, cells in bins:
        released[end] = cells
    _check_released(released, columns, min_cell)
    released.setflags(write=False)
    widths = [end - start + 1 for start, end, cells in bins if sum(cells) > 0]
    return CoarsenedColumns(released, tuple(end for _, end, _ in bins), max(widths))


def _matrix(counts: SurvivalCounts | CompetingCounts, columns: CountColumns) -> NDArray[np.int64]:
    return np.column_stack([getattr(counts, name) for name in columns.names])


def coarsen_counts(counts: SurvivalCounts, min_bin_events: int, min_cell: int) -> CoarsenedCounts:
    """One group's per-day survival counts coarsened under ``min_bin_events`` and ``min_cell``:
    :func:`coarsen_columns` over ``[events, censored]`` (same errors)."""
    out = coarsen_columns(_matrix(counts, SURVIVAL_COLUMNS), SURVIVAL_COLUMNS,
                          min_bin_events, min_cell)
    return CoarsenedCounts(SurvivalCounts(*out.counts.T), out.bin_ends, out.max_bin_width)


def coarsen_competing(
    counts: CompetingCounts, min_bin_events: int, min_cell: int
) -> CoarsenedCompeting:
    """One group's per-day competing-risks counts coarsened under ``min_bin_events`` (events of
    either cause) and ``min_cell``: :func:`coarsen_columns` over ``[cause1, cause2, censored]``
    (same errors)."""
    out = coarsen_columns(_matrix(counts, COMPETING_COLUMNS), COMPETING_COLUMNS,
                          min_bin_events, min_cell)
    return CoarsenedCompeting(CompetingCounts(*out.counts.T), out.bin_ends, out.max_bin_width)
