"""The pure driver of federated Cox models: one network round per Newton step.

After round 1 (each site describes its part: indicator levels present, patients, events) the
driver fixes the design columns (indicators against the first level present in the pooled
cohort) and starts Newton-Raphson at beta = 0. Each round it sends the coefficients to every
site of the analysis, pools what they return (per-day sums, or per-site derivatives when
``strata: site``) and takes the step. A site that fails mid-way is left out and the fit starts
again without it, so the result always equals the analysis of the sites it names. The state is
a JSON-ready dict (:mod:`aggregator.rounds` persists it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from analytics import (
    CoxDayStats,
    CoxDerivatives,
    NewtonState,
    cox_result,
    efron_derivatives,
    newton_start,
    newton_update,
)
from protocol.codec import Release
from protocol.design import design_columns
from protocol.study import Analysis, Study

__all__ = ["CoxDriver"]

logger = logging.getLogger(__name__)
State = dict[str, Any]


def _error(entry: dict[str, Any], reason: str) -> None:
    entry.update(status="error", error=reason)


def _sum_dropped(setups: Mapping[str, Release]) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    for release in setups.values():
        for reason, value in (release.metadata.get("dropped") or {}).items():
            prev = out.get(reason, 0)
            if isinstance(value, str) or isinstance(prev, str):
                known = (prev if isinstance(prev, int) else int(str(prev).lstrip(">=") or 0)) \
                    + (value if isinstance(value, int) else 0)
                out[reason] = f">={known}" if known else value if isinstance(value, str) \
                    else prev
            else:
                out[reason] = prev + int(value)
    return out


class CoxDriver:
    """Implements :class:`aggregator.rounds.Driver` for ``kind: cox``."""

    def __init__(self, max_iter: int = 50) -> None:
        self.max_iter = max_iter

    # -- Driver protocol -----------------------------------------------------------------------

    def start(self, study: Study, first_round: Mapping[str, Sequence[Release]]) -> State | None:
        """Set up every Cox analysis from the sites' round-1 descriptions."""
        analyses = [a for a in study.analyses if a.kind == "cox"]
        if not analyses:
            return None
        state: State = {"analyses": {}}
        for analysis in analyses:
            setups = {site: r for site, rs in first_round.items() for r in rs
                      if r.analysis == analysis.name}
            state["analyses"][analysis.name] = self._setup(study, analysis, setups)
        self._refresh_sites(state)
        return state

    def inputs(self, study: Study, state: State, site_id: str) -> tuple[Release, ...]:
        """The coefficients to evaluate, for each running analysis this site is part of."""
        return tuple(
            Release(analysis=name, kind="cox",
                    vectors={"beta": np.asarray(e["newton"]["beta"], dtype=np.float64),
                             **({"centre": np.asarray(e["centre"], dtype=np.float64)}
                                if e.get("centre") else {})},
                    metadata={"columns": e["columns"]})
            for name, e in sorted(state["analyses"].items())
            if e["status"] in ("running", "finalizing") and site_id in e["sites"])

    def advance(self, study: Study, state: State,
                answers: Mapping[str, tuple[Release, ...] | str]) -> State:
        """Pool one round per analysis and take its Newton step."""
        for analysis in study.analyses:
            entry = state["analyses"].get(analysis.name)
            if entry is None or entry["status"] not in ("running", "finalizing"):
                continue
            got: dict[str, Release] = {}
            for site in entry["sites"]:
                answer = answers.get(site, "no answer")
                if isinstance(answer, str):
                    entry["site_errors"][site] = answer
                    continue
                release = next((r for r in answer if r.analysis == analysis.name), None)
                if release is None or release.error:
                    entry["site_errors"][site] = release.error if release else "no release"
                else:
                    got[site] = release
            if len(got) < len(entry["sites"]):
                self._restart_without(study, entry, sorted(got))
                continue
            self._step(study, analysis, entry, got)
        self._refresh_sites(state)
        return state

    def finished(self, state: State) -> bool:
        """True when no analysis still iterates."""
        return all(e["status"] in ("done", "error") for e in state["analyses"].values())

    def results(self, state: State) -> dict[str, Any]:
        """results.json entries of the Cox analyses."""
        out = {}
        for name, e in state["analyses"].items():
            base: dict[str, Any] = {"kind": "cox", "strata": e["strata"]}
            if e["site_errors"]:
                base["site_errors"] = dict(sorted(e["site_errors"].items()))
            if e["status"] == "error":
                out[name] = {**base, "error": e["error"]}
            else:
                out[name] = {**e["result"], "sites": e["sites"], "dropped": e["dropped"],
                             "time_resolution_days": e["time_resolution_days"],
                             **({"site_errors": base["site_errors"]}
                                if "site_errors" in base else {})}
        return out

    # -- internals -----------------------------------------------------------------------------

    def _setup(self, study: Study, analysis: Analysis,
               setups: Mapping[str, Release]) -> dict[str, Any]:
        ok = {s: r for s, r in setups.items() if not r.error}
        entry: dict[str, Any] = {
            "status": "running", "strata": analysis.strata, "sites": sorted(ok),
            "site_errors": {s: r.error for s, r in setups.items() if r.error},
            "columns": [], "n": 0, "events": 0, "dropped": _sum_dropped(ok), "restarts": 0,
            "time_resolution_days": max([int(r.metadata.get("time_resolution_days", 1))
                                         for r in ok.values()] + [1]),
        }
        if len(ok) < study.privacy.min_sites:
            reasons = "; ".join(sorted(set(entry["site_errors"].values())))
            _error(entry, f"only {len(ok)} sites can fit this model, fewer than min_sites "
                   f"{study.privacy.min_sites}" + (f" ({reasons})" if reasons else ""))
            return entry
        levels: dict[str, set[str]] = {}
        for r in ok.values():
            for cov, names in (r.metadata.get("levels") or {}).items():
                levels.setdefault(cov, set()).update(names)
        entry["columns"] = design_columns(analysis.covariates,
                                          {c: sorted(v) for c, v in levels.items()})
        entry["site_counts"] = {s: [int(r.metadata["n"]), int(r.metadata["events"])]
                                for s, r in ok.items()}
        self._count(entry)
        if entry["events"] == 0:
            _error(entry, "no events in the pooled cohort")
        elif not entry["columns"]:
            _error(entry, "no covariate varies in the pooled cohort")
        else:
            entry["newton"] = newton_start(len(entry["columns"])).to_dict()
        return entry

    def _restart_without(self, study: Study, entry: dict[str, Any], sites: list[str]) -> None:
        entry["sites"] = sites
        if len(sites) < study.privacy.min_sites:
            _error(entry, f"sites dropped out during the iterations; {len(sites)} left, "
                   f"fewer than min_sites {study.privacy.min_sites}")
            return
        entry["restarts"] += 1
        entry["centre"] = None
        entry["status"] = "running"
        entry["newton"] = newton_start(len(entry["columns"])).to_dict()
        self._count(entry)

    def _pooled(self, study: Study, entry: dict[str, Any],
                got: Mapping[str, Release]) -> CoxDerivatives | None:
        if any(r.metadata.get("overflow") for r in got.values()):
            return None
        p = len(entry["columns"])
        if entry["strata"] == "site":
            return _sum([CoxDerivatives.from_vectors(r.vectors, p) for r in got.values()])
        stats = _sum([CoxDayStats.from_vectors(r.vectors, study.horizon_days, p)
                      for r in got.values()])
        if not entry.get("centre") and stats.s0[0] > 0:
            # pooled covariate means (the first round is at beta = 0, where s0[0] = n): every
            # later round is centred on them, which keeps exp(x'beta) in range and leaves the
            # derivatives unchanged
            entry["centre"] = [float(v) for v in stats.s1[0] / stats.s0[0]]
        return efron_derivatives(stats)

    def _step(self, study: Study, analysis: Analysis, entry: dict[str, Any],
              got: Mapping[str, Release]) -> None:
        deriv = self._pooled(study, entry, got)
        state = NewtonState.from_dict(entry["newton"])
        if entry["status"] == "finalizing":
            self._finish(entry, state, deriv)
            return
        evaluated = state.beta
        nxt = newton_update(state, deriv, max_iter=self.max_iter)
        entry["newton"] = nxt.to_dict()
        if nxt.status == "failed":
            _error(entry, nxt.explain(entry["columns"]))
        elif nxt.status == "converged":
            if nxt.beta == evaluated and deriv is not None:
                self._finish(entry, nxt, deriv)
            else:
                entry["status"] = "finalizing"  # one more round: derivatives at the optimum

    def _finish(self, entry: dict[str, Any], state: NewtonState,
                deriv: CoxDerivatives | None) -> None:
        if deriv is None:
            _error(entry, "numerical overflow at the fitted coefficients")
            return
        result = cox_result(entry["columns"], np.asarray(state.beta), deriv,
                            float(state.null_loglik or 0.0), int(entry["n"]),
                            int(entry["events"]), state.iteration, entry["strata"])
        entry["result"] = result.to_dict()
        entry["status"] = "done"

    @staticmethod
    def _count(entry: dict[str, Any]) -> None:
        counts = [entry["site_counts"][s] for s in entry["sites"]]
        entry["n"] = sum(c[0] for c in counts)
        entry["events"] = sum(c[1] for c in counts)

    @staticmethod
    def _refresh_sites(state: State) -> None:
        state["sites"] = sorted({s for e in state["analyses"].values()
                                 if e["status"] in ("running", "finalizing")
                                 for s in e["sites"]})


def _sum(parts: list[Any]) -> Any:
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total
