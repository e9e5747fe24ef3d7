"""Wire convention for survival releases: per-group day-count vectors in a :class:`Release`.

A survival release (kinds ``kaplan_meier``, ``nelson_aalen``, ``logrank``) carries, for group
number ``i`` of ``metadata["groups"]``, the vectors ``g{i}.events`` and ``g{i}.censored`` of
length ``horizon + 1`` (events and censorings per day since infusion). Group names travel in the
metadata so that any string can be a group label.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from analytics import SurvivalCounts
from protocol.codec import Release
from protocol.errors import ProtocolError

__all__ = ["survival_groups", "survival_release"]


def survival_release(
    analysis: str,
    kind: str,
    groups: Mapping[str, SurvivalCounts],
    metadata: Mapping[str, Any] | None = None,
) -> Release:
    """Pack per-group survival counts of one site into a release."""
    names = sorted(groups)
    vectors: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        vectors[f"g{i}.events"] = np.asarray(groups[name].events, dtype=np.int64)
        vectors[f"g{i}.censored"] = np.asarray(groups[name].censored, dtype=np.int64)
    meta = dict(metadata or {})
    meta["groups"] = names
    return Release(analysis=analysis, kind=kind, vectors=vectors, metadata=meta)


def survival_groups(release: Release, horizon: int) -> dict[str, SurvivalCounts]:
    """Unpack a survival release; checks every vector has the study's length.

    Raises
    ------
    ProtocolError
        When the release does not follow the convention.
    """
    names = release.metadata.get("groups")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ProtocolError(f"release {release.analysis}: metadata.groups must list group names")
    out: dict[str, SurvivalCounts] = {}
    for i, name in enumerate(names):
        try:
            events = np.asarray(release.vectors[f"g{i}.events"], dtype=np.int64)
            censored = np.asarray(release.vectors[f"g{i}.censored"], dtype=np.int64)
        except KeyError as exc:
            raise ProtocolError(f"release {release.analysis}: missing vector {exc}") from None
        if len(events) != horizon + 1 or len(censored) != horizon + 1:
            raise ProtocolError(
                f"release {release.analysis}: group vectors must have length {horizon + 1}")
        out[name] = SurvivalCounts(events=events, censored=censored)
    return out
