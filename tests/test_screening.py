"""Secure studies release nothing before the sites have checked the pooled counts themselves.

The attacks of issue 8 on synthetic sites (``heron synth --sites 3 --patients 60 --seed 7``:
99, 73 and 8 patients) with the default site policy, replayed through the real runtime:

1. a cohort of one patient network-wide under secure aggregation (KM, cumulative incidence and
   adverse events released that patient's outcome days);
2. ``group_by: site`` under secure aggregation (it released each site's own curve);
6. refusal reasons carrying the suppressed counts;
7. a hidden adverse-event grade recovered as ``with_event`` minus the shown grades, and the
   person-time of a rare term giving its onset days away;

plus the empty-cohort sites that counted towards ``min_sites``, and an aggregator that forges or
swaps the sealed screening counts. Expected values are counted with pandas from the sites'
stores (:func:`heron.simulation.pooled_survival_data`), independently of the node's code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.inspect import inspect_study
from analytics import DisclosureError, coarsen_counts, survival_counts
from heron.simulation import (
    SimulatedNetwork,
    SimulatedSite,
    make_study,
    pooled_survival_data,
)
from node.cohorts.cohort import select_cohort
from node.governance.policy import Policy
from node.ingestion.schema import AE_TERM
from node.ingestion.store import open_store
from node.runtime.secure_session import SecureSessions
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
ONE_PATIENT = {"indication_group": ["MM"], "route": ["clinical_trial"],
               "infusion_date": {"from": "2021-05-01", "to": "2021-05-31"}}
KM = {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival"}
CIF = {"name": "cif", "kind": "cumulative_incidence", "endpoint": "relapse"}
AE = {"name": "ae", "kind": "adverse_events", "terms": ["CRS", "infection_viral"],
      "by_grade": True}


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[SimulatedSite]:
    return synthetic_network(tmp_path_factory.mktemp("screening"))


@pytest.fixture
def net(tmp_path: Path, sites: list[SimulatedSite]) -> Iterator[SimulatedNetwork]:
    with SimulatedNetwork(tmp_path / "net", sites, KEY, today=lambda: TODAY,
                          site_timeout_s=10) as network:
        yield network


def _study(study_id: str, analyses: list[dict[str, Any]], cohort: dict[str, Any],
           min_sites: int = 3) -> Any:
    return make_study(study_id, analyses, cohort=cohort, min_sites=min_sites,
                      secure_aggregation=True)


def _numbers(text: str) -> set[int]:
    return {int(x) for x in re.findall(r"\d+", text)}


def test_a_cohort_of_one_patient_releases_nothing(net: SimulatedNetwork,
                                                  sites: list[SimulatedSite]) -> None:
    study = _study("one-patient", [KM, CIF, AE], ONE_PATIENT)
    pooled = pooled_survival_data(site_stores(sites), study, "overall_survival", None, today=TODAY)
    assert 1 <= len(pooled) < 10  # the attack's cohort: one patient network-wide
    assert pooled["site"].nunique() < 3
    results = net.run(study, timeout_s=60)
    for name, analysis in results["analyses"].items():
        assert analysis == {"kind": analysis["kind"], "error": "fewer than min_sites=3 sites "
                            "have patients in this cohort"}, name
    # the aggregator's database holds no pooled sum of anything: the screening counts were
    # sealed for the sites, and no site released an analysis
    assert inspect_study(net.store, study.id).pooled_sums() == []


def test_a_small_cohort_at_every_site_releases_nothing(net: SimulatedNetwork,
                                                       sites: list[SimulatedSite]) -> None:
    study = _study("four-patients", [KM, CIF, AE], {"product": ["ide-cel"]})
    pooled = pooled_survival_data(site_stores(sites), study, "overall_survival", None, today=TODAY)
    assert 1 <= len(pooled) < 10 and pooled["site"].nunique() == 3
    results = net.run(study, timeout_s=60)
    for name, analysis in results["analyses"].items():
        assert analysis == {"kind": analysis["kind"], "error": "the pooled cohort is below "
                            "min_cohort=10 patients"}, name
    assert inspect_study(net.store, study.id).pooled_sums() == []


def test_sites_with_an_empty_cohort_do_not_count_towards_min_sites(
        net: SimulatedNetwork, sites: list[SimulatedSite]) -> None:
    cohort = {"product": ["liso-cel", "brexu-cel", "cilta-cel"]}
    study = _study("two-sites-have-it", [KM], cohort)
    per_site = pooled_survival_data(site_stores(sites), study, "overall_survival", None,
                                    today=TODAY).groupby("site").size()
    assert len(per_site) == 2 and per_site.min() >= 10 and per_site.sum() >= 10
    refused = net.run(study, timeout_s=60)
    assert refused["analyses"]["km"] == {
        "kind": "kaplan_meier",
        "error": "fewer than min_sites=3 sites have patients in this cohort"}
    # the same cohort with min_sites 2: released, with the two sites' patients
    allowed = net.run(_study("two-sites-suffice", [KM], cohort, min_sites=2), timeout_s=60)
    assert "error" not in allowed["analyses"]["km"], allowed["analyses"]["km"]
    assert allowed["analyses"]["km"]["groups"]["all"]["n"] == int(per_site.sum())


def test_group_by_site_needs_the_sites_consent(net: SimulatedNetwork) -> None:
    km_site = {**KM, "name": "km_site", "group_by": "site"}
    results = net.run(_study("by-site", [KM, km_site], {}), timeout_s=60)
    assert "error" not in results["analyses"]["km"]
    err = results["analyses"]["km_site"]["error"]
    assert "site's policy does not allow site-level release" in err
    assert "groups" not in results["analyses"]["km_site"]


def test_group_by_site_with_consent_is_released_under_the_unmasked_rules(
        tmp_path: Path, sites: list[SimulatedSite]) -> None:
    consenting = [dataclasses.replace(s, policy=Policy(site_level_release=True))
                  for s in sites if s.site_id != "mt-valletta"]  # two sites of 99 and 73
    km_site = {**KM, "name": "km_site", "group_by": "site"}
    with SimulatedNetwork(tmp_path / "net", consenting, KEY, today=lambda: TODAY) as net:
        results = net.run(_study("by-site-ok", [km_site], {}, min_sites=2), timeout_s=60)
    groups = results["analyses"]["km_site"]["groups"]
    data = pooled_survival_data(site_stores(consenting), _study("ref", [KM], {}),
                                "overall_survival", None, today=TODAY)
    for site, rows in data.groupby("site"):
        assert groups[site]["n"] == len(rows)
        # each site's curve is its coarsened one: deaths only at bin ends, each >= 5
        safe = coarsen_counts(survival_counts(rows["duration"].to_numpy(),
                                              rows["event"].to_numpy(), 1826), 5, 5)
        table = pd.DataFrame(groups[site]["table"])
        released = table.loc[table["events"] > 0, "events"]
        assert (released >= 5).all()
        assert released.sum() == int(safe.counts.events.sum())


def test_refusal_reasons_carry_no_counts() -> None:
    two = survival_counts(np.array([3, 9]), np.array([True, False]), 30)
    with pytest.raises(DisclosureError) as caught:
        coarsen_counts(two, 5, 5)
    assert _numbers(str(caught.value)) <= {5}, str(caught.value)
    three = survival_counts(np.array([3, 9, 12, 20, 25, 29]),
                            np.array([True, False, True, True, False, True]), 30)
    with pytest.raises(DisclosureError) as caught:
        coarsen_counts(three, 5, 5)
    assert _numbers(str(caught.value)) <= {5}, str(caught.value)


def _ae_reference(sites: list[SimulatedSite], study: Any, term: str,
                  window: int) -> tuple[int, dict[str, int]]:
    """Patients with ``term`` in days 0..window and their maximum grades, counted with pandas."""
    with_event, grades = 0, {str(g): 0 for g in range(1, 6)}
    for store_dir in site_stores(sites).values():
        store = open_store(store_dir)
        cohort = select_cohort(store, study.cohort, today=TODAY)
        ae = store.table("adverse_events")
        ae = ae[ae["term"] == term].merge(cohort[["infusion_id", "infusion_date"]],
                                          on="infusion_id")
        day = (pd.to_datetime(ae["onset_date"]) - pd.to_datetime(ae["infusion_date"])).dt.days
        ae = ae[(day >= 0) & (day <= window)]
        worst = ae.groupby("infusion_id")["max_grade"].max()
        with_event += len(worst)
        for g, n in worst.value_counts().items():
            if 1 <= int(g) <= 5:
                grades[str(int(g))] += int(n)
    return with_event, grades


@pytest.mark.parametrize("secure", [True, False])
def test_no_adverse_event_cell_below_min_cell_is_shown_or_derivable(
        tmp_path: Path, sites: list[SimulatedSite], secure: bool) -> None:
    terms = list(AE_TERM)
    analysis = {"name": "ae", "kind": "adverse_events", "terms": terms, "by_grade": True,
                "window_days": 365}
    study = make_study(f"ae-cells-{int(secure)}", [analysis], cohort={}, min_sites=2,
                       secure_aggregation=secure)
    big = [s for s in sites if s.site_id != "mt-valletta"]
    with SimulatedNetwork(tmp_path / "net", big, KEY, today=lambda: TODAY) as net:
        results = net.run(study, timeout_s=60)
    assert "terms" in results["analyses"]["ae"], results["analyses"]["ae"]
    out = results["analyses"]["ae"]["terms"]
    hidden_somewhere = False
    for term in terms:
        got = out[term]
        with_event, grades = _ae_reference(big, study, term, 365)
        if isinstance(got["with_event"], str):  # withheld: nothing about the term follows
            assert 0 < with_event < 5 or not secure
            assert got["person_years"] is None and got["rate_per_100py"] is None
            continue
        assert got["with_event"] == with_event
        shown = {g: v for g, v in got["grades"].items() if isinstance(v, int)}
        hidden = [g for g, v in got["grades"].items() if not isinstance(v, int)]
        for g, v in shown.items():
            assert v == grades[g], (term, g)
            assert v == 0 or v >= 5, (term, g, v)
        if hidden:
            hidden_somewhere = True
            assert len(hidden) >= 2, (term, got["grades"])
            rest = got["with_event"] - sum(shown.values())
            assert rest >= 5, (term, got["grades"])  # the hidden cells together
    assert hidden_somewhere  # the data does exercise the rule


def _screened_nodes(net: SimulatedNetwork, study: Any) -> tuple[Any, dict[str, Any],
                                                                 dict[str, dict[str, str]]]:
    signed = sign_study(study, KEY)
    keys = {s: n.answer(study.id, signed, 1, (announce_request(1),)).releases[0]
            .metadata["announcement"] for s, n in sorted(net.nodes.items())}
    relay = key_relay(1, [keys[s] for s in sorted(keys)])
    sealed = {s: n.answer(study.id, signed, 2, (relay, screen_request())).releases[0]
              .metadata["sealed"] for s, n in sorted(net.nodes.items())}
    return signed, keys, sealed


def test_forged_or_swapped_screening_counts_are_refused(net: SimulatedNetwork) -> None:
    study = _study("sealed-counts", [KM], {})
    signed, keys, sealed = _screened_nodes(net, study)
    a, b, c = sorted(keys)
    relay = key_relay(1, [keys[s] for s in sorted(keys)])
    ask = summary_request("km", "kaplan_meier")

    def data_round(site: str, blobs: dict[str, str], rnd: int) -> Any:
        return net.nodes[site].answer(study.id, signed, rnd, (relay, screened_relay(blobs),
                                                             ask))

    # what c sealed for b is given to a as if for a: it does not open at a
    swapped = data_round(a, {b: sealed[b][a], c: sealed[c][b]}, 3)
    assert swapped.refusal is not None and "do not open" in swapped.refusal
    forged = data_round(a, {b: sealed[b][a], c: sealed[b][a]}, 4)
    assert forged.refusal is not None and "do not open" in forged.refusal
    missing = data_round(a, {b: sealed[b][a]}, 5)
    assert missing.refusal == f"secure aggregation: the screening counts of {c} are missing"
    honest = data_round(a, {b: sealed[b][a], c: sealed[c][a]}, 6)
    assert honest.releases is not None and not honest.releases[0].error


def test_a_site_that_restarts_mid_study_rejoins_the_next_attempt(
        tmp_path: Path, sites: list[SimulatedSite]) -> None:
    restarted: set[str] = set()
    victim = "pt-lisbon"

    def restart_once(handler: Any) -> Any:
        def wrapped(task: Any) -> Any:
            if task.round == 2 and victim not in restarted:
                restarted.add(victim)
                node = net.nodes[victim]
                assert node.secure is not None
                # a restart: the session rules come back from the node's state file, the
                # ephemeral keys (only ever in memory) do not
                node.secure = SecureSessions(victim, net._credentials[victim],
                                             node.secure._state_file)
            return handler(task)
        return wrapped

    with SimulatedNetwork(tmp_path / "net", sites, KEY, today=lambda: TODAY,
                          node_wrappers={victim: restart_once}) as net:
        results = net.run(_study("rejoin", [KM], {}), timeout_s=60)
        status = {s.site_id: s.state for s in net.store.study_sites("rejoin")}
    assert restarted == {victim}
    assert results["sites"]["participated"] == sorted(s.site_id for s in sites)
    assert "error" not in results["analyses"]["km"]
    assert status[victim] == "released"


def test_an_unmasked_cox_model_over_few_complete_cases_is_withheld(
        sites: list[SimulatedSite]) -> None:
    from node.releases import first_release

    study = make_study("cox-few", [{"name": "cox", "kind": "cox",
                                    "endpoint": "overall_survival",
                                    "covariates": ["age_at_infusion"]}], cohort={},
                       secure_aggregation=False)
    store = open_store(site_stores(sites)["se-uppsala"])
    cohort = select_cohort(store, study.cohort, today=TODAY)
    analysis = study.analyses[0]
    full = first_release(analysis, study, store, cohort, "se-uppsala", Policy(), {})
    assert not full.error and full.metadata["n"] >= 10
    strict = Policy(min_cohort=full.metadata["n"] + 1)  # the same cases, one too few
    few = first_release(analysis, study, store, cohort, "se-uppsala", strict, {})
    assert few.error == (f"withheld: fewer than min_cohort={strict.min_cohort} complete cases "
                         "or min_cell=5 events")
    assert not few.vectors and "n" not in few.metadata
