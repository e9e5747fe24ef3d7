"""End to end: real aggregator and node daemons (subprocesses), gRPC over mutual TLS.

References: lifelines KaplanMeierFitter / NelsonAalenFitter / multivariate_logrank_test and
statsmodels survdiff (stratified) on the pooled individual-level data of the same sites.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import signal

import numpy as np
import pytest
from lifelines import KaplanMeierFitter, NelsonAalenFitter
from lifelines.statistics import multivariate_logrank_test
from statsmodels.duration.survfunc import survdiff

from protocol.keys import generate_signing_key
from protocol.signing import sign_study
from tests.network_helpers import (
    DAY_RESOLUTION,
    client,
    make_study,
    pooled_individual_data,
    run_study,
    signed,
    start_network,
    wait_until,
)

ANALYSES = [
    {"name": "os", "kind": "kaplan_meier", "endpoint": "overall_survival", "group_by": "route",
     "timepoints": [180, 365, 730]},
    {"name": "pfs", "kind": "kaplan_meier", "endpoint": "progression_free_survival"},
    {"name": "na", "kind": "nelson_aalen", "endpoint": "overall_survival"},
    {"name": "lr", "kind": "logrank", "endpoint": "overall_survival", "group_by": "route"},
    {"name": "lr_site", "kind": "logrank", "endpoint": "overall_survival", "group_by": "route",
     "stratify_by_site": True},
]


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    net, stores = start_network(tmp_path_factory.mktemp("e2e"), site_sizes=120, n_sites=4,
                                policy=DAY_RESOLUTION, site_timeout_s=4.0)
    yield net, stores
    net.stop()


def test_pooled_results_equal_lifelines_on_pooled_individual_data(network):
    net, stores = network
    study = make_study("e2e-exact", ANALYSES)
    results = run_study(net, study)
    assert results["status"] == "completed"
    assert sorted(results["sites"]["participated"]) == sorted(stores)
    assert results["privacy"]["time_resolution_days"] == 1

    os_data = pooled_individual_data(stores, study, "overall_survival", "route")
    for group, rows in os_data.groupby("group"):
        kmf = KaplanMeierFitter().fit(rows.duration, rows.event)
        got = results["analyses"]["os"]["groups"][group]
        table = got["table"]
        np.testing.assert_allclose(table["time"], kmf.survival_function_.index, atol=0)
        np.testing.assert_allclose(table["survival"], kmf.survival_function_.iloc[:, 0],
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(table["ci_lower"], kmf.confidence_interval_.iloc[:, 0],
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(table["at_risk"], kmf.event_table["at_risk"], atol=0)
        assert got["n"] == len(rows)

    pfs = pooled_individual_data(stores, study, "progression_free_survival", None)
    kmf = KaplanMeierFitter().fit(pfs.duration, pfs.event)
    got = results["analyses"]["pfs"]["groups"]["all"]
    np.testing.assert_allclose(got["table"]["survival"], kmf.survival_function_.iloc[:, 0],
                               rtol=1e-9)
    assert got["median"] == pytest.approx(kmf.median_survival_time_, abs=0)

    naf = NelsonAalenFitter().fit(os_data.duration, os_data.event)
    got = results["analyses"]["na"]["groups"]["all"]["table"]
    np.testing.assert_allclose(got["cumulative_hazard"], naf.cumulative_hazard_.iloc[:, 0],
                               rtol=1e-9)

    ref = multivariate_logrank_test(os_data.duration, os_data.group, os_data.event)
    assert results["analyses"]["lr"]["statistic"] == pytest.approx(ref.test_statistic, rel=1e-9)
    assert results["analyses"]["lr"]["p_value"] == pytest.approx(ref.p_value, rel=1e-9)

    codes = {g: i for i, g in enumerate(sorted(os_data.group.unique()))}
    chi2, p = survdiff(os_data.duration.to_numpy(float), os_data.event.to_numpy(int),
                       os_data.group.map(codes).to_numpy(),
                       strata=os_data.site.astype("category").cat.codes.to_numpy())
    assert results["analyses"]["lr_site"]["statistic"] == pytest.approx(chi2, rel=1e-9)
    assert results["analyses"]["lr_site"]["p_value"] == pytest.approx(p, rel=1e-9)


def test_cox_and_incidence_kinds_over_the_network_equal_the_references(network):
    from tests.conftest import lifelines_reference, pooled_frame

    net, stores = network
    covariates = ["age_at_infusion", "sex", "ecog", "lab:LDH"]
    study = make_study("e2e-cox", [
        {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
         "covariates": covariates},
        {"name": "relapse", "kind": "cumulative_incidence", "endpoint": "relapse",
         "timepoints": [365]},
        {"name": "tox", "kind": "adverse_events", "terms": ["CRS"], "window_days": 28}])
    results = run_study(net, study)
    got = results["analyses"]["cox"]
    assert "error" not in got, got
    ref = lifelines_reference(pooled_frame(stores, study, covariates), ["sex"])
    for name, row in ref.summary.iterrows():
        assert got["coefficients"][name]["coef"] == pytest.approx(row["coef"], abs=1e-6)
        assert got["coefficients"][name]["se"] == pytest.approx(row["se(coef)"], abs=1e-6)
    assert got["log_likelihood"] == pytest.approx(ref.log_likelihood_, abs=1e-6)
    assert "error" not in results["analyses"]["relapse"]
    assert results["analyses"]["tox"]["terms"]["CRS"]["at_risk"] == \
        results["analyses"]["relapse"]["groups"]["all"]["n"]


def test_secure_aggregation_over_the_network_equals_the_unmasked_study(network):
    import dataclasses as dc

    net, stores = network
    plain = make_study("e2e-plain-all", ANALYSES)
    masked = dc.replace(plain, id="e2e-masked-all",
                        privacy=dc.replace(plain.privacy, secure_aggregation=True))
    expected, got = run_study(net, plain), run_study(net, masked)
    assert got["privacy"]["secure_aggregation"] is True
    assert sorted(got["sites"]["participated"]) == sorted(stores)
    for name in ("os", "pfs", "na"):
        for group, ref in expected["analyses"][name]["groups"].items():
            table = got["analyses"][name]["groups"][group]["table"]
            for key, values in ref["table"].items():
                np.testing.assert_allclose(table[key], values, rtol=1e-9, atol=1e-12)
    for name in ("lr", "lr_site"):
        assert got["analyses"][name]["statistic"] == pytest.approx(
            expected["analyses"][name]["statistic"], rel=1e-9)
    db = net.workspace / "aggregator" / "aggregator.db"
    import sqlite3

    with sqlite3.connect(db) as conn:
        blobs = [r[0] for r in conn.execute(
            "SELECT result FROM round_tasks WHERE study_id=? AND result IS NOT NULL",
            (masked.id,))]
    from aggregator.store import decode_task_result

    keys = {k for b in blobs for r in decode_task_result(b) for k in r.vectors}
    assert keys and all(k[:2] in ("i:", "r:") for k in keys)  # masked vectors only


def _refusals(results):
    refused = results["sites"]["refused"]
    assert results["sites"]["participated"] == []
    assert len(refused) == 3  # every node refused on its own
    return set(refused.values())


def test_unsigned_study_is_refused_by_every_node(network):
    net, _ = network
    good = signed(net, make_study("e2e-unsigned", ANALYSES[:1]))
    unsigned = dataclasses.replace(good, signature=b"")
    reasons = _refusals(run_study(net, unsigned))
    assert reasons == {"study is not signed"}


def test_tampered_study_is_refused_by_every_node(network):
    net, _ = network
    good = signed(net, make_study("e2e-tampered", ANALYSES[:1]))
    tampered = dataclasses.replace(
        good,
        canonical_study=good.canonical_study.replace(b'"title":"test', b'"title":"TEST'),
    )
    reasons = _refusals(run_study(net, tampered))
    assert len(reasons) == 1 and "does not verify" in reasons.pop()


def test_expired_study_is_refused_by_every_node(network):
    net, _ = network
    study = make_study("e2e-expired", ANALYSES[:1], expires=dt.date(2020, 1, 1))
    reasons = _refusals(run_study(net, study))
    assert reasons == {"study expired on 2020-01-01"}


def test_study_signed_by_untrusted_key_is_refused(network, tmp_path):
    net, _ = network
    rogue = generate_signing_key(tmp_path / "rogue.key")
    study = make_study("e2e-untrusted", ANALYSES[:1])
    reasons = _refusals(run_study(net, sign_study(study, rogue)))
    assert len(reasons) == 1 and "untrusted key" in reasons.pop()


def test_killed_node_is_unreachable_and_study_completes_with_the_others(network):
    net, stores = network
    victim = sorted(stores)[-1]
    net.nodes[victim].send_signal(signal.SIGKILL)
    net.nodes[victim].wait()
    with client(net) as c:
        wait_until(lambda: not {s["site_id"]: s["connected"] for s in c.list_sites()}[victim])
    results = run_study(net, make_study("e2e-killed", ANALYSES[:1]))
    assert results["status"] == "completed"
    assert results["sites"]["unreachable"] == [victim]
    assert sorted(results["sites"]["participated"]) == sorted(set(stores) - {victim})
    assert "error" not in results["analyses"]["os"]


def test_aggregator_restarted_mid_study_finishes_it(network):
    net, stores = network
    # the node killed above is still down, so this study cannot complete yet
    victim = sorted(stores)[-1]
    study = make_study("e2e-restart", ANALYSES[1:2], min_sites=3)
    net.site_timeout_s = 60.0
    net.aggregator.send_signal(signal.SIGKILL)
    net.aggregator.wait()
    net.start_aggregator()
    with client(net) as c:
        c.wait_for_sites(set(stores) - {victim}, timeout_s=60)
        c.submit(signed(net, study))
        wait_until(lambda: c.status(study.id)["sites"][victim]["state"] in ("pending", "sent"))
        assert c.status(study.id)["status"] == "running"
    net.aggregator.send_signal(signal.SIGKILL)  # crash mid-study
    net.aggregator.wait()
    net.start_aggregator()
    from node.runtime.config import resolve_config

    net.start_node(resolve_config(stores[victim].parent))
    with client(net) as c:
        c.wait_for_completion(study.id, 60)
        results = c.results(study.id)
    assert sorted(results["sites"]["participated"]) == sorted(stores)
    assert results["sites"]["unreachable"] == []
    assert results["analyses"]["pfs"]["groups"]["all"]["n"] > 0


def test_daemons_shut_down_gracefully_on_sigterm(network):
    net, _ = network
    procs = [p for p in net.nodes.values() if p.poll() is None] + [net.aggregator]
    assert len(procs) >= 4
    net.stop(timeout_s=20)
    assert [p.returncode for p in procs] == [0] * len(procs)
    log = (net.workspace / "aggregator" / "aggregator.log").read_text()
    assert "shutting down" in log
