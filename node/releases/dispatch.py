"""The node's release entry points: one release path per analysis kind.

Each kind computes its sufficient statistics once and presents them one of two ways: unmasked,
under the site's disclosure rules (coarsening, suppression, ``min_cell``), or as the
fixed-shape vectors of secure aggregation (every level, fixed lengths, nothing withheld; the
masking itself is done by the caller). Only aggregates leave this package; a rule that cannot
be met becomes an error release for that analysis, never a silent change of the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from analytics import DisclosureError
from node.cohorts.cohort import Tables
from node.errors import StudyRefused
from node.governance.policy import Policy
from node.releases import adverse_events, cox, groups
from node.releases.competing import COMPETING
from node.releases.cox import CoxRound, CoxSite
from node.releases.screening import Screened
from node.releases.survival import KINDS as SURVIVAL_KINDS
from node.releases.survival import SURVIVAL
from protocol.codec import Release
from protocol.rounds import NewtonRequest
from protocol.study import Analysis, Study
from protocol.vocabulary import GROUPS

__all__ = ["cox_step_release", "first_release", "release_summary"]


def _release(analysis: Analysis, study: Study, tables: Tables, cohort: pd.DataFrame,
             site_id: str, policy: Policy, memo: dict[str, CoxSite],
             participants: Sequence[str] | None, screened: Screened) -> Release:
    name = analysis.name
    if analysis.kind in SURVIVAL_KINDS:
        return groups.release(SURVIVAL, analysis, study, tables, cohort, site_id, policy,
                              participants, screened.withheld_groups.get(name, ()))
    if analysis.kind == "cumulative_incidence":
        return groups.release(COMPETING, analysis, study, tables, cohort, site_id, policy,
                              participants, screened.withheld_groups.get(name, ()))
    if analysis.kind == "adverse_events":
        return adverse_events.release(analysis, study, tables, cohort, policy,
                                      masked=participants is not None,
                                      withheld_terms=screened.withheld_terms.get(name, ()),
                                      hidden_grades=screened.hidden_grades.get(name),
                                      onset_medians=screened.onset_medians.get(name))
    if analysis.kind == "cox":
        return cox.describe(analysis, study, tables, cohort, policy, memo,
                            masked=participants is not None,
                            presence=screened.cox_presence.get(name),
                            hide_dropped=name in screened.cox_hide_dropped)
    return Release.failure(analysis.name, analysis.kind,
                           f"kind {analysis.kind} is not supported by this node version")


def first_release(analysis: Analysis, study: Study, tables: Tables, cohort: pd.DataFrame,
                  site_id: str, policy: Policy, memo: dict[str, CoxSite],
                  participants: Sequence[str] | None = None,
                  screened: Screened | None = None) -> Release:
    """What this site releases for one analysis, or an error release with the reason.

    ``participants`` None: the unmasked release, under the site's disclosure rules. Given (the
    sorted site ids of a secure round): the fixed-shape plain release, to be masked by the
    caller; a secure study needs the decisions of its screening (``screened``). For Cox, the
    model description; the prepared site data is kept in ``memo[analysis.name]`` for
    :func:`cox_step_release`.
    """
    reason = policy.check_analysis(analysis)
    if reason:
        return Release.failure(analysis.name, analysis.kind, reason)
    if participants is not None and screened is None:
        return Release.failure(analysis.name, analysis.kind,
                               "a secure study's analyses are released after its screening")
    screened = screened or Screened()
    if analysis.name in screened.withheld_analyses:
        return Release.failure(analysis.name, analysis.kind,
                               screened.withheld_analyses[analysis.name])
    try:
        return _release(analysis, study, tables, cohort, site_id, policy, memo, participants,
                        screened)
    except StudyRefused as exc:
        return Release.failure(analysis.name, analysis.kind, str(exc))


def cox_step_release(analysis: Analysis, study: Study, tables: Tables, cohort: pd.DataFrame,
                     policy: Policy, memo: dict[str, CoxSite], request: NewtonRequest,
                     context: CoxRound) -> Release:
    """One Newton round of a Cox analysis: the site's sums at ``request``'s coefficients, once
    the site has checked them against the relayed signed releases (``context``)."""
    reason = policy.check_analysis(analysis)
    if reason:
        return Release.failure(analysis.name, analysis.kind, reason)
    if analysis.kind != "cox":
        return Release.failure(analysis.name, analysis.kind,
                               f"kind {analysis.kind} has no later rounds")
    try:
        return cox.step(analysis, study, tables, cohort, policy, memo, request, context)
    except (StudyRefused, DisclosureError) as exc:
        return Release.failure(analysis.name, analysis.kind, str(exc))


def release_summary(releases: Mapping[str, Release]) -> dict[str, object]:
    """What the audit trail records of a release: names, kinds, vector sizes, errors."""
    return {
        name: {"kind": r.kind, "error": r.error} if r.error else
        {"kind": r.kind, "vectors": len(r.vectors), "groups": len(r.metadata.get(GROUPS, []))}
        for name, r in releases.items()
    }
