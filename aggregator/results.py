"""results.json of a finished study (docs/results-format.md): the engine's functional core."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from aggregator.store import StudySiteRecord, decode_task_result
from protocol.codec import Release
from protocol.study import Study

__all__ = ["Pool", "json_default", "results_document"]

logger = logging.getLogger(__name__)

Pool = Callable[[Study, Mapping[str, Sequence[Release]]], Mapping[str, Any]]
"""Pools the released sites' releases: returns ``{"analyses": {...}, "privacy": {...}}``."""


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _failed_analyses(study: Study, reason: str) -> dict[str, Any]:
    return {a.name: {"kind": a.kind, "error": reason} for a in study.analyses}


def _checked_pool_output(study: Study, pooled: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(pooled, Mapping) or not isinstance(pooled.get("analyses"), Mapping):
        raise TypeError("the pooling function must return {'analyses': {...}, 'privacy': {...}}")
    if not isinstance(privacy := pooled.get("privacy") or {}, Mapping):
        raise TypeError("the pooling function returned a 'privacy' that is not a mapping")
    analyses = dict(pooled["analyses"])
    for a in study.analyses:
        analyses.setdefault(a.name, {"kind": a.kind, "error": "no pooled result"})
    return analyses, dict(privacy)


def results_document(study: Study, states: Sequence[StudySiteRecord], pool: Pool,
                     iterative: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Build results.json (docs/results-format.md) for a study whose participants are all final.

    Returns
    -------
    tuple
        The study's final status (``completed``, or ``failed`` when pooling raised) and the
        results document. ``iterative`` holds the results of iterative analyses (Cox), which
        replace what pooling the first round gave for them.
    """
    iterative = dict(iterative or {})
    later = iterative.pop("__sites__", {})
    dropped = later.get("dropped", {})
    participated = sorted(s.site_id for s in states if s.state == "released"
                          and s.site_id not in dropped)
    refused = {s.site_id: s.reason for s in sorted(states, key=lambda s: s.site_id)
               if s.state == "refused"}
    unreachable = sorted({s.site_id for s in states if s.state == "unreachable"} | set(dropped))
    privacy: dict[str, Any] = {"secure_aggregation": study.privacy.secure_aggregation,
                               "min_sites": study.privacy.min_sites}
    status = "completed"
    min_sites = study.privacy.min_sites
    if len(participated) < min_sites:
        analyses = _failed_analyses(
            study, f"fewer than {min_sites} participating sites (min_sites)")
    else:
        try:
            releases = {s.site_id: decode_task_result(s.release or b"") for s in states
                        if s.state == "released"}
            analyses, pooled_privacy = _checked_pool_output(study, pool(study, releases))
            analyses.update(iterative)
            analyses = {a.name: analyses[a.name] for a in study.analyses}  # study order
            json.dumps([analyses, pooled_privacy], default=json_default)  # must be JSON
            privacy.update(pooled_privacy)
        except Exception as exc:
            logger.exception("pooling study %s failed", study.id)
            status = "failed"
            analyses = _failed_analyses(study, f"pooling failed: {exc}")
    doc = {
        "heron": 1,
        "study_id": study.id,
        "title": study.title,
        "status": status,
        "sites": {"participated": participated, "refused": refused,
                  "unreachable": unreachable,
                  **({"dropped_during_study": dict(sorted(dropped.items()))} if dropped
                     else {})},
        "privacy": privacy,
        "analyses": analyses,
    }
    return status, doc


