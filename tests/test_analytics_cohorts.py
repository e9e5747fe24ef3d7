"""The survival cohorts of ``tests/survival_cohorts.py`` cover the cases the analytics tests
rely on."""

from __future__ import annotations

import numpy as np

from tests.survival_cohorts import COHORTS, cohort, split_sites


def test_cohorts_cover_the_edge_cases() -> None:
    synthetic = cohort("synthetic")
    assert np.any((synthetic.time == 0) & (synthetic.event == 1))  # day-0 events
    assert synthetic.event[synthetic.group == "c"].sum() == 0  # an all-censored group
    truncating = [name for name in COHORTS if cohort(name).time.max() > cohort(name).horizon]
    assert {"rossi", "gbsg2", "kidney", "synthetic"} <= set(truncating)
    for name in COHORTS:
        c = cohort(name)
        assert c.time.dtype == np.int64 and c.time.min() >= 0
        assert set(np.unique(c.event)) <= {0, 1}
        assert np.unique(c.time).size < c.time.size  # tied times


def test_split_sites_uses_two_to_ten_sites() -> None:
    for seed in range(20):
        k = np.unique(split_sites(500, seed)).size
        assert 2 <= k <= 10
