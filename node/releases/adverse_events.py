"""Releases of ``kind: adverse_events`` (docs/study-format.md): per-term summaries of a site.

For each requested term, over the cohort (one row per infusion; day 0 = that infusion):

- an *event* is an adverse_events row of the term for the cohort infusion with onset day
  ``d = onset_date - infusion_date`` (whole days) in ``0 <= d <= window_days``; rows outside the
  window, or for other infusions of the patient, are ignored;
- ``with_event``: patients with at least one event;
- ``grades`` (only when asked): patients counted once, by the maximum ``max_grade`` among their
  events; keys ``"1"`` .. ``"5"``, all present. A patient whose events carry no grade in 1..5
  counts in ``with_event`` but under no grade;
- ``onset_histogram[d]``: patients whose first event is on day ``d`` (length window_days + 1,
  sums to ``with_event``);
- ``person_days``: days at risk of a first event within the window, summed over the cohort. A
  patient with an event contributes its first onset day; any other patient contributes
  ``min(end of follow-up, window_days)``, where the end of follow-up is the death day or else
  the latest contact day (rules of :mod:`node.cohorts.endpoints`; day 0 without follow-up).
  This equals ``min(first onset, end of follow-up, window_days)`` whenever the onset is not
  after the end of follow-up (ingestion guarantees onset <= death); an event recorded after the
  latest contact extends follow-up to its onset. An event on day 0 contributes 0 days.

Terms are the data-model enumeration, matched case-insensitively; results are keyed by the
canonical spelling.

Presentations: unmasked releases withhold a patient count (``with_event``, a grade) of 1 to
``min_cell - 1`` (:data:`protocol.releases.SUPPRESSED`) and release the onset histogram only at
day resolution without thresholds (``min_cell == 1``), as it holds one count per day; the cohort
size and person-days are released as they are. Masked releases carry every count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analytics import hide_cells
from node.cohorts.cohort import Tables, get_table
from node.cohorts.endpoints import survival_endpoint
from node.errors import StudyRefused
from node.governance.policy import Policy
from node.ingestion.schema import AE_TERM
from protocol.codec import Release
from protocol.releases import SUPPRESSED, adverse_event_release
from protocol.study import Analysis, Study
from protocol.vocabulary import AE_GRADES, HIDDEN_GRADES, MEDIAN_ONSET, WITHHELD_TERMS

__all__ = ["GRADES", "AdverseEventStatistics", "TermSummary", "ae_site_summary",
           "canonical_terms", "event_rows", "release", "statistics", "window_days"]

log = logging.getLogger(__name__)

GRADES = AE_GRADES
"""Grade keys of :attr:`TermSummary.grades` (ASTCT 1-4, CTCAE 1-5)."""
_NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True, eq=False)
class TermSummary:
    """Site summary of one adverse-event term (see the module docstring).

    Attributes
    ----------
    at_risk : int
        Cohort size.
    with_event : int
        Patients with at least one event of the term in the window.
    grades : dict of str to int
        ``"1"`` .. ``"5"`` -> patients by their maximum grade; empty unless ``by_grade``.
    person_days : int
        Days at risk of a first event within the window, summed over the cohort.
    onset_histogram : numpy.ndarray of int64
        Length window_days + 1: patients whose first event is on day d (read-only).
    """

    at_risk: int
    with_event: int
    grades: dict[str, int]
    person_days: int
    onset_histogram: np.ndarray


def canonical_terms(terms: Sequence[str]) -> list[str]:
    """Canonical spellings of ``terms`` (case-insensitive, duplicates removed, order kept).

    Raises
    ------
    StudyRefused
        If a term is not in the data-model enumeration.
    """
    if isinstance(terms, str):
        terms = [terms]
    lookup = {t.lower(): t for t in AE_TERM}
    out: list[str] = []
    for term in terms:
        canon = lookup.get(term.strip().lower()) if isinstance(term, str) else None
        if canon is None:
            raise StudyRefused(f"adverse-event term {term!r} is unknown; use one of "
                               f"{', '.join(AE_TERM)}")
        if canon not in out:
            out.append(canon)
    return out


def _check_window(window_days: int) -> int:
    if (isinstance(window_days, bool) or not isinstance(window_days, int | np.integer)
            or window_days < 0):
        raise StudyRefused(f"window_days must be a non-negative integer, not {window_days!r}")
    return int(window_days)


def _epoch_days(values: pd.Series) -> np.ndarray:
    """Dates as float days since 1970-01-01 (NaN where missing)."""
    v = pd.to_datetime(values).to_numpy(dtype="datetime64[ns]")
    out = np.floor_divide(v.view("int64"), _NS_PER_DAY).astype("float64")
    out[np.isnat(v)] = np.nan
    return out


def _window_events(tables: Tables, cohort_df: pd.DataFrame,
                   terms: list[str], window: int) -> pd.DataFrame:
    """Events in the window: columns term, pos (cohort row), day (int64), grade (float)."""
    ids = pd.Index(cohort_df["infusion_id"].astype("string"))
    if not ids.is_unique:
        raise ValueError("cohort_df has duplicate infusion_id values")
    ae = get_table(tables, "adverse_events")
    if len(ae) == 0 or len(ids) == 0:
        return pd.DataFrame({"term": pd.Series(dtype="string"), "pos": [], "day": [],
                             "grade": []})
    ae = ae.loc[ae["term"].isin(terms).fillna(False).to_numpy(dtype=bool)]
    pos = ids.get_indexer(pd.Index(ae["infusion_id"].astype("string")))
    t0 = _epoch_days(cohort_df["infusion_date"])
    day = _epoch_days(ae["onset_date"]) - t0[pos]
    day[pos < 0] = np.nan
    keep = (day >= 0) & (day <= window)
    grade = pd.to_numeric(ae["max_grade"], errors="coerce").to_numpy(dtype="float64",
                                                                    na_value=np.nan)
    return pd.DataFrame({
        "term": ae["term"].astype("string").to_numpy()[keep],
        "pos": pos[keep],
        "day": day[keep].astype("int64"),
        "grade": grade[keep],
    })


def _grade_counts(max_grade: pd.Series) -> dict[str, int]:
    """Patients by maximum grade; grades outside 1..5 or missing are not counted."""
    valid = max_grade.isin(range(1, 6))
    if (~valid).any():
        log.warning("%d patients with events carry no grade in 1..5", int((~valid).sum()))
    counts = np.bincount(max_grade[valid].to_numpy(dtype="int64"), minlength=6)
    return {g: int(counts[int(g)]) for g in GRADES}


def ae_site_summary(tables: Tables, cohort_df: pd.DataFrame, terms: Sequence[str],
                    by_grade: bool, window_days: int) -> dict[str, TermSummary]:
    """Adverse-event summary of each term at this site (rules in the module docstring).

    Parameters
    ----------
    tables : mapping or store
        Table name -> DataFrame, or an object with ``.table(name)``.
    cohort_df : DataFrame
        Output of :func:`node.cohorts.cohort.select_cohort` (infusion_id, infusion_date).
    terms : sequence of str
        Data-model adverse-event terms.
    by_grade : bool
        Whether to count patients by maximum grade.
    window_days : int
        Events with onset on days 0..window_days count.

    Returns
    -------
    dict of str to TermSummary
        Keyed by canonical term, in the study's order.

    Raises
    ------
    StudyRefused
        For an unknown term or a negative window.
    """
    canon = canonical_terms(terms)
    window = _check_window(window_days)
    n = len(cohort_df)
    events = _window_events(tables, cohort_df, canon, window)
    followed = survival_endpoint(tables, cohort_df, "overall_survival", horizon=window)
    end = followed["duration"].to_numpy(dtype="int64")
    total_end = int(end.sum())
    out: dict[str, TermSummary] = {}
    for term, rows in _by_term(events, canon).items():
        per = rows.groupby("pos", sort=False).agg(first=("day", "min"), grade=("grade", "max"))
        pos = per.index.to_numpy(dtype="int64")
        first = per["first"].to_numpy(dtype="int64")
        hist = np.bincount(first, minlength=window + 1).astype("int64")
        hist.setflags(write=False)
        person_days = total_end - int(end[pos].sum()) + int(first.sum())
        grades = _grade_counts(per["grade"]) if by_grade else {}
        out[term] = TermSummary(at_risk=n, with_event=len(per), grades=grades,
                                person_days=person_days, onset_histogram=hist)
    log.debug("adverse events: %d terms over %d cohort infusions, window %d days",
              len(canon), n, window)
    return out


def event_rows(analysis: Analysis, study: Study, tables: Tables,
               cohort: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per term, the cohort rows (positions) with an event in the analysis' window: the set a
    ``with_event`` count is taken over (for the disclosure ledger)."""
    canon = canonical_terms(analysis.terms)
    events = _window_events(tables, cohort, canon, _check_window(window_days(analysis, study)))
    return {term: np.unique(rows["pos"].to_numpy(dtype="int64"))
            for term, rows in _by_term(events, canon).items()}


