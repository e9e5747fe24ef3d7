"""The Cox design from the snapshot's baseline lab values (issue 9) equals the raw path's.

Ingestion derives, once per snapshot, the baseline value of every measurement for every
infusion (:func:`node.cohorts.covariates.baseline_labs`, stored next to the facts); a design
of a cohort selected from the facts reads those columns instead of baseline_measurements. On a
site with several measurements per infusion, same-day ties, missing and non-finite values,
rows after the infusion, case-differing names and infusions without any measurement, the
design must equal the raw path's (the code whose rules tests/test_covariates.py checks by
hand) exactly; also for a snapshot written before the values existed, and for a site ingested
in parts whose parts measure different labs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from node.cohorts.cohort import select_cohort
from node.cohorts.covariates import build_design
from node.cohorts.facts import LABS_FILE, fact_rows
from node.ingestion.schema import TABLE_NAMES
from node.ingestion.store import Store, open_store, write_snapshot
from protocol.study import Cohort
from tests.site_parts import split_site

TODAY = dt.date(2025, 1, 1)
LABS = ("LDH", "CRP", "ldh", "ferritin")


def _site(seed: int = 11, patients: int = 200) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    pid = [f"P{i:04d}" for i in range(patients)]
    pats = pd.DataFrame({"patient_id": pid, "sex": rng.choice(["F", "M", None], patients),
                         "birth_year": pd.array(rng.integers(1940, 2005, patients),
                                                dtype="Int64")})
    inf = []
    for p in pid:
        start = pd.Timestamp("2018-01-01") + pd.Timedelta(days=int(rng.integers(0, 1500)))
        for k in range(int(rng.choice([1, 1, 2]))):
            inf.append({"infusion_id": f"I{len(inf):05d}", "patient_id": p,
                        "infusion_date": start + pd.Timedelta(days=200 * k),
                        "product": "axi-cel", "indication_group": rng.choice(["LBCL", "MM"]),
                        "ecog": pd.NA if rng.random() < 0.1 else int(rng.integers(0, 3)),
                        "prior_lines": int(rng.integers(0, 4))})
    infusions = pd.DataFrame(inf).astype({"ecog": "Int64", "prior_lines": "Int64"})
    bm = []
    for row in inf:
        if rng.random() < 0.1:
            continue  # no measurement at all
        for _ in range(int(rng.integers(1, 8))):
            value = float(np.round(rng.normal(250, 80), 1))
            value = rng.choice([value, value, value, np.nan, np.inf])  # missing, non-finite
            bm.append({"infusion_id": row["infusion_id"], "measurement": rng.choice(LABS),
                       "value": value, "unit": "U/L",
                       "day": int(rng.choice([-30, -7, -2, -2, -1, 0, 0, 3]))})  # ties, day > 0
    followup = pd.DataFrame({"infusion_id": infusions["infusion_id"],
                             "contact_date": infusions["infusion_date"] + pd.Timedelta(days=90),
                             "vital_status": "alive"})
    return {"patients": pats, "infusions": infusions, "followup": followup,
            "baseline_measurements": pd.DataFrame(bm)}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("labs")
    write_snapshot(folder, _site(), pd.DataFrame(), {})
    return folder


COVARIATES = [["lab:LDH"], ["lab:LDH", "lab:CRP", "ecog"], ["sex", "lab:ldh", "lab:ferritin"],
              ["lab:never-measured", "prior_lines"], ["prior_lines", "lab:CRP", "lab:LDH"]]
COHORTS = [Cohort(), Cohort(first_infusion_only=False), Cohort(indication_group=("MM",))]


def _same(fast: object, raw: object, covariates: list[str]) -> None:
    from node.cohorts.covariates import Design
    assert isinstance(fast, Design) and isinstance(raw, Design)
    assert np.array_equal(fast.mask, raw.mask)
    assert fast.dropped == raw.dropped and fast.levels == raw.levels
    columns = [c for c in covariates if c != "sex"] + [f"sex={v}" for v in raw.levels.get(
        "sex", [])]
    assert np.array_equal(fast.matrix(columns), raw.matrix(columns))  # exactly, not close


@pytest.mark.parametrize("cohort", COHORTS)
@pytest.mark.parametrize("covariates", COVARIATES)
def test_the_design_from_the_snapshot_equals_the_raw_path(store_dir: Path, cohort: Cohort,
                                                          covariates: list[str]) -> None:
    store = open_store(store_dir)
    raw = {name: store.table(name) for name in TABLE_NAMES}
    fast_cohort = select_cohort(store, cohort, today=TODAY)
    assert fact_rows(store, fast_cohort) is not None
    raw_cohort = select_cohort(raw, cohort, today=TODAY)
    fast = build_design(store, fast_cohort, covariates)
    expected = build_design(raw, raw_cohort, covariates)
    _same(fast, expected, covariates)
    assert sum(expected.dropped.values()) > 0  # the data exercise both
    assert fast.n > 0 or "lab:never-measured" in covariates


def test_the_facts_path_reads_no_baseline_measurements(store_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(store_dir)
    cohort = select_cohort(store, Cohort(), today=TODAY)
    read: list[str] = []
    original = Store.table

    def table(self: Store, name: str, columns: object = None) -> pd.DataFrame:
        read.append(name)
        return original(self, name, columns)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "table", table)
    design = build_design(store, cohort, ["lab:LDH", "lab:CRP"])
    assert read == [] and design.n > 0
    values = pq.read_table(store.path / LABS_FILE)
    assert set(values.column_names) == set(LABS)  # every measurement name, exact spelling


def test_a_snapshot_without_lab_values_derives_them_once(tmp_path: Path) -> None:
    write_snapshot(tmp_path, _site(seed=12), pd.DataFrame(), {})
    store = open_store(tmp_path)
    (store.path / LABS_FILE).unlink()  # as written before they existed
    raw = {name: store.table(name) for name in TABLE_NAMES}
    covariates = ["lab:CRP", "lab:ferritin", "ecog"]
    fast = build_design(store, select_cohort(store, Cohort(), today=TODAY), covariates)
    assert (store.path / LABS_FILE).exists()  # kept in the snapshot
    _same(fast, build_design(raw, select_cohort(raw, Cohort(), today=TODAY), covariates),
          covariates)
    again = open_store(tmp_path)
    _same(build_design(again, select_cohort(again, Cohort(), today=TODAY), covariates), fast,
          covariates)


def test_parts_that_measure_different_labs(tmp_path: Path) -> None:
    import pyarrow.compute as pc

    from heron.synth import synthesize_site
    from node.ingestion.parts import ingest_parts
    site = synthesize_site(tmp_path / "site", "s", 240, seed=4, fmt="parquet").path
    names = pq.read_table(site / "baseline_measurements.parquet")["measurement"].unique()
    names = sorted(names.to_pylist())
    assert len(names) >= 2
    parts = split_site(site, tmp_path / "parts", 2)
    for part, drop in zip(parts, (names[0], names[-1]), strict=True):  # each lacks a lab
        path = part / "baseline_measurements.parquet"
        table = pq.read_table(path)
        pq.write_table(table.filter(pc.not_equal(table["measurement"], drop)), path)
    ingest_parts(parts, tmp_path / "store", bytes(range(32)), today=TODAY)
    store = open_store(tmp_path / "store")
    raw = {name: store.table(name) for name in TABLE_NAMES}
    for covariates in ([f"lab:{names[0]}", f"lab:{names[-1]}"], [f"lab:{n}" for n in names],
                       ["ecog", f"lab:{names[-1]}"]):
        fast_cohort = select_cohort(store, Cohort(), today=TODAY)
        assert fact_rows(store, fast_cohort) is not None
        fast = build_design(store, fast_cohort, covariates)
        _same(fast, build_design(raw, select_cohort(raw, Cohort(), today=TODAY), covariates),
              covariates)
    assert 0 < fast.n < len(fast.mask)  # the last: a lab one part lacks
