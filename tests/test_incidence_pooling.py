"""Cumulative incidence and adverse events from site engines to pooled results.

References: scikit-survival's cumulative_incidence_competing_risks (log-log, Aalen variance) on
the pooled individual data; for adverse events, counts taken straight from the sites' stored
tables in this test and statsmodels' Clopper-Pearson and exact Poisson intervals.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sksurv.nonparametric import cumulative_incidence_competing_risks
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.rates import confint_poisson

from aggregator.pooling import pool_study
from heron.synth import synthesize
from node.cohorts.cohort import select_cohort
from node.cohorts.endpoints import competing_endpoint
from node.governance.audit import AuditTrail
from node.governance.policy import Policy
from node.ingestion.ingest import ingest
from node.ingestion.store import open_store
from node.runtime.engine import NodeEngine
from protocol.rounds import summary_requests
from protocol.signing import sign_study
from tests.network_helpers import make_study

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date(2026, 11, 1)
ANALYSES = [
    {"name": "relapse", "kind": "cumulative_incidence", "endpoint": "relapse",
     "timepoints": [100, 365]},
    {"name": "nrm_route", "kind": "cumulative_incidence", "endpoint": "non_relapse_mortality",
     "group_by": "route"},
    {"name": "tox", "kind": "adverse_events", "terms": ["CRS", "ICANS"], "by_grade": True,
     "window_days": 28},
]


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("incidence")
    folders = synthesize(tmp / "sites", sites=3, patients=160, seed=21)
    stores = {}
    for f in folders:
        ingest(f.path, tmp / f.site_id, b"s" * 32)
        stores[f.site_id] = tmp / f.site_id
    return stores


def _run(stores, policy, study):
    signed = sign_study(study, KEY)
    releases = {}
    for site, store_dir in stores.items():
        engine = NodeEngine(site, policy, [KEY.public_key()], lambda d=store_dir: open_store(d),
                            AuditTrail(store_dir / "audit.jsonl"), today=lambda: TODAY)
        outcome = engine.answer(study.id, signed, 1, summary_requests(study))
        if outcome.refusal is None:
            releases[site] = outcome.releases
        else:  # only the tiny site, and only under the default policy
            assert outcome.refusal == "cohort below 10 patients" and policy.min_cohort == 10
    return pool_study(study, releases)["analyses"]


def test_pooled_cumulative_incidence_equals_sksurv_on_pooled_data(sites):
    study = make_study("inc-cif", ANALYSES[:2], cohort={})
    pooled = _run(sites, Policy(min_cohort=1, min_cell=1, min_bin_events=1), study)
    for name, endpoint, group_by in (("relapse", "relapse", None),
                                     ("nrm_route", "non_relapse_mortality", "route")):
        frames = []
        for store_dir in sites.values():
            store = open_store(store_dir)
            cohort = select_cohort(store, study.cohort, today=TODAY)
            out = competing_endpoint(store, cohort, endpoint, study.horizon_days)
            out["group"] = cohort["route"].to_numpy() if group_by else "all"
            frames.append(out)
        data = pd.concat(frames)
        for group, rows in data.groupby("group"):
            times, cif, ci = cumulative_incidence_competing_risks(
                rows["cause"].to_numpy(int), rows["duration"].to_numpy(float),
                conf_type="log-log", var_type="Aalen")
            got = pooled[name]["groups"][group]["table"]
            # our table adds day 0 (cif 0) in front of sksurv's observed times
            got_times = np.asarray(got["time"])
            assert np.array_equal(got_times[got_times > 0], times[times > 0])
            idx = np.searchsorted(times, got_times)
            mask = (idx < len(times)) & (times[np.minimum(idx, len(times) - 1)] == got_times)
            np.testing.assert_allclose(np.asarray(got["cif"])[mask], cif[1][idx[mask]],
                                       rtol=1e-9, atol=1e-12)
            lower = np.asarray(got["ci_lower"], dtype=float)[mask]
            np.testing.assert_allclose(lower, ci[1][0][idx[mask]], rtol=1e-9, atol=1e-12)
            upper = np.asarray(got["ci_upper"], dtype=float)[mask]
            np.testing.assert_allclose(upper, ci[1][1][idx[mask]], rtol=1e-9, atol=1e-12)
    assert "gray_test" in pooled["nrm_route"]


def _reference_ae(stores, term, window):
    with_event = at_risk = 0
    for store_dir in stores.values():
        store = open_store(store_dir)
        inf = store.table("infusions")
        first = inf.sort_values(["infusion_date", "infusion_id"]).drop_duplicates("patient_id")
        ae = store.table("adverse_events").merge(first[["infusion_id", "infusion_date"]],
                                                 on="infusion_id")
        day = (ae["onset_date"] - ae["infusion_date"]).dt.days
        hit = ae[(ae["term"] == term) & (day >= 0) & (day <= window)]
        with_event += hit["infusion_id"].nunique()
        at_risk += len(first)
    return with_event, at_risk


def test_pooled_adverse_events_equal_counts_from_the_tables(sites):
    study = make_study("inc-ae", ANALYSES[2:], cohort={})
    pooled = _run(sites, Policy(min_cohort=1, min_cell=1, min_bin_events=1), study)
    for term in ("CRS", "ICANS"):
        k, n = _reference_ae(sites, term, 28)
        got = pooled["tox"]["terms"][term]
        assert (got["with_event"], got["at_risk"]) == (k, n)
        lo, hi = proportion_confint(k, n, alpha=0.05, method="beta")
        assert got["ci"] == pytest.approx([lo, hi], rel=1e-12)
        exposure = got["person_years"] / 100
        rlo, rhi = confint_poisson(k, exposure, method="exact-c")
        assert got["rate_ci"] == pytest.approx([rlo, rhi], rel=1e-9)
        assert sum(v for v in got["grades"].values() if isinstance(v, int)) <= k
        assert got["median_onset_day"] is not None


def test_default_policy_withholds_small_adverse_event_counts(sites):
    study = make_study("inc-ae-default", ANALYSES[2:], cohort={})
    pooled = _run(sites, Policy(), study)
    for result in pooled["tox"]["terms"].values():
        assert result["median_onset_day"] is None  # onset days stay at the sites
        for value in [result["with_event"], *result["grades"].values()]:
            assert isinstance(value, str) or value == 0 or value >= 5


def test_one_hidden_grade_is_never_left_recoverable():
    from aggregator.strategies.adverse_events import complement_grades

    # with_event 40 = 20 + 12 + 5 + 3: "3" alone hidden would be 40 - 37
    grades = {"1": 20, "2": 12, "3": 5, "4": "<5"}
    complement_grades(grades, 40, 5)
    assert grades == {"1": 20, "2": 12, "3": ">=5", "4": "<5"}
    untouched = {"1": 20, "2": "<5", "3": "<5", "4": 0}
    complement_grades(untouched, 40, 5)
    assert untouched == {"1": 20, "2": "<5", "3": "<5", "4": 0}
    hidden_total = {"1": 20, "2": "<5"}
    complement_grades(hidden_total, "<5", 5)
    assert hidden_total == {"1": 20, "2": "<5"}
