"""Cell suppression with complementary suppression: no hidden count follows from shown ones.

Two tables heron shows need it:

- **category cells** (an adverse-event term's patients by maximum grade, plus those without a
  grade, adding up to the shown ``with_event``): a cell of 1 to ``min_cell - 1`` is hidden. One
  hidden cell next to a shown total would be the total minus the others, and two hidden cells
  that add up to less than ``min_cell`` give a small derivable sum; so more cells are hidden,
  the smallest shown non-zero one first, until the hidden cells are at least two and hold at
  least ``min_cell`` together (:func:`hide_cells`);
- **groups** of a grouped analysis (Kaplan-Meier by indication, ...): a group of 1 to
  ``min_size - 1`` patients is withheld. The union of withheld groups is the cohort minus the
  shown groups, which any ungrouped analysis of the same cohort reveals, so groups are withheld
  until the withheld patients together are none or at least ``min_size``
  (:func:`withhold_groups`).

Zero cells are shown as 0: nobody is in them. Both functions are pure and deterministic, so
every site computes the same decision from the same pooled counts (secure aggregation).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["hide_cells", "withhold_groups"]


def _check(counts: Sequence[int], threshold: int, what: str) -> list[int]:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {threshold!r}")
    values = [int(c) for c in counts]
    if any(v < 0 for v in values):
        raise ValueError("counts must be non-negative")
    return values


def _grow(values: list[int], hidden: list[bool], enough: int, two: bool) -> list[bool]:
    """Hide the smallest shown non-zero values until the hidden ones hold ``enough`` (and,
    with ``two``, are at least two cells); when that is impossible hide every non-zero one."""

    def satisfied() -> bool:
        total = sum(v for v, h in zip(values, hidden, strict=True) if h)
        count = sum(hidden)
        return total == 0 or (total >= enough and (count >= 2 or not two))

    while not satisfied():
        shown = [(v, i) for i, (v, h) in enumerate(zip(values, hidden, strict=True))
                 if not h and v > 0]
        if not shown:
            return [v > 0 for v in values]
        hidden[min(shown)[1]] = True
    return hidden


def hide_cells(counts: Sequence[int], min_cell: int) -> tuple[bool, ...]:
    """Which category cells to hide so that none below ``min_cell`` is shown or derivable.

    Parameters
    ----------
    counts
        The cells of one table whose total is shown (their sum).
    min_cell
        Smallest count that may be shown.

    Returns
    -------
    tuple of bool
        ``True`` for a hidden cell. Either nothing is hidden, or at least two cells holding at
        least ``min_cell`` together; with a total below ``min_cell`` every non-zero cell.
    """
    values = _check(counts, min_cell, "min_cell")
    hidden = [0 < v < min_cell for v in values]
    return tuple(_grow(values, hidden, min_cell, two=True))


def withhold_groups(sizes: Sequence[int], min_size: int,
                    forced: Sequence[bool] | None = None) -> tuple[bool, ...]:
    """Which groups to withhold so that no group, nor the union of withheld groups, has
    1 to ``min_size - 1`` patients.

    Parameters
    ----------
    sizes
        Patients per group (pooled).
    min_size
        Smallest group that may be shown (``min_cohort``).
    forced
        Groups withheld whatever their size (e.g. those that come from one site).

    Returns
    -------
    tuple of bool
        ``True`` for a withheld group.
    """
    values = _check(sizes, min_size, "min_size")
    hidden = [0 < v < min_size for v in values]
    if forced is not None:
        hidden = [h or bool(f) for h, f in zip(hidden, forced, strict=True)]
    return tuple(_grow(values, hidden, min_size, two=False))
