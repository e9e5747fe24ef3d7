"""Driver of studies under secure aggregation (and the dispatcher for all studies).

A secure study runs as: round 1, every participant announces a signed ephemeral key; the next
round relays all announcements and every site releases its masked vectors; the driver sums
the masked releases of ALL participants (masks cancel only then) and pools the sums as if one
site had sent them. Cox models then iterate, one masked round per Newton step. A site that
fails after the key exchange is dropped: a new key exchange among the others starts the data
rounds again (no secret sharing, Bonawitz et al. 2017 without dropout recovery); fewer than
``min_sites`` sites means no release. The aggregator stores only masked releases and sums.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aggregator.cox_driver import CoxDriver
from aggregator.pooling import pool_study
from analytics import EstimationError, logrank_from_terms, suppress_count
from protocol.codec import Release
from protocol.errors import ProtocolError, SecureAggregationError
from protocol.secure_agg import KeyAnnouncement, unmask_sum, verify_announcement
from protocol.study import Study

__all__ = ["NetworkDriver", "SecureDriver"]

logger = logging.getLogger(__name__)
State = dict[str, Any]
KEYS, REKEY, POOLED = "__keys__", "__rekey__", "pooled"


def _one_site(study: Study) -> Study:
    """The study as pooled from a single pseudo-site (the unmasked sum)."""
    return dataclasses.replace(study, privacy=dataclasses.replace(study.privacy, min_sites=1))


def _cox_setup(summed: Release) -> Release:
    """A summed secure Cox description in the form :class:`CoxDriver` reads."""
    covariates = summed.metadata.get("covariates", [])
    levels = {cov: [lv for lv, c in zip(names, summed.vectors[f"levels.{cov}"], strict=True)
                    if c > 0]
              for cov, names in (summed.metadata.get("levels") or {}).items()}
    dropped = {f"missing {c}": suppress_count(int(v), 5)
               for c, v in zip(covariates, summed.vectors["dropped"], strict=True)}
    return Release(summed.analysis, "cox", {}, {
        "levels": levels, "n": int(summed.vectors["n"][0]),
        "events": int(summed.vectors["events"][0]), "dropped": dropped,
        "time_resolution_days": 1})


class SecureDriver:
    """Implements :class:`aggregator.rounds.Driver` for studies with secure aggregation."""

    def __init__(self, ca_pem: bytes | None = None) -> None:
        self.cox = CoxDriver()
        self.ca_pem = ca_pem

    def start(self, study: Study, first_round: Mapping[str, Sequence[Release]]) -> State:
        """Collect the announced keys of round 1."""
        state: State = {"attempt": 1, "phase": "data", "announcements": {}, "dropped": {},
                        "results": {}, "cox": None}
        self._collect_keys(study, state, first_round)
        return state

    def inputs(self, study: Study, state: State, site_id: str) -> tuple[Release, ...]:
        """Keys to mask with (and Cox coefficients), or a request for a new key."""
        if state["phase"] == "rekey":
            return (Release(REKEY, "keys", {}, {"attempt": state["attempt"]}),)
        keys = Release(KEYS, "keys", {}, {
            "attempt": state["attempt"],
            "announcements": [state["announcements"][s] for s in state["sites"]]})
        if state["phase"] == "cox":
            return (keys, *self.cox.inputs(_one_site(study), state["cox"], POOLED))
        return (keys,)

    def advance(self, study: Study, state: State,
                answers: Mapping[str, tuple[Release, ...] | str]) -> State:
        """Next phase from one round's answers."""
        failed = {s: a for s, a in answers.items() if isinstance(a, str)}
        failed.update({s: "no answer" for s in state["sites"] if s not in answers})
        if state["phase"] == "rekey":
            state["dropped"].update(failed)
            self._collect_keys(study, state, {s: a for s, a in answers.items()
                                              if not isinstance(a, str)})
            return state
        if failed:
            state["dropped"].update(failed)
            state["sites"] = [s for s in state["sites"] if s not in failed]
            logger.info("secure round lost %d sites; new key exchange", len(failed))
            state.update(attempt=state["attempt"] + 1, phase="rekey", cox=None, results={})
            self._check_size(study, state)
            return state
        releases = {s: a for s, a in answers.items() if not isinstance(a, str)}
        if state["phase"] == "data":
            self._pool_data(study, state, releases)
        else:
            summed = tuple(self._sum(name, releases) for name in self._cox_names(state))
            state["cox"] = self.cox.advance(_one_site(study), state["cox"], {POOLED: summed})
            if self.cox.finished(state["cox"]):
                state["phase"] = "done"
        return state

    def finished(self, state: State) -> bool:
        """Whether the study's results are final."""
        return state["phase"] == "done"

    def results(self, state: State) -> dict[str, Any]:
        """Every analysis' result, and the sites dropped during the study."""
        out = dict(state["results"])
        if state.get("cox"):
            out.update(self.cox.results(state["cox"]))
        out["__sites__"] = {"dropped": dict(state["dropped"]),
                            "participated": list(state.get("sites", []))}
        return out

    # -- internals -----------------------------------------------------------------------------

    def _collect_keys(self, study: Study, state: State,
                      answers: Mapping[str, Sequence[Release]]) -> None:
        announcements = {}
        for site, releases in answers.items():
            keys = next((r for r in releases if r.analysis == KEYS), None)
            if keys is None or "announcement" not in keys.metadata:
                state["dropped"][site] = "no key announcement"
                continue
            if self.ca_pem is not None:  # the nodes check again; a bad key is dropped here
                try:
                    a = KeyAnnouncement.from_dict(keys.metadata["announcement"])
                    if a.site_id != site:
                        raise SecureAggregationError(f"announcement names site {a.site_id}")
                    verify_announcement(a, self.ca_pem, study.id, state["attempt"])
                except ProtocolError as exc:
                    state["dropped"][site] = f"rejected key announcement: {exc}"
                    logger.warning("study %s: key of %s rejected: %s", study.id, site, exc)
                    continue
            announcements[site] = keys.metadata["announcement"]
        state["announcements"] = announcements
        state["sites"] = sorted(announcements)
        state["phase"] = "data"
        self._check_size(study, state)

    def _check_size(self, study: Study, state: State) -> None:
        if len(state["sites"]) < study.privacy.min_sites:
            reason = (f"fewer than {study.privacy.min_sites} participating sites (min_sites); "
                      "no pooled release")
            state["results"] = {a.name: {"kind": a.kind, "error": reason}
                                for a in study.analyses}
            state.update(phase="done", cox=None)

    @staticmethod
    def _sum(name: str, releases: Mapping[str, Sequence[Release]]) -> Release:
        parts = [next(r for r in rs if r.analysis == name) for rs in releases.values()]
        errors = sorted({f"{s}: {r.error}" for s, r in zip(releases, parts, strict=True)
                         if r.error})
        if errors:
            return Release(name, parts[0].kind, {}, {}, error="; ".join(errors))
        return unmask_sum(parts)

    @staticmethod
    def _cox_names(state: State) -> list[str]:
        return sorted(n for n, e in state["cox"]["analyses"].items()
                      if e["status"] in ("running", "finalizing"))

    def _pool_data(self, study: Study, state: State,
                   releases: Mapping[str, Sequence[Release]]) -> None:
        one = _one_site(study)
        pooled: list[Release] = []
        cox_setups: list[Release] = []
        results: dict[str, Any] = {}
        for analysis in study.analyses:
            try:
                summed = self._sum(analysis.name, releases)
            except (ProtocolError, StopIteration) as exc:
                results[analysis.name] = {"kind": analysis.kind, "error": f"{exc}"}
                continue
            if summed.error:
                results[analysis.name] = {"kind": analysis.kind, "error": summed.error}
            elif analysis.kind == "cox":
                cox_setups.append(_cox_setup(summed))
            elif analysis.kind == "logrank" and analysis.stratify_by_site:
                results[analysis.name] = {
                    **_stratified_logrank(summed), "endpoint": analysis.endpoint,
                    "group_by": analysis.group_by, "sites": list(state["sites"])}
            else:
                pooled.append(summed)
        if pooled:
            analyses = pool_study(one, {POOLED: pooled})["analyses"]
            for r in pooled:
                entry = analyses[r.analysis]
                entry.pop("sites", None)
                entry["sites"] = list(state["sites"])
                results[r.analysis] = entry
        state["results"] = results
        state["cox"] = self.cox.start(one, {POOLED: cox_setups}) if cox_setups else None
        state["phase"] = "cox" if state["cox"] and not self.cox.finished(state["cox"]) \
            else "done"


