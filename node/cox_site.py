"""A site's part of a federated Cox model (docs/study-format.md, ``kind: cox``).

Round 1 prepares the design (complete cases, indicator levels present, follow-up in days) and
releases only its description: levels present, numbers of patients and events, patients dropped
per reason. Every later round receives the coefficients chosen by the aggregator and releases
the sums at those coefficients: per-day risk-set and event sums (``strata: none``) or this
site's own Efron log-likelihood, gradient and Hessian (``strata: site``). Unmasked releases use
follow-up times rounded up to the site's coarsened time bins (per-day sums under
known coefficients would let the receiver rebuild a patient's values).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
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
from node.covariates import Design, build_design
from node.endpoints import survival_endpoint
from node.policy import Policy
from protocol.codec import Release
from protocol.study import Analysis, Study

__all__ = ["CoxSite", "cox_round_release", "cox_setup_release", "prepare_cox"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoxSite:
    """What a site keeps between Newton rounds for one Cox analysis."""

    design: Design
    durations: np.ndarray
    events: np.ndarray
    time_resolution_days: int
    coarsened: bool


def prepare_cox(analysis: Analysis, study: Study, tables: object, cohort: pd.DataFrame,
                policy: Policy) -> CoxSite:
    """Complete cases, their follow-up (coarsened when unmasked) and their design."""
    assert analysis.endpoint is not None
    design = build_design(tables, cohort, analysis.covariates)
    outcome = survival_endpoint(tables, cohort, analysis.endpoint, study.horizon_days,
                                study.censor_at)
    durations = outcome["duration"].to_numpy(dtype=np.int64)[design.mask]
    events = outcome["event"].to_numpy(dtype=bool)[design.mask]
    resolution, coarsened = 1, False
    if not study.privacy.secure_aggregation:
        counts = survival_counts(durations, events, study.horizon_days)
        safe = coarsen_counts(counts, policy.min_bin_events, policy.min_cell)
        durations = round_up_to_bins(np.minimum(durations, study.horizon_days), safe.bin_ends)
        resolution = safe.max_bin_width
        coarsened = len(safe.bin_ends) < study.horizon_days + 1
    return CoxSite(design, durations, events, resolution, coarsened)


def cox_setup_release(analysis: Analysis, study: Study, tables: object, cohort: pd.DataFrame,
                      policy: Policy, memo: dict[str, Any]) -> Release:
    """Round 1: describe the site's part of the model; keep the data for later rounds."""
    try:
        site = prepare_cox(analysis, study, tables, cohort, policy)
    except DisclosureError as exc:
        return Release.failure(analysis.name, analysis.kind, f"disclosure rule: {exc}")
    memo[analysis.name] = site
    masked = study.privacy.secure_aggregation
    min_cell = 1 if masked else policy.min_cell
    return Release(analysis=analysis.name, kind="cox", vectors={}, metadata={
        "levels": site.design.levels,
        "n": int(site.design.n),
        "events": int(site.events.sum()),
        "dropped": {k: suppress_count(int(v), min_cell) for k, v in site.design.dropped.items()},
        "time_resolution_days": site.time_resolution_days,
        "coarsened": site.coarsened,
        "min_cell": policy.min_cell,
        "min_bin_events": policy.min_bin_events,
    })


def cox_round_release(analysis: Analysis, study: Study, tables: object, cohort: pd.DataFrame,
                      policy: Policy, memo: dict[str, Any], inputs: Release) -> Release:
    """A Newton round: the site's sums at the aggregator's coefficients."""
    site = memo.get(analysis.name)
    if site is None:  # the node restarted between rounds: prepare again (deterministic)
        site = prepare_cox(analysis, study, tables, cohort, policy)
        memo[analysis.name] = site
    columns = inputs.metadata.get("columns")
    beta = np.asarray(inputs.vectors.get("beta", ()), dtype=np.float64)
    if not isinstance(columns, list) or len(columns) != beta.size or beta.size == 0:
        return Release.failure(analysis.name, analysis.kind,
                               "round inputs must give columns and one coefficient each")
    X = site.design.matrix(columns)
    try:
        if analysis.strata == "site":
            vectors = site_derivatives(site.durations, site.events, X, beta,
                                       study.horizon_days).to_vectors()
        else:
            centre = inputs.vectors.get("centre")
            vectors = cox_day_stats(site.durations, site.events, X, beta, study.horizon_days,
                                    centre=None if centre is None else np.asarray(
                                        centre, dtype=np.float64)).to_vectors()
    except NumericalOverflowError:
        return Release(analysis=analysis.name, kind="cox", vectors={},
                       metadata={"overflow": True})
    return Release(analysis=analysis.name, kind="cox", vectors=vectors,
                   metadata={"columns": columns})
