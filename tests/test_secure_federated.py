"""Secure aggregation end to end in process: real node engines with real site certificates,
the real study engine, rounds, store and drivers; an in-process transport (LocalTransport)
stands in for gRPC, which tests/test_e2e_network.py covers. heron.simulation wires them.

References: the unmasked run at day resolution on the same sites (itself tested against
lifelines, scikit-survival and statsmodels elsewhere), and lifelines for Cox.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy.stats import chisquare

from aggregator.store import decode_task_result
from heron.simulation import SimulatedNetwork, SimulatedSite, make_study
from node.governance.audit import AuditTrail
from node.governance.policy import Policy
from node.ingestion.store import open_store
from node.runtime.engine import NodeEngine
from protocol.pki import load_credentials
from protocol.signing import sign_study
from tests.conftest import EVERY_KIND
from tests.cox_cohorts import assert_binned_cox_equals_lifelines
from tests.synthetic_sites import certified_sites

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date(2026, 11, 1)
DAY = Policy(min_cohort=1, min_cell=1, min_bin_events=1)
ANALYSES = EVERY_KIND


@pytest.fixture(scope="module")
def network_parts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure")
    return tmp, certified_sites(tmp)


def _silent_after_keys(handler):
    def answer(task):
        if task.round > 1:
            return None  # announced its key, then went silent
        return handler(task)
    return answer


_NETWORKS = itertools.count()


def _network(tmp: Path, sites: dict[str, Path], policy: Policy = DAY,
             silent_after_keys: set[str] = frozenset(), ledger: bool = False,
             clock=None) -> SimulatedNetwork:
    """The simulation harness on the fixture's sites, in a workspace of its own."""
    return SimulatedNetwork(
        tmp / f"net-{next(_NETWORKS)}",
        [SimulatedSite(site, folder / "store", policy, folder / "credentials")
         for site, folder in sites.items()],
        KEY, today=lambda: TODAY, site_timeout_s=5, ca_dir=tmp / "ca", ledger=ledger,
        clock=clock or time.time,
        node_wrappers={site: _silent_after_keys for site in silent_after_keys})


def _secure(study):
    return dataclasses.replace(study, privacy=dataclasses.replace(study.privacy,
                                                                  secure_aggregation=True))


def _close(a, b, path=""):
    """Recursive comparison: integers exactly, reals to 1e-9 (Cox to 1e-6 separately)."""
    if isinstance(a, dict):
        for key in b:
            if key in ("sites", "time_resolution_days"):
                continue
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_every_kind_under_secure_aggregation_equals_the_unmasked_result(tmp_path,
                                                                        network_parts):
    tmp, sites = network_parts
    plain_study = make_study("sa-plain", ANALYSES, cohort={}, min_sites=3)
    plain = _network(tmp, sites)
    reference = plain.run(plain_study)
    plain.close()
    # the same thresholds of 1: under secure aggregation they apply to the pooled counts
    # (screening), so nothing is withheld and no bins are needed (tests/test_screening.py
    # covers the default thresholds)
    secure_net = _network(tmp, sites, policy=DAY)
    secure = secure_net.run(_secure(dataclasses.replace(plain_study, id="sa-secure")))
    secure_net.close()
    assert secure["status"] == "completed" and secure["privacy"]["secure_aggregation"]
    assert secure["sites"]["participated"] == sorted(sites)
    for name in ("km", "na", "lr", "lr_site", "cif"):
        assert "error" not in secure["analyses"][name], secure["analyses"][name]
        _close(secure["analyses"][name], reference["analyses"][name], name)
    for term, ref in reference["analyses"]["ae"]["terms"].items():
        got = secure["analyses"]["ae"]["terms"][term]
        assert got["at_risk"] == ref["at_risk"] and got["with_event"] == ref["with_event"]
        for grade, count in ref["grades"].items():  # pooled counts below 5 shown as "<5"
            expected = count if count == 0 or count >= 5 else "<5"
            # a count of 5 or more may be hidden too, so one "<5" cannot be recovered
            assert got["grades"][grade] in (expected, ">=5" if count >= 5 else expected)
    # secure Cox runs on time bins of >= 5 pooled events (results.json "bins"): lifelines on
    # the pooled data with durations rounded up to them is its reference
    stores = {site: folder / "store" for site, folder in sites.items()}
    for analysis in ANALYSES:
        if analysis["kind"] == "cox":
            assert_binned_cox_equals_lifelines(
                secure["analyses"][analysis["name"]], stores, plain_study,
                analysis["covariates"], analysis.get("strata", "none"))


