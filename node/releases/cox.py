"""Releases of ``kind: cox`` (docs/study-format.md): a site's part of a federated Cox model.

The first release prepares the design (complete cases, indicator levels present, follow-up in
days), keeps it for the Newton rounds and releases only its description: levels present,
numbers of patients and events, patients dropped per reason. Unmasked, the description is
metadata (dropped counts below ``min_cell`` shown as ``"<min_cell>"``); masked, it is vectors
over the fixed levels of each categorical covariate (covariates without a fixed list are
refused). Every Newton round receives the coefficients chosen by the aggregator and releases the
sums at those coefficients: per-day risk-set and event sums (``strata: none``) or this site's
own Efron log-likelihood, gradient and Hessian (``strata: site``). Unmasked releases use
follow-up times rounded up to the site's coarsened time bins (per-day sums under known
coefficients would let the receiver rebuild a patient's values).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from analytics import (
    DisclosureError,
    NumericalOverflowError,
    coarsen_counts,
    cox_day_stats,
    round_up_to_bins,
    site_derivatives,
    suppress_count,
    survival_counts,
)
from node.cohorts.cohort import Tables
from node.cohorts.covariates import Design, build_design
from node.cohorts.endpoints import survival_endpoint
from node.errors import StudyRefused
from node.governance.policy import Policy
from protocol.codec import Release, Vector
from protocol.rounds import NewtonRequest
from protocol.study import Analysis, Study
from protocol.vocabulary import (
    COX_DROPPED,
    COX_EVENTS,
    COX_N,
    FIXED_LEVELS,
    OPEN_LEVELS,
    cox_levels_vector,
)

__all__ = ["CoxSite", "describe", "prepare", "step"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoxSite:
    """What a site keeps between Newton rounds for one Cox analysis: its statistics."""

    design: Design
    durations: npt.NDArray[np.int64]
    events: npt.NDArray[np.bool_]
    time_resolution_days: int
    coarsened: bool


def prepare(analysis: Analysis, study: Study, tables: Tables, cohort: pd.DataFrame,
            policy: Policy, coarsen: bool) -> CoxSite:
    """Complete cases, their follow-up (coarsened when ``coarsen``) and their design.

    Raises
    ------
    DisclosureError
        When the follow-up cannot be coarsened under the site's rules.
    """
    assert analysis.endpoint is not None
    design = build_design(tables, cohort, analysis.covariates)
    outcome = survival_endpoint(tables, cohort, analysis.endpoint, study.horizon_days,
                                study.censor_at)
    durations = outcome["duration"].to_numpy(dtype=np.int64)[design.mask]
    events = outcome["event"].to_numpy(dtype=bool)[design.mask]
    resolution, coarsened = 1, False
    if coarsen:
        counts = survival_counts(durations, events, study.horizon_days)
        safe = coarsen_counts(counts, policy.min_bin_events, policy.min_cell)
        durations = round_up_to_bins(np.minimum(durations, study.horizon_days), safe.bin_ends)
        resolution = safe.max_bin_width
        coarsened = safe.coarsened
    return CoxSite(design, durations, events, resolution, coarsened)


def _unmasked_description(analysis: Analysis, site: CoxSite, policy: Policy) -> Release:
    return Release(analysis=analysis.name, kind="cox", vectors={}, metadata={
        "levels": site.design.levels,
        "n": int(site.design.n),
        "events": int(site.events.sum()),
        "dropped": {k: suppress_count(int(v), policy.min_cell)
                    for k, v in site.design.dropped.items()},
        "time_resolution_days": site.time_resolution_days,
        "coarsened": site.coarsened,
        "min_cell": policy.min_cell,
        "min_bin_events": policy.min_bin_events,
    })


def _masked_description(analysis: Analysis, site: CoxSite) -> Release:
    vectors: dict[str, npt.NDArray[np.int64]] = {
        COX_N: np.array([site.design.n], dtype=np.int64),
        COX_EVENTS: np.array([int(np.sum(site.events))], dtype=np.int64),
        COX_DROPPED: np.array([site.design.dropped.get(f"missing {c}", 0)
                               for c in analysis.covariates], dtype=np.int64),
    }
    levels: dict[str, list[str]] = {}
    for cov in analysis.covariates:
        if cov in FIXED_LEVELS:
            levels[cov] = list(FIXED_LEVELS[cov])
            present = set(site.design.levels.get(cov, []))
            vectors[cox_levels_vector(cov)] = np.array([int(v in present) for v in levels[cov]],
                                                       dtype=np.int64)
        elif cov in OPEN_LEVELS:
            raise StudyRefused(f"covariate {cov} has no fixed list of levels, so it cannot "
                               "be used with secure aggregation")
    return Release(analysis=analysis.name, kind="cox", vectors=vectors,
                   metadata={"covariates": list(analysis.covariates), "levels": levels})


def describe(analysis: Analysis, study: Study, tables: Tables, cohort: pd.DataFrame,
             policy: Policy, memo: dict[str, CoxSite], masked: bool) -> Release:
    """The first release: prepare and keep the site's data, describe it.

    Masked releases use day-resolution follow-up only in a study with secure aggregation;
    anything else is coarsened under the site's rules.

    Raises
    ------
    StudyRefused
        Masked, for a covariate without a fixed list of levels.
    """
    try:
        site = prepare(analysis, study, tables, cohort, policy,
                       coarsen=not (masked and study.privacy.secure_aggregation))
    except DisclosureError as exc:
        return Release.failure(analysis.name, analysis.kind, f"disclosure rule: {exc}")
    memo[analysis.name] = site
    if masked:
        return _masked_description(analysis, site)
    return _unmasked_description(analysis, site, policy)


def step(analysis: Analysis, study: Study, tables: Tables, cohort: pd.DataFrame,
         policy: Policy, memo: dict[str, CoxSite], request: NewtonRequest) -> Release:
    """A Newton round: the site's sums at the aggregator's coefficients.

    Raises
    ------
    StudyRefused, DisclosureError
        When the site's data must be prepared again and cannot be.
    """
    site = memo.get(analysis.name)
    if site is None:  # the node restarted between rounds: prepare again (deterministic)
        site = prepare(analysis, study, tables, cohort, policy,
                       coarsen=not study.privacy.secure_aggregation)
        memo[analysis.name] = site
    columns, beta = list(request.columns), np.asarray(request.beta, dtype=np.float64)
    if len(columns) != beta.size or beta.size == 0:
        return Release.failure(analysis.name, analysis.kind,
                               "round inputs must give columns and one coefficient each")
    X = site.design.matrix(columns)
    vectors: Mapping[str, Vector]
    try:
        if analysis.strata == "site":
            vectors = site_derivatives(site.durations, site.events, X, beta,
                                       study.horizon_days).to_vectors()
        else:
            centre = None if request.centre is None else np.asarray(request.centre,
                                                                    dtype=np.float64)
            vectors = cox_day_stats(site.durations, site.events, X, beta, study.horizon_days,
                                    centre=centre).to_vectors()
    except NumericalOverflowError:
        return Release(analysis=analysis.name, kind="cox", vectors={},
                       metadata={"overflow": True})
    return Release(analysis=analysis.name, kind="cox", vectors=vectors,
                   metadata={"columns": columns})
