"""Federated Cox models: a description round, then one round per Newton step.

The first round asks every site to describe its part of the model (indicator levels present,
patients, events, patients dropped per reason; under secure aggregation also the per-day event
table of the complete cases). The strategy fixes the design columns (indicators against the
first level present in the pooled cohort) and, under secure aggregation, the time bins
(:func:`analytics.cox_bins`: at least 5 events and 5 exits each), and starts Newton-Raphson at
beta = 0; each later round sends the coefficients to the model's sites, sums what they return
(per-bin risk-set sums, or per-site derivatives with ``strata: site``) and takes the step.

Every Newton request relays the previous round's signed releases of the model's sites: each
site recomputes the columns, bins, centre and step from them with the same functions
(:func:`analytics.pooled_derivatives`, :func:`analytics.cox_step`) and refuses any other
request, so the aggregator cannot choose the coefficients.

Unmasked, a site that fails mid-way is left out and the fit starts again without it, so the
result always equals the analysis of the sites it names; under secure aggregation the runtime
restarts the whole study instead, and a site that leaves the model out ends it with an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from aggregator.strategy import MASKED_SUM, AnalysisState, Contributions, Strategy
from analytics import (
    MAX_NEWTON_STEPS,
    CoxDayStats,
    CoxDerivatives,
    DisclosureError,
    NewtonState,
    cox_bins,
    cox_result,
    cox_step,
    newton_start,
    pooled_derivatives,
    suppress_count,
)
from protocol.codec import Release
from protocol.design import design_columns
from protocol.errors import ProtocolError
from protocol.releases import masked_cox_description, masked_cox_event_table
from protocol.rounds import newton_request, summary_request, wire_release
from protocol.study import Analysis, Study
from protocol.vocabulary import DROPPED_HIDDEN

__all__ = ["MAX_NEWTON_STEPS", "CoxState", "CoxStrategy"]


@dataclass
class CoxState(AnalysisState):
    """Where one Cox model stands (JSON-ready fields)."""

    strata: str = "none"
    phase: str = "setup"  # setup | running | finalizing
    sites: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    setups: dict[str, dict[str, Any]] = field(default_factory=dict)  # contributor -> its part
    n: int = 0
    events: int = 0
    dropped: dict[str, int | str] = field(default_factory=dict)
    restarts: int = 0
    resolution: int = 1
    centre: list[float] | None = None
    newton: dict[str, Any] | None = None
    bins: list[int] | None = None  # secure: bin ends (days) of the pooled time bins
    relayed: list[str] = field(default_factory=list)  # the last round's signed releases
    relayed_sites: list[str] = field(default_factory=list)  # whose each one is


def _sum_dropped(parts: Iterable[Mapping[str, Any]]) -> dict[str, int | str]:
    """Patients dropped per reason over the sites; a withheld count (``"<5"``) makes the sum a
    lower bound (``">=N"``, or the withheld form when nothing else is known)."""
    known: dict[str, int] = {}
    withheld: dict[str, str] = {}
    for dropped in parts:
        for reason, value in dropped.items():
            if isinstance(value, str):
                bound = value.removeprefix(">=")
                known[reason] = known.get(reason, 0) + (int(bound) if bound.isdigit() else 0)
                withheld.setdefault(reason, value)
            else:
                known[reason] = known.get(reason, 0) + int(value)
    return {reason: total if reason not in withheld else
            f">={total}" if total else withheld[reason] for reason, total in known.items()}


def masked_setup(summed: Release) -> Release:
    """A summed fixed-shape description (secure aggregation) in the unmasked form; pooled
    dropped counts below 5 are shown as ``"<5"``."""
    levels, n, events, dropped = masked_cox_description(summed)
    hidden = bool(summed.metadata.get(DROPPED_HIDDEN))  # the sites sent zeros
    return Release(summed.analysis, "cox", {}, {
        "levels": levels, "n": n, "events": events,
        "dropped": {f"missing {c}": "suppressed" if hidden else suppress_count(v, 5)
                    for c, v in dropped.items()},
        "time_resolution_days": 1})


class CoxStrategy(Strategy[CoxState]):
    """``kind: cox``."""

    kinds = ("cox",)
    state_type = CoxState

    def start(self, analysis: Analysis, study: Study, sites: tuple[str, ...]) -> CoxState:
        return CoxState(analysis.name, analysis.kind, strata=analysis.strata,
                        sites=sorted(sites))

    def request(self, state: CoxState, site: str) -> Release | None:
        if state.done or site not in state.sites:
            return None
        if state.phase == "setup":
            return summary_request(state.name, state.kind)
        assert state.newton is not None
        # the releases as they were wired when they arrived (not decoded and encoded again),
        # but the site's own: it keeps what it sent
        relayed = state.relayed
        if len(state.relayed_sites) == len(relayed):
            relayed = [w for s, w in zip(state.relayed_sites, relayed, strict=True)
                       if s != site] or relayed
        return newton_request(state.name, state.columns, NewtonState.from_dict(
            state.newton).beta, state.centre, state.bins, relayed)

    def combine(self, state: CoxState, analysis: Analysis, study: Study,
                answers: Contributions) -> None:
        state.site_errors.update(answers.failures)
        usable = {}
        for who, release in answers.releases.items():
            if release.error:
                state.site_errors[who] = release.error
            else:
                usable[who] = release
        if state.phase == "setup":
            self._setup(state, analysis, study, usable, answers)
            self._relay(state, answers, usable, state.sites)
            return
        deriv, bad = self._pooled(state, study, usable)
        state.site_errors.update(bad)
        ok = sorted(set(usable) - set(bad))
        self._relay(state, answers, usable, ok)
        if answers.masked and (answers.failures or bad or not ok):
            state.fail("the masked sum is incomplete: " + "; ".join(
                f"{s}: {r}" for s, r in sorted(state.site_errors.items())))
        elif not answers.masked and len(ok) < len(state.sites):
            self._restart_without(state, analysis, study, ok)
        else:
            self._step(state, deriv)

    def result(self, state: CoxState, analysis: Analysis) -> dict[str, Any]:
        base: dict[str, Any] = {"kind": "cox", "strata": state.strata}
        if state.site_errors:
            base["site_errors"] = dict(sorted(state.site_errors.items()))
        if state.error:
            return {**base, "error": state.error}
        bins: dict[str, Any] = {"bins": state.bins} if state.bins is not None else {}
        site_bins = {s: p["bins"] for s, p in state.setups.items()
                     if s in state.sites and p.get("bins")}
        if site_bins:
            bins["site_bins"] = dict(sorted(site_bins.items()))
        return {**state.result, "sites": state.sites, "dropped": state.dropped,
                "time_resolution_days": state.resolution, **bins,
                **({"site_errors": base["site_errors"]} if state.site_errors else {})}

    @staticmethod
    def _relay(state: CoxState, answers: Contributions, usable: Mapping[str, Release],
               sites: Iterable[str]) -> None:
        """Keep this round's signed releases of the model's sites for the next request."""
        if state.done:
            chosen: dict[str, Release] = {}
        elif answers.masked:
            chosen = dict(answers.signed)
        else:
            chosen = {s: usable[s] for s in sites if s in usable}
        state.relayed_sites = sorted(chosen)
        state.relayed = [wire_release(chosen[s]) for s in state.relayed_sites]

    # -- internals -----------------------------------------------------------------------------

    def _setup(self, state: CoxState, analysis: Analysis, study: Study,
               usable: Mapping[str, Release], answers: Contributions) -> None:
        if answers.masked:
            try:
                state.bins = None
                for r in usable.values():  # the one summed description
                    state.bins = list(cox_bins(*masked_cox_event_table(r, study.horizon_days)))
                usable = {who: masked_setup(r) for who, r in usable.items()}
            except ProtocolError as exc:
                state.fail(str(exc))
                return
            except DisclosureError as exc:
                state.fail(f"no time bins for this model: {exc}")
                return
            state.sites = sorted(answers.sites) if usable else []
        else:
            state.sites = sorted(usable)
        try:
            state.setups = {who: {
                "levels": {c: sorted(v) for c, v in (r.metadata.get("levels") or {}).items()},
                "n": int(r.metadata["n"]), "events": int(r.metadata["events"]),
                "dropped": dict(r.metadata.get("dropped") or {}),
                "resolution": int(r.metadata.get("time_resolution_days", 1)),
                "bins": [int(b) for b in r.metadata.get("bins") or []]}
                for who, r in usable.items()}
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            state.fail(f"malformed model description: {exc}")
            return
        if len(state.sites) < study.privacy.min_sites:
            reasons = "; ".join(sorted(set(state.site_errors.values())))
            state.fail(f"only {len(state.sites)} sites can fit this model, fewer than "
                       f"min_sites {study.privacy.min_sites}" + (f" ({reasons})" if reasons
                                                                  else ""))
            return
        self._design(state, analysis)

    def _design(self, state: CoxState, analysis: Analysis) -> None:
        """Fix the design over the model's current sites and start Newton at beta = 0.

        Indicator columns come from the levels present at these sites only, so a fit that
        restarts without a site equals the analysis of the sites it names.
        """
        parts = [state.setups[w] for w in ([MASKED_SUM] if MASKED_SUM in state.setups
                                           else state.sites)]
        levels: dict[str, set[str]] = {}
        for part in parts:
            for cov, names in part["levels"].items():
                levels.setdefault(cov, set()).update(names)
        state.columns = design_columns(analysis.covariates,
                                       {c: sorted(v) for c, v in levels.items()})
        state.dropped = _sum_dropped(p["dropped"] for p in parts)
        state.resolution = max([int(p["resolution"]) for p in parts] + [1])
        if state.bins is not None:
            state.resolution = int(np.max(np.diff([-1, *state.bins])))
        state.n = sum(int(p["n"]) for p in parts)
        state.events = sum(int(p["events"]) for p in parts)
        state.centre = None
        if state.events == 0:
            state.fail("no events in the pooled cohort")
        elif not state.columns:
            state.fail("no covariate varies in the pooled cohort")
        else:
            state.phase = "running"
            state.newton = newton_start(len(state.columns)).to_dict()

    def _restart_without(self, state: CoxState, analysis: Analysis, study: Study,
                         sites: list[str]) -> None:
        state.sites = sites
        if len(sites) < study.privacy.min_sites:
            state.fail(f"sites dropped out during the iterations; {len(sites)} left, fewer "
                       f"than min_sites {study.privacy.min_sites}")
            return
        state.restarts += 1
        self._design(state, analysis)

    def _pooled(self, state: CoxState, study: Study, got: Mapping[str, Release]
                ) -> tuple[CoxDerivatives | None, dict[str, str]]:
        """The pooled derivatives (``None``: overflow at this beta) and malformed sites.

        Sites' sums are added in site order and the centre fixed at the first sums, by the
        function the sites run to check the next request (:func:`analytics.pooled_derivatives`).
        """
        p = len(state.columns)
        horizon = len(state.bins) - 1 if state.bins is not None else study.horizon_days
        parts: list[Any] = []
        bad: dict[str, str] = {}
        overflow = False
        for who in sorted(got):
            r = got[who]
            if r.metadata.get("overflow"):
                overflow = True
                continue
            try:
                parts.append(CoxDerivatives.from_vectors(r.vectors, p) if state.strata == "site"
                             else CoxDayStats.from_vectors(r.vectors, horizon, p))
            except (ValueError, KeyError, TypeError) as exc:
                bad[who] = f"malformed release: {exc}"
        if bad or not (parts or overflow):
            return None, bad
        centre = None if state.centre is None else tuple(state.centre)
        deriv, centre = pooled_derivatives(None if overflow else parts, centre)
        state.centre = None if centre is None else list(centre)
        return deriv, bad

    def _step(self, state: CoxState, deriv: CoxDerivatives | None) -> None:
        assert state.newton is not None
        newton = NewtonState.from_dict(state.newton)
        if state.phase == "finalizing":
            self._finish(state, newton, deriv)
            return
        nxt = cox_step(newton, deriv)
        state.newton = nxt.state.to_dict()
        if nxt.state.status == "failed":
            state.fail(nxt.state.explain(state.columns))
        elif nxt.state.status == "converged":
            if not nxt.ask:
                self._finish(state, nxt.state, deriv)
            else:
                state.phase = "finalizing"  # one more round: derivatives at the optimum

    @staticmethod
    def _finish(state: CoxState, newton: NewtonState, deriv: CoxDerivatives | None) -> None:
        if deriv is None:
            state.fail("numerical overflow at the fitted coefficients")
            return
        strata: Literal["none", "site"] = "site" if state.strata == "site" else "none"
        result = cox_result(state.columns, np.asarray(newton.beta), deriv,
                            float(newton.null_loglik or 0.0), state.n, state.events,
                            newton.iteration, strata)
        state.result = result.to_dict()
        state.done = True

