"""Cox without per-patient sums, and an aggregator that cannot choose beta (issue 8, attack 3).

The attack: the pooled per-day Cox sums of a secure round at beta = 0, as the aggregator
unmasks them, gave on every day with exactly one death ``e1 / e0`` = that patient's exact
covariates, and consecutive risk-set sums differed by the patients who left the risk set; the
aggregator also chose beta. Now a secure Cox model runs on time bins chosen from the pooled
event table (every bin >= 5 events and >= 5 exits), every Newton request relays the previous
round's signed releases, and every node recomputes the step itself and refuses anything else.

Everything runs through the real runtime (:class:`heron.simulation.SimulatedNetwork`: real node
engines with site certificates, the real study engine and store); what the aggregator can
compute is read with :func:`aggregator.inspect.inspect_study` from its database.

Exactness reference: lifelines ``CoxPHFitter`` (Efron ties, its only method) on the pooled
individual data of the sites with durations rounded up to the bins stated in results.json
(``strata=["site"]`` for a baseline hazard per site), to 1e-6.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import node.releases.cox as node_cox
from aggregator.inspect import inspect_study
from aggregator.transport import NodeHandler, StudyTask, TaskReply
from analytics import MIN_BIN_EVENTS, bin_index, cox_bins, round_up_to_bins, survival_counts
from analytics.errors import DisclosureError
from heron.simulation import SimulatedNetwork, SimulatedSite, make_study
from heron.synth import synthesize
from node.governance.policy import Policy
from node.ingestion.ingest import ingest
from protocol.codec import Release
from protocol.errors import ProtocolError
from protocol.pki import init_ca, issue_site, load_credentials
from protocol.release_signing import SIGNED, ReleaseSigner, sign_release, verify_release
from protocol.rounds import NewtonRequest, newton_from_release, newton_request, parse_requests
from protocol.signing import sign_study
from tests.conftest import COX_TODAY, lifelines_reference, pooled_frame

KEY = Ed25519PrivateKey.generate()
COVARIATES = ["age_at_infusion", "lab:LDH"]
COX = {"name": "cox", "kind": "cox", "endpoint": "overall_survival", "covariates": COVARIATES}


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("coxdisc")
    init_ca(tmp / "ca")
    out = {}
    for f in synthesize(tmp / "sites", sites=4, patients=150, seed=5):
        ingest(f.path, tmp / f.site_id / "store", b"c" * 32)
        issue_site(tmp / "ca", f.site_id, tmp / f.site_id / "credentials")
        out[f.site_id] = tmp / f.site_id
    return tmp, out


Wrapper = Callable[[NodeHandler], NodeHandler]


def _network(workdir: Path, parts: tuple[Path, dict[str, Path]],
             wrappers: dict[str, Wrapper] | None = None) -> SimulatedNetwork:
    tmp, folders = parts
    return SimulatedNetwork(
        workdir, [SimulatedSite(s, f / "store", Policy(), f / "credentials")
                  for s, f in folders.items()],
        KEY, today=lambda: COX_TODAY, ca_dir=tmp / "ca", site_timeout_s=10,
        node_wrappers=wrappers)


def _study(study_id: str, strata: str = "none", covariates: list[str] = COVARIATES) -> Any:
    return make_study(study_id, [{**COX, "covariates": covariates, "strata": strata}],
                      cohort={}, min_sites=3, secure_aggregation=True)


def _stores(parts: tuple[Path, dict[str, Path]]) -> dict[str, Path]:
    return {s: f / "store" for s, f in parts[1].items()}


# -- (a) attack 3 replayed ------------------------------------------------------------------------

def test_no_pooled_cox_sum_covers_fewer_than_5_events_or_exits(tmp_path, sites):
    study = _study("cox-attack3")
    with _network(tmp_path, sites) as net:
        results = net.run(study, timeout_s=60)
        seen = inspect_study(net.store, study.id)
    got = results["analyses"]["cox"]
    assert "error" not in got, got
    bins = got["bins"]
    assert bins[-1] == study.horizon_days and bins == sorted(bins)

    # the pooled individual data: the attack worked on it at day resolution
    data = pooled_frame(_stores(sites), study, COVARIATES)
    day_events = np.bincount(data["duration"][data["event"] == 1],
                             minlength=study.horizon_days + 1)
    single = np.flatnonzero(day_events == 1)
    assert single.size > 20  # days on which the old per-day sums named one patient
    patients = data[COVARIATES].to_numpy(float)

    newton_sums = [a.pooled for r in seen.rounds for name, a in r.analyses.items()
                   if name == "cox" and a.pooled is not None and "s0" in a.pooled]
    assert len(newton_sums) == got["iterations"] + 1  # beta = 0 and every step
    for pooled in newton_sums:
        # every per-time vector the aggregator can form has one entry per bin, none per day
        assert np.asarray(pooled["s0"]).shape == (len(bins),)
        assert np.asarray(pooled["d"]).min() >= MIN_BIN_EVENTS
    at_zero = newton_sums[0]  # beta = 0: s0 counts the risk set, e1 / e0 averages the events
    at_risk = np.asarray(at_zero["s0"])
    exits = at_risk - np.append(at_risk[1:], 0.0)
    assert exits.min() >= MIN_BIN_EVENTS and at_risk[-1] >= MIN_BIN_EVENTS
    np.testing.assert_allclose(at_risk[0], len(data))
    means = np.asarray(at_zero["e1"]).reshape(len(bins), 2) / np.asarray(at_zero["e0"])[:, None]
    idx, observed = bin_index(data["duration"], data["event"], study.horizon_days, bins)
    for k, mean in enumerate(means):
        # e1 / e0 is the mean of the bin's >= 5 events, none of whom it names
        dead = patients[(idx == k) & observed]
        assert len(dead) >= MIN_BIN_EVENTS
        np.testing.assert_allclose(mean, dead.mean(axis=0), rtol=1e-9)
        assert not np.any(np.all(np.abs(dead - mean) < 1e-6, axis=1)), (mean, dead)
    # the event table of the description is the only per-day vector, and it is counts only
    descriptions = [a.pooled for r in seen.rounds for name, a in r.analyses.items()
                    if name == "cox" and a.pooled is not None and "day_events" in a.pooled]
    assert len(descriptions) == 1
    assert set(descriptions[0]) >= {"day_events", "day_exits", "n", "events"}
    assert not any(np.asarray(v).dtype.kind == "f" for v in descriptions[0].values())


def test_bins_close_at_5_events_and_the_tail_joins_the_last_bin():
    events = np.array([0, 1, 2, 3, 0, 0, 5, 0, 1, 0])
    exits = events + np.array([1, 0, 0, 0, 2, 1, 0, 0, 0, 3])
    assert cox_bins(events, exits) == (3, 9)
    assert cox_bins(np.full(12, 1), np.full(12, 1)) == (4, 11)
    with pytest.raises(DisclosureError):
        cox_bins([1, 1, 1, 1, 0], [1, 1, 1, 1, 3])
    idx, observed = bin_index([0, 3, 4, 12], [1, 1, 0, 1], 9, (3, 9))
    assert idx.tolist() == [0, 0, 1, 1] and observed.tolist() == [True, True, False, False]


# -- (b), (c), (d) a malicious aggregator ------------------------------------------------------

def _tamper(change: Callable[[NewtonRequest], Release], replies: list[TaskReply]) -> Wrapper:
    """A wrapper changing every Newton request after ``beta = 0`` a site gets (as an
    aggregator would for every site), recording the site's reply."""
    def wrap(handler: NodeHandler) -> NodeHandler:
        def answer(task: StudyTask) -> TaskReply | None:
            inputs = list(task.inputs)
            for i, request in enumerate(inputs):
                if request.analysis != "cox" or request.metadata.get("step") != "newton":
                    continue
                parsed = newton_from_release(request)
                if np.any(parsed.beta != 0):
                    inputs[i] = change(parsed)
                    task = dataclasses.replace(task, inputs=tuple(inputs))
                    reply = handler(task)
                    if reply is not None:
                        replies.append(reply)
                    return reply
            return handler(task)
        return answer
    return wrap


