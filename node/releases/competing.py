"""Releases of ``cumulative_incidence``: per-group day counts of competing risks.

Statistics: each group's daily events of interest (cause 1), competing events (cause 2) and
censorings up to the horizon (:mod:`.groups`); unmasked releases coarsen them with both causes
counting towards a bin (:func:`analytics.coarsen_competing`).
"""

from __future__ import annotations

from typing import Any

from analytics import CompetingCounts, coarsen_competing, competing_counts
from node.cohorts.endpoints import competing_endpoint
from node.releases.groups import GroupedKind
from protocol.codec import Release
from protocol.releases import competing_release
from protocol.study import Analysis

__all__ = ["COMPETING"]


def _pack(analysis: Analysis, groups: dict[str, CompetingCounts], metadata: dict[str, Any],
          masked: bool) -> Release:
    return competing_release(analysis.name, groups, metadata)


COMPETING: GroupedKind[CompetingCounts] = GroupedKind(
    endpoint=competing_endpoint, outcome="cause", count=competing_counts,
    coarsen=coarsen_competing, zeros=CompetingCounts.zeros, pack=_pack)
"""Cumulative incidence: (duration, cause) per patient, :func:`analytics.coarsen_competing`."""
