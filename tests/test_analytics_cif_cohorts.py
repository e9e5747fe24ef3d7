"""The competing-risks cohorts of ``tests/competing_cohorts.py`` cover the cases the
cumulative-incidence, Gray and disclosure tests rely on."""

from __future__ import annotations

import numpy as np

from tests.competing_cohorts import COMPETING_COHORTS, bmtcrr, competing_cohort


def test_competing_cohorts_cover_the_edge_cases() -> None:
    df = bmtcrr()
    assert df.shape == (177, 7)
    assert df["Status"].value_counts().to_dict() == {2: 75, 1: 56, 0: 46}
    assert df["D"].value_counts().to_dict() == {"AML": 104, "ALL": 73}
    synthetic = competing_cohort("synthetic")
    for cause in (0, 1, 2):
        assert np.any((synthetic.time == 0) & (synthetic.cause == cause))
    assert competing_cohort("flchain").time.max() > competing_cohort("flchain").horizon
    for name in COMPETING_COHORTS:
        c = competing_cohort(name)
        assert c.time.dtype == np.int64 and c.time.min() >= 0
        assert set(np.unique(c.cause)) == {0, 1, 2}
        assert np.unique(c.time).size < c.time.size  # tied times
