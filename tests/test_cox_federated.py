"""Federated Cox through the real study engine, rounds and node engines (in-process transport,
wired by heron.simulation).

Reference: lifelines CoxPHFitter (Efron ties, run to full convergence) on the pooled individual
data, with categorical covariates coded by pandas as indicators against the first sorted level
(R and patsy's default treatment coding), and ``strata=["site"]`` for a baseline hazard per site.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.store import Store
from heron.simulation import SimulatedNetwork, SimulatedSite, make_study
from heron.synth import synthesize
from node.governance.policy import Policy
from node.ingestion.ingest import ingest
from tests.conftest import lifelines_reference, pooled_frame
from tests.conftest import site_tables as _tables

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
    rounds = []

    def recording(handler):
        def answer(task):
            rounds.append(task.round)
            return handler(task)
        return answer

    sites = [SimulatedSite(site, store_dir, (policies or {}).get(site, DAY))
             for site, store_dir in stores.items()]
    with SimulatedNetwork(tmp_path, sites, KEY, today=lambda: TODAY,
                          node_wrappers=dict.fromkeys(stores, recording)) as net:
        results = net.run(study, timeout_s=30)
    return results, max(rounds)


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
    rows = Store(tmp_path / "aggregator" / "aggregator.db").query(
        "SELECT COUNT(DISTINCT round) FROM round_tasks WHERE study_id=?", (study.id,))
    assert rows[0][0] >= 3  # round 2 (beta = 0) and at least two Newton steps


class _Tables:
    """Hand-made site tables behind the store interface."""

    def __init__(self, frames):
        self.frames = frames

    def table(self, name):
        from node.cohorts.cohort import get_table

        return get_table(self.frames, name)


def test_separated_covariate_is_reported_plainly(tmp_path):
    rng = np.random.default_rng(3)
    sites = []
    for i in range(3):
        n = 30
        dead = rng.random(n) < 0.5
        durations = np.where(dead, rng.integers(5, 100, n), 400).tolist()
        # route 0 (hospital_exemption) exactly for the patients who die: monotone likelihood
        frames = _tables(durations, dead.tolist(), (~dead).astype(int).tolist())
        sites.append(SimulatedSite(f"site-{i}", policy=DAY, tables=lambda f=frames: _Tables(f)))
    study = make_study("cox-separated", [
        {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival"},
        {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
         "covariates": ["route"]}], cohort={})
    with SimulatedNetwork(tmp_path, sites, KEY, today=lambda: TODAY) as net:
        results = net.run(study, timeout_s=30)
    assert "separation" in results["analyses"]["cox"]["error"]
    assert "route=hospital_exemption" in results["analyses"]["cox"]["error"]
    assert "error" not in results["analyses"]["km"]
