"""Wire conventions of releases: named vectors in a :class:`Release` for each analysis kind.

Survival and competing-risks releases carry per-group day-count vectors; adverse-event releases
per-term counts. Cox rounds use :mod:`analytics.cox`'s own vector names. The names themselves
are :mod:`protocol.vocabulary`'s.

A survival release (kinds ``kaplan_meier``, ``nelson_aalen``, ``logrank``) carries, for group
number ``i`` of ``metadata["groups"]``, the vectors ``g{i}.events`` and ``g{i}.censored`` of
length ``horizon + 1`` (events and censorings per day since infusion). Group names travel in the
metadata so that any string can be a group label.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analytics import CompetingCounts, SurvivalCounts
from protocol.codec import Release
from protocol.errors import ProtocolError
from protocol.vocabulary import (
    COMPETING_PARTS,
    COX_DAY_EVENTS,
    COX_DAY_EXITS,
    COX_DROPPED,
    COX_EVENTS,
    COX_N,
    GROUPS,
    LOGRANK_COVARIANCE,
    LOGRANK_EXPECTED,
    LOGRANK_OBSERVED,
    SURVIVAL_PARTS,
    TERM_PARTS,
    TERMS,
    cox_levels_vector,
    group_vector,
    term_vector,
)

__all__ = [
    "SUPPRESSED",
    "adverse_event_release",
    "adverse_event_terms",
    "competing_groups",
    "competing_release",
    "logrank_terms",
    "masked_cox_description",
    "masked_cox_event_table",
    "survival_groups",
    "survival_release",
]


def survival_release(
    analysis: str,
    kind: str,
    groups: Mapping[str, SurvivalCounts],
    metadata: Mapping[str, Any] | None = None,
) -> Release:
    """Pack per-group survival counts of one site into a release."""
    return _grouped_release(analysis, kind, groups, SURVIVAL_PARTS, metadata)


def _grouped_release(analysis: str, kind: str,
                     groups: Mapping[str, SurvivalCounts] | Mapping[str, CompetingCounts],
                     parts: tuple[str, ...], metadata: Mapping[str, Any] | None) -> Release:
    """Groups in sorted order, vector ``part`` of group ``i`` from ``groups[name].part``."""
    names = sorted(groups)
    vectors: dict[str, NDArray[np.int64]] = {}
    for i, name in enumerate(names):
        for part in parts:
            vectors[group_vector(i, part)] = np.asarray(getattr(groups[name], part),
                                                        dtype=np.int64)
    meta = dict(metadata or {})
    meta[GROUPS] = names
    return Release(analysis=analysis, kind=kind, vectors=vectors, metadata=meta)


def survival_groups(release: Release, horizon: int) -> dict[str, SurvivalCounts]:
    """Unpack a survival release; checks every vector has the study's length.

    Raises
    ------
    ProtocolError
        When the release does not follow the convention.
    """
    names = release.metadata.get(GROUPS)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ProtocolError(f"release {release.analysis}: metadata.groups must list group names")
    out: dict[str, SurvivalCounts] = {}
    for i, name in enumerate(names):
        try:
            events, censored = (np.asarray(release.vectors[group_vector(i, part)],
                                           dtype=np.int64) for part in SURVIVAL_PARTS)
        except KeyError as exc:
            raise ProtocolError(f"release {release.analysis}: missing vector {exc}") from None
        if len(events) != horizon + 1 or len(censored) != horizon + 1:
            raise ProtocolError(
                f"release {release.analysis}: group vectors must have length {horizon + 1}")
        out[name] = SurvivalCounts(events=events, censored=censored)
    return out


def competing_release(
    analysis: str,
    groups: Mapping[str, CompetingCounts],
    metadata: Mapping[str, Any] | None = None,
) -> Release:
    """Pack per-group competing-risks counts (``g{i}.cause1``, ``.cause2``, ``.censored``)."""
    return _grouped_release(analysis, "cumulative_incidence", groups, COMPETING_PARTS, metadata)


def competing_groups(release: Release, horizon: int) -> dict[str, CompetingCounts]:
    """Unpack :func:`competing_release`; checks the study's vector length."""
    names = _names(release, GROUPS)
    out: dict[str, CompetingCounts] = {}
    for i, name in enumerate(names):
        parts = [_vector(release, group_vector(i, p), horizon + 1) for p in COMPETING_PARTS]
        out[name] = CompetingCounts(*parts)
    return out


