"""Adverse events (CRS, ICANS, ...): per-term counts, patient-days, grades and onset days.

Counts are summed over the sites that released them and :mod:`analytics` gives proportions
and rates with exact intervals. A count a site withheld under its unmasked disclosure rules
makes the pooled cell a lower bound, reported as the string ``">=N"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from aggregator.strategies.one_shot import OneShotStrategy
from analytics import ae_term_result
from protocol.codec import Release
from protocol.releases import SUPPRESSED, adverse_event_terms
from protocol.study import Analysis, Study
from protocol.vocabulary import AE_GRADES, HIDDEN_GRADES, MEDIAN_ONSET, WITHHELD_TERMS

__all__ = ["AdverseEventStrategy", "complement_grades", "pool_adverse_events"]

GRADES = AE_GRADES


def _cell(total: int, withheld: bool, min_cell: int) -> int | str:
    if withheld:
        return f">={total}" if total > 0 else f"<{min_cell}"
    return total


def complement_grades(grades: dict[str, Any], with_event: Any, min_cell: int) -> None:
    """Secondary suppression: never leave exactly one hidden grade next to a shown total.

    With ``with_event`` shown, one ``"<5"`` grade could be recovered by subtracting the other
    grades from it; then the smallest shown non-zero grade is hidden as well (``">=5"``).
    """
    hidden = [g for g, v in grades.items() if isinstance(v, str)]
    if len(hidden) != 1 or isinstance(with_event, str):
        return
    shown = sorted((v, g) for g, v in grades.items() if isinstance(v, int) and v > 0)
    if shown:
        grades[shown[0][1]] = f">={min_cell}"


def pool_adverse_events(analysis: Analysis, study: Study,
                        releases: Mapping[str, Release]) -> dict[str, Any]:
    """Per term: at risk, with the event, proportion and rate with exact CIs, grades, onset."""
    window = None
    sums: dict[str, dict[str, Any]] = {}
    min_cell = max([int(r.metadata.get("min_cell", 5)) for r in releases.values()] + [5])
    onset_everywhere = all(r.metadata.get("onset_released") for r in releases.values())
    # secure aggregation: no onset days, the median every site computed from the screening
    medians = next((r.metadata[MEDIAN_ONSET] for r in releases.values()
                    if isinstance(r.metadata.get(MEDIAN_ONSET), dict)), None)
    for release in releases.values():
        window = int(release.metadata["window_days"])
        for term, (counts, grades, onset) in adverse_event_terms(release, window).items():
            acc = sums.setdefault(term, {"counts": np.zeros(3, np.int64),
                                         "grades": np.zeros(5, np.int64),
                                         "onset": np.zeros(window + 1, np.int64),
                                         "withheld": np.zeros(6, bool),
                                         "time_withheld": False})
            acc["withheld"] |= np.concatenate([[counts[1] == SUPPRESSED],
                                               grades == SUPPRESSED])
            acc["time_withheld"] |= bool(counts[2] == SUPPRESSED)
            if term in (release.metadata.get(WITHHELD_TERMS) or []):
                acc["withheld"][:] = True  # screened out for everyone (secure)
                acc["time_withheld"] = True
            hidden = (release.metadata.get(HIDDEN_GRADES) or {}).get(term) or []
            acc["withheld"][1:] |= np.array([g in hidden for g in GRADES])
            acc["screened"] = set(hidden)
            acc["counts"] += np.where(counts == SUPPRESSED, 0, counts)
            acc["grades"] += np.where(grades == SUPPRESSED, 0, grades)
            acc["onset"] += onset
    terms: dict[str, Any] = {}
    for term, acc in sums.items():
        at_risk, with_event, person_days = (int(x) for x in acc["counts"])
        shown = {g: int(acc["grades"][i]) for i, g in enumerate(GRADES)
                 if i < 4 or acc["grades"][i] > 0 or acc["withheld"][i + 1]}
        result = ae_term_result(at_risk, with_event, float(person_days),
                                shown if analysis.by_grade else None,
                                acc["onset"] if onset_everywhere else None, min_cell)
        if medians is not None:
            median = medians.get(term)
            result["median_onset_day"] = None if median is None else float(median)
        withheld = acc["withheld"]
        if withheld[0]:
            result.update(with_event=_cell(with_event, True, min_cell), proportion=None,
                          ci=None, rate_per_100py=None, rate_ci=None, median_onset_day=None)
        if acc["time_withheld"]:
            # person-time of a term few patients have would give their onset days away
            result.update(person_years=None, rate_per_100py=None, rate_ci=None)
        if analysis.by_grade and result.get("grades"):
            for i, g in enumerate(GRADES):
                if g in result["grades"] and withheld[i + 1]:
                    result["grades"][g] = _cell(int(acc["grades"][i]), True, min_cell)
            for g in acc.get("screened", ()):
                if g in result["grades"]:
                    result["grades"][g] = "suppressed"  # hidden for everyone (secure)
            complement_grades(result["grades"], result["with_event"], min_cell)
        terms[term] = result
    return {"window_days": window, "terms": terms,
            "onset_disclosed": onset_everywhere,
            "suppression_threshold": min_cell}


class AdverseEventStrategy(OneShotStrategy):
    """``adverse_events``: one entry per term."""

    kinds = ("adverse_events",)

    def check(self, release: Release, analysis: Analysis, study: Study) -> None:
        adverse_event_terms(release, int(release.metadata["window_days"]))

    def pool(self, analysis: Analysis, study: Study,
             releases: Mapping[str, Release]) -> dict[str, Any]:
        return pool_adverse_events(analysis, study, releases)
