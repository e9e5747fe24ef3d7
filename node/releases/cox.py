"""Releases of ``kind: cox`` (docs/study-format.md): a site's part of a federated Cox model.

The first release prepares the design (complete cases, indicator levels present, follow-up in
days), keeps it for the Newton rounds and releases only its description: levels present,
numbers of patients and events, patients dropped per reason. Unmasked, the description is
metadata (dropped counts below ``min_cell`` shown as ``"<min_cell>"``); masked, it is vectors
over the fixed levels of each categorical covariate (covariates without a fixed list are
refused) and the per-day event table of the complete cases, from which the model's time bins
are chosen (:func:`analytics.cox_bins`: every bin at least 5 events and 5 exits).

Every Newton round releases the sums at the requested coefficients: per-bin risk-set and event
sums (``strata: none``) or this site's own Efron log-likelihood, gradient and Hessian
(``strata: site``), over the pooled bins (masked) or the site's own coarsened bins (unmasked:
every bin holding patients has at least ``min_bin_events`` events and ``min_cell`` exits).

The aggregator does not choose the coefficients. Each Newton request relays the previous
round's releases of the model's sites, each signed by its site (:mod:`protocol.release_signing`,
signed by :func:`seal` after masking); the site verifies every signature, sums them itself
(masks cancel) and recomputes the design columns, bins, centre and Newton step with the
aggregator's own functions (:mod:`node.releases.cox_chain`). It answers only a request equal
to its own result, and at most :data:`MAX_COX_ROUNDS` Newton rounds per analysis of a study.
The complete cases are sorted once per fit for the sums of its rounds
(:meth:`CoxSite.sorted_rows`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from analytics import (
    MAX_NEWTON_ROUNDS,
    CoxRows,
    DisclosureError,
    NumericalOverflowError,
    bin_index,
    coarsen_counts,
    cox_rows,
    round_up_to_bins,
    stratum_derivatives,
    suppress_count,
    survival_counts,
)
from node.cohorts.cohort import Tables
from node.cohorts.covariates import Design, build_design
from node.errors import StudyRefused
from node.governance.policy import Policy
from node.releases.cox_chain import (
    CoxChain,
    CoxRound,
    Refused,
    check_request,
    expected,
    request_key,
    verified,
)
from node.releases.groups import endpoint_frame
from node.releases.survival import SURVIVAL
from protocol.codec import Release, Vector
from protocol.design import CATEGORICAL_COVARIATES
from protocol.release_signing import ReleaseSigner, sign_release
from protocol.rounds import NewtonRequest
from protocol.study import Analysis, Study
from protocol.vocabulary import (
    COX_DAY_EVENTS,
    COX_DAY_EXITS,
    COX_DROPPED,
    COX_EVENTS,
    COX_N,
    DROPPED_HIDDEN,
    FIXED_LEVELS,
    cox_levels_vector,
)

__all__ = ["MAX_COX_ROUNDS", "CoxChain", "CoxRound", "CoxSite", "describe", "prepare", "seal",
           "step"]

logger = logging.getLogger(__name__)

MAX_COX_ROUNDS = 2 * MAX_NEWTON_ROUNDS
"""Newton rounds a site answers for one Cox analysis of a study (a fit, and one restart)."""


@dataclass(frozen=True)
class CoxSite:
    """What a site keeps between Newton rounds for one Cox analysis: its statistics and the
    chain of the fit."""

    design: Design
    durations: npt.NDArray[np.int64]
    events: npt.NDArray[np.bool_]
    time_resolution_days: int
    coarsened: bool
    bin_ends: tuple[int, ...] | None = None
    chain: CoxChain = field(default_factory=CoxChain)
    rows: dict[tuple[tuple[str, ...], tuple[int, ...] | None], CoxRows] = field(
        default_factory=dict, repr=False)
    """The complete cases sorted for the Newton rounds, by (design columns, time bins): made at
    the first round of a fit, reused by every later one."""

    def sorted_rows(self, columns: tuple[str, ...], bins: tuple[int, ...] | None,
                    horizon: int) -> CoxRows:
        """The complete cases over these design columns and bins (or days up to ``horizon``),
        sorted once (:func:`analytics.cox_rows`); only the latest fit's are kept."""
        key = (columns, bins)
        rows = self.rows.get(key)
        if rows is None:
            durations, events = self.durations, self.events
            if bins is not None:
                durations, events = bin_index(durations, events, horizon, bins)
                horizon = len(bins) - 1
            rows = cox_rows(durations, events, self.design.matrix(list(columns)), horizon)
            self.rows.clear()
            self.rows[key] = rows
        return rows


