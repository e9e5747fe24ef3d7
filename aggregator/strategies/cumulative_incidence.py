"""Cumulative incidence with competing risks: per-group cause-specific day counts summed.

The Aalen-Johansen estimator and Gray's test of :mod:`analytics` run on the summed counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aggregator.strategies.one_shot import OneShotStrategy
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


class CumulativeIncidenceStrategy(OneShotStrategy):
    """``cumulative_incidence``: Aalen-Johansen per group, Gray's test with several groups."""

    kinds = ("cumulative_incidence",)

    def check(self, release: Release, analysis: Analysis, study: Study) -> None:
        competing_groups(release, study.horizon_days)

    def pool(self, analysis: Analysis, study: Study,
             releases: Mapping[str, Release]) -> dict[str, Any]:
        merged: dict[str, list[CompetingCounts]] = {}
        for release in releases.values():
            for name, counts in competing_groups(release, study.horizon_days).items():
                merged.setdefault(name, []).append(counts)
        pooled = {name: pool_competing(parts) for name, parts in sorted(merged.items())}
        pooled = {name: c for name, c in pooled.items() if c.n > 0}  # levels nobody is in
        out: dict[str, Any] = {"groups": {
            name: cumulative_incidence(c, analysis.timepoints).to_dict()
            for name, c in pooled.items()}}
        if len(pooled) > 1:
            try:
                out["gray_test"] = gray_test(pooled).to_dict()
            except EstimationError as exc:
                out["gray_test"] = {"error": str(exc)}
        return out
