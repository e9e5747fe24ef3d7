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

:func:`coarsen_competing` applies the same rules to competing-risks counts, counting events of
both causes towards a bin and keeping each cause's count and the censored count safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analytics.competing_counts import CompetingCounts
from analytics.errors import DisclosureError
from analytics.survival_counts import SurvivalCounts

__all__ = [
    "CoarsenedCompeting",
    "CoarsenedCounts",
    "coarsen_competing",
    "coarsen_counts",
    "round_up_to_bins",
    "suppress_count",
]


@dataclass(frozen=True, eq=False)
class CoarsenedCounts:
    """Counts released at bin resolution.

    Attributes
    ----------
    counts : SurvivalCounts
        Released counts; non-zero only on bin ends.
    bin_ends : tuple of int
        Last day of each bin, increasing, the last one equal to the horizon. Bin ``k`` covers
        days ``bin_ends[k-1] + 1 .. bin_ends[k]`` (the first starts at day 0).
    max_bin_width : int
        Widest bin, in days, among bins holding subjects (1 at day resolution or with no
        subjects): the time resolution of the release.
    """

    counts: SurvivalCounts
    bin_ends: tuple[int, ...]
    max_bin_width: int


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


def _greedy_bins(
    events: NDArray[np.int64], censored: NDArray[np.int64], min_events: int, min_cell: int
) -> list[list[int]]:
    """Greedy forward bins ``[start, end, events, censored]`` with the remainder left open."""
    bins: list[list[int]] = []
    start = ev = ce = 0
    for day in range(events.size):
        ev += int(events[day])
        ce += int(censored[day])
        if ev >= min_events and (ce == 0 or ce >= min_cell):
            bins.append([start, day, ev, ce])
            start, ev, ce = day + 1, 0, 0
    if start < events.size:
        bins.append([start, events.size - 1, ev, ce])
    return bins


def _close_remainder(
    bins: list[list[int]], min_events: int, min_cell: int, n: int
) -> list[list[int]]:
    """Merge a trailing bin that misses the thresholds into the bins before it."""
    last = bins[-1]
    if last[2] >= min_events and (last[3] == 0 or last[3] >= min_cell):
        return bins
    if last[2] == 0 and last[3] == 0 and len(bins) > 1:
        return bins  # trailing days without subjects: an empty bin releases nothing
    while len(bins) > 1:
        tail = bins.pop()
        prev = bins[-1]
        bins[-1] = [prev[0], tail[1], prev[2] + tail[2], prev[3] + tail[3]]
        if bins[-1][3] == 0 or bins[-1][3] >= min_cell:
            return bins
    # A single bin over everything: release it only if each non-zero count is large enough.
    ev, ce = bins[0][2], bins[0][3]
    if 0 < ev < min_cell or 0 < ce < min_cell:
        raise DisclosureError(
            f"cannot coarsen {n} subjects ({ev} events, {ce} censored) into bins with "
            f"at least {min_events} events and no count below {min_cell}"
        )
    return bins


def _check_released(counts: SurvivalCounts, min_cell: int) -> None:
    """Enforce the guarantee: every non-zero count and number at risk is ``>= min_cell``."""
    for name, values in (
        ("events", counts.events),
        ("censored", counts.censored),
        ("at_risk", counts.at_risk),
    ):
        if np.any((values > 0) & (values < min_cell)):
            raise DisclosureError(f"coarsened {name} would hold a count below {min_cell}")


def coarsen_counts(counts: SurvivalCounts, min_bin_events: int, min_cell: int) -> CoarsenedCounts:
    """Coarsen per-day counts to time bins that satisfy the site's disclosure rules.

    Parameters
    ----------
    counts : SurvivalCounts
        One group's per-day counts at one site.
    min_bin_events : int
        Fewest events per time bin.
    min_cell : int
        Smallest non-zero count that may be released.

    Returns
    -------
    CoarsenedCounts

    Raises
    ------
    DisclosureError
        If the group has fewer than ``min_cell`` subjects (but at least one), or no binning can
        satisfy the rules.
    ValueError
        If a threshold is not an integer >= 1.
    """
    min_bin_events = _check_threshold(min_bin_events, "min_bin_events")
    min_cell = _check_threshold(min_cell, "min_cell")
    horizon = counts.horizon
    n = counts.n
    if min_bin_events == 1 and min_cell == 1:
        return CoarsenedCounts(counts=counts, bin_ends=tuple(range(horizon + 1)), max_bin_width=1)
    if n == 0:
        return CoarsenedCounts(counts=counts, bin_ends=(horizon,), max_bin_width=1)
    if n < min_cell:
        raise DisclosureError(f"group has {n} subjects, fewer than min_cell={min_cell}")

    min_events = max(min_bin_events, min_cell)
    bins = _close_remainder(
        _greedy_bins(counts.events, counts.censored, min_events, min_cell), min_events, min_cell, n
    )

    events = np.zeros(horizon + 1, dtype=np.int64)
    censored = np.zeros(horizon + 1, dtype=np.int64)
    for _, end, ev, ce in bins:
        events[end] = ev
        censored[end] = ce
    released = SurvivalCounts(events=events, censored=censored)
    _check_released(released, min_cell)
    widths = [end - start + 1 for start, end, ev, ce in bins if ev + ce > 0]
    return CoarsenedCounts(
        counts=released,
        bin_ends=tuple(int(b[1]) for b in bins),
        max_bin_width=max(widths),
    )


