"""Per-group day counts, the statistics of the grouped kinds (survival, cumulative incidence).

A grouped kind's sufficient statistics at a site are one :class:`~analytics.SurvivalCounts` or
:class:`~analytics.CompetingCounts` per group present in the cohort (:class:`GroupedCounts`),
computed once. They are then presented one of two ways:

- unmasked (:func:`present`, ``levels=None``): the groups present, each coarsened to time bins
  under the site's disclosure rules (:func:`analytics.coarsen_columns`); a group no binning can
  make safe refuses the whole analysis;
- masked (``levels`` given): the fixed-shape vectors of secure aggregation, every level of the
  grouping variable (:func:`protocol.vocabulary.fixed_groups`), absent levels as zero vectors,
  at day resolution; a site with a value outside the fixed levels refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy.typing as npt
import pandas as pd

from analytics import (
    CoarsenedCompeting,
    CoarsenedCounts,
    CompetingCounts,
    SurvivalCounts,
    withhold_groups,
)
from analytics.errors import DisclosureError
from node.cohorts.cohort import Tables
from node.cohorts.endpoints import group_labels
from node.errors import StudyRefused
from node.governance.policy import Policy
from protocol.codec import Release
from protocol.study import Analysis, Study
from protocol.vocabulary import ALL, SITE, WITHHELD, fixed_groups, has_fixed_levels

__all__ = ["GroupedCounts", "GroupedKind", "endpoint_frame", "fixed_levels", "present",
           "release", "statistics"]

C = TypeVar("C", SurvivalCounts, CompetingCounts)


@dataclass(frozen=True)
class GroupedCounts(Generic[C]):
    """One analysis' per-day counts at this site, per group present (label -> counts)."""

    groups: dict[str, C]
    horizon: int


@dataclass(frozen=True)
class GroupedKind(Generic[C]):
    """How one grouped kind derives its outcome, counts, coarsens, fills an absent level and
    packs a release."""

    endpoint: Callable[[Tables, pd.DataFrame, str, int, tuple[str, ...]], pd.DataFrame]
    """(tables, cohort, endpoint, horizon, censor_at) -> frame with ``duration`` and ``outcome``."""
    outcome: str
    count: Callable[[npt.NDArray[Any], npt.NDArray[Any], int], C]
    coarsen: Callable[[C, int, int], CoarsenedCounts | CoarsenedCompeting]
    zeros: Callable[[int], C]
    pack: Callable[[Analysis, dict[str, C], dict[str, Any], bool], Release]
    """(analysis, groups, metadata, masked) -> release."""


def fixed_levels(group_by: str | None, participants: Sequence[str]) -> list[str]:
    """The groups every site releases for ``group_by`` under secure aggregation.

    Raises
    ------
    StudyRefused
        For a grouping variable without a fixed list of levels.
    """
    if not has_fixed_levels(group_by):
        raise StudyRefused(f"group_by {group_by} has no fixed list of levels, so it cannot be "
                           "used with secure aggregation")
    return fixed_groups(group_by, participants)


def endpoint_frame(kind: GroupedKind[C], tables: Tables, cohort: pd.DataFrame, endpoint: str,
                   horizon: int, censor_at: tuple[str, ...]) -> pd.DataFrame:
    """``kind.endpoint`` of the cohort, derived once per snapshot when ``tables`` keeps what
    is derived from it (the node engine's table cache has ``derived(key, compute)``): every
    analysis and every study with the same cohort, endpoint, horizon and censoring share it.
    The frame is read, never changed."""
    derived = getattr(tables, "derived", None)
    if derived is None:
        return kind.endpoint(tables, cohort, endpoint, horizon, censor_at)
    key = ("endpoint", kind.endpoint, id(cohort), endpoint, horizon, tuple(censor_at))
    held, frame = derived(key, lambda: (cohort, kind.endpoint(tables, cohort, endpoint, horizon,
                                                             censor_at)))
    if held is not cohort:  # pragma: no cover - ids are unique while the cohort is held
        return kind.endpoint(tables, cohort, endpoint, horizon, censor_at)
    return frame  # type: ignore[no-any-return]


def statistics(kind: GroupedKind[C], analysis: Analysis, study: Study, tables: Tables,
               cohort: pd.DataFrame, site_id: str) -> GroupedCounts[C]:
    """Count every group present in the cohort (the analysis' sufficient statistics here);
    once per snapshot, cohort, endpoint and grouping when ``tables`` keeps what is derived
    (as :func:`endpoint_frame`)."""
    assert analysis.endpoint is not None
    derived = getattr(tables, "derived", None)
    if derived is None:
        return _count(kind, analysis, study, tables, cohort, site_id)
    key = ("counts", kind.endpoint, id(cohort), analysis.endpoint, study.horizon_days,
           tuple(study.censor_at), analysis.group_by, site_id)
    held, stats = derived(key, lambda: (cohort, _count(kind, analysis, study, tables, cohort,
                                                       site_id)))
    if held is not cohort:  # pragma: no cover - ids are unique while the cohort is held
        return _count(kind, analysis, study, tables, cohort, site_id)
    return stats  # type: ignore[no-any-return]