def _stored_masked_vectors(store, study_id):
    blobs = [r[0] for r in store.query(
        "SELECT result FROM round_tasks WHERE study_id=? AND result IS NOT NULL", (study_id,))]
    out = {}
    for blob in blobs:
        for release in decode_task_result(blob):
            for key, vec in release.vectors.items():
                out[(release.analysis, key, len(out))] = np.asarray(vec)
    return out


def test_the_aggregator_stores_only_uniform_looking_masked_vectors(tmp_path, network_parts):
    tmp, sites = network_parts
    study = _secure(make_study("sa-leak", ANALYSES[:1], cohort={}, min_sites=3))
    runs = []
    for _ in range(2):
        net = _network(tmp, sites)
        results = net.run(study)
        runs.append(_stored_masked_vectors(net.store, study.id))
        net.close()
    first, second = runs
    assert first and len(first) == len(second)
    # what the aggregator received in round 1: signed keys only, no vectors
    round_one = net.store.query("SELECT result FROM round_tasks WHERE study_id=? AND round=1",
                                (study.id,))
    assert all(not r.vectors and r.analysis == "__keys__"
               for (blob,) in round_one for r in decode_task_result(blob))
    masked = np.concatenate([v.view(np.uint8) for v in first.values()])
    # small counts in the clear would pile up on a few byte values; masked bytes are uniform
    counts = np.bincount(masked, minlength=256)
    assert chisquare(counts).pvalue > 1e-6
    assert all(not np.array_equal(a, b) for a, b in zip(first.values(), second.values(),
                                                         strict=True))
    # no plaintext count vector is among the stored vectors
    stored_text = {v.tobytes() for v in first.values()}
    km = results["analyses"]["km"]["groups"]
    assert all(np.asarray(g["table"]["events"]).tobytes() not in stored_text
               for g in km.values())
    assert results["analyses"]["km"]["groups"]["hospital_exemption"]["n"] > 0


def _ticker(net, clock, silent):
    """Let the timeout pass only once every other site has answered (no race with load).

    The silent sites answer the key exchange (round 1) and nothing after it, so only their
    tasks of later rounds may time out."""
    def tick():
        waiting = net.store.query(
            "SELECT site_id FROM round_tasks WHERE state IN ('pending', 'sent') AND round > 1")
        if waiting and all(site in silent for (site,) in waiting):
            clock.now += 10.0
            net.engine.check_timeouts()
    return tick


class _Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def test_a_site_silent_after_the_key_exchange_makes_the_round_restart_without_it(
        tmp_path, network_parts):
    tmp, sites = network_parts
    silent = sorted(sites)[0]
    clock = _Clock()
    net = _network(tmp, sites, silent_after_keys={silent}, clock=clock)
    tick = _ticker(net, clock, {silent})

    study = _secure(make_study("sa-dropout", ANALYSES[:1], cohort={}, min_sites=2))
    results = net.run(study, tick=tick)
    net.close()
    assert results["status"] == "completed"
    assert silent in results["sites"]["unreachable"]
    assert silent in results["sites"]["dropped_during_study"]
    assert sorted(results["sites"]["participated"]) == sorted(set(sites) - {silent})
    assert "error" not in results["analyses"]["km"]
    attempts = net.store.query("SELECT COUNT(DISTINCT round) FROM round_tasks WHERE "
                               "study_id=?", (study.id,))[0][0]
    assert attempts >= 3  # data round, key exchange again, data round


