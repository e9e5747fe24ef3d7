"""Federated Cox through the real study engine, rounds and node engines (in-process transport).

Reference: lifelines CoxPHFitter (Efron ties, run to full convergence) on the pooled individual
data, with categorical covariates coded by pandas as indicators against the first sorted level
(R and patsy's default treatment coding), and ``strata=["site"]`` for a baseline hazard per site.
"""

from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from lifelines import CoxPHFitter

from aggregator.cox_driver import CoxDriver
from aggregator.engine import StudyEngine
from aggregator.pooling import pool_study
from aggregator.store import Store
from aggregator.transport import HelloInfo, LocalTransport, TaskReply
from heron.synth import synthesize
from node.audit import AuditTrail
from node.cohort import select_cohort
from node.covariates import build_design
from node.endpoints import survival_endpoint
from node.engine import NodeEngine
from node.ingest import ingest
from node.policy import Policy
from node.store import open_store
from protocol.signing import sign_study
from tests.network_helpers import make_study

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date(2026, 11, 1)
DAY = Policy(min_cohort=1, min_cell=1, min_bin_events=1)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cox")
    out = {}
    for f in synthesize(tmp / "sites", sites=4, patients=150, seed=5):
        ingest(f.path, tmp / f.site_id, b"c" * 32)
        out[f.site_id] = tmp / f.site_id
    return out


def run_federated(tmp_path, stores, study, policies=None):
    transport = LocalTransport()
    engine = StudyEngine(Store(tmp_path / "agg.db"), transport, pool_study, [KEY.public_key()],
                         driver=CoxDriver())
    rounds = []
    for site, store_dir in stores.items():
        node = NodeEngine(site, (policies or {}).get(site, DAY), [KEY.public_key()],
                          lambda d=store_dir: open_store(d), AuditTrail(tmp_path / f"{site}.a"),
                          today=lambda: TODAY)

        def handler(task, node=node):
            rounds.append(task.round)
            out = node.answer(task.study_id, task.signed, task.round, task.inputs)
            return TaskReply(task.task_id, task.study_id, out.releases, out.refusal)

        transport.connect(site, handler, HelloInfo(site))
    done = threading.Event()
    engine.submit(sign_study(study, KEY))
    for _ in range(600):
        if engine.results(study.id) is not None:
            done.set()
            break
        done.wait(0.05)
    transport.close()
    assert done.is_set(), engine.status(study.id)
    return engine.results(study.id), max(rounds)


def pooled_frame(stores, study, covariates):
    frames = []
    for site, store_dir in stores.items():
        store = open_store(store_dir)
        cohort = select_cohort(store, study.cohort, today=TODAY)
        design = build_design(store, cohort, covariates)
        out = survival_endpoint(store, cohort, "overall_survival", study.horizon_days)
        frame = cohort.loc[design.mask, [c for c in covariates if not c.startswith("lab:")]]
        for lab in (c for c in covariates if c.startswith("lab:")):
            frame[lab] = design.matrix([lab])[:, 0]
        frame = frame.assign(duration=out["duration"].to_numpy()[design.mask],
                             event=out["event"].to_numpy()[design.mask].astype(int), site=site)
        frames.append(frame.reset_index(drop=True))
    return pd.concat(frames, ignore_index=True)


def lifelines_reference(data, categorical, strata=None):
    data = data.copy()
    for col in data.columns:
        if col not in categorical and col not in ("site",):
            data[col] = data[col].astype(float)
    coded = pd.get_dummies(data, columns=categorical, prefix_sep="=", drop_first=True,
                           dtype=float)
    if strata is None:
        coded = coded.drop(columns="site")
    # lifelines stops at a step norm of 1e-7 by default, which leaves a rare level (sex=U)
    # 2e-5 short of the maximum; run it to full convergence to compare at 1e-6
    return CoxPHFitter().fit(coded, "duration", "event", strata=strata,
                             fit_options={"precision": 1e-14, "max_steps": 200})


@pytest.mark.parametrize(("strata", "covariates"), [
    ("none", ["age_at_infusion", "sex", "ecog", "route", "lab:LDH"]),
    ("site", ["age_at_infusion", "sex", "ecog", "route", "lab:LDH"]),
    # large raw values (ferritin in the thousands): the fit is centred on the pooled means
    ("none", ["lab:ferritin", "lab:platelets", "prior_lines", "origin"]),
])
def test_federated_cox_equals_lifelines(tmp_path, stores, strata, covariates):
    categorical = [c for c in covariates if c in ("sex", "route", "origin")]
    study = make_study(f"cox-{strata}-{len(covariates)}", [{"name": "cox", "kind": "cox",
                                          "endpoint": "overall_survival",
                                          "covariates": covariates, "strata": strata}],
                       cohort={}, min_sites=3)
    results, last_round = run_federated(tmp_path, stores, study)
    got = results["analyses"]["cox"]
    assert "error" not in got, got
    data = pooled_frame(stores, study, covariates)
    ref = lifelines_reference(data, categorical, ["site"] if strata == "site" else None)
    assert got["n"] == len(data) and got["events"] == int(data["event"].sum())
    for name, row in ref.summary.iterrows():
        coef = got["coefficients"][name]
        assert coef["coef"] == pytest.approx(row["coef"], abs=1e-6)
        assert coef["se"] == pytest.approx(row["se(coef)"], abs=1e-6)
    assert set(got["coefficients"]) == set(ref.summary.index)
    assert got["log_likelihood"] == pytest.approx(ref.log_likelihood_, abs=1e-6)
    lr = ref.log_likelihood_ratio_test()
    assert got["lr_test"]["statistic"] == pytest.approx(lr.test_statistic, abs=1e-6)
    assert last_round == got["iterations"] + 1 or last_round == got["iterations"] + 2


