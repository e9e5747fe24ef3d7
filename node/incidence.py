"""Site releases of the incidence analyses: cumulative incidence and adverse events.

Unmasked releases follow the site's disclosure rules: competing-risks counts are coarsened to
time bins (:func:`analytics.coarsen_competing`); adverse-event counts of 1 to ``min_cell - 1``
are withheld (:data:`protocol.releases.SUPPRESSED`) and the onset histogram is released only at
day resolution without thresholds (``min_cell == 1``), as it holds one count per day.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from analytics import DisclosureError, coarsen_competing, competing_counts
from node.adverse_events import ae_site_summary
from node.endpoints import competing_endpoint, group_labels
from node.policy import Policy
from node.unmasked import coarsen_by_group
from protocol.codec import Release
from protocol.releases import SUPPRESSED, adverse_event_release, competing_release
from protocol.study import Analysis, Study

__all__ = ["adverse_events_release", "cumulative_incidence_release", "window_days"]

logger = logging.getLogger(__name__)
GRADE_KEYS = ("1", "2", "3", "4", "5")


def cumulative_incidence_release(analysis: Analysis, study: Study, tables: object,
                                 cohort: pd.DataFrame, site_id: str, policy: Policy) -> Release:
    """Per-group daily counts of the event of interest, competing events and censorings."""
    assert analysis.endpoint is not None
    outcome = competing_endpoint(tables, cohort, analysis.endpoint, study.horizon_days,
                                 study.censor_at)
    durations, causes = outcome["duration"].to_numpy(), outcome["cause"].to_numpy()
    try:
        safe = coarsen_by_group(
            group_labels(cohort, analysis.group_by, site_id),
            lambda mask: competing_counts(durations[mask], causes[mask], study.horizon_days),
            coarsen_competing, policy)
    except DisclosureError as exc:
        return Release.failure(analysis.name, analysis.kind, f"disclosure rule: {exc}")
    return competing_release(analysis.name, safe.groups, safe.metadata)


def window_days(analysis: Analysis, study: Study) -> int:
    """The analysis' onset window (days 0..window), the horizon when the study gives none."""
    return analysis.window_days if analysis.window_days is not None else study.horizon_days


def _withhold(value: int, min_cell: int) -> int:
    return SUPPRESSED if 0 < value < min_cell else int(value)


def adverse_events_release(analysis: Analysis, study: Study, tables: object,
                           cohort: pd.DataFrame, policy: Policy) -> Release:
    """Per-term patients at risk, with the event, person-days, worst grades and onset days.

    Unmasked release (secure studies go through :mod:`node.secure_releases`).
    """
    window = window_days(analysis, study)
    summary = ae_site_summary(tables, cohort, analysis.terms, analysis.by_grade, window)
    onset_released = policy.min_cell == 1
    terms = {}
    for term, s in summary.items():
        grades = np.array([_withhold(s.grades.get(g, 0), policy.min_cell)
                           for g in GRADE_KEYS], dtype=np.int64)
        onset = np.asarray(s.onset_histogram, dtype=np.int64) if onset_released else \
            np.zeros(window + 1, dtype=np.int64)
        terms[term] = (int(s.at_risk), _withhold(s.with_event, policy.min_cell),
                       int(s.person_days), grades, onset)
    return adverse_event_release(analysis.name, terms, {
        "window_days": window, "by_grade": analysis.by_grade, "onset_released": onset_released,
        "min_cell": policy.min_cell, "min_bin_events": policy.min_bin_events})
