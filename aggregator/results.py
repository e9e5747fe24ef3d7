"""results.json of a finished study (docs/results-format.md): the engine's functional core."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aggregator.run import RunState
from protocol.codec import json_default
from protocol.study import Study

__all__ = ["failed_document", "json_default", "results_document"]


def results_document(study: Study, state: RunState,
                     analyses: Mapping[str, Any]) -> dict[str, Any]:
    """results.json of a study whose run has finished.

    Parameters
    ----------
    study
        The study.
    state
        Its final run state (who took part, refused, was unreachable or dropped out).
    analyses
        Every analysis' entry, in study order (:meth:`aggregator.run.StudyRun.results`).
    """
    dropped = dict(sorted(state.dropped.items()))
    participated = sorted(s for s in state.answered if s not in dropped)
    resolution = max([int(a.get("time_resolution_days", 1)) for a in analyses.values()]
                     + [1])
    return {
        "heron": 1,
        "study_id": study.id,
        "title": study.title,
        "status": "completed",
        "sites": {"participated": participated,
                  "refused": dict(sorted(state.refused.items())),
                  "unreachable": sorted(set(state.unreachable)
                                        | (set(dropped) - set(state.refused))),
                  **({"dropped_during_study": dropped} if dropped else {})},
        "privacy": {
            "secure_aggregation": study.privacy.secure_aggregation,
            "min_sites": study.privacy.min_sites,
            "time_resolution_days": resolution,
            "coarsened": state.coarsened,
            "site_thresholds": [{"min_cell": c, "min_bin_events": b}
                                for c, b in sorted(tuple(t) for t in state.thresholds)],
        },
        "analyses": dict(analyses),
    }


def failed_document(study_id: str, reason: str, study: Study | None = None) -> dict[str, Any]:
    """results.json of a study that could not be run to its end (every analysis errs)."""
    doc: dict[str, Any] = {"heron": 1, "study_id": study_id, "status": "failed",
                           "error": reason}
    if study is not None:
        doc["title"] = study.title
        doc["analyses"] = {a.name: {"kind": a.kind, "error": reason} for a in study.analyses}
    return doc
