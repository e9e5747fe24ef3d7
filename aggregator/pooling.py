"""Pooling: per-site releases in, the ``analyses`` and ``privacy`` parts of results.json out.

Pooling sums the sites' sufficient statistics and runs the estimator from :mod:`analytics` on
the sums, so the pooled result equals the analysis of the pooled individual data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aggregator.pooling_incidence import pool_adverse_events, pool_cumulative_incidence
from analytics import (
    AnalyticsError,
    SurvivalCounts,
    kaplan_meier,
    logrank,
    nelson_aalen,
    pool_counts,
)
from protocol.codec import Release
from protocol.errors import ProtocolError
from protocol.releases import survival_groups
from protocol.study import Analysis, Study

__all__ = ["ITERATIVE_KINDS", "pool_study"]

ITERATIVE_KINDS = ("cox",)

logger = logging.getLogger(__name__)


def _pool_survival(
    analysis: Analysis, horizon: int, per_site: Mapping[str, dict[str, SurvivalCounts]]
) -> dict[str, Any]:
    if analysis.kind == "logrank":
        if analysis.stratify_by_site:
            strata = [per_site[site] for site in sorted(per_site)]
        else:
            strata = [_pool_groups(per_site.values())]
        result = logrank(strata).to_dict()
        result["stratified_by_site"] = analysis.stratify_by_site
        return result
    pooled = _pool_groups(per_site.values())
    estimator = kaplan_meier if analysis.kind == "kaplan_meier" else nelson_aalen
    return {"groups": {g: estimator(c, analysis.timepoints).to_dict()
                       for g, c in sorted(pooled.items())}}


def _pool_groups(sites: Any) -> dict[str, SurvivalCounts]:
    merged: dict[str, list[SurvivalCounts]] = {}
    for groups in sites:
        for name, counts in groups.items():
            merged.setdefault(name, []).append(counts)
    pooled = {name: pool_counts(parts) for name, parts in merged.items()}
    # fixed-shape (secure) releases carry every level; a group nobody is in is no group
    return {name: c for name, c in pooled.items() if c.n > 0}


def _pool_analysis(
    analysis: Analysis, study: Study, releases: Mapping[str, Release]
) -> tuple[dict[str, Any], int]:
    errors = {site: r.error for site, r in releases.items() if r.error}
    usable = {site: r for site, r in releases.items() if not r.error}
    out: dict[str, Any] = {"kind": analysis.kind}
    if analysis.endpoint:
        out["endpoint"] = analysis.endpoint
    if analysis.group_by:
        out["group_by"] = analysis.group_by
    if errors:
        out["site_errors"] = dict(sorted(errors.items()))
    if not usable:
        reasons = sorted(set(errors.values()))
        out["error"] = "no site released this analysis" + (
            f": {'; '.join(reasons)}" if reasons else "")
        return out, 1
    if len(usable) < study.privacy.min_sites:
        out["error"] = (f"only {len(usable)} sites released this analysis, fewer than "
                        f"min_sites {study.privacy.min_sites}")
        return out, 1
    resolution = max(int(r.metadata.get("time_resolution_days", 1)) for r in usable.values())
    try:
        if analysis.kind == "cumulative_incidence":
            out.update(pool_cumulative_incidence(analysis, study, usable))
        elif analysis.kind == "adverse_events":
            out.update(pool_adverse_events(analysis, study, usable))
        else:
            per_site = {site: survival_groups(r, study.horizon_days)
                        for site, r in usable.items()}
            out.update(_pool_survival(analysis, study.horizon_days, per_site))
    except (AnalyticsError, ProtocolError, ValueError) as exc:
        out["error"] = str(exc)
        return out, resolution
    out["sites"] = sorted(usable)
    out["time_resolution_days"] = resolution
    return out, resolution


def pool_study(study: Study, releases: Mapping[str, Sequence[Release]]) -> dict[str, Any]:
    """Pool every analysis of a study over the sites that released it.

    Parameters
    ----------
    study
        The verified study.
    releases
        Per participating site, its releases (one per analysis).

    Returns
    -------
    dict
        ``{"analyses": {name: result}, "privacy": {...}}`` in the results.json format.
    """
    by_analysis: dict[str, dict[str, Release]] = {a.name: {} for a in study.analyses}
    for site, site_releases in releases.items():
        for r in site_releases:
            if r.analysis in by_analysis:
                by_analysis[r.analysis][site] = r
    analyses: dict[str, Any] = {}
    resolution = 1
    for analysis in study.analyses:
        if analysis.kind in ITERATIVE_KINDS:
            continue  # pooled round by round by the iteration driver
        result, res = _pool_analysis(analysis, study, by_analysis[analysis.name])
        analyses[analysis.name] = result
        resolution = max(resolution, res)
    thresholds = sorted({
        (int(r.metadata["min_cell"]), int(r.metadata["min_bin_events"]))
        for rs in by_analysis.values() for r in rs.values() if "min_cell" in r.metadata})
    privacy: dict[str, Any] = {
        "secure_aggregation": study.privacy.secure_aggregation,
        "time_resolution_days": resolution,
        "min_sites": study.privacy.min_sites,
        "coarsened": any(r.metadata.get("coarsened") for rs in by_analysis.values()
                         for r in rs.values()),
        "site_thresholds": [{"min_cell": c, "min_bin_events": b} for c, b in thresholds],
    }
    return {"analyses": analyses, "privacy": privacy}
