"""Releases of ``cumulative_incidence``: per-group day counts of competing risks.

Statistics: each group's daily events of interest (cause 1), competing events (cause 2) and
censorings up to the horizon (:mod:`.groups`); unmasked releases coarsen them with both causes
counting towards a bin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from analytics import CompetingCounts, coarsen_competing, competing_counts
from node.cohort import TableSource
from node.endpoints import competing_endpoint, group_labels
from node.policy import Policy
from node.releases.groups import GroupedCounts, GroupedKind, count_groups, fixed_levels, present
from protocol.codec import Release
from protocol.releases import competing_release
from protocol.study import Analysis, Study

__all__ = ["COMPETING", "release", "statistics"]


def _pack(analysis: Analysis, groups: dict[str, CompetingCounts], metadata: dict[str, Any],
          masked: bool) -> Release:
    return competing_release(analysis.name, groups, metadata)


COMPETING: GroupedKind[CompetingCounts] = GroupedKind(
    count=competing_counts, coarsen=coarsen_competing, zeros=CompetingCounts.zeros, pack=_pack)


def statistics(analysis: Analysis, study: Study, tables: TableSource, cohort: pd.DataFrame,
               site_id: str) -> GroupedCounts[CompetingCounts]:
    """Each group's daily events of both causes and censorings at this site."""
    assert analysis.endpoint is not None
    outcome = competing_endpoint(tables, cohort, analysis.endpoint, study.horizon_days,
                                 study.censor_at)
    return count_groups(COMPETING, group_labels(cohort, analysis.group_by, site_id),
                        outcome["duration"].to_numpy(), outcome["cause"].to_numpy(),
                        study.horizon_days)


def release(analysis: Analysis, study: Study, tables: TableSource, cohort: pd.DataFrame,
            site_id: str, policy: Policy, participants: Sequence[str] | None) -> Release:
    """Unmasked (``participants`` None) or fixed-shape cumulative-incidence release."""
    levels = None if participants is None else fixed_levels(analysis.group_by, participants)
    stats = statistics(analysis, study, tables, cohort, site_id)
    return present(COMPETING, analysis, stats, policy, levels)
