"""The Parquet store: dtypes, manifest, pseudonyms, re-ingestion and crash safety."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import node.ingestion.store as store_mod
from heron import __version__
from node.errors import StoreError
from node.ingestion.ingest import ingest
from node.ingestion.pseudonym import pseudonymise
from node.ingestion.schema import TABLE_NAMES, get_table
from node.ingestion.store import open_store, write_snapshot
from tests.site_data import BASE, TODAY, write_site

SECRET = bytes(range(32))
EXPECTED_DTYPES = {"string": pd.StringDtype("pyarrow"), "Int64": pd.Int64Dtype(),
                   "float64": "float64", "datetime64[ns]": "datetime64[ns]",
                   "boolean": pd.BooleanDtype()}


def _ingest(tmp_path: Path, **site: object) -> Path:
    folder = write_site(tmp_path / "site", **site)
    ingest(folder, tmp_path / "store", SECRET, today=TODAY)
    return tmp_path / "store"


def test_tables_have_data_model_columns_and_dtypes(tmp_path: Path) -> None:
    store = open_store(_ingest(tmp_path))
    for name in TABLE_NAMES:
        frame = store.table(name)
        schema = get_table(name)
        assert list(frame.columns) == schema.column_names
        for col in schema.columns:
            assert frame[col.name].dtype == EXPECTED_DTYPES[col.dtype], (name, col.name)
        assert len(frame) == len(BASE[name]) == store.stored_rows(name)
    fu = store.table("followup")
    assert fu["death_date"].tolist()[:2] == [pd.NaT, pd.Timestamp("2021-01-15")]
    labs = store.table("baseline_measurements")
    assert labs["value"].tolist() == [250.5, 410.0, 12.0]
    assert labs["day"].tolist() == [-3, -7, 0]
    assert store.table("responses")["best"].tolist() == [True, False, True]
    assert store.table("infusions")["ecog"].tolist()[0] == 1
    assert store.table("infusions")["ecog"].isna().tolist() == [False, True, False]


def test_absent_optional_table_is_an_empty_frame(tmp_path: Path) -> None:
    store = open_store(_ingest(tmp_path, drop=("responses", "clinical_events")))
    frame = store.table("responses")
    assert frame.empty
    assert list(frame.columns) == get_table("responses").column_names
    assert frame["assessment_date"].dtype == "datetime64[ns]"
    assert frame["best"].dtype == pd.BooleanDtype()
    assert store.stored_rows("clinical_events") == 0
    assert store.manifest["tables"]["responses"]["file"] is None
    with pytest.raises(StoreError, match="unknown table"):
        store.table("labs")


def test_manifest_records_counts_time_and_version(tmp_path: Path) -> None:
    store = open_store(_ingest(tmp_path, add={"patients": [{"patient_id": "P9"}]}))
    manifest = store.manifest
    ingested = datetime.fromisoformat(store.ingested_at.replace("Z", "+00:00"))
    assert store.ingested_at.endswith("Z") and ingested.utcoffset().total_seconds() == 0
    assert manifest["software_version"] == __version__
    assert manifest["tables"]["patients"] == {"file": "patients.csv", "input": 4, "stored": 3,
                                              "quarantined": 1, "warnings": 0}
    assert manifest["quarantined"] == 1 and manifest["warnings"] == 0
    assert manifest["today"] == TODAY.isoformat()
    assert manifest["snapshot_id"] == store.path.name == store.snapshot_id


def test_raw_patient_ids_are_never_stored(tmp_path: Path) -> None:
    raw_ids = ["HOSPITAL-MRN-00012345", "HOSPITAL-MRN-00067890", "HOSPITAL-MRN-00011111"]
    patients = [{**p, "patient_id": raw} for p, raw in zip(BASE["patients"], raw_ids,
                                                          strict=True)]
    infusions = [{**i, "patient_id": raw} for i, raw in zip(BASE["infusions"], raw_ids,
                                                           strict=True)]
    bad = {"patient_id": "HOSPITAL-MRN-00099999", "sex": "?", "birth_year": "1970"}
    orphan = {**BASE["infusions"][0], "infusion_id": "I9", "patient_id": "HOSPITAL-MRN-777"}
    store_dir = _ingest(tmp_path, replace={"patients": patients, "infusions": infusions},
                        add={"patients": [bad], "infusions": [orphan]})
    everything = [raw_ids, [bad["patient_id"], orphan["patient_id"]]]
    files = [p for p in store_dir.rglob("*") if p.is_file()]
    assert len(files) >= 10
    blob = b"".join(p.read_bytes() for p in files)
    for raw in (x for group in everything for x in group):
        assert raw.encode() not in blob
        assert raw.encode("utf-16-le") not in blob
        for path in store_dir.rglob("*.parquet"):  # also after decompression
            frame = pq.read_table(path).to_pandas()
            assert not frame.astype(str).apply(lambda c, r=raw: c.str.contains(r)).any().any()
    store = open_store(store_dir)
    assert store.table("patients")["patient_id"].tolist() == [
        pseudonymise(r, SECRET) for r in raw_ids]
    assert store.table("infusions")["patient_id"].tolist() == [
        pseudonymise(r, SECRET) for r in raw_ids]
    quarantine = store.quarantine()
    assert quarantine["patient_id"].tolist() == [pseudonymise(bad["patient_id"], SECRET),
                                                 pseudonymise(orphan["patient_id"], SECRET)]


def test_quarantine_holds_rule_and_raw_fields_as_strings(tmp_path: Path) -> None:
    store = open_store(_ingest(tmp_path, add={"baseline_measurements": [
        {"infusion_id": "I3", "measurement": "LDH", "value": "abc", "unit": "ukat/L",
         "day": "2"}]}))
    [record] = store.quarantine().to_dict("records")
    assert record["table"] == "baseline_measurements" and record["row"] == 4
    assert (record["rule"], record["column"]) == ("bad_type", "value")
    assert record["rules"] == "value:bad_type;day:day_after_infusion;unit:unit_inconsistent"
    assert (record["value"], record["unit"], record["day"]) == ("abc", "ukat/L", "2")
    assert record["message"].startswith("baseline_measurements.csv row 4, column value:")
    assert pd.isna(record["sex"])


def test_reingestion_replaces_the_data(tmp_path: Path) -> None:
    store_dir = _ingest(tmp_path)
    first = open_store(store_dir)
    fewer = write_site(tmp_path / "site2", replace={"followup": BASE["followup"][:3]})
    report = ingest(fewer, store_dir, SECRET, today=TODAY)
    store = open_store(store_dir)
    assert store.snapshot_id == report.snapshot != first.snapshot_id
    assert len(store.table("followup")) == 3
    assert len(store.table("patients")) == 3
    assert [p.name for p in (store_dir / "snapshots").iterdir()] == [store.snapshot_id]
    assert os.readlink(store_dir / "current") == f"snapshots/{store.snapshot_id}"
    with pytest.raises(StoreError, match="reopen"):
        first.table("patients")  # its snapshot was removed after the switch


def test_snapshot_folder_is_private(tmp_path: Path) -> None:
    store = open_store(_ingest(tmp_path))
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o700


def _snapshot_state(store_dir: Path) -> tuple[str, dict[str, pd.DataFrame]]:
    store = open_store(store_dir)
    return store.snapshot_id, {n: store.table(n) for n in TABLE_NAMES}


def _assert_unchanged(store_dir: Path, before: tuple[str, dict[str, pd.DataFrame]]) -> None:
    sid, tables = _snapshot_state(store_dir)
    assert sid == before[0]
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(frame, before[1][name])


def test_failing_writer_midway_keeps_the_previous_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_dir = _ingest(tmp_path)
    before = _snapshot_state(store_dir)
    calls = []

    def flaky(frame: pd.DataFrame, path: Path) -> None:
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError("disk full")
        store_mod.write_parquet(frame, path)

    monkeypatch.setattr(store_mod, "write_parquet", flaky)
    other = write_site(tmp_path / "site2", replace={"followup": BASE["followup"][:1]})
    with pytest.raises(OSError, match="disk full"):
        ingest(other, store_dir, SECRET, today=TODAY)
    assert len(calls) == 3
    _assert_unchanged(store_dir, before)
    assert [p.name for p in (store_dir / "snapshots").iterdir()] == [before[0]]


def test_failing_symlink_switch_keeps_the_previous_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_dir = _ingest(tmp_path)
    before = _snapshot_state(store_dir)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(store_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="power cut"):
        write_snapshot(store_dir, {"patients": before[1]["patients"]}, pd.DataFrame(), {})
    monkeypatch.undo()
    _assert_unchanged(store_dir, before)
    assert [p.name for p in (store_dir / "snapshots").iterdir()] == [before[0]]


def test_killed_process_during_write_leaves_previous_snapshot(tmp_path: Path) -> None:
    store_dir = _ingest(tmp_path)
    before = _snapshot_state(store_dir)
    other = write_site(tmp_path / "site2", replace={"followup": BASE["followup"][:1]})
    script = textwrap.dedent(f"""
        import os
        from datetime import date
        import node.ingestion.store as store_mod
        from node.ingestion.ingest import ingest
        real = store_mod.write_parquet
        def dying(frame, path):
            real(frame, path)
            os._exit(9)  # the process dies right after the first file
        store_mod.write_parquet = dying
        ingest({str(other)!r}, {str(store_dir)!r}, bytes(range(32)), today=date(2024, 6, 1))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 9, done.stderr.decode()
    leftovers = [p.name for p in (store_dir / "snapshots").iterdir()]
    assert len(leftovers) == 2 and any(n.startswith(".tmp-") for n in leftovers)
    _assert_unchanged(store_dir, before)
    report = ingest(other, store_dir, SECRET, today=TODAY)  # the next write cleans up
    assert [p.name for p in (store_dir / "snapshots").iterdir()] == [report.snapshot]
    assert open_store(store_dir).stored_rows("followup") == 1


def test_open_store_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        open_store(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no ingested data"):
        open_store(tmp_path / "empty")
    store_dir = _ingest(tmp_path)
    (open_store(store_dir).path / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(StoreError, match="unreadable manifest"):
        open_store(store_dir)
