"""Second review: leaks found by combining several analyses or studies (default site policies),
each now stopped.

Each test plays the attack through the real runtime (:class:`heron.simulation.SimulatedNetwork`,
nodes with their disclosure ledgers) and checks what the aggregator can compute (``heron
aggregator inspect``, results.json); the attack's data are counted with pandas from the sites'
stores. The attacks (they succeeded before their fixes):

1. Unmasked adverse events: two analyses of the same term with windows W and W+1 give a single
   site's count of patients with first onset on day W+1 (here 1), which the unmasked rules
   withhold (no count below ``min_cell``, no onset days at day resolution).
2. Secure adverse events: a term withheld in one analysis (1 to ``min_cell - 1`` patients in
   its window) is recovered exactly from the pooled onset histogram of a second analysis of the
   same term with a longer window.
3. Secure grouped analyses: a group withheld by the screening (``sex = U``, one patient) is
   recovered as cohort - shown groups - a second study whose cohort filter selects the
   complementary withheld group (``sex = F``); the ledger compares cohorts only, never the
   shown or withheld groups.
"""

from __future__ import annotations

import datetime as dt
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
    pooled_survival_data,
)
from node.cohorts.cohort import select_cohort
from node.ingestion.store import open_store
from tests.synthetic_sites import site_stores, synthetic_network

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date(2026, 11, 1)


@pytest.fixture
def three(tmp_path: Path) -> list[SimulatedSite]:
    return synthetic_network(tmp_path / "three")  # 99, 73 and 8 patients


@pytest.fixture
def four(tmp_path: Path) -> list[SimulatedSite]:
    return synthetic_network(tmp_path / "four", sites=4)


def _network(tmp: Path, sites: list[SimulatedSite]) -> SimulatedNetwork:
    # every node keeps its disclosure ledger, as a deployed node does (node/runtime/service.py)
    return SimulatedNetwork(tmp / "net", sites, KEY, today=lambda: TODAY, site_timeout_s=10,
                            ledger=True)


def _first_onsets(site: SimulatedSite, cohort: dict[str, Any], term: str) -> pd.Series:
    """Per cohort infusion with an event of ``term``: the first onset day (pandas only)."""
    store = open_store(site.store_dir)
    study = make_study("ref-study", [{"name": "km", "kind": "kaplan_meier",
                                      "endpoint": "overall_survival"}], cohort=cohort)
    coh = select_cohort(store, study.cohort, today=TODAY)
    ae = store.table("adverse_events")
    ae = ae[ae["term"].astype(str) == term].merge(
        coh[["infusion_id", "infusion_date"]], on="infusion_id")
    day = (pd.to_datetime(ae["onset_date"]) - pd.to_datetime(ae["infusion_date"])).dt.days
    return day[day >= 0].groupby(ae.loc[day >= 0, "infusion_id"]).min()


def _pooled(net: SimulatedNetwork, study_id: str, name: str) -> dict[str, np.ndarray]:
    found = [a for _, n, a in inspect_study(net.store, study_id).pooled_sums() if n == name]
    assert found, f"no pooled sum of {name}"
    assert found[-1].pooled is not None
    return found[-1].pooled


def test_unmasked_ae_windows_one_day_apart_are_refused_by_the_site(
        tmp_path: Path, three: list[SimulatedSite]) -> None:
    analyses = [{"name": f"ae{w}", "kind": "adverse_events", "terms": ["CRS"],
                 "window_days": w} for w in (7, 8)]
    study = make_study("ae-windows", analyses, cohort={}, min_sites=2)
    site = next(s for s in three if s.site_id == "se-uppsala")
    onsets = _first_onsets(site, {}, "CRS")
    truth = int((onsets == 8).sum())
    assert 1 <= truth < 5 and int((onsets <= 7).sum()) >= 5  # the attack's data
    with _network(tmp_path, three) as net:
        results = net.run(study, timeout_s=120)
        ins = inspect_study(net.store, study.id)
    # the site refuses: its counts of the two windows would differ by its day-8 onsets
    assert results["sites"]["refused"]["se-uppsala"] == (
        "two onset windows of CRS differ by fewer than 5 patients (differencing risk)")
    assert not [a for _, _, a in ins.pooled_sums() if "se-uppsala" in a.releases]


