"""Property: under the default site policy no unmasked release carries a count of 1-4.

Random cohorts go through the node's real path (cohort selection, endpoint derivation, group
labels, disclosure control, release building); every released count, every group size and
every number at risk implied by a release must be 0 or at least min_cell (policy defaults).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics import SurvivalCounts
from node.cohorts.cohort import select_cohort
from node.governance.policy import default_policy
from node.releases import first_release
from protocol.releases import survival_groups
from protocol.study import study_from_dict
from tests.conftest import site_tables as _tables

POLICY = default_policy()


def _at_risk_values(counts: SurvivalCounts) -> np.ndarray:
    # numbers at risk a receiver can read: at the start of every day with a count
    days = np.flatnonzero(counts.events + counts.censored)
    return counts.at_risk[days]


cohorts = st.integers(min_value=10, max_value=80).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 500), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n),
    st.lists(st.integers(0, 1), min_size=n, max_size=n)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohort=cohorts, group=st.sampled_from([None, "route"]))
def test_default_policy_never_releases_a_count_below_five(cohort, group):
    durations, dead, routes = cohort
    tables = _tables(durations, dead, routes)
    analysis = {"name": "os", "kind": "kaplan_meier", "endpoint": "overall_survival"}
    if group:
        analysis["group_by"] = group
    study = study_from_dict({"heron": 1, "id": "prop-study", "title": "p",
                             "expires": "2099-01-01", "horizon_days": 365,
                             "analyses": [analysis],
                             "privacy": {"secure_aggregation": False}})
    cohort_df = select_cohort(tables, study.cohort, today=dt.date(2026, 1, 1))
    assert len(cohort_df) == len(durations)
    release = first_release(study.analyses[0], study, tables, cohort_df, "site-x", POLICY, {})
    if release.error:
        assert release.error.startswith("disclosure rule")
        assert release.vectors == {}
        return
    for counts in survival_groups(release, study.horizon_days).values():
        released = np.concatenate([counts.events, counts.censored, [counts.n],
                                   _at_risk_values(counts)])
        small = released[(released > 0) & (released < POLICY.min_cell)]
        assert small.size == 0, f"released counts below {POLICY.min_cell}: {small}"
