"""Cumulative incidence with competing risks: per-group cause-specific day counts summed.

The Aalen-Johansen estimator and Gray's test of :mod:`analytics` run on the summed counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aggregator.strategies.one_shot import GroupedStrategy
from analytics import (
    CompetingCounts,
    EstimationError,
    cumulative_incidence,
    gray_test,
    pool_competing,
)
from protocol.codec import Release
from protocol.releases import competing_groups
from protocol.study import Analysis, Study

__all__ = ["CumulativeIncidenceStrategy"]


class CumulativeIncidenceStrategy(GroupedStrategy[CompetingCounts]):
    """``cumulative_incidence``: Aalen-Johansen per group, Gray's test with several groups."""

    kinds = ("cumulative_incidence",)

    def decode(self, release: Release, horizon: int) -> Mapping[str, CompetingCounts]:
        return competing_groups(release, horizon)

    def add(self, parts: list[CompetingCounts]) -> CompetingCounts:
        return pool_competing(parts)

    def pool(self, analysis: Analysis, study: Study,
             releases: Mapping[str, Release]) -> dict[str, Any]:
        pooled = self.groups(study, releases.values())
        out: dict[str, Any] = {"groups": {
            name: cumulative_incidence(c, analysis.timepoints).to_dict()
            for name, c in pooled.items()}}
        if len(pooled) > 1:
            try:
                out["gray_test"] = gray_test(pooled).to_dict()
            except EstimationError as exc:
                out["gray_test"] = {"error": str(exc)}
        return out