def _by_term(events: pd.DataFrame, terms: list[str]) -> dict[str, pd.DataFrame]:
    """Events of each term (an empty frame for a term without events), in ``terms`` order."""
    groups = dict(iter(events.groupby("term", sort=False))) if len(events) else {}
    return {t: groups.get(t, events.iloc[:0]) for t in terms}


# -- releases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdverseEventStatistics:
    """One adverse-event analysis at this site: each term's summary over the onset window."""

    terms: dict[str, TermSummary]
    window: int


def window_days(analysis: Analysis, study: Study) -> int:
    """The analysis' onset window (days 0..window), the horizon when the study gives none."""
    return analysis.window_days if analysis.window_days is not None else study.horizon_days


def statistics(analysis: Analysis, study: Study, tables: Tables,
               cohort: pd.DataFrame) -> AdverseEventStatistics:
    """Each requested term's summary at this site."""
    window = window_days(analysis, study)
    return AdverseEventStatistics(
        ae_site_summary(tables, cohort, analysis.terms, analysis.by_grade, window), window)


def _pack(analysis: Analysis, stats: AdverseEventStatistics,
          shown: Callable[[str, TermSummary], tuple[int, int, list[int]]],
          onset_released: bool, metadata: Mapping[str, Any]) -> Release:
    """Per term: cohort size and what ``shown`` gives of with_event, person-days and the
    grades, and the onset histogram (zeros unless ``onset_released`` and the term's
    with_event is shown and non-zero)."""
    terms = {}
    for term, s in stats.terms.items():
        with_event, person_days, grades = shown(term, s)
        onset = np.asarray(s.onset_histogram, dtype=np.int64) \
            if onset_released and with_event > 0 else np.zeros(stats.window + 1, dtype=np.int64)
        terms[term] = (int(s.at_risk), with_event, person_days,
                       np.array(grades, dtype=np.int64), onset)
    return adverse_event_release(analysis.name, terms, {
        "window_days": stats.window, "by_grade": analysis.by_grade,
        "onset_released": onset_released, **metadata})