@dataclass(frozen=True, eq=False)
class CoarsenedCompeting:
    """Competing-risks counts released at bin resolution.

    Attributes
    ----------
    counts : CompetingCounts
        Released counts; non-zero only on bin ends.
    bin_ends : tuple of int
        Last day of each bin, as in :class:`CoarsenedCounts`.
    max_bin_width : int
        Widest bin, in days, among bins holding subjects (1 at day resolution or with no
        subjects).
    """

    counts: CompetingCounts
    bin_ends: tuple[int, ...]
    max_bin_width: int


def _cells_safe(cells: list[int], min_cell: int) -> bool:
    return all(c == 0 or c >= min_cell for c in cells)


def coarsen_competing(
    counts: CompetingCounts, min_bin_events: int, min_cell: int
) -> CoarsenedCompeting:
    """Coarsen per-day competing-risks counts to bins that satisfy the disclosure rules.

    Bins grow greedily from day 0 and close once they hold at least
    ``max(min_bin_events, min_cell)`` events (cause 1 and cause 2 together) and their cause-1,
    cause-2 and censored counts are each 0 or at least ``min_cell``; a trailing remainder that
    misses this is merged backwards until the merged bin meets it. One bin over everything is
    released when each of its non-zero counts is at least ``min_cell`` (as
    :func:`coarsen_counts`). Every released non-zero count, ``n`` and number at risk is then
    at least ``min_cell`` (checked before returning).

    Parameters
    ----------
    counts : CompetingCounts
        One group's per-day counts at one site.
    min_bin_events : int
        Fewest events (either cause) per time bin.
    min_cell : int
        Smallest non-zero count that may be released.

    Returns
    -------
    CoarsenedCompeting

    Raises
    ------
    DisclosureError
        If the group has fewer than ``min_cell`` subjects (but at least one), or no binning can
        satisfy the rules.
    ValueError
        If a threshold is not an integer >= 1.
    """
    min_bin_events = _check_threshold(min_bin_events, "min_bin_events")
    min_cell = _check_threshold(min_cell, "min_cell")
    horizon = counts.horizon
    n = counts.n
    if min_bin_events == 1 and min_cell == 1:
        return CoarsenedCompeting(
            counts=counts, bin_ends=tuple(range(horizon + 1)), max_bin_width=1
        )
    if n == 0:
        return CoarsenedCompeting(counts=counts, bin_ends=(horizon,), max_bin_width=1)
    if n < min_cell:
        raise DisclosureError(f"group has {n} subjects, fewer than min_cell={min_cell}")
    min_events = max(min_bin_events, min_cell)

    def closes(b: list[int]) -> bool:
        return b[2] + b[3] >= min_events and _cells_safe(b[2:], min_cell)

    # Greedy forward bins [start, end, cause1, cause2, censored].
    bins: list[list[int]] = []
    current = [0, 0, 0, 0, 0]
    for day in range(horizon + 1):
        current[1] = day
        current[2] += int(counts.cause1[day])
        current[3] += int(counts.cause2[day])
        current[4] += int(counts.censored[day])
        if closes(current):
            bins.append(current)
            current = [day + 1, day + 1, 0, 0, 0]
    if current[0] <= horizon:
        current[1] = horizon
        if sum(current[2:]) == 0 and bins:
            bins.append(current)  # trailing days without subjects: an empty bin
        else:
            while bins and not closes(current):
                prev = bins.pop()
                current = [prev[0], current[1]] + [
                    p + c for p, c in zip(prev[2:], current[2:], strict=True)
                ]
            if not bins and not _cells_safe(current[2:], min_cell):
                raise DisclosureError(
                    f"cannot coarsen {n} subjects ({current[2]} events, {current[3]} "
                    f"competing, {current[4]} censored) into bins with at least "
                    f"{min_events} events and no count below {min_cell}"
                )
            bins.append(current)

    arrays = {name: np.zeros(horizon + 1, dtype=np.int64) for name in ("c1", "c2", "ce")}
    for _, end, c1, c2, ce in bins:
        arrays["c1"][end], arrays["c2"][end], arrays["ce"][end] = c1, c2, ce
    released = CompetingCounts(cause1=arrays["c1"], cause2=arrays["c2"], censored=arrays["ce"])
    for name, values in (
        ("cause1", released.cause1),
        ("cause2", released.cause2),
        ("censored", released.censored),
        ("at_risk", released.at_risk),
    ):
        if np.any((values > 0) & (values < min_cell)):
            raise DisclosureError(f"coarsened {name} would hold a count below {min_cell}")
    widths = [end - start + 1 for start, end, *cells in bins if sum(cells) > 0]
    return CoarsenedCompeting(
        counts=released, bin_ends=tuple(int(b[1]) for b in bins), max_bin_width=max(widths)
    )
