"""Pooling of the incidence analyses: cumulative incidence (with Gray's test) and adverse events.

Counts are summed over the sites that released them; the estimators of :mod:`analytics` run on
the sums. An adverse-event count that a site withheld under its unmasked disclosure rules makes
the pooled cell a lower bound, reported as the string ``">=N"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from analytics import (
    CompetingCounts,
    EstimationError,
    ae_term_result,
    cumulative_incidence,
    gray_test,
    pool_competing,
)
from protocol.codec import Release
from protocol.releases import SUPPRESSED, adverse_event_terms, competing_groups
from protocol.study import Analysis, Study

__all__ = ["complement_grades", "pool_adverse_events", "pool_cumulative_incidence"]

GRADES = ("1", "2", "3", "4", "5")


def pool_cumulative_incidence(analysis: Analysis, study: Study,
                              releases: Mapping[str, Release]) -> dict[str, Any]:
    """Aalen-Johansen cumulative incidence per group, and Gray's test with several groups."""
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
    for release in releases.values():
        window = int(release.metadata["window_days"])
        for term, (counts, grades, onset) in adverse_event_terms(release, window).items():
            acc = sums.setdefault(term, {"counts": np.zeros(3, np.int64),
                                         "grades": np.zeros(5, np.int64),
                                         "onset": np.zeros(window + 1, np.int64),
                                         "withheld": np.zeros(6, bool)})
            acc["withheld"] |= np.concatenate([[counts[1] == SUPPRESSED],
                                               grades == SUPPRESSED])
            acc["counts"] += np.where(counts == SUPPRESSED, 0, counts)
            acc["grades"] += np.where(grades == SUPPRESSED, 0, grades)
            acc["onset"] += onset
    terms: dict[str, Any] = {}
    for term, acc in sums.items():
        at_risk, with_event, person_days = (int(x) for x in acc["counts"])
        grades = {g: int(acc["grades"][i]) for i, g in enumerate(GRADES)
                  if i < 4 or acc["grades"][i] > 0 or acc["withheld"][i + 1]}
        result = ae_term_result(at_risk, with_event, float(person_days),
                                grades if analysis.by_grade else None,
                                acc["onset"] if onset_everywhere else None, min_cell)
        withheld = acc["withheld"]
        if withheld[0]:
            result.update(with_event=_cell(with_event, True, min_cell), proportion=None,
                          ci=None, rate_per_100py=None, rate_ci=None, median_onset_day=None)
        if analysis.by_grade and result.get("grades"):
            for i, g in enumerate(GRADES):
                if g in result["grades"] and withheld[i + 1]:
                    result["grades"][g] = _cell(int(acc["grades"][i]), True, min_cell)
            complement_grades(result["grades"], result["with_event"], min_cell)
        terms[term] = result
    return {"window_days": window, "terms": terms,
            "onset_disclosed": onset_everywhere,
            "suppression_threshold": min_cell}