def _check_bins(durations: npt.NDArray[np.int64], events: npt.NDArray[np.bool_], horizon: int,
                bin_ends: tuple[int, ...], policy: Policy) -> None:
    """Every bin holding patients has ``min_bin_events`` events and ``min_cell`` exits (the
    tail included), or the release is refused. Day resolution (both thresholds 1) is the
    site's explicit choice, as in :func:`analytics.coarsen_columns`."""
    if policy.min_bin_events == 1 and policy.min_cell == 1:
        return
    idx, observed = bin_index(durations, events, horizon, bin_ends)
    exits = np.bincount(idx, minlength=len(bin_ends))
    events_per_bin = np.bincount(idx[observed], minlength=len(bin_ends))
    held = exits > 0
    if np.any(events_per_bin[held] < policy.min_bin_events) or np.any(
            exits[held] < policy.min_cell):
        raise DisclosureError(f"a time bin would hold fewer than {policy.min_bin_events} "
                              f"events or {policy.min_cell} exits")


def _design_of(tables: Tables, cohort: pd.DataFrame, covariates: tuple[str, ...]) -> Design:
    """:func:`build_design`, once per snapshot, cohort and covariates when ``tables`` keeps
    what is derived from it (the node engine's snapshot cache): a Cox model fitted again, or
    by another study on the same snapshot, reuses it. The design is read, never changed."""
    derived = getattr(tables, "derived", None)
    if derived is None:
        return build_design(tables, cohort, covariates)
    held, design = derived(("cox design", id(cohort), covariates),
                           lambda: (cohort, build_design(tables, cohort, covariates)))
    if held is not cohort:  # pragma: no cover - ids are unique while the cohort is held
        return build_design(tables, cohort, covariates)
    return design  # type: ignore[no-any-return]


def prepare(analysis: Analysis, study: Study, tables: Tables, cohort: pd.DataFrame,
            policy: Policy, coarsen: bool) -> CoxSite:
    """Complete cases, their follow-up (coarsened when ``coarsen``) and their design.

    Raises
    ------
    DisclosureError
        When the follow-up cannot be coarsened under the site's rules.
    """
    assert analysis.endpoint is not None
    design = _design_of(tables, cohort, tuple(analysis.covariates))
    outcome = endpoint_frame(SURVIVAL, tables, cohort, analysis.endpoint, study.horizon_days,
                             tuple(study.censor_at))
    durations = outcome["duration"].to_numpy(dtype=np.int64)[design.mask]
    events = outcome["event"].to_numpy(dtype=bool)[design.mask]
    resolution, coarsened, ends = 1, False, None
    if coarsen:
        counts = survival_counts(durations, events, study.horizon_days)
        safe = coarsen_counts(counts, policy.min_bin_events, policy.min_cell)
        _check_bins(durations, events, study.horizon_days, safe.bin_ends, policy)
        durations = round_up_to_bins(np.minimum(durations, study.horizon_days), safe.bin_ends)
        resolution, coarsened, ends = safe.max_bin_width, safe.coarsened, safe.bin_ends
    return CoxSite(design, durations, events, resolution, coarsened, ends)


def _unmasked_description(analysis: Analysis, site: CoxSite, policy: Policy) -> Release:
    return Release(analysis=analysis.name, kind="cox", vectors={}, metadata={
        "levels": site.design.levels,
        "n": int(site.design.n),
        "events": int(site.events.sum()),
        "dropped": {k: suppress_count(int(v), policy.min_cell)
                    for k, v in site.design.dropped.items()},
        "time_resolution_days": site.time_resolution_days,
        "coarsened": site.coarsened,
        **({"bins": list(site.bin_ends)} if site.coarsened and site.bin_ends else {}),
        "min_cell": policy.min_cell,
        "min_bin_events": policy.min_bin_events,
    })