def test_fewer_than_min_sites_means_no_release(tmp_path, network_parts):
    tmp, sites = network_parts
    silent = set(sorted(sites)[:2])
    clock = _Clock()
    net = _network(tmp, sites, silent_after_keys=silent, clock=clock)
    tick = _ticker(net, clock, silent)

    study = _secure(make_study("sa-too-few", ANALYSES[:1], cohort={}, min_sites=2))
    results = net.run(study, tick=tick)
    net.close()
    assert "fewer than 2 participating sites" in results["analyses"]["km"]["error"]


def test_forged_key_is_dropped_and_replayed_key_is_rejected(tmp_path, network_parts):
    tmp, sites = network_parts
    forger = sorted(sites)[0]
    net = _network(tmp, sites)
    real = net.nodes[forger].secure.announce

    def forged(study_id, attempt):
        release = real(study_id, attempt)
        ann = dict(release.metadata["announcement"])
        ann["public_key"] = ann["public_key"][::-1]  # a key the signature does not cover
        return dataclasses.replace(release, metadata={"announcement": ann})

    net.nodes[forger].secure.announce = forged
    results = net.run(_secure(make_study("sa-forged", ANALYSES[:1], cohort={}, min_sites=2)))
    assert forger in results["sites"]["unreachable"]
    assert "rejected key announcement" in results["sites"]["dropped_during_study"][forger]
    assert "error" not in results["analyses"]["km"]

    replayed = real("sa-other-study", 1)  # a valid announcement of another study

    def replay(study_id, attempt):
        return replayed

    net.nodes[forger].secure.announce = replay
    results = net.run(_secure(make_study("sa-replay", ANALYSES[:1], cohort={}, min_sites=2)))
    net.close()
    assert "replayed" in results["sites"]["dropped_during_study"][forger]


def test_a_differencing_pair_of_studies_is_refused(tmp_path, network_parts):
    tmp, sites = network_parts
    net = _network(tmp, sites, ledger=True)
    first = _secure(make_study("sa-ledger-a", ANALYSES[:1], cohort={}, min_sites=2))
    assert net.run(first)["status"] == "completed"
    # the same cohort without patients aged exactly the oldest: a few patients fewer
    ages = Counter()
    for folder in sites.values():
        store = open_store(folder / "store")
        births = store.table("patients").set_index("patient_id")["birth_year"]
        ages.update(births.to_numpy().tolist())
    youngest_year = max(ages)
    study = _secure(make_study("sa-ledger-b", ANALYSES[:1], min_sites=2,
                               cohort={"age_at_infusion": {"min": 2026 - youngest_year + 1}}))
    results = net.run(study)
    net.close()
    refused = results["sites"]["refused"]
    assert refused, results["sites"]
    assert all("differencing risk" in reason for reason in refused.values())


def test_a_node_refuses_a_fourth_key_exchange(network_parts):
    from protocol.rounds import announce_request

    tmp, sites = network_parts
    site = sorted(sites)[0]
    node = NodeEngine(site, Policy(), [KEY.public_key()],
                      lambda: open_store(sites[site] / "store"),
                      AuditTrail(tmp / "rekey-audit.jsonl"), today=lambda: TODAY,
                      credentials=load_credentials(sites[site] / "credentials"))
    study = _secure(make_study("sa-rekeys", ANALYSES[:1], cohort={}))
    signed = sign_study(study, KEY)

    def rekey(attempt):
        return node.answer(study.id, signed, attempt + 1,
                           (announce_request(attempt),))

    assert rekey(3).releases[0].analysis == "__keys__"
    assert rekey(4).refusal == "more than 3 key exchanges for one study"
