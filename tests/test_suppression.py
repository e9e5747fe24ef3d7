"""Cell suppression with complementary suppression (analytics.suppression), on hand-made tables.

Reference: the primary/secondary suppression rule of statistical disclosure control (Hundepool
et al., *Statistical Disclosure Control*, Wiley 2012, section 5.2): a cell below the threshold
is hidden, and further cells are hidden so that no hidden cell can be recomputed from the
margins; the expected masks below are worked out by hand.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics import hide_cells, withhold_groups


@pytest.mark.parametrize(("cells", "hidden"), [
    ([6, 0, 0, 0, 0, 0], (False,) * 6),                      # nothing small
    ([0, 0, 5, 1, 0, 0], (False, False, True, True, False, False)),  # issue 8: 6 = 5 + "<5"
    ([0, 3, 9, 7, 0, 0], (False, True, False, True, False, False)),  # 3 + smallest shown 7
    ([0, 2, 2, 0, 0, 0], (False, True, True, False, False, False)),  # two small: sum 4 < 5
    ([0, 2, 2, 8, 0, 0], (False, True, True, True, False, False)),   # so the 8 joins them
    ([0, 0, 0, 0, 0, 0], (False,) * 6),
    ([1, 0, 0, 0, 0, 0], (True, False, False, False, False, False)),  # total below min_cell
])
def test_hide_cells_hand_computed(cells: list[int], hidden: tuple[bool, ...]) -> None:
    assert hide_cells(cells, 5) == hidden


@pytest.mark.parametrize(("sizes", "withheld"), [
    ([40, 45, 2], (True, False, True)),     # the 2 and then the smallest shown (40)
    ([40, 45, 0], (False, False, False)),
    ([3, 4, 5, 50], (True, True, True, False)),  # 3 + 4 + 5 = 12 >= 10
    ([3, 4, 50], (True, True, True)),       # 7 < 10: the 50 too (nothing left to show)
    ([12, 15], (False, False)),
])
def test_withhold_groups_hand_computed(sizes: list[int], withheld: tuple[bool, ...]) -> None:
    assert withhold_groups(sizes, 10) == withheld


def test_forced_groups_count_towards_the_withheld_union() -> None:
    # a one-site group of 12 is withheld whatever its size; the union is then 12: enough
    assert withhold_groups([12, 30, 40], 10, forced=[True, False, False]) == (True, False, False)


@given(st.lists(st.integers(0, 30), min_size=1, max_size=7), st.integers(1, 10))
def test_no_hidden_cell_follows_from_the_shown_ones(cells: list[int], k: int) -> None:
    hidden = hide_cells(cells, k)
    shown = [c for c, h in zip(cells, hidden, strict=True) if not h]
    assert all(c == 0 or c >= k for c in shown)
    hidden_cells = [c for c, h in zip(cells, hidden, strict=True) if h]
    if hidden_cells and sum(cells) >= k:
        assert len(hidden_cells) >= 2 and sum(hidden_cells) >= k


@given(st.lists(st.integers(0, 40), min_size=1, max_size=8), st.integers(1, 12))
def test_no_withheld_union_is_small(sizes: list[int], k: int) -> None:
    withheld = withhold_groups(sizes, k)
    assert all(s == 0 or s >= k for s, w in zip(sizes, withheld, strict=True) if not w)
    union = sum(s for s, w in zip(sizes, withheld, strict=True) if w)
    assert union == 0 or union >= k or all(withheld[i] for i, s in enumerate(sizes) if s)