SUPPRESSED = -1
"""Marks a count a site withheld under its disclosure rules (unmasked releases only)."""


def adverse_event_release(
    analysis: str,
    terms: Mapping[str, tuple[int, int, int, NDArray[np.integer], NDArray[np.integer]]],
    metadata: Mapping[str, Any] | None = None,
) -> Release:
    """Pack per-term adverse-event statistics.

    ``terms`` maps a term to ``(at_risk, with_event, person_days, grades[5], onset[w+1])``;
    a withheld count is :data:`SUPPRESSED`. Vectors: ``t{i}.counts`` (at_risk, with_event,
    person_days), ``t{i}.grades`` and ``t{i}.onset``.
    """
    names = list(terms)
    vectors: dict[str, NDArray[np.int64]] = {}
    for i, name in enumerate(names):
        at_risk, with_event, person_days, grades, onset = terms[name]
        counts = np.array([at_risk, with_event, person_days], dtype=np.int64)
        for part, values in zip(TERM_PARTS, (counts, grades, onset), strict=True):
            vectors[term_vector(i, part)] = np.asarray(values, dtype=np.int64)
    meta = dict(metadata or {})
    meta[TERMS] = names
    return Release(analysis=analysis, kind="adverse_events", vectors=vectors, metadata=meta)


def adverse_event_terms(
    release: Release, window_days: int
) -> dict[str, tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]]:
    """Unpack :func:`adverse_event_release`: term -> (counts[3], grades[5], onset[w+1])."""
    out = {}
    for i, name in enumerate(_names(release, TERMS)):
        counts, grades, onset = (_vector(release, term_vector(i, part), length) for part, length
                                 in zip(TERM_PARTS, (3, 5, window_days + 1), strict=True))
        out[name] = (counts, grades, onset)
    return out


def _names(release: Release, key: str) -> list[str]:
    names = release.metadata.get(key)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ProtocolError(f"release {release.analysis}: metadata.{key} must list names")
    return names


def _vector(release: Release, key: str, length: int) -> NDArray[np.int64]:
    try:
        vec = np.asarray(release.vectors[key], dtype=np.int64)
    except KeyError:
        raise ProtocolError(f"release {release.analysis}: missing vector {key!r}") from None
    if vec.shape != (length,):
        raise ProtocolError(f"release {release.analysis}: {key} must have length {length}")
    return vec


def logrank_terms(release: Release) -> tuple[NDArray[np.float64], NDArray[np.float64],
                                             NDArray[np.float64]] | None:
    """A fixed-shape log-rank release's observed, expected and covariance (k x k) terms,
    or ``None`` when the release carries per-group counts only."""
    keys = (LOGRANK_OBSERVED, LOGRANK_EXPECTED, LOGRANK_COVARIANCE)
    if not set(keys) <= set(release.vectors):
        return None
    o, e, v = (np.asarray(release.vectors[k], dtype=np.float64) for k in keys)
    if o.shape != e.shape or v.size != o.size * o.size:
        raise ProtocolError(f"release {release.analysis}: log-rank terms of unequal sizes")
    return o, e, v.reshape(o.size, o.size)


def masked_cox_description(release: Release
                           ) -> tuple[dict[str, list[str]], int, int, dict[str, int]]:
    """A (summed) fixed-shape Cox description: the levels present per categorical covariate,
    patients, events, and patients dropped per covariate with a missing value."""
    try:
        levels = {cov: [lv for lv, c in zip(names, release.vectors[cox_levels_vector(cov)],
                                            strict=True) if c > 0]
                  for cov, names in (release.metadata.get("levels") or {}).items()}
        dropped = {str(c): int(v) for c, v in zip(release.metadata.get("covariates", []),
                                                  release.vectors[COX_DROPPED], strict=True)}
        return (levels, int(release.vectors[COX_N][0]), int(release.vectors[COX_EVENTS][0]),
                dropped)
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise ProtocolError(f"release {release.analysis}: malformed Cox description: "
                            f"{exc}") from None


def masked_cox_event_table(release: Release, horizon: int
                           ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """A (summed) fixed-shape Cox description's per-day events and exits over ``0..horizon``."""
    return (_vector(release, COX_DAY_EVENTS, horizon + 1),
            _vector(release, COX_DAY_EXITS, horizon + 1))
