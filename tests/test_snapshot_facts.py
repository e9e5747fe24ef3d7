"""The snapshot's derived facts (issue 9): cohorts and endpoints from them equal the raw path.

A synthetic site with several infusions per patient (same-day ties), several follow-up rows per
infusion (death on the latest contact, or on an earlier one), infusions without follow-up,
relapses, subsequent therapies (censoring) and adverse events is written as a real snapshot.
Every cohort and endpoint computed from the snapshot's facts must equal the one computed from
the raw tables (the code of :mod:`node.cohorts`, whose own tests are hand-computed), frame
for frame.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from node.cohorts.cohort import select_cohort
from node.cohorts.endpoints import competing_endpoint, group_labels, survival_endpoint
from node.cohorts.facts import FACTS_FILE, fact_rows
from node.ingestion.schema import TABLE_NAMES
from node.ingestion.store import open_store, write_snapshot
from protocol.study import Cohort

TODAY = dt.date(2025, 1, 1)
HORIZON = 1500


def _site(seed: int = 5, patients: int = 240) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    pid = [f"P{i:04d}" for i in range(patients)]
    patients_df = pd.DataFrame({
        "patient_id": pid,
        "sex": rng.choice(["F", "M", "U", None], patients),
        "birth_year": pd.array(np.where(rng.random(patients) < 0.05, None,
                                        rng.integers(1940, 2005, patients)), dtype="Int64")})
    inf_rows = []
    for p in pid:
        start = pd.Timestamp("2016-01-01") + pd.Timedelta(days=int(rng.integers(0, 2500)))
        for k in range(int(rng.choice([1, 1, 2, 3]))):
            day = start + pd.Timedelta(days=int(rng.choice([0, 0, 40, 300])) * k)  # ties
            inf_rows.append({
                "infusion_id": f"I{len(inf_rows):05d}{rng.choice(['a', 'b'])}",
                "patient_id": p, "infusion_date": day,
                "product": rng.choice(["axi-cel", "ARI-0001", "tisa-cel"]),
                "atmp_class": rng.choice(["GTMP", "sCTMP"]),
                "route": rng.choice(["hospital_exemption", "centrally_authorised"]),
                "origin": rng.choice(["autologous", "allogeneic"]),
                "indication_group": rng.choice(["LBCL", "B-ALL", "MM"]),
                "indication_icd10": "C83.3",
                "disease_status": rng.choice(["CR", "PR", None]),
                "prior_lines": rng.choice([0, 1, 2, None]),
                "ecog": rng.choice([0, 1, 4, None])})
    infusions = pd.DataFrame(inf_rows)
    infusions["prior_lines"] = pd.array(infusions["prior_lines"], dtype="Int64")
    infusions["ecog"] = pd.array(infusions["ecog"], dtype="Int64")
    fu, ce, ae = [], [], []
    for row in inf_rows:
        t0 = row["infusion_date"]
        if rng.random() < 0.05:
            continue  # no follow-up at all: censored at day 0
        days = np.sort(rng.integers(0, 2200, int(rng.integers(1, 4))))
        dies = rng.random() < 0.45
        for j, d in enumerate(days):
            last = j == len(days) - 1
            dead = dies and (last or rng.random() < 0.1)  # sometimes dead on an earlier row
            fu.append({"infusion_id": row["infusion_id"],
                       "contact_date": t0 + pd.Timedelta(days=int(d)),
                       "vital_status": "dead" if dead else rng.choice(["alive", "unknown"]),
                       "death_date": t0 + pd.Timedelta(days=int(d)) if dead else pd.NaT})
        for event in ("relapse_progression", "subsequent_hct", "subsequent_cell_therapy",
                      "new_malignancy"):
            for _ in range(int(rng.random() < 0.3) + int(rng.random() < 0.1)):
                ce.append({"infusion_id": row["infusion_id"], "event": event,
                           "event_date": t0 + pd.Timedelta(days=int(rng.integers(0, 2000)))})
        for _ in range(int(rng.integers(0, 3))):
            ae.append({"infusion_id": row["infusion_id"], "term": rng.choice(["CRS", "ICANS"]),
                       "grading": "ASTCT2019", "max_grade": int(rng.integers(1, 5)),
                       "onset_date": t0 + pd.Timedelta(days=int(rng.integers(0, 60))),
                       "serious": bool(rng.random() < 0.5)})
    return {"patients": patients_df, "infusions": infusions, "followup": pd.DataFrame(fu),
            "clinical_events": pd.DataFrame(ce), "adverse_events": pd.DataFrame(ae)}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, dict[str, pd.DataFrame]]:
    """(the store, the same snapshot's raw tables as a mapping: the raw path)."""
    folder = tmp_path_factory.mktemp("store")
    write_snapshot(folder, _site(), pd.DataFrame(), {})
    store = open_store(folder)
    return store, {name: store.table(name) for name in TABLE_NAMES}


COHORTS = [
    Cohort(),
    Cohort(first_infusion_only=False),
    Cohort(indication_group=("LBCL",)),
    Cohort(indication_group=("B-ALL", "MM"), sex=("F",), first_infusion_only=False),
    Cohort(product=("axi-cel",), disease_status=("CR",), route=("hospital_exemption",)),
    Cohort(atmp_class=("GTMP",), origin=("autologous",), age_min=30, age_max=60),
    Cohort(infusion_date_from=dt.date(2018, 1, 1), infusion_date_to=dt.date(2020, 12, 31)),
    Cohort(indication_group=("none-such",)),
]


def _as_raw(fast: pd.DataFrame, raw: pd.DataFrame) -> pd.DataFrame:
    """The facts' categorical columns as the raw path's strings (same values)."""
    cats = [c for c in fast.columns if isinstance(fast[c].dtype, pd.CategoricalDtype)]
    assert set(cats) == {"sex", "route", "atmp_class", "origin", "product",
                         "indication_group", "disease_status"}
    return fast.astype({c: raw[c].dtype for c in cats})


@pytest.mark.parametrize("cohort", COHORTS)
def test_cohorts_from_the_facts_equal_the_raw_path(stores, cohort: Cohort) -> None:
    store, raw = stores
    fast = select_cohort(store, cohort, today=TODAY)
    assert fact_rows(store, fast) is not None  # it came from the facts
    expected = select_cohort(raw, cohort, today=TODAY)
    assert fact_rows(raw, expected) is None
    pd.testing.assert_frame_equal(_as_raw(fast, expected), expected)
    for column in ("sex", "indication_group", "ecog"):  # the group labels too
        assert group_labels(fast, column, "s").tolist() == \
            group_labels(expected, column, "s").tolist()


def _equal_endpoints(fast: pd.DataFrame, raw: pd.DataFrame, outcome: str) -> None:
    assert list(fast.index) == list(raw.index)
    assert list(fast["infusion_id"]) == list(raw["infusion_id"])
    assert np.array_equal(fast["duration"].to_numpy(), raw["duration"].to_numpy())
    assert np.array_equal(fast[outcome].to_numpy(), raw[outcome].to_numpy())
    assert fast["duration"].dtype == raw["duration"].dtype
    assert fast[outcome].dtype == raw[outcome].dtype


@pytest.mark.parametrize("cohort", COHORTS[:4])
@pytest.mark.parametrize("censor_at", [(), ("subsequent_hct",),
                                       ("subsequent_cell_therapy", "subsequent_hct")])
def test_endpoints_from_the_facts_equal_the_raw_path(stores, cohort: Cohort,
                                                     censor_at: tuple[str, ...]) -> None:
    store, raw = stores
    fast_cohort = select_cohort(store, cohort, today=TODAY)
    raw_cohort = select_cohort(raw, cohort, today=TODAY)
    for endpoint in ("overall_survival", "progression_free_survival"):
        for horizon in (HORIZON, 30):
            _equal_endpoints(survival_endpoint(store, fast_cohort, endpoint, horizon, censor_at),
                             survival_endpoint(raw, raw_cohort, endpoint, horizon, censor_at),
                             "event")
    for endpoint in ("relapse", "non_relapse_mortality", "ae:CRS>=2", "ae:icans"):
        _equal_endpoints(competing_endpoint(store, fast_cohort, endpoint, HORIZON, censor_at),
                         competing_endpoint(raw, raw_cohort, endpoint, HORIZON, censor_at),
                         "cause")


def test_the_synthetic_site_has_what_the_comparison_needs(stores) -> None:
    _, raw = stores
    inf = raw["infusions"]
    assert inf["patient_id"].duplicated().sum() > 50  # several infusions per patient
    fu = raw["followup"]
    assert not inf["infusion_id"].isin(fu["infusion_id"]).all()  # some without follow-up
    cohort = select_cohort(raw, Cohort(first_infusion_only=False), today=TODAY)
    causes = competing_endpoint(raw, cohort, "relapse", HORIZON)["cause"]
    assert {0, 1, 2} <= set(causes)  # censored, relapse, death without relapse
    censored = survival_endpoint(raw, cohort, "overall_survival", HORIZON,
                                 ("subsequent_hct",))
    plain = survival_endpoint(raw, cohort, "overall_survival", HORIZON)
    assert (censored["event"] != plain["event"]).any()  # censoring changes some outcomes


def test_a_day_before_the_latest_infusion_takes_the_raw_path(stores) -> None:
    store, raw = stores
    early = dt.date(2019, 6, 1)  # some infusions are later: the first infusion may differ
    fast = select_cohort(store, Cohort(), today=early)
    assert fact_rows(store, fast) is None
    pd.testing.assert_frame_equal(fast, select_cohort(raw, Cohort(), today=early))


def test_a_cohort_not_from_the_facts_takes_the_raw_path(stores) -> None:
    store, raw = stores
    cohort = select_cohort(raw, Cohort(), today=TODAY).iloc[::2].reset_index(drop=True)
    got = survival_endpoint(store, cohort, "overall_survival", HORIZON)
    _equal_endpoints(got, survival_endpoint(raw, cohort, "overall_survival", HORIZON), "event")


def test_a_snapshot_without_facts_derives_and_keeps_them(tmp_path: Path, stores) -> None:
    _, raw = stores
    write_snapshot(tmp_path, {n: raw[n] for n in ("patients", "infusions", "followup")},
                   pd.DataFrame(), {})
    facts_file = open_store(tmp_path).path / FACTS_FILE
    facts_file.unlink()  # a snapshot written before the facts existed
    store = open_store(tmp_path)
    got = select_cohort(store, Cohort(), today=TODAY)
    assert facts_file.exists() and fact_rows(store, got) is not None
    assert not list(facts_file.parent.glob(".*.tmp"))  # written through a temporary file
    expected = select_cohort({n: raw[n] for n in ("patients", "infusions", "followup")},
                             Cohort(), today=TODAY)
    pd.testing.assert_frame_equal(_as_raw(got, expected), expected)


def test_a_cohort_over_many_row_groups_equals_the_raw_path(tmp_path: Path, stores) -> None:
    import pyarrow.parquet as pq
    _, raw = stores
    write_snapshot(tmp_path, {n: raw[n] for n in ("patients", "infusions", "followup")},
                   pd.DataFrame(), {})
    path = open_store(tmp_path).path / FACTS_FILE
    pq.write_table(pq.read_table(path), path, row_group_size=37)  # ids read group by group
    store = open_store(tmp_path)
    for cohort in (Cohort(indication_group=("LBCL",)), Cohort(first_infusion_only=False)):
        got = select_cohort(store, cohort, today=TODAY)
        expected = select_cohort(raw, cohort, today=TODAY)
        pd.testing.assert_frame_equal(_as_raw(got, expected), expected)
