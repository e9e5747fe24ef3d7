"""Per-analysis computation at a site: cohort in, one :class:`Release` of aggregates out.

Only aggregate vectors leave this module. Unmasked releases go through the site's disclosure
rules (:func:`analytics.coarsen_counts`); a rule that cannot be met becomes an error release
for that analysis, never a silent change of the data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from analytics import DisclosureError, coarsen_counts, survival_counts
from node.cox_site import cox_round_release, cox_setup_release
from node.endpoints import group_labels, survival_endpoint
from node.errors import StudyRefused
from node.incidence import adverse_events_release, cumulative_incidence_release
from node.policy import Policy
from node.unmasked import coarsen_by_group
from protocol.codec import Release
from protocol.releases import survival_release
from protocol.study import Analysis, Study

__all__ = ["SURVIVAL_KINDS", "compute_release", "error_release"]

logger = logging.getLogger(__name__)

SURVIVAL_KINDS = ("kaplan_meier", "nelson_aalen", "logrank")


def error_release(analysis: Analysis, reason: str) -> Release:
    """A release that carries only the reason this site does not answer an analysis."""
    return Release.failure(analysis.name, analysis.kind, reason)


def _survival(analysis: Analysis, study: Study, tables: object, cohort: pd.DataFrame,
              site_id: str, policy: Policy) -> Release:
    """Unmasked per-group day counts (secure studies go through node.secure_releases)."""
    assert analysis.endpoint is not None
    outcome = survival_endpoint(tables, cohort, analysis.endpoint, study.horizon_days,
                                study.censor_at)
    durations = outcome["duration"].to_numpy()
    events = outcome["event"].to_numpy()
    try:
        safe = coarsen_by_group(
            group_labels(cohort, analysis.group_by, site_id),
            lambda mask: survival_counts(durations[mask], events[mask], study.horizon_days),
            coarsen_counts, policy)
    except DisclosureError as exc:
        return error_release(analysis, f"disclosure rule: {exc}")
    return survival_release(analysis.name, analysis.kind, safe.groups, safe.metadata)


def compute_release(
    analysis: Analysis,
    study: Study,
    tables: object,
    cohort: pd.DataFrame,
    site_id: str,
    policy: Policy,
    memo: dict[str, Any] | None = None,
) -> Release:
    """Compute what this site releases for one analysis, or an error release with the reason.

    ``memo`` keeps per-analysis state for later rounds of iterative analyses (Cox).
    """
    reason = policy.check_analysis(analysis)
    if reason:
        return error_release(analysis, reason)
    try:
        return _dispatch(analysis, study, tables, cohort, site_id, policy, memo)
    except StudyRefused as exc:
        return error_release(analysis, str(exc))


def _dispatch(analysis: Analysis, study: Study, tables: object, cohort: pd.DataFrame,
              site_id: str, policy: Policy, memo: dict[str, Any] | None) -> Release:
    if analysis.kind in SURVIVAL_KINDS:
        return _survival(analysis, study, tables, cohort, site_id, policy)
    if analysis.kind == "cumulative_incidence":
        return cumulative_incidence_release(analysis, study, tables, cohort, site_id, policy)
    if analysis.kind == "adverse_events":
        return adverse_events_release(analysis, study, tables, cohort, policy)
    if analysis.kind == "cox":
        return cox_setup_release(analysis, study, tables, cohort, policy,
                                 memo if memo is not None else {})
    return error_release(analysis, f"kind {analysis.kind} is not supported by this node version")


def compute_round_release(
    analysis: Analysis,
    study: Study,
    tables: object,
    cohort: pd.DataFrame,
    site_id: str,
    policy: Policy,
    memo: dict[str, Any],
    inputs: Release,
) -> Release:
    """Answer one later round of an iterative analysis (a Cox Newton step)."""
    reason = policy.check_analysis(analysis)
    if reason:
        return error_release(analysis, reason)
    if analysis.kind != "cox":
        return error_release(analysis, f"kind {analysis.kind} has no later rounds")
    try:
        return cox_round_release(analysis, study, tables, cohort, policy, memo, inputs)
    except (StudyRefused, DisclosureError) as exc:
        return error_release(analysis, str(exc))


def release_summary(releases: Mapping[str, Release]) -> dict[str, object]:
    """What the audit trail records of a release: names, kinds, vector sizes, errors."""
    return {
        name: {"kind": r.kind, "error": r.error} if r.error else
        {"kind": r.kind, "vectors": len(r.vectors), "groups": len(r.metadata.get("groups", []))}
        for name, r in releases.items()
    }
