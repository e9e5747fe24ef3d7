"""Per-group counts for unmasked releases, passed through the site's disclosure rules.

Used by every analysis that releases per-group day counts without secure aggregation
(Kaplan-Meier, Nelson-Aalen, log-rank, cumulative incidence): each group's counts are coarsened
to time bins (:mod:`analytics.disclosure`) and the release says how coarse it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd

from analytics import DisclosureError
from node.policy import Policy

__all__ = ["CoarsenedGroups", "coarsen_by_group"]

C = TypeVar("C")


@dataclass(frozen=True)
class CoarsenedGroups(Generic[C]):
    """Released counts per group and what the release metadata says about them."""

    groups: dict[str, C]
    metadata: dict[str, Any]


def coarsen_by_group(labels: np.ndarray | pd.Series, count: Callable[[np.ndarray], C],
                     coarsen: Callable[[C, int, int], Any], policy: Policy) -> CoarsenedGroups[C]:
    """Count each group (``count(mask)``) and coarsen it under the site policy.

    Raises
    ------
    DisclosureError
        Naming the group whose counts no binning can make safe.
    """
    labels = np.asarray(labels)
    groups: dict[str, C] = {}
    widest, coarsened = 1, False
    for label in sorted(pd.unique(labels)):
        counts = count(labels == label)
        try:
            safe = coarsen(counts, policy.min_bin_events, policy.min_cell)
        except DisclosureError as exc:
            raise DisclosureError(f"group {label}: {exc}") from None
        groups[str(label)] = safe.counts
        widest = max(widest, safe.max_bin_width)
        coarsened = coarsened or len(safe.bin_ends) < counts.horizon + 1  # type: ignore[attr-defined]
    return CoarsenedGroups(groups, {"time_resolution_days": widest, "coarsened": coarsened,
                                    "min_cell": policy.min_cell,
                                    "min_bin_events": policy.min_bin_events})