def level_counts(design: Design, covariates: Sequence[str],
                 fixed: bool) -> dict[str, dict[str, int]]:
    """Complete cases per level of each categorical covariate: every fixed level (``fixed``,
    for secure aggregation; a covariate without one is refused) or the levels present."""
    out: dict[str, dict[str, int]] = {}
    for cov in covariates:
        if cov not in CATEGORICAL_COVARIATES:
            continue
        if fixed and cov not in FIXED_LEVELS:
            raise StudyRefused(f"covariate {cov} has no fixed list of levels, so it cannot "
                               "be used with secure aggregation")
        names = list(FIXED_LEVELS[cov]) if fixed else design.levels.get(cov, [])
        counts = design.matrix([f"{cov}={level}" for level in names]).sum(axis=0) \
            if names else []
        out[cov] = {level: int(c) for level, c in zip(names, counts, strict=True)}
    return out


def _masked_description(analysis: Analysis, study: Study, site: CoxSite,
                        presence: Mapping[str, Sequence[bool]] | None,
                        hide_dropped: bool) -> Release:
    """The fixed-shape description. ``presence``: the levels present in the pooled cohort
    (from the screening; every site sends the same, so the sum says nothing of which site
    has which level); ``hide_dropped``: pooled dropped counts too small to show (sent as 0)."""
    table = survival_counts(site.durations, site.events, study.horizon_days)
    dropped = [0 if hide_dropped else site.design.dropped.get(f"missing {c}", 0)
               for c in analysis.covariates]
    vectors: dict[str, npt.NDArray[np.int64]] = {
        COX_N: np.array([site.design.n], dtype=np.int64),
        COX_EVENTS: np.array([int(np.sum(site.events))], dtype=np.int64),
        COX_DROPPED: np.array(dropped, dtype=np.int64),
        COX_DAY_EVENTS: np.asarray(table.events, dtype=np.int64),
        COX_DAY_EXITS: np.asarray(table.events + table.censored, dtype=np.int64),
    }
    levels: dict[str, list[str]] = {}
    own = level_counts(site.design, analysis.covariates, fixed=True)
    for cov, counts in own.items():
        levels[cov] = list(counts)
        present = presence.get(cov) if presence is not None else None
        flags = present if present is not None else [c > 0 for c in counts.values()]
        vectors[cox_levels_vector(cov)] = np.array([int(f) for f in flags], dtype=np.int64)
    metadata: dict[str, Any] = {"covariates": list(analysis.covariates), "levels": levels}
    if hide_dropped:
        metadata[DROPPED_HIDDEN] = True
    return Release(analysis=analysis.name, kind="cox", vectors=vectors, metadata=metadata)


