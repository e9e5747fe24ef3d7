"""Releases of ``kaplan_meier``, ``nelson_aalen`` and ``logrank``: per-group day counts.

Statistics: each group's daily events and censorings up to the horizon (:mod:`.groups`).
Under secure aggregation a site-stratified log-rank also releases this site's stratum terms
(observed, expected, covariance over the fixed groups): their sum over the sites is the
stratified test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from analytics import SurvivalCounts, coarsen_counts, stratum_terms, survival_counts
from node.cohort import TableSource
from node.endpoints import group_labels, survival_endpoint
from node.policy import Policy
from node.releases.groups import GroupedCounts, GroupedKind, count_groups, fixed_levels, present
from protocol.codec import Release
from protocol.releases import survival_release
from protocol.study import Analysis, Study
from protocol.vocabulary import LOGRANK_COVARIANCE, LOGRANK_EXPECTED, LOGRANK_OBSERVED

__all__ = ["KINDS", "SURVIVAL", "release", "statistics"]

KINDS = ("kaplan_meier", "nelson_aalen", "logrank")


def _pack(analysis: Analysis, groups: dict[str, SurvivalCounts], metadata: dict[str, Any],
          masked: bool) -> Release:
    out = survival_release(analysis.name, analysis.kind, groups, metadata)
    if masked and analysis.kind == "logrank" and analysis.stratify_by_site:
        o, e, v = stratum_terms(groups, sorted(groups))  # the release's own group order
        out = Release(out.analysis, out.kind, {**out.vectors, LOGRANK_OBSERVED: o,
                                               LOGRANK_EXPECTED: e,
                                               LOGRANK_COVARIANCE: v.ravel()}, out.metadata)
    return out


SURVIVAL: GroupedKind[SurvivalCounts] = GroupedKind(
    count=survival_counts, coarsen=coarsen_counts, zeros=SurvivalCounts.zeros, pack=_pack)


def statistics(analysis: Analysis, study: Study, tables: TableSource, cohort: pd.DataFrame,
               site_id: str) -> GroupedCounts[SurvivalCounts]:
    """Each group's daily events and censorings at this site."""
    assert analysis.endpoint is not None
    outcome = survival_endpoint(tables, cohort, analysis.endpoint, study.horizon_days,
                                study.censor_at)
    return count_groups(SURVIVAL, group_labels(cohort, analysis.group_by, site_id),
                        outcome["duration"].to_numpy(), outcome["event"].to_numpy(),
                        study.horizon_days)


def release(analysis: Analysis, study: Study, tables: TableSource, cohort: pd.DataFrame,
            site_id: str, policy: Policy, participants: Sequence[str] | None) -> Release:
    """Unmasked (``participants`` None) or fixed-shape release of one survival analysis."""
    levels = None if participants is None else fixed_levels(analysis.group_by, participants)
    stats = statistics(analysis, study, tables, cohort, site_id)
    return present(SURVIVAL, analysis, stats, policy, levels)