def test_a_withheld_term_is_not_recovered_from_a_longer_window(
        tmp_path: Path, three: list[SimulatedSite]) -> None:
    term = "infection_fungal"
    analyses = [{"name": f"ae{w}", "kind": "adverse_events", "terms": [term],
                 "window_days": w} for w in (14, 30)]
    study = make_study("ae-withheld", analyses, cohort={}, min_sites=3,
                       secure_aggregation=True)
    onsets = pd.concat([_first_onsets(s, {}, term) for s in three])
    truth = int((onsets <= 14).sum())
    assert 1 <= truth < 5 <= int((onsets <= 30).sum())  # withheld at 14, shown at 30
    with _network(tmp_path, three) as net:
        results = net.run(study, timeout_s=120)
        assert results["analyses"]["ae14"]["terms"][term]["with_event"] == "<5"
        onset30 = _pooled(net, study.id, "ae30")[f"{term}.onset"]
        shown = results["analyses"]["ae30"]["terms"][term]
    # no onset day leaves a site (their running total at day 14 would be the withheld count);
    # the median onset day is computed by the sites from the sealed screening counts
    assert not np.asarray(onset30).any()
    assert shown["with_event"] == int((onsets <= 30).sum())
    assert shown["median_onset_day"] == float(np.median(onsets[onsets <= 30]))


def test_a_withheld_group_is_not_recovered_with_a_filtered_second_study(
        tmp_path: Path, four: list[SimulatedSite]) -> None:
    km = {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival"}
    by_sex = {**km, "name": "km_sex", "group_by": "sex"}
    # mt-valletta (8 patients: 5 F, 3 M) would refuse study B (its cohort differs from A by 3);
    # a first, ordinary study over ages 50-71 (7 of its patients) makes it refuse A and B both,
    # so that A and B are pooled over the same three sites
    primer = make_study("primer", [km], cohort={"age_at_infusion": {"min": 50, "max": 71}},
                        min_sites=3, secure_aggregation=True)
    study_a = make_study("grouped-a", [km, by_sex], cohort={}, min_sites=3,
                         secure_aggregation=True)
    study_b = make_study("filtered-b", [km], cohort={"sex": ["F"]}, min_sites=3,
                         secure_aggregation=True)
    stores = site_stores(four)
    ref = pooled_survival_data(stores, study_a, "overall_survival", "sex", today=TODAY)
    with _network(tmp_path, four) as net:
        net.run(primer, timeout_s=120)
        res_a = net.run(study_a, timeout_s=120)
        res_b = net.run(study_b, timeout_s=120)
        b_sums = [a for _, _, a in inspect_study(net.store, study_b.id).pooled_sums()]
        assert "error" not in res_a["analyses"]["km_sex"], res_a["analyses"]["km_sex"]
        assert set(res_a["analyses"]["km_sex"]["withheld_groups"]) == {"F", "U"}
        assert set(res_a["analyses"]["km_sex"]["groups"]) == {"M"}
        assert "mt-valletta" in res_a["sites"]["refused"]
        assert "mt-valletta" in res_b["sites"]["refused"]
    # the site holding the withheld patient recorded the withheld union (F and U) in its
    # ledger: study B's cohort (its F) differs from it by that one patient, so it refuses, and
    # B has no pooled sum to subtract
    truth = ref[(ref["group"] == "U")]
    holder = str(truth["site"].iloc[0])
    assert len(truth) == 1
    assert res_b["sites"]["refused"][holder].startswith(
        "the infusions analysed differ from those released for study grouped-a")
    assert b_sums == []
