"""Screening: the pooled counts that decide what a secure study may release.

Under secure aggregation a site cannot see the pooled cohort, so its own thresholds say
nothing about what leaves the network. Before any analysis vector is released, every site
therefore releases its *screening counts* (masked and sealed for the other sites,
:mod:`protocol.screening`) and, in the next round, opens the others' and sums them itself, so
it needs to trust the aggregator for nothing. From the exact pooled counts each site takes the
same decisions (:func:`decide`; thresholds are the strictest of all participants'):

- fewer than ``min_sites`` sites with any patient in the cohort, or a pooled cohort below
  ``min_cohort``: the study is refused (nothing is released);
- per grouped analysis: groups below ``min_cohort``, and groups that come from one site only
  (unless that is ``group_by: site`` and the site's policy allows site-level release), are
  withheld, with complementary withholding (:func:`analytics.withhold_groups`);
- per adverse-event term: a term with 1 to ``min_cell - 1`` patients is withheld whole
  (counts, person-time); grade cells are hidden with complementary suppression
  (:func:`analytics.hide_cells`); onset days are never released, only the median first-onset
  day of a shown term, computed here (windows up to :data:`ONSET_SCREEN_DAYS`);
- per Cox model: fewer than ``min_cohort`` complete cases or ``min_cell`` events, or a level
  of a categorical covariate with 1 to ``min_cell - 1`` complete cases, withhold it; patients
  dropped per covariate are not shown when one of those counts is below ``min_cell``.

Counts: ``sites`` (1 if this site has a patient in the cohort), ``cohort``; per analysis ``i``:
``a{i}.groups`` and ``a{i}.group_sites`` over the fixed levels, ``a{i}.cells`` (per term:
with_event, grades 1-5, without grade), ``a{i}.cases`` (complete cases, events),
``a{i}.dropped`` (per covariate) and ``a{i}.levels`` (complete cases per fixed level).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

from analytics import hide_cells, median_from_histogram, withhold_groups
from node.cohorts.cohort import Tables
from node.cohorts.covariates import build_design
from node.cohorts.endpoints import group_labels, survival_endpoint
from node.errors import StudyRefused
from node.governance.policy import Policy
from node.releases import adverse_events
from node.releases.cox import level_counts
from node.releases.survival import KINDS as SURVIVAL_KINDS
from protocol.codec import Release
from protocol.design import CATEGORICAL_COVARIATES
from protocol.screening import SCREEN, SCREEN_KIND
from protocol.study import Analysis, Study
from protocol.vocabulary import AE_GRADES, FIXED_LEVELS, SITE, fixed_groups, has_fixed_levels

__all__ = ["Screened", "decide", "screen_counts"]

GROUPED_KINDS = (*SURVIVAL_KINDS, "cumulative_incidence")
ONSET_SCREEN_DAYS = 365
"""Longest adverse-event window whose onset days are screened (for the median onset day)."""
_CELLS = len(AE_GRADES) + 2  # with_event, grades, without grade


@dataclass(frozen=True)
class Screened:
    """What a secure study may release, decided from the pooled screening counts.

    Attributes
    ----------
    withheld_analyses
        Analysis name -> reason (no count in it).
    withheld_groups
        Grouped analysis name -> levels withheld.
    withheld_terms
        Adverse-event analysis name -> terms withheld whole.
    hidden_grades
        Adverse-event analysis name -> term -> grade keys hidden.
    onset_medians
        Adverse-event analysis name -> shown term -> median first-onset day, from the pooled
        onset days (the days themselves are never released: their running total would give
        the term's count within any shorter window).
    cox_presence
        Cox model name -> categorical covariate -> which fixed levels the pooled complete
        cases have (every site describes the model with these).
    cox_hide_dropped
        Cox models whose pooled counts of patients dropped per covariate are not shown.
    min_cohort, min_cell
        The thresholds applied (the strictest over the participants).
    """

    withheld_analyses: dict[str, str] = field(default_factory=dict)
    withheld_groups: dict[str, list[str]] = field(default_factory=dict)
    withheld_terms: dict[str, list[str]] = field(default_factory=dict)
    hidden_grades: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    onset_medians: dict[str, dict[str, float | None]] = field(default_factory=dict)
    cox_presence: dict[str, dict[str, list[bool]]] = field(default_factory=dict)
    cox_hide_dropped: set[str] = field(default_factory=set)
    min_cohort: int = 10
    min_cell: int = 5


def _levels(analysis: Analysis, participants: Sequence[str]) -> list[str] | None:
    return fixed_groups(analysis.group_by, participants) if has_fixed_levels(
        analysis.group_by) else None


def _group_counts(analysis: Analysis, cohort: pd.DataFrame, site_id: str,
                  levels: list[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    labels = group_labels(cohort, analysis.group_by, site_id).to_numpy()
    sizes = np.array([int(np.sum(labels == level)) for level in levels], dtype=np.int64)
    return sizes, (sizes > 0).astype(np.int64)


def _ae_counts(analysis: Analysis, study: Study, tables: Tables,
               cohort: pd.DataFrame) -> dict[str, npt.NDArray[np.int64]]:
    """Per term: with_event, grades 1-5 and without grade (``cells``); for windows up to
    :data:`ONSET_SCREEN_DAYS`, the first-onset day histogram (``onset``)."""
    stats = adverse_events.statistics(analysis, study, tables, cohort)
    rows = []
    for summary in stats.terms.values():
        grades = [int(summary.grades.get(g, 0)) for g in AE_GRADES]
        rows.append([summary.with_event, *grades, summary.with_event - sum(grades)])
    out = {"cells": np.array(rows, dtype=np.int64).reshape(len(rows), _CELLS)}
    if stats.window <= ONSET_SCREEN_DAYS:
        out["onset"] = np.array([np.asarray(t.onset_histogram, dtype=np.int64)
                                 for t in stats.terms.values()],
                                dtype=np.int64).reshape(len(rows), stats.window + 1)
    return out


def _cox_counts(analysis: Analysis, study: Study, tables: Tables,
                cohort: pd.DataFrame) -> dict[str, npt.NDArray[np.int64]]:
    """Complete cases and their events; patients dropped per covariate; complete cases per
    fixed level of each categorical covariate (in the study's covariate order)."""
    assert analysis.endpoint is not None
    design = build_design(tables, cohort, analysis.covariates)
    outcome = survival_endpoint(tables, cohort, analysis.endpoint, study.horizon_days,
                                study.censor_at)
    events = int(outcome["event"].to_numpy(dtype=bool)[design.mask].sum())
    levels = [c for counts in level_counts(design, analysis.covariates, fixed=True).values()
              for c in counts.values()]
    return {"cases": np.array([int(design.n), events], dtype=np.int64),
            "dropped": np.array([design.dropped.get(f"missing {c}", 0)
                                 for c in analysis.covariates], dtype=np.int64),
            "levels": np.array(levels, dtype=np.int64)}


def screen_counts(study: Study, tables: Tables, cohort: pd.DataFrame, site_id: str,
                  policy: Policy, participants: Sequence[str]) -> Release:
    """This site's screening counts (plain; the caller masks and seals them).

    An analysis this site cannot screen (a grouping without fixed levels, a bad term) gets
    no counts; its release is refused later with the reason.
    """
    vectors: dict[str, npt.NDArray[np.int64]] = {
        "sites": np.array([int(len(cohort) > 0)], dtype=np.int64),
        "cohort": np.array([len(cohort)], dtype=np.int64)}
    for i, analysis in enumerate(study.analyses):
        try:
            if analysis.kind in GROUPED_KINDS:
                levels = _levels(analysis, participants)
                if levels is not None:
                    sizes, present = _group_counts(analysis, cohort, site_id, levels)
                    vectors[f"a{i}.groups"], vectors[f"a{i}.group_sites"] = sizes, present
            elif analysis.kind == "adverse_events":
                for part, vec in _ae_counts(analysis, study, tables, cohort).items():
                    vectors[f"a{i}.{part}"] = vec
            elif analysis.kind == "cox":
                for part, vec in _cox_counts(analysis, study, tables, cohort).items():
                    vectors[f"a{i}.{part}"] = vec
        except StudyRefused:
            continue
    return Release(SCREEN, SCREEN_KIND, vectors,
                   {"min_cohort": policy.min_cohort, "min_cell": policy.min_cell})


def _grouped(analysis: Analysis, sizes: npt.NDArray[np.int64],
             sites: npt.NDArray[np.int64], levels: list[str], min_cohort: int
             ) -> list[str]:
    one_site = [int(s) == 1 and analysis.group_by != SITE for s in sites]
    hidden = withhold_groups([int(x) for x in sizes], min_cohort, forced=one_site)
    return [level for level, h in zip(levels, hidden, strict=True) if h]


def decide(study: Study, pooled: Release, thresholds: Sequence[Mapping[str, int]],
           participants: Sequence[str]) -> Screened:
    """The decisions every site takes from the pooled screening counts.

    Raises
    ------
    StudyRefused
        When fewer than ``min_sites`` sites have patients in the cohort, or the pooled cohort
        is below ``min_cohort`` (the reason holds no count).
    """
    min_cohort = max([1, *(int(t.get("min_cohort", 10)) for t in thresholds)])
    min_cell = max([1, *(int(t.get("min_cell", 5)) for t in thresholds)])
    v = pooled.vectors
    if int(np.asarray(v["sites"])[0]) < study.privacy.min_sites:
        raise StudyRefused(f"fewer than min_sites={study.privacy.min_sites} sites have "
                           "patients in this cohort")
    if int(np.asarray(v["cohort"])[0]) < min_cohort:
        raise StudyRefused(f"the pooled cohort is below min_cohort={min_cohort} patients")
    out = Screened(min_cohort=min_cohort, min_cell=min_cell)
    for i, analysis in enumerate(study.analyses):
        name = analysis.name
        if f"a{i}.groups" in v:
            levels = _levels(analysis, participants) or []
            sizes = np.asarray(v[f"a{i}.groups"], dtype=np.int64)
            hidden = _grouped(analysis, sizes, np.asarray(v[f"a{i}.group_sites"]), levels,
                              min_cohort)
            if hidden and len(hidden) == int(np.sum(sizes > 0)):
                out.withheld_analyses[name] = (f"withheld: no group reaches min_cohort="
                                               f"{min_cohort} patients from two sites or more")
            elif hidden:
                out.withheld_groups[name] = hidden
        elif f"a{i}.cells" in v:
            _terms(out, analysis, np.asarray(v[f"a{i}.cells"], dtype=np.int64), min_cell,
                   None if f"a{i}.onset" not in v else np.asarray(v[f"a{i}.onset"]))
        elif f"a{i}.cases" in v:
            _cox(out, analysis, {p: np.asarray(v[f"a{i}.{p}"], dtype=np.int64)
                                 for p in ("cases", "dropped", "levels")},
                 min_cohort, min_cell)

    return out


def _cox(out: Screened, analysis: Analysis, v: Mapping[str, npt.NDArray[np.int64]],
         min_cohort: int, min_cell: int) -> None:
    name = analysis.name
    n, events = (int(x) for x in v["cases"])
    if n < min_cohort or 0 < events < min_cell:
        out.withheld_analyses[name] = (f"withheld: fewer than min_cohort={min_cohort} complete "
                                       f"cases or min_cell={min_cell} events network-wide")
        return
    presence: dict[str, list[bool]] = {}
    start = 0
    for cov in analysis.covariates:
        if cov not in CATEGORICAL_COVARIATES:
            continue  # (level_counts refused the others under secure aggregation)
        counts = v["levels"][start:start + len(FIXED_LEVELS[cov])]
        start += len(FIXED_LEVELS[cov])
        if any(0 < int(c) < min_cell for c in counts):
            # an indicator column's sums over that level would cover those few patients
            out.withheld_analyses[name] = (f"withheld: a level of covariate {cov} has fewer "
                                           f"than min_cell={min_cell} patients network-wide")
            return
        presence[cov] = [int(c) > 0 for c in counts]
    out.cox_presence[name] = presence
    if any(0 < int(d) < min_cell for d in v["dropped"]):
        out.cox_hide_dropped.add(name)  # and all of them: one hidden is the total minus others


def _terms(out: Screened, analysis: Analysis, cells: npt.NDArray[np.int64],
           min_cell: int, onset: npt.NDArray[np.int64] | None) -> None:
    terms = adverse_events.canonical_terms(analysis.terms)
    medians: dict[str, float | None] = {}
    for t, (term, row) in enumerate(zip(terms, cells.reshape(len(terms), _CELLS),
                                        strict=True)):
        with_event = int(row[0])
        if 0 < with_event < min_cell:
            out.withheld_terms.setdefault(analysis.name, []).append(term)
            continue
        if onset is not None and with_event >= min_cell:
            medians[term] = median_from_histogram(onset.reshape(len(terms), -1)[t])
        if not analysis.by_grade or with_event == 0:
            continue
        hidden = hide_cells([int(x) for x in row[1:]], min_cell)
        grades = [g for g, h in zip(AE_GRADES, hidden[:-1], strict=True) if h]
        if grades:
            out.hidden_grades.setdefault(analysis.name, {})[term] = grades
    out.onset_medians[analysis.name] = medians
