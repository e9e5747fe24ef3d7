"""Attacks found by a security review of issue 8's controls, each now stopped.

Each test is an attack by a curious coordinator (study design) or a malicious aggregator
(requests sent straight to the real node engines) that succeeded before its fix:

- a Cox model over a categorical level of one patient (the Kaplan-Meier by the same variable
  withheld the group; the aggregator's beta = 0 sums gave its size, exit bin and event);
- an aggregator that made nodes forget a study (at most 32 were kept) and re-ran attempt 1
  over each subset of the sites, isolating every site;
- the exact pooled count of patients dropped for a missing covariate, shown as "<5".

Synthetic data: ``heron.synth.synthesize(sites=3, patients=60, seed=7)`` (99, 73 and 8
patients) and, for the eviction attack, four sites.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.inspect import inspect_study
from heron.simulation import (
    SimulatedNetwork,
    SimulatedSite,
    make_study,
)
from node.cohorts.cohort import select_cohort
from node.ingestion.store import open_store
from protocol.rounds import (
    announce_request,
    key_relay,
    screen_request,
    screened_relay,
    summary_request,
)
from protocol.signing import sign_study
from tests.synthetic_sites import site_stores, synthetic_network

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date(2026, 11, 1)
KM = {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival"}


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[SimulatedSite]:
    return synthetic_network(tmp_path_factory.mktemp("review3"))


@pytest.fixture
def net(tmp_path: Path, sites: list[SimulatedSite]) -> Iterator[SimulatedNetwork]:
    with SimulatedNetwork(tmp_path / "net", sites, KEY, today=lambda: TODAY,
                          site_timeout_s=10) as network:
        yield network


def _pooled_cohort(sites: list[SimulatedSite], study: Any) -> pd.DataFrame:
    frames = []
    for site, store_dir in site_stores(sites).items():
        cohort = select_cohort(open_store(store_dir), study.cohort, today=TODAY)
        frames.append(cohort.assign(site=site))
    return pd.concat(frames, ignore_index=True)


# -- 1. Cox: a categorical level of one patient, withheld by the KM next to it ----------------


def test_a_rare_cox_level_is_no_smaller_than_min_cell(net: SimulatedNetwork,
                                                      sites: list[SimulatedSite]) -> None:
    km_sex = {**KM, "name": "km_sex", "group_by": "sex"}
    cox = {"name": "cox", "kind": "cox", "endpoint": "overall_survival", "covariates": ["sex"]}
    study = make_study("review-cox-level", [km_sex, cox], cohort={}, secure_aggregation=True)
    truth = _pooled_cohort(sites, study)
    rare = int((truth["sex"] == "U").sum())
    assert 1 <= rare < 5  # the data: one patient of sex U network-wide
    results = net.run(study, timeout_s=120)
    assert "U" in results["analyses"]["km_sex"]["withheld_groups"]  # KM hides the group
    # and the model is withheld too, before any Cox sum exists at the aggregator
    assert ("withheld: a level of covariate sex has fewer than min_cell=5 patients "
            "network-wide") in results["analyses"]["cox"]["error"]
    assert not [a for _, name, a in inspect_study(net.store, study.id).pooled_sums()
                if name == "cox"]


# -- 2. SecureSessions eviction: unlimited key exchanges, any subset of sites -----------------


def _filler(n: int) -> list[tuple[str, Any]]:
    """Other secure studies the coordinator signed (any the aggregator holds will do)."""
    return [(f"filler-{i:03d}", sign_study(make_study(
        f"filler-{i:03d}", [KM], cohort={}, secure_aggregation=True,
        expires=TODAY + dt.timedelta(days=30)), KEY)) for i in range(n)]


def _subset_sum(net: SimulatedNetwork, signed: Any, study_id: str, subset: tuple[str, ...],
                fillers: list[tuple[str, Any]], rnd: int) -> Any | None:
    """Forget the study at ``subset``'s nodes (33 other secure studies touched), then run
    attempt 1 (fresh keys) over ``subset`` only: the masked KM releases of those sites, whose
    sum the unmask round would give (None when a node refuses a step)."""
    for site in subset:
        node = net.nodes[site]
        for other_id, other in fillers:  # any request for a secure study: sweep() keys it
            node.answer(other_id, other, 1, ())
    keys, sealed = {}, {}
    for s in subset:
        out = net.nodes[s].answer(study_id, signed, rnd, (announce_request(1),))
        if out.releases is None:
            return None
        keys[s] = out.releases[0].metadata["announcement"]
    relay = key_relay(1, [keys[s] for s in subset])
    for s in subset:
        out = net.nodes[s].answer(study_id, signed, rnd + 1, (relay, screen_request()))
        if out.releases is None:
            return None
        sealed[s] = out.releases[0].metadata["sealed"]
    masked = []
    for s in subset:
        blobs = {o: sealed[o][s] for o in subset if o != s}
        out = net.nodes[s].answer(study_id, signed, rnd + 2,
                                  (relay, screened_relay(blobs),
                                   summary_request("km", "kaplan_meier")))
        if out.releases is None or out.releases[0].error:
            return None
        masked.append(out.releases[0])
    return masked


def test_forgotten_sessions_cannot_isolate_one_site(tmp_path: Path) -> None:
    four = synthetic_network(tmp_path / "four", sites=4)
    with SimulatedNetwork(tmp_path / "net4", four, KEY, today=lambda: TODAY) as net4:
        study = make_study("review-evict", [KM], cohort={}, secure_aggregation=True,
                           expires=TODAY + dt.timedelta(days=30))
        signed = sign_study(study, KEY)
        fillers = _filler(33)
        ids = sorted(net4.nodes)
        subsets = [tuple(s for s in ids if s != left) for left in ids]  # each without one
        sums = {}
        for k, subset in enumerate(subsets):
            left = next(s for s in ids if s not in subset)
            sums[left] = _subset_sum(net4, signed, study.id, subset, fillers, 10 * k + 2)
    # the first subset is an honest attempt 1; every later re-run of attempt 1 is refused,
    # however many other studies the nodes were sent meanwhile, so no second sum exists
    assert sums[ids[0]] is not None
    assert all(sums[left] is None for left in ids[1:]), sorted(
        left for left in ids[1:] if sums[left] is not None)


# -- 3. Cox: patients dropped for a missing covariate, "<5" in results, exact to the aggregator


def test_dropped_counts_below_min_cell_are_not_aggregator_computable(
        net: SimulatedNetwork, sites: list[SimulatedSite]) -> None:
    from node.cohorts.covariates import build_design

    covariates = ["age_at_infusion", "lab:LDH"]
    cox = {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
           "covariates": covariates}
    study = make_study("review-cox-dropped", [cox], cohort={}, secure_aggregation=True)
    truth = 0
    for store_dir in site_stores(sites).values():  # the patients without an LDH value
        store = open_store(store_dir)
        design = build_design(store, select_cohort(store, study.cohort, today=TODAY),
                              covariates)
        truth += sum(design.dropped.values())
    assert 1 <= truth < 5
    results = net.run(study, timeout_s=120)
    assert results["analyses"]["cox"].get("dropped") == {
        "missing age_at_infusion": "suppressed", "missing lab:LDH": "suppressed"}, \
        results["analyses"]["cox"]
    described = [a for _, name, a in inspect_study(net.store, study.id).pooled_sums()
                 if name == "cox" and a.pooled is not None and "dropped" in a.pooled]
    assert described  # the description was released, with the count sent as zeros
    for a in described:
        assert not np.asarray(a.pooled["dropped"]).any()


def test_the_newton_cap_outlives_the_nodes_study_cache(
        net: SimulatedNetwork, sites: list[SimulatedSite]) -> None:
    import hashlib

    from protocol.rounds import summary_requests

    cox = {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
           "covariates": ["age_at_infusion"]}
    study = make_study("review-cox-cap", [cox], cohort={}, secure_aggregation=False)
    results = net.run(study, timeout_s=120)
    assert "error" not in results["analyses"]["cox"], results["analyses"]["cox"]
    site = "se-uppsala"
    engine = net.nodes[site]
    key = next(k for k in engine._cache if k[0] == study.id)
    answered = engine._cache[key].memo["cox"].chain.rounds
    assert answered > 0
    for i in range(4):  # four other studies push it out of the node's cache
        other = make_study(f"review-other-{i}", [KM], cohort={}, secure_aggregation=False)
        engine._prepared(other, hashlib.sha256(other.id.encode()).hexdigest())
    assert key not in engine._cache
    # described again (a new fit), the study still counts the Newton rounds it answered
    signed = sign_study(study, KEY)
    assert engine.answer(study.id, signed, 50, summary_requests(study)).releases is not None
    assert engine._cache[key].memo["cox"].chain.rounds == answered
