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
from protocol.releases import survival_groups
from protocol.study import Analysis, Study
from protocol.vocabulary import LOGRANK_COVARIANCE, LOGRANK_EXPECTED, LOGRANK_OBSERVED

__all__ = ["EstimatorStrategy", "LogrankStrategy", "SurvivalGroupsStrategy"]

_LR_TERMS = (LOGRANK_OBSERVED, LOGRANK_EXPECTED, LOGRANK_COVARIANCE)


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
                set(_LR_TERMS) <= set(r.vectors) for r in releases.values()):
            result = _from_terms(releases.values())
        elif analysis.stratify_by_site:
            strata = [survival_groups(releases[s], study.horizon_days)
                      for s in sorted(releases)]
            result = logrank(strata).to_dict()
        else:
            result = logrank([self.groups(study, releases.values())]).to_dict()
        return {**result, "stratified_by_site": analysis.stratify_by_site}


def _from_terms(releases: Iterable[Release]) -> dict[str, Any]:
    """The stratified test from summed per-site terms (fixed-shape releases)."""
    parts = list(releases)
    names = list(parts[0].metadata["groups"])
    k = len(names)
    n = sum(np.array([r.vectors[f"g{i}.events"].sum() + r.vectors[f"g{i}.censored"].sum()
                      for i in range(k)]) for r in parts)
    keep = np.flatnonzero(n > 0)
    o = sum(np.asarray(r.vectors["lr.observed"], dtype=np.float64) for r in parts)
    e = sum(np.asarray(r.vectors["lr.expected"], dtype=np.float64) for r in parts)
    v = sum(np.asarray(r.vectors["lr.covariance"], dtype=np.float64) for r in parts)
    v = np.asarray(v).reshape(k, k)[np.ix_(keep, keep)]
    return logrank_from_terms([names[i] for i in keep], np.asarray(o)[keep],
                              np.asarray(e)[keep], v).to_dict()
