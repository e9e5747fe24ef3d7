"""Fixed-shape releases for secure aggregation (``secure_aggregation: true``).

Masked vectors must have the same keys and lengths at every site, and nothing in plaintext may
depend on a site's data. So groups are the fixed levels of the grouping variable (every level
of its enumeration, plus ``unknown``; the participants for ``site``), absent groups are zero
vectors, no time bins are coarsened, and counts that an unmasked release keeps in metadata
(Cox: levels present, patients, events, dropped) travel as vectors. Grouping variables without
a fixed list of levels (``product``, ``indication_group``) are refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analytics import SurvivalCounts, competing_counts, stratum_terms, survival_counts
from node.adverse_events import ae_site_summary
from node.endpoints import competing_endpoint, group_labels, survival_endpoint
from node.errors import StudyRefused
from node.incidence import window_days
from node.schema import ATMP_CLASS, DISEASE_STATUS, ORIGIN, ROUTE, SEX
from protocol.codec import Release
from protocol.releases import adverse_event_release, competing_release, survival_release
from protocol.study import Analysis, Study

__all__ = ["FIXED_LEVELS", "cox_setup_vectors", "fixed_levels", "secure_release"]

FIXED_LEVELS: dict[str, tuple[str, ...]] = {
    "sex": SEX, "route": ROUTE, "atmp_class": ATMP_CLASS, "origin": ORIGIN,
    "disease_status": DISEASE_STATUS, "ecog": ("0", "1", "2", "3", "4"),
}


def fixed_levels(group_by: str | None, participants: Sequence[str]) -> list[str]:
    """The groups every site releases for ``group_by``."""
    if group_by is None:
        return ["all"]
    if group_by == "site":
        return sorted(participants)
    if group_by not in FIXED_LEVELS:
        raise StudyRefused(f"group_by {group_by} has no fixed list of levels, so it cannot be "
                           "used with secure aggregation")
    return [*FIXED_LEVELS[group_by], "unknown"]


def _labels(analysis: Analysis, cohort: pd.DataFrame, site_id: str,
            levels: list[str]) -> np.ndarray:
    labels = group_labels(cohort, analysis.group_by, site_id).to_numpy()
    unexpected = set(labels) - set(levels)
    if unexpected:
        raise StudyRefused(f"group_by {analysis.group_by}: values outside its fixed levels")
    return labels


def _survival(analysis: Analysis, study: Study, tables: object, cohort: pd.DataFrame,
              site_id: str, participants: Sequence[str]) -> Release:
    assert analysis.endpoint is not None
    levels = fixed_levels(analysis.group_by, participants)
    outcome = survival_endpoint(tables, cohort, analysis.endpoint, study.horizon_days,
                                study.censor_at)
    labels = _labels(analysis, cohort, site_id, levels)
    durations = outcome["duration"].to_numpy()
    events = outcome["event"].to_numpy()
    groups: dict[str, SurvivalCounts] = {
        level: survival_counts(durations[labels == level], events[labels == level],
                               study.horizon_days) for level in levels}
    release = survival_release(analysis.name, analysis.kind, groups,
                               {"time_resolution_days": 1, "coarsened": False})
    if analysis.kind == "logrank" and analysis.stratify_by_site:
        names = sorted(groups)  # the release's own group order
        o, e, v = stratum_terms(groups, names)
        vectors = dict(release.vectors)
        vectors.update({"lr.observed": o, "lr.expected": e, "lr.covariance": v.ravel()})
        release = Release(release.analysis, release.kind, vectors, release.metadata)
    return release


def _cumulative_incidence(analysis: Analysis, study: Study, tables: object,
                          cohort: pd.DataFrame, site_id: str,
                          participants: Sequence[str]) -> Release:
    assert analysis.endpoint is not None
    levels = fixed_levels(analysis.group_by, participants)
    outcome = competing_endpoint(tables, cohort, analysis.endpoint, study.horizon_days,
                                 study.censor_at)
    labels = _labels(analysis, cohort, site_id, levels)
    durations, causes = outcome["duration"].to_numpy(), outcome["cause"].to_numpy()
    groups = {level: competing_counts(durations[labels == level], causes[labels == level],
                                      study.horizon_days) for level in levels}
    return competing_release(analysis.name, groups,
                             {"time_resolution_days": 1, "coarsened": False})


def _adverse_events(analysis: Analysis, study: Study, tables: object,
                    cohort: pd.DataFrame) -> Release:
    window = window_days(analysis, study)
    summary = ae_site_summary(tables, cohort, analysis.terms, analysis.by_grade, window)
    terms = {term: (int(s.at_risk), int(s.with_event), int(s.person_days),
                    np.array([s.grades.get(g, 0) for g in "12345"], dtype=np.int64),
                    np.asarray(s.onset_histogram, dtype=np.int64))
             for term, s in summary.items()}
    return adverse_event_release(analysis.name, terms, {
        "window_days": window, "by_grade": analysis.by_grade, "onset_released": True})


def cox_setup_vectors(analysis: Analysis, design: object, events: int) -> Release:
    """Round-1 description of a site's Cox data as vectors over fixed levels."""
    vectors: dict[str, np.ndarray] = {
        "n": np.array([design.n], dtype=np.int64),  # type: ignore[attr-defined]
        "events": np.array([events], dtype=np.int64),
        "dropped": np.array([design.dropped.get(f"missing {c}", 0)  # type: ignore[attr-defined]
                             for c in analysis.covariates], dtype=np.int64),
    }
    levels: dict[str, list[str]] = {}
    for cov in analysis.covariates:
        if cov in FIXED_LEVELS:
            levels[cov] = list(FIXED_LEVELS[cov])
            present = set(design.levels.get(cov, []))  # type: ignore[attr-defined]
            vectors[f"levels.{cov}"] = np.array([int(v in present) for v in levels[cov]],
                                                dtype=np.int64)
        elif cov in ("product", "indication_group"):
            raise StudyRefused(f"covariate {cov} has no fixed list of levels, so it cannot "
                               "be used with secure aggregation")
    return Release(analysis=analysis.name, kind="cox", vectors=vectors,
                   metadata={"covariates": list(analysis.covariates), "levels": levels})


def secure_release(analysis: Analysis, study: Study, tables: object, cohort: pd.DataFrame,
                   site_id: str, participants: Sequence[str]) -> Release:
    """The fixed-shape release of one non-iterative analysis."""
    if analysis.kind in ("kaplan_meier", "nelson_aalen", "logrank"):
        return _survival(analysis, study, tables, cohort, site_id, participants)
    if analysis.kind == "cumulative_incidence":
        return _cumulative_incidence(analysis, study, tables, cohort, site_id, participants)
    if analysis.kind == "adverse_events":
        return _adverse_events(analysis, study, tables, cohort)
    raise StudyRefused(f"kind {analysis.kind} has no secure release")