def describe(analysis: Analysis, study: Study, tables: Tables, cohort: pd.DataFrame,
             policy: Policy, memo: dict[str, CoxSite], masked: bool,
             presence: Mapping[str, Sequence[bool]] | None = None,
             hide_dropped: bool = False) -> Release:
    """The first release: prepare and keep the site's data, describe it.

    Masked releases use day-resolution follow-up only in a study with secure aggregation (the
    pooled bins come later); anything else is coarsened under the site's rules. A new
    description starts a new fit; the count of Newton rounds answered carries over.

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
    earlier = memo.get(analysis.name)
    if earlier is not None:
        site.chain.rounds = earlier.chain.rounds
    if not masked:  # masked: the same rules on the pooled counts (node.releases.screening)
        reason = _too_small(site, policy)
        if reason:
            return Release.failure(analysis.name, analysis.kind, reason)
    memo[analysis.name] = site
    if masked:
        return _masked_description(analysis, study, site, presence, hide_dropped)
    return _unmasked_description(analysis, site, policy)


def _too_small(site: CoxSite, policy: Policy) -> str | None:
    """Why this site's complete cases may not be released unmasked: too few of them or of
    their events (a model over a handful of patients is a sum over them)."""
    n, events = int(site.design.n), int(np.sum(site.events))
    if n < policy.min_cohort or 0 < events < policy.min_cell:
        return (f"withheld: fewer than min_cohort={policy.min_cohort} complete cases or "
                f"min_cell={policy.min_cell} events")
    for cov, counts in level_counts(site.design, site.design.covariates, fixed=False).items():
        if any(0 < c < policy.min_cell for c in counts.values()):
            # an indicator column's sums over its level would cover those few patients
            return (f"withheld: a level of covariate {cov} has fewer than "
                    f"min_cell={policy.min_cell} complete cases")
    return None


def seal(releases: Sequence[Release], memo: Mapping[str, CoxSite],
         signer: ReleaseSigner | None, study_id: str, attempt: int, round: int
         ) -> list[Release]:
    """Sign this round's Cox releases (as sent: after masking) and remember each one and its
    digest: the next Newton request relays it unaltered, or leaves it out (the site's own
    release need not travel back to it). Other releases pass unchanged; without a signer
    nothing is signed (and no Newton round can be checked)."""
    out = []
    for release in releases:
        site = memo.get(release.analysis)
        if signer is None or site is None or release.kind != "cox" or release.error:
            out.append(release)
            continue
        signed, digest = sign_release(release, signer, study_id, attempt, round)
        site.chain.round, site.chain.attempt, site.chain.digest = round, attempt, digest
        site.chain.sent = signed
        out.append(signed)
    return out


def _sums(analysis: Analysis, study: Study, site: CoxSite, chain: CoxChain,
          request: NewtonRequest) -> Release:
    rows = site.sorted_rows(chain.columns, chain.bins, study.horizon_days)
    beta = np.asarray(request.beta, dtype=np.float64)
    vectors: Mapping[str, Vector]
    try:
        if analysis.strata == "site":
            vectors = stratum_derivatives(rows, beta).to_vectors()
        else:
            centre = None if request.centre is None else np.asarray(request.centre,
                                                                    dtype=np.float64)
            vectors = rows.day_stats(beta, centre=centre).to_vectors()
    except NumericalOverflowError:
        return Release(analysis=analysis.name, kind="cox", vectors={},
                       metadata={"overflow": True})
    return Release(analysis=analysis.name, kind="cox", vectors=vectors,
                   metadata={"columns": list(chain.columns)})


def step(analysis: Analysis, study: Study, tables: Tables, cohort: pd.DataFrame,
         policy: Policy, memo: dict[str, CoxSite], request: NewtonRequest,
         context: CoxRound) -> Release:
    """A Newton round: the site's sums at the coefficients it checked itself.

    Refused (an error release) unless the relayed releases are the previous round's, each
    signed by its site, and the request's columns, bins, coefficients and centre are what this
    site computes from them; after :data:`MAX_COX_ROUNDS` rounds; and when this site holds no
    description of the fit (a restarted node: the fit must start again).
    """
    def refuse(reason: str) -> Release:
        return Release.failure(analysis.name, analysis.kind, reason)

    site = memo.get(analysis.name)
    if site is None:
        return refuse("this site holds no description of this Cox model (node restarted?); "
                      "the fit must start again")
    chain = site.chain
    key = request_key(request)
    if chain.answered is not None and chain.answered[:2] == (context.round, key):
        return chain.answered[2]  # the same round asked again: the same answer
    if context.signer is None:
        return refuse("a Cox model needs this site's certificate, to check the other sites' "
                      "signed releases")
    if chain.rounds >= MAX_COX_ROUNDS:
        return refuse(f"more than {MAX_COX_ROUNDS} Newton rounds for this analysis")
    try:
        got = verified(analysis, study, chain, request, context)
        new = expected(analysis, study, chain, got, context.participants is not None)
        check_request(request, new)
    except Refused as exc:
        logger.warning("Cox round refused for %s: %s", analysis.name, exc)
        return refuse(str(exc))
    release = _sums(analysis, study, site, new, request)
    new.rounds = chain.rounds + 1
    new.answered = (context.round, key, release)
    site.chain.__dict__.update(new.__dict__)
    return release
