"""Kaplan-Meier, Nelson-Aalen and log-rank: per-group day counts summed over the sites.

Each site releases, per group, events and censorings per day; the sums are the pooled data's
counts, so the estimators of :mod:`analytics` on them equal the pooled individual analysis.
A log-rank test stratified by site needs each site's own terms: unmasked, they are computed
here from each site's counts; under secure aggregation each site sends its observed, expected
and covariance terms (``lr.*``), whose sum is the stratified test's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from aggregator.strategies.one_shot import GroupedStrategy
from analytics import (
    SurvivalCounts,
    kaplan_meier,
    logrank,
    logrank_from_terms,
    nelson_aalen,
    pool_counts,
)
from protocol.codec import Release
from protocol.releases import logrank_terms, survival_groups
from protocol.study import Analysis, Study

__all__ = ["EstimatorStrategy", "LogrankStrategy", "SurvivalGroupsStrategy"]



class SurvivalGroupsStrategy(GroupedStrategy[SurvivalCounts]):
    """Base of the kinds released as per-group events and censorings per day."""

    def decode(self, release: Release, horizon: int) -> Mapping[str, SurvivalCounts]:
        return survival_groups(release, horizon)

    def add(self, parts: list[SurvivalCounts]) -> SurvivalCounts:
        return pool_counts(parts)


class EstimatorStrategy(SurvivalGroupsStrategy):
    """``kaplan_meier`` and ``nelson_aalen``: one curve per group of the pooled counts."""

    kinds = ("kaplan_meier", "nelson_aalen")

    def pool(self, analysis: Analysis, study: Study,
             releases: Mapping[str, Release]) -> dict[str, Any]:
        estimator = kaplan_meier if analysis.kind == "kaplan_meier" else nelson_aalen
        return {"groups": {g: estimator(c, analysis.timepoints).to_dict()
                           for g, c in self.groups(study, releases.values()).items()}}


class LogrankStrategy(SurvivalGroupsStrategy):
    """``logrank``: the test on the pooled groups, or stratified by site."""

    kinds = ("logrank",)

    def pool(self, analysis: Analysis, study: Study,
             releases: Mapping[str, Release]) -> dict[str, Any]:
        if analysis.stratify_by_site and all(
                logrank_terms(r) is not None for r in releases.values()):
            result = _from_terms(releases.values(), study.horizon_days)
        elif analysis.stratify_by_site:
            strata = [survival_groups(releases[s], study.horizon_days)
                      for s in sorted(releases)]
            result = logrank(strata).to_dict()
        else:
            result = logrank([self.groups(study, releases.values())]).to_dict()
        return {**result, "stratified_by_site": analysis.stratify_by_site}


def _from_terms(releases: Iterable[Release], horizon: int) -> dict[str, Any]:
    """The stratified test from summed per-site terms (fixed-shape releases)."""
    parts = list(releases)
    groups = [survival_groups(r, horizon) for r in parts]
    names = list(groups[0])
    n = sum(np.array([g[name].n for name in names]) for g in groups)
    keep = np.flatnonzero(n > 0)
    terms = [logrank_terms(r) for r in parts]
    o, e, v = (sum(t[j] for t in terms if t is not None) for j in range(3))
    return logrank_from_terms([names[i] for i in keep], np.asarray(o)[keep],
                              np.asarray(e)[keep], np.asarray(v)[np.ix_(keep, keep)]).to_dict()
