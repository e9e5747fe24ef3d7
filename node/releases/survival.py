"""Releases of ``kaplan_meier``, ``nelson_aalen`` and ``logrank``: per-group day counts.

Statistics: each group's daily events and censorings up to the horizon (:mod:`.groups`).
Under secure aggregation a site-stratified log-rank also releases this site's stratum terms
(observed, expected, covariance over the fixed groups): their sum over the sites is the
stratified test.
"""

from __future__ import annotations

from typing import Any

from analytics import SurvivalCounts, coarsen_counts, stratum_terms, survival_counts
from node.cohorts.endpoints import survival_endpoint
from node.releases.groups import GroupedKind
from protocol.codec import Release
from protocol.releases import survival_release
from protocol.study import Analysis
from protocol.vocabulary import LOGRANK_COVARIANCE, LOGRANK_EXPECTED, LOGRANK_OBSERVED

__all__ = ["KINDS", "SURVIVAL"]

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
    endpoint=survival_endpoint, outcome="event", count=survival_counts, coarsen=coarsen_counts,
    zeros=SurvivalCounts.zeros, pack=_pack)
"""Survival kinds: (duration, event) per patient, :func:`analytics.coarsen_counts`."""
