"""The names sites and aggregator share: grouping, fixed levels, and the vectors of releases.

Grouping
    An analysis may group its results ``group_by`` one of :data:`GROUP_BY`: a cohort column of
    :data:`GROUPING_COLUMNS` or :data:`SITE` (one group per site, named by the site id). Without
    ``group_by`` there is one group, :data:`ALL`. A missing or blank value is the group
    :data:`UNKNOWN`; ``ecog`` is labelled by its integer (``"0"`` .. ``"4"``).
Fixed levels
    :data:`FIXED_LEVELS` lists every level of the categorical variables that have a closed
    enumeration (the data model's). Secure aggregation needs them: every site releases every
    level (:func:`fixed_groups`), so nothing in plaintext depends on which groups a site has.
    ``product`` and ``indication_group`` have no closed list (:data:`OPEN_LEVELS`).
Release vectors
    A grouped release (survival and competing-risks counts) carries, for group number ``i`` of
    its ``metadata["groups"]``, one vector per part, named :func:`group_vector` (``g{i}.events``,
    ``g{i}.censored``; ``g{i}.cause1``, ...). An adverse-event release carries per term number
    ``i`` of ``metadata["terms"]`` the vectors :func:`term_vector` (``t{i}.counts``,
    ``t{i}.grades``, ``t{i}.onset``). A site-stratified log-rank release under secure
    aggregation adds the stratum terms :data:`LOGRANK_OBSERVED`, :data:`LOGRANK_EXPECTED` and
    :data:`LOGRANK_COVARIANCE`. A masked Cox description carries :data:`COX_N`,
    :data:`COX_EVENTS`, :data:`COX_DROPPED`, the event table :data:`COX_DAY_EVENTS` and
    :data:`COX_DAY_EXITS` (from which the model's time bins are chosen) and, per categorical
    covariate with fixed levels, :func:`cox_levels_vector`. Cox Newton rounds use
    :mod:`analytics.cox`'s own vector names.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AE_GRADES",
    "ALL",
    "ATMP_CLASS",
    "COMPETING_PARTS",
    "COX_DAY_EVENTS",
    "COX_DAY_EXITS",
    "COX_DROPPED",
    "COX_EVENTS",
    "COX_N",
    "DISEASE_STATUS",
    "DROPPED_HIDDEN",
    "ECOG",
    "FIXED_LEVELS",
    "GROUPING_COLUMNS",
    "GROUPS",
    "GROUP_BY",
    "HIDDEN_GRADES",
    "LOGRANK_COVARIANCE",
    "LOGRANK_EXPECTED",
    "LOGRANK_OBSERVED",
    "MEDIAN_ONSET",
    "OPEN_LEVELS",
    "ORIGIN",
    "ROUTE",
    "SEX",
    "SITE",
    "SURVIVAL_PARTS",
    "TERMS",
    "TERM_PARTS",
    "UNKNOWN",
    "WITHHELD",
    "WITHHELD_TERMS",
    "cox_levels_vector",
    "fixed_groups",
    "group_vector",
    "has_fixed_levels",
    "term_vector",
]

# -- enumerations of the data model that grouping and Cox covariates use ------------------------

SEX = ("F", "M", "U")
ATMP_CLASS = ("GTMP", "sCTMP", "TEP", "combined")
ROUTE = ("hospital_exemption", "centrally_authorised", "clinical_trial", "compassionate")
ORIGIN = ("autologous", "allogeneic")
DISEASE_STATUS = ("CR", "PR", "SD", "PD", "NA")
ECOG = ("0", "1", "2", "3", "4")

# -- grouping ------------------------------------------------------------------------------------

GROUPING_COLUMNS = (
    "sex",
    "route",
    "atmp_class",
    "origin",
    "product",
    "indication_group",
    "disease_status",
    "ecog",
)
"""Cohort columns an analysis may be grouped by."""
SITE = "site"
"""``group_by: site``: one group per site, named by the site id."""
GROUP_BY = (*GROUPING_COLUMNS, SITE)
"""Every allowed ``group_by`` value."""
ALL = "all"
"""The one group of an analysis without ``group_by``."""
UNKNOWN = "unknown"
"""The group of a missing or blank value."""

FIXED_LEVELS: dict[str, tuple[str, ...]] = {
    "sex": SEX,
    "route": ROUTE,
    "atmp_class": ATMP_CLASS,
    "origin": ORIGIN,
    "disease_status": DISEASE_STATUS,
    "ecog": ECOG,
}
"""Every level of each categorical variable with a closed enumeration."""
OPEN_LEVELS = ("product", "indication_group")
"""Categorical variables without a closed list of levels (refused under secure aggregation)."""


def has_fixed_levels(group_by: str | None) -> bool:
    """Whether every site can release the same groups for ``group_by``."""
    return group_by is None or group_by == SITE or group_by in FIXED_LEVELS


def fixed_groups(group_by: str | None, participants: Sequence[str]) -> list[str]:
    """The groups every site releases for ``group_by`` under secure aggregation.

    :data:`ALL` without grouping, the sorted participants for :data:`SITE`, else every fixed
    level and :data:`UNKNOWN`.

    Raises
    ------
    ValueError
        If ``group_by`` has no fixed list of levels (see :func:`has_fixed_levels`).
    """
    if group_by is None:
        return [ALL]
    if group_by == SITE:
        return sorted(participants)
    if group_by not in FIXED_LEVELS:
        raise ValueError(f"group_by {group_by} has no fixed list of levels")
    return [*FIXED_LEVELS[group_by], UNKNOWN]


# -- release vectors -----------------------------------------------------------------------------

GROUPS = "groups"
WITHHELD = "withheld"
"""Release metadata: the groups of a grouped release that were withheld (sent as zeros or left
out), never with their size."""
WITHHELD_TERMS = "withheld_terms"
"""Release metadata: adverse-event terms withheld whole by the screening (secure)."""
HIDDEN_GRADES = "hidden_grades"
"""Release metadata: term -> grade keys hidden by the screening (secure)."""
MEDIAN_ONSET = "median_onset"
"""Release metadata: term -> median first-onset day the sites computed (secure)."""
DROPPED_HIDDEN = "dropped_hidden"
"""Release metadata of a masked Cox description: patients dropped per covariate sent as 0."""
"""Metadata key listing the group names of a grouped release, in vector order."""
TERMS = "terms"
"""Metadata key listing the terms of an adverse-event release, in vector order."""
SURVIVAL_PARTS = ("events", "censored")
"""Per-group vectors of a survival release (kaplan_meier, nelson_aalen, logrank)."""
COMPETING_PARTS = ("cause1", "cause2", "censored")
"""Per-group vectors of a cumulative-incidence release."""
TERM_PARTS = ("counts", "grades", "onset")
"""Per-term vectors of an adverse-event release: (at_risk, with_event, person_days), grades,
onset histogram."""
AE_GRADES = ("1", "2", "3", "4", "5")
"""Grades of the ``grades`` vector, in order (ASTCT 1-4, CTCAE 1-5)."""
LOGRANK_OBSERVED = "lr.observed"
LOGRANK_EXPECTED = "lr.expected"
LOGRANK_COVARIANCE = "lr.covariance"
COX_N = "n"
COX_EVENTS = "events"
COX_DROPPED = "dropped"
COX_DAY_EVENTS = "day_events"
"""Per-day events of a masked Cox description's complete cases (days ``0..horizon``)."""
COX_DAY_EXITS = "day_exits"
"""Per-day exits (events and censorings) of a masked Cox description's complete cases."""


def group_vector(i: int, part: str) -> str:
    """Name of vector ``part`` of group number ``i`` (``g{i}.{part}``)."""
    return f"g{i}.{part}"


def term_vector(i: int, part: str) -> str:
    """Name of vector ``part`` of adverse-event term number ``i`` (``t{i}.{part}``)."""
    return f"t{i}.{part}"


def cox_levels_vector(covariate: str) -> str:
    """Name of the 0/1 vector of a masked Cox description: which fixed levels a site has."""
    return f"levels.{covariate}"