def _count(kind: GroupedKind[C], analysis: Analysis, study: Study, tables: Tables,
           cohort: pd.DataFrame, site_id: str) -> GroupedCounts[C]:
    assert analysis.endpoint is not None
    frame = endpoint_frame(kind, tables, cohort, analysis.endpoint, study.horizon_days,
                           study.censor_at)
    durations, outcomes = frame["duration"].to_numpy(), frame[kind.outcome].to_numpy()
    if analysis.group_by is None and len(cohort):  # one group: no labels to compare
        return GroupedCounts({ALL: kind.count(durations, outcomes, study.horizon_days)},
                             study.horizon_days)
    codes, uniques = pd.factorize(group_labels(cohort, analysis.group_by, site_id))
    code = {str(u): k for k, u in enumerate(uniques)}
    return GroupedCounts({label: kind.count(durations[codes == code[label]],
                                            outcomes[codes == code[label]], study.horizon_days)
                          for label in sorted(code)}, study.horizon_days)


def _unmasked(kind: GroupedKind[C], stats: GroupedCounts[C],
              policy: Policy) -> tuple[dict[str, C], dict[str, Any]]:
    groups: dict[str, C] = {}
    widest, coarsened = 1, False
    labels = list(stats.groups)
    small = withhold_groups([stats.groups[g].n for g in labels], policy.min_cohort)
    withheld = [g for g, h in zip(labels, small, strict=True) if h]
    if withheld and len(withheld) == len(labels):
        raise DisclosureError(f"every group is below min_cohort={policy.min_cohort}")
    for label, counts in stats.groups.items():
        if label in withheld:
            continue
        try:
            safe = kind.coarsen(counts, policy.min_bin_events, policy.min_cell)
        except DisclosureError as exc:
            raise DisclosureError(f"group {label}: {exc}") from None
        groups[label] = safe.counts  # type: ignore[assignment]
        widest = max(widest, safe.max_bin_width)
        coarsened = coarsened or safe.coarsened
    meta: dict[str, Any] = {"time_resolution_days": widest, "coarsened": coarsened,
                            "min_cell": policy.min_cell, "min_bin_events": policy.min_bin_events}
    if withheld:
        meta[WITHHELD] = withheld
    return groups, meta


def _masked(kind: GroupedKind[C], stats: GroupedCounts[C], group_by: str | None,
            levels: Sequence[str], withheld: Sequence[str], policy: Policy
            ) -> tuple[dict[str, C], dict[str, Any]]:
    if set(stats.groups) - set(levels):
        raise StudyRefused(f"group_by {group_by}: values outside its fixed levels")
    own = dict(stats.groups)
    coarsened = False
    if group_by == SITE:
        # the site's group is this site's data alone: released only where the site's policy
        # allows it, and then under its unmasked rules
        if not policy.site_level_release:
            raise StudyRefused("group_by site under secure aggregation releases this site's "
                               "own data; the site's policy does not allow site-level release")
        for label, counts in own.items():
            if counts.n < policy.min_cohort:
                raise StudyRefused(f"group_by site: this site's group is below min_cohort="
                                   f"{policy.min_cohort}")
            try:
                own[label] = kind.coarsen(counts, policy.min_bin_events,  # type: ignore[assignment]
                                          policy.min_cell).counts
            except DisclosureError as exc:
                raise StudyRefused(f"group_by site: {exc}") from None
            coarsened = True
    groups = {level: own[level] if level in own and level not in withheld
              else kind.zeros(stats.horizon) for level in levels}
    meta: dict[str, Any] = {"time_resolution_days": 1, "coarsened": coarsened}
    if withheld:
        meta[WITHHELD] = sorted(withheld)
    return groups, meta


def present(kind: GroupedKind[C], analysis: Analysis, stats: GroupedCounts[C], policy: Policy,
            levels: Sequence[str] | None, withheld: Sequence[str] = ()) -> Release:
    """The unmasked release (``levels`` None) or the fixed-shape one over ``levels``.

    Raises
    ------
    StudyRefused
        Masked, when this site has a group outside ``levels``.
    """
    if levels is not None:
        return kind.pack(analysis, *_masked(kind, stats, analysis.group_by, levels, withheld,
                                            policy), True)
    try:
        groups, metadata = _unmasked(kind, stats, policy)
    except DisclosureError as exc:
        return Release.failure(analysis.name, analysis.kind, f"disclosure rule: {exc}")
    return kind.pack(analysis, groups, metadata, False)


def release(kind: GroupedKind[C], analysis: Analysis, study: Study, tables: Tables,
            cohort: pd.DataFrame, site_id: str, policy: Policy,
            participants: Sequence[str] | None, withheld: Sequence[str] = ()) -> Release:
    """Unmasked (``participants`` None) or fixed-shape release of one grouped analysis
    (``withheld`` levels, decided from the pooled screening counts, released as zeros)."""
    levels = None if participants is None else fixed_levels(analysis.group_by, participants)
    return present(kind, analysis, statistics(kind, analysis, study, tables, cohort, site_id),
                   policy, levels, withheld)
