"""A site ingested in parts (whole patients per part) is the site ingested at once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from heron.synth import synthesize_site
from node.cohorts.cohort import select_cohort
from node.cohorts.endpoints import competing_endpoint, survival_endpoint
from node.errors import IngestError
from node.ingestion.ingest import ingest
from node.ingestion.parts import ingest_parts
from node.ingestion.schema import TABLE_NAMES
from node.ingestion.store import open_store
from protocol.study import Cohort
from tests.site_parts import split_site

SECRET = bytes(range(32))
TODAY = dt.date(2025, 6, 1)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = synthesize_site(tmp_path_factory.mktemp("site") / "s", "s", 300, seed=3,
                             fmt="parquet")
    return folder.path


def test_parts_equal_the_whole(site: Path, tmp_path: Path) -> None:
    whole = ingest(site, tmp_path / "whole", SECRET, today=TODAY)
    parts = ingest_parts(split_site(site, tmp_path / "split", 3), tmp_path / "parts", SECRET,
                         today=TODAY, ledger_salt=bytes(32))
    for name in TABLE_NAMES:
        a, b = whole.tables[name], parts.tables[name]
        assert (a.input, a.stored, a.quarantined) == (b.input, b.stored, b.quarantined)
        assert b.input == b.stored + b.quarantined
    one, many = open_store(tmp_path / "whole"), open_store(tmp_path / "parts")
    assert many.manifest["parts"] == 3
    for name in TABLE_NAMES:
        x, y = one.table(name), many.table(name)
        keys = [c for c in ("infusion_id", "patient_id") if c in x][:1] or list(x.columns)[:1]
        order = [*keys, *[c for c in x.columns if c not in keys]]
        x = x.sort_values(order, kind="stable").reset_index(drop=True)
        y = y.sort_values(order, kind="stable").reset_index(drop=True)
        pd.testing.assert_frame_equal(x, y)
    assert one.facts().frame(np.ones(len(one.facts()), bool)).equals(
        many.facts().frame(np.ones(len(many.facts()), bool)))
    for cohort in (Cohort(), Cohort(indication_group=("LBCL",), first_infusion_only=False)):
        a = select_cohort(one, cohort, today=TODAY)
        b = select_cohort(many, cohort, today=TODAY)
        pd.testing.assert_frame_equal(a, b)
        for got, exp in ((survival_endpoint(many, b, "progression_free_survival", 1000),
                          survival_endpoint(one, a, "progression_free_survival", 1000)),
                         (competing_endpoint(many, b, "relapse", 1000),
                          competing_endpoint(one, a, "relapse", 1000))):
            pd.testing.assert_frame_equal(got, exp)


def test_a_patient_in_two_parts_is_refused(site: Path, tmp_path: Path) -> None:
    folders = split_site(site, tmp_path / "split", 2)
    dup = tmp_path / "dup"
    dup.mkdir()
    for p in folders[0].iterdir():  # the first part twice: every patient in two parts
        (dup / p.name).write_bytes(p.read_bytes())
    ingest(site, tmp_path / "store", SECRET, today=TODAY)
    before = open_store(tmp_path / "store").snapshot_id
    with pytest.raises(IngestError, match="two parts"):
        ingest_parts([folders[0], dup], tmp_path / "store", SECRET, today=TODAY)
    assert open_store(tmp_path / "store").snapshot_id == before