def test_cox_errors_are_per_analysis_and_the_study_completes(tmp_path, stores):
    analyses = [
        {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival"},
        {"name": "forbidden", "kind": "cox", "endpoint": "overall_survival",
         "covariates": ["age_at_infusion", "product"]},
        {"name": "no_events", "kind": "cox", "endpoint": "overall_survival",
         "covariates": ["age_at_infusion"]},
    ]
    # a one-day horizon: nobody in the synthetic cohorts dies on the day of infusion
    study = make_study("cox-errors", analyses, cohort={}, min_sites=1, horizon=1)
    results, _ = run_federated(tmp_path, stores, study)
    assert results["status"] == "completed"
    assert results["analyses"]["km"]["groups"]["all"]["events"] == 0
    assert "product" in results["analyses"]["forbidden"]["error"]
    assert results["analyses"]["no_events"]["error"] == "no events in the pooled cohort"


def test_covariate_constant_in_the_pooled_cohort_is_reported(tmp_path, stores):
    study = make_study("cox-constant", [{"name": "cox", "kind": "cox",
                                         "endpoint": "overall_survival",
                                         "covariates": ["atmp_class"]}],
                       cohort={"atmp_class": ["GTMP"]}, min_sites=3)
    results, _ = run_federated(tmp_path, stores, study,
                               {s: Policy(min_cohort=1, min_cell=1, min_bin_events=1,
                                          allowed_covariates=("atmp_class",)) for s in stores})
    assert results["analyses"]["cox"]["error"] == "no covariate varies in the pooled cohort"


def test_newton_state_survives_in_the_store(tmp_path, stores):
    study = make_study("cox-store", [{"name": "cox", "kind": "cox",
                                      "endpoint": "overall_survival",
                                      "covariates": ["age_at_infusion"]}], cohort={})
    run_federated(tmp_path, stores, study)
    rows = Store(tmp_path / "agg.db").query(
        "SELECT COUNT(DISTINCT round) FROM round_tasks WHERE study_id=?", (study.id,))
    assert rows[0][0] >= 3  # round 2 (beta = 0) and at least two Newton steps


class _Tables:
    """Hand-made site tables behind the store interface."""

    def __init__(self, frames):
        self.frames = frames

    def table(self, name):
        from node.cohort import get_table

        return get_table(self.frames, name)


def test_separated_covariate_is_reported_plainly(tmp_path):
    from tests.test_node_disclosure import _tables

    rng = np.random.default_rng(3)
    transport = LocalTransport()
    engine = StudyEngine(Store(tmp_path / "agg.db"), transport, pool_study, [KEY.public_key()],
                         driver=CoxDriver())
    for i in range(3):
        n = 30
        dead = rng.random(n) < 0.5
        durations = np.where(dead, rng.integers(5, 100, n), 400).tolist()
        # route 0 (hospital_exemption) exactly for the patients who die: monotone likelihood
        frames = _tables(durations, dead.tolist(), (~dead).astype(int).tolist())
        node = NodeEngine(f"site-{i}", DAY, [KEY.public_key()], lambda f=frames: _Tables(f),
                          AuditTrail(tmp_path / f"{i}.a"), today=lambda: TODAY)
        transport.connect(f"site-{i}", lambda task, node=node: _reply(node, task),
                          HelloInfo(f"site-{i}"))
    study = make_study("cox-separated", [
        {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival"},
        {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
         "covariates": ["route"]}], cohort={})
    engine.submit(sign_study(study, KEY))
    for _ in range(600):
        if engine.results(study.id) is not None:
            break
        threading.Event().wait(0.05)
    transport.close()
    results = engine.results(study.id)
    assert "separation" in results["analyses"]["cox"]["error"]
    assert "route=hospital_exemption" in results["analyses"]["cox"]["error"]
    assert "error" not in results["analyses"]["km"]


def _reply(node, task):
    out = node.answer(task.study_id, task.signed, task.round, task.inputs)
    return TaskReply(task.task_id, task.study_id, out.releases, out.refusal)