def _cells(s: TermSummary) -> list[int]:
    """Grades 1-5 and the patients without a grade: the cells that add up to with_event."""
    grades = [int(s.grades.get(g, 0)) for g in GRADES]
    return [*grades, int(s.with_event) - sum(grades)]


def release(analysis: Analysis, study: Study, tables: Tables, cohort: pd.DataFrame,
            policy: Policy, masked: bool, withheld_terms: Sequence[str] = (),
            hidden_grades: Mapping[str, Sequence[str]] | None = None,
            onset_medians: Mapping[str, float | None] | None = None) -> Release:
    """The unmasked release or the masked one.

    Unmasked, under this site's rules: a term with 1 to ``min_cell - 1`` patients is
    withheld (with_event, person-days and grades), and grades are hidden with complementary
    suppression (:func:`analytics.hide_cells`), so no hidden cell follows from the shown ones.
    Masked, the same decisions come from the pooled screening counts (``withheld_terms``,
    ``hidden_grades``) and withheld values are released as zeros; onset days are not
    released, only the median onset day every site computed from the pooled screening
    (``onset_medians``).
    """
    stats = statistics(analysis, study, tables, cohort)
    if masked:
        hidden = hidden_grades or {}

        def masked_shown(term: str, s: TermSummary) -> tuple[int, int, list[int]]:
            if term in withheld_terms:
                return 0, 0, [0] * len(GRADES)
            grades = [0 if g in hidden.get(term, ()) else int(s.grades.get(g, 0))
                      for g in GRADES]
            return int(s.with_event), int(s.person_days), grades

        meta: dict[str, Any] = {MEDIAN_ONSET: dict(onset_medians or {})}
        if withheld_terms:
            meta[WITHHELD_TERMS] = list(withheld_terms)
        if hidden:
            meta[HIDDEN_GRADES] = {t: list(g) for t, g in hidden.items()}
        # no onset days: their running total would give the count within any shorter window
        return _pack(analysis, stats, masked_shown, False, meta)

    def unmasked_shown(term: str, s: TermSummary) -> tuple[int, int, list[int]]:
        if 0 < s.with_event < policy.min_cell:
            return SUPPRESSED, SUPPRESSED, [SUPPRESSED] * len(GRADES)
        hide = hide_cells(_cells(s), policy.min_cell) if s.with_event else (False,) * 6
        grades = [SUPPRESSED if h else int(s.grades.get(g, 0))
                  for g, h in zip(GRADES, hide[:-1], strict=True)]
        return int(s.with_event), int(s.person_days), grades

    return _pack(analysis, stats, unmasked_shown, policy.min_cell == 1,
                 {"min_cell": policy.min_cell, "min_bin_events": policy.min_bin_events})