def _stratified_logrank(summed: Release) -> dict[str, Any]:
    names = list(summed.metadata["groups"])
    k = len(names)
    n = np.array([summed.vectors[f"g{i}.events"].sum() + summed.vectors[f"g{i}.censored"].sum()
                  for i in range(k)])
    keep = np.flatnonzero(n > 0)
    o = np.asarray(summed.vectors["lr.observed"])[keep]
    e = np.asarray(summed.vectors["lr.expected"])[keep]
    v = np.asarray(summed.vectors["lr.covariance"]).reshape(k, k)[np.ix_(keep, keep)]
    try:
        result = logrank_from_terms([names[i] for i in keep], o, e, v).to_dict()
    except EstimationError as exc:
        return {"kind": "logrank", "error": str(exc)}
    return {"kind": "logrank", **result, "stratified_by_site": True,
            "time_resolution_days": 1}


class NetworkDriver:
    """Dispatches each study to the secure driver or, unmasked, to the Cox driver."""

    def __init__(self, ca_pem: bytes | None = None) -> None:
        self.secure = SecureDriver(ca_pem)
        self.cox = CoxDriver()

    def _pick(self, study: Study) -> Any:
        return self.secure if study.privacy.secure_aggregation else self.cox

    def start(self, study: Study, first_round: Mapping[str, Sequence[Release]]) -> State | None:
        """Start the study's rounds after round 1."""
        inner = self._pick(study).start(study, first_round)
        return None if inner is None else {"secure": study.privacy.secure_aggregation,
                                           "inner": inner,
                                           "sites": inner.get("sites", [])}

    def inputs(self, study: Study, state: State, site_id: str) -> tuple[Release, ...]:
        """Inputs of the next round."""
        return self._pick(study).inputs(study, state["inner"], site_id)

    def advance(self, study: Study, state: State,
                answers: Mapping[str, tuple[Release, ...] | str]) -> State:
        """Advance the inner driver."""
        state["inner"] = self._pick(study).advance(study, state["inner"], answers)
        state["sites"] = state["inner"].get("sites", [])
        return state

    def finished(self, state: State) -> bool:
        """Whether the inner driver is done."""
        driver = self.secure if state["secure"] else self.cox
        return driver.finished(state["inner"])

    def results(self, state: State) -> dict[str, Any]:
        """Results of the inner driver."""
        driver = self.secure if state["secure"] else self.cox
        return driver.results(state["inner"])