def _rebuild(req: NewtonRequest, **changes: Any) -> Release:
    fields = {"columns": list(req.columns), "beta": req.beta, "centre": req.centre,
              "bins": req.bins, "relayed": req.relayed, **changes}
    return newton_request(req.analysis, fields["columns"], fields["beta"], fields["centre"],
                          fields["bins"], fields["relayed"])


def _errors(replies: list[TaskReply]) -> list[str]:
    return [r.error for reply in replies for r in reply.releases or () if r.error]


def _other_site_release(req: NewtonRequest, change: Callable[[Release], Release]
                        ) -> tuple[Release, ...]:
    first, *rest = req.relayed
    return (change(first), *rest)


def _drop_signature(r: Release) -> Release:
    return dataclasses.replace(r, metadata={k: v for k, v in r.metadata.items() if k != SIGNED})


def _alter_vector(r: Release) -> Release:
    key = sorted(r.vectors)[0]
    vectors = dict(r.vectors)
    vectors[key] = np.asarray(vectors[key]) + 1
    return dataclasses.replace(r, vectors=vectors)


ATTACKS: dict[str, tuple[Callable[[NewtonRequest], Release], str]] = {
    "beta": (lambda q: _rebuild(q, beta=q.beta + 0.01), "coefficients differ"),
    "beta-1e-9": (lambda q: _rebuild(q, beta=q.beta * (1 + 1e-9)), "coefficients differ"),
    "centre": (lambda q: _rebuild(q, centre=None if q.centre is None else q.centre + 1.0),
               "centre differs"),
    "columns": (lambda q: _rebuild(q, columns=list(reversed(q.columns)),
                                   beta=q.beta[::-1]), "design columns differ"),
    "bins": (lambda q: _rebuild(q, bins=[*q.bins[:-2], q.bins[-1]]), "time bins differ"),
    "unsigned": (lambda q: _rebuild(q, relayed=_other_site_release(q, _drop_signature)),
                 "not signed"),
    "forged": (lambda q: _rebuild(q, relayed=_other_site_release(q, _alter_vector)),
               "bad signature"),
    "missing": (lambda q: _rebuild(q, relayed=q.relayed[1:]), "relayed"),
    "nothing": (lambda q: _rebuild(q, relayed=()), "relays no releases"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_nodes_refuse_a_request_they_did_not_compute_themselves(tmp_path, sites, attack):
    change, reason = ATTACKS[attack]
    replies: list[TaskReply] = []
    study = _study(f"cox-evil-{attack}")
    wrappers = dict.fromkeys(sites[1], _tamper(change, replies))
    with _network(tmp_path, sites, wrappers) as net:
        results = net.run(study, timeout_s=60)
    errors = _errors(replies)
    assert errors and all(reason in e for e in errors), errors
    # no site released sums at the aggregator's choice: every tampered reply is an error
    assert all(r.error for reply in replies for r in reply.releases or ()
               if r.analysis == "cox")
    assert "error" in results["analyses"]["cox"]
    assert reason in results["analyses"]["cox"]["error"]


def test_more_newton_rounds_than_the_cap_are_refused(tmp_path, sites, monkeypatch):
    monkeypatch.setattr(node_cox, "MAX_COX_ROUNDS", 2)
    study = _study("cox-cap")
    with _network(tmp_path, sites) as net:
        results = net.run(study, timeout_s=60)
    assert "more than 2 Newton rounds" in results["analyses"]["cox"]["error"]


def test_a_release_signed_outside_the_network_ca_is_refused(tmp_path, sites):
    _, folders = sites
    site = next(iter(folders))
    init_ca(tmp_path / "rogue-ca")
    issue_site(tmp_path / "rogue-ca", site, tmp_path / "rogue")
    rogue = ReleaseSigner.from_credentials(site, load_credentials(tmp_path / "rogue"))
    genuine = ReleaseSigner.from_credentials(site, load_credentials(folders[site] /
                                                                    "credentials"))
    release = Release("cox", "cox", {"s0": np.array([1.0, 2.0])}, {"columns": ["a"]})
    signed, digest = sign_release(release, genuine, "study", 1, 3)
    by = verify_release(signed, genuine.ca_pem, "study")
    assert (by.site, by.attempt, by.round, by.digest) == (site, 1, 3, digest)
    with pytest.raises(ProtocolError, match="signed for study"):
        verify_release(signed, genuine.ca_pem, "other-study")
    forged, _ = sign_release(release, rogue, "study", 1, 3)
    with pytest.raises(ProtocolError, match=r"not issued|unusable"):
        verify_release(forged, genuine.ca_pem, "study")
    moved = dataclasses.replace(signed, metadata={**signed.metadata,
                                                  SIGNED: {**signed.metadata[SIGNED],
                                                           "round": 4}})
    with pytest.raises(ProtocolError, match="bad signature"):
        verify_release(moved, genuine.ca_pem, "study")


def test_every_relayed_release_is_signed_and_verifies(tmp_path, sites):
    study = _study("cox-relay")
    relayed: list[Release] = []

    def record(handler: NodeHandler) -> NodeHandler:
        def answer(task: StudyTask) -> TaskReply | None:
            for n in parse_requests(task.inputs).newton:
                relayed.extend(n.relayed)
            return handler(task)
        return answer

    recorder = next(iter(sites[1]))
    with _network(tmp_path, sites, {recorder: record}) as net:
        results = net.run(study, timeout_s=60)
    assert "error" not in results["analyses"]["cox"]
    ca = (sites[0] / "ca" / "ca.pem").read_bytes()
    # signed for this content of the study: its id and the SHA-256 of the signed study
    bound = f"{study.id}@{hashlib.sha256(sign_study(study, KEY).canonical_study).hexdigest()}"
    signers = {verify_release(r, ca, bound).site for r in relayed}
    # every other site's; a site's own release does not travel back to it (it keeps it)
    assert signers == set(sites[1]) - {recorder}
    with pytest.raises(ProtocolError, match="signed for study"):
        verify_release(relayed[0], ca, study.id)  # the id alone (other content) does not do


# -- (e) exactness on the binned times -----------------------------------------------------------

@pytest.mark.parametrize(("strata", "covariates"), [
    ("none", ["age_at_infusion", "sex", "ecog", "lab:LDH"]),
    ("site", ["age_at_infusion", "sex", "lab:LDH"]),
])
def test_secure_binned_cox_equals_lifelines_on_binned_times(tmp_path, sites, strata,
                                                            covariates):
    study = _study(f"cox-exact-{strata}", strata, covariates)
    with _network(tmp_path, sites) as net:
        results = net.run(study, timeout_s=60)
    got = results["analyses"]["cox"]
    assert "error" not in got, got
    data = pooled_frame(_stores(sites), study, covariates)
    bins = tuple(got["bins"])
    # the bins are those of the pooled event table
    table = survival_counts(data["duration"].to_numpy(), data["event"].to_numpy(),
                            study.horizon_days)
    assert bins == cox_bins(table.events, table.events + table.censored)
    data["duration"] = round_up_to_bins(np.minimum(data["duration"], study.horizon_days), bins)
    ref = lifelines_reference(data, [c for c in covariates if c == "sex"],
                              ["site"] if strata == "site" else None)
    assert got["n"] == len(data) and got["events"] == int(data["event"].sum())
    assert set(got["coefficients"]) == set(ref.summary.index)
    for name, row in ref.summary.iterrows():
        assert got["coefficients"][name]["coef"] == pytest.approx(row["coef"], abs=1e-6)
        assert got["coefficients"][name]["se"] == pytest.approx(row["se(coef)"], abs=1e-6)
    assert got["log_likelihood"] == pytest.approx(ref.log_likelihood_, abs=1e-6)
    lr = ref.log_likelihood_ratio_test()
    assert got["lr_test"]["statistic"] == pytest.approx(lr.test_statistic, abs=1e-6)
    assert got["time_resolution_days"] == int(np.max(np.diff([-1, *bins])))


def test_unmasked_coarsened_cox_equals_lifelines_on_each_sites_bins(tmp_path, sites):
    """Unmasked, each site rounds up to its own coarsened bins (stated as ``site_bins``)."""
    study = make_study("cox-unmasked-bins", [COX], cohort={}, min_sites=3)
    with _network(tmp_path, sites) as net:
        results = net.run(study, timeout_s=60)
    got = results["analyses"]["cox"]
    assert "error" not in got, got
    data = pooled_frame(_stores(sites), study, COVARIATES)
    data = data[data["site"].isin(got["sites"])].reset_index(drop=True)  # refused sites out
    assert len(got["sites"]) >= 3 and set(got["site_bins"]) == set(got["sites"])
    for site, ends in got["site_bins"].items():
        rows = data["site"] == site
        data.loc[rows, "duration"] = round_up_to_bins(
            np.minimum(data.loc[rows, "duration"], study.horizon_days), tuple(ends))
        idx, observed = bin_index(data.loc[rows, "duration"], data.loc[rows, "event"],
                                  study.horizon_days, tuple(ends))
        per_bin = np.bincount(idx[observed], minlength=len(ends))
        exits = np.bincount(idx, minlength=len(ends))
        assert per_bin[exits > 0].min() >= 5 and exits[exits > 0].min() >= 5
    ref = lifelines_reference(data, [], None)
    for name, row in ref.summary.iterrows():
        assert got["coefficients"][name]["coef"] == pytest.approx(row["coef"], abs=1e-6)
        assert got["coefficients"][name]["se"] == pytest.approx(row["se(coef)"], abs=1e-6)
    assert got["log_likelihood"] == pytest.approx(ref.log_likelihood_, abs=1e-6)


# -- (f) symmetric matrices travel as their upper triangle ---------------------------------------

@pytest.mark.parametrize("strata", ["none", "site"])
def test_masked_cox_rounds_send_upper_triangles_only(tmp_path, sites, strata):
    covariates = ["age_at_infusion", "sex", "lab:LDH"]
    study = _study(f"cox-triangle-{strata}", strata, covariates)
    relayed: list[Release] = []

    def record(handler: NodeHandler) -> NodeHandler:
        def answer(task: StudyTask) -> TaskReply | None:
            for n in parse_requests(task.inputs).newton:
                relayed.extend(n.relayed)
            return handler(task)
        return answer

    with _network(tmp_path, sites, {next(iter(sites[1])): record}) as net:
        results = net.run(study, timeout_s=60)
        seen = inspect_study(net.store, study.id)
    got = results["analyses"]["cox"]
    assert "error" not in got, got
    p = len(got["coefficients"])
    assert p >= 3
    packed = p * (p + 1) // 2
    pooled = [a.pooled for r in seen.rounds for name, a in r.analyses.items()
              if name == "cox" and a.pooled is not None
              and ("hessian" in a.pooled or "s2" in a.pooled)]
    assert len(pooled) == got["iterations"] + 1
    shapes = [r.metadata["secure"]["shapes"] for r in relayed
              if "r:hessian" in r.metadata["secure"]["shapes"]
              or "r:s2" in r.metadata["secure"]["shapes"]]
    assert shapes  # the masked Newton releases the sites relayed to each other
    if strata == "site":
        assert all(v["hessian"].shape == (packed,) for v in pooled)
        assert all(s["r:hessian"] == [packed] for s in shapes)
    else:
        bins = len(got["bins"])
        assert all(v["s2"].shape == v["e2"].shape == (bins * packed,) for v in pooled)
        assert all(s["r:s2"] == s["r:e2"] == [bins * packed] for s in shapes)


@pytest.mark.parametrize("altered", [False, True])
def test_a_site_checks_its_own_release_when_it_is_relayed_back(tmp_path, sites, altered):
    """The aggregator leaves a site's own release out of its requests (the site sums the one
    it kept); relayed back, as before, it must be unaltered."""
    study = _study(f"cox-own-{'altered' if altered else 'intact'}")
    replies: list[TaskReply] = []
    kept: dict[str, Release] = {}

    def give_back(site: str) -> Wrapper:
        def wrap(handler: NodeHandler) -> NodeHandler:
            def answer(task: StudyTask) -> TaskReply | None:
                inputs = list(task.inputs)
                for i, request in enumerate(inputs):
                    if request.metadata.get("step") == "newton" and site in kept:
                        parsed = newton_from_release(request)
                        own = kept[site]
                        if altered and np.any(parsed.beta != 0):
                            own = _alter_vector(own)
                        inputs[i] = _rebuild(parsed, relayed=(*parsed.relayed, own))
                reply = handler(dataclasses.replace(task, inputs=tuple(inputs)))
                if reply is not None:
                    replies.append(reply)
                    for r in reply.releases or ():
                        if r.analysis == "cox" and not r.error:
                            kept[site] = r
                return reply
            return answer
        return wrap

    with _network(tmp_path, sites, {s: give_back(s) for s in sites[1]}) as net:
        results = net.run(study, timeout_s=60)
    got = results["analyses"]["cox"]
    if altered:  # the site's own signature no longer verifies
        assert "bad signature" in got["error"], got
    else:
        assert "error" not in got, got
        assert not _errors(replies)
