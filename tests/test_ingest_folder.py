"""Reading site folders: formats, headers, structural errors, the report and its messages."""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from node.errors import IngestError
from node.ingestion.ingest import ingest, validate_folder
from node.ingestion.store import open_store
from tests.site_data import (
    BASE,
    TODAY,
    assert_invariant,
    site_frames,
    write_site,
)

SECRET = bytes(range(32))


def test_enumerations_are_case_insensitive_and_stored_canonically(tmp_path: Path) -> None:
    inf = [dict(r) for r in BASE["infusions"]]
    inf[0].update(atmp_class="gtmp", route="Hospital_Exemption", origin="AUTOLOGOUS",
                  disease_status="pd")
    inf[2].update(atmp_class="sctmp", disease_status="na")
    fu = [dict(r) for r in BASE["followup"]]
    fu[1].update(vital_status="DEAD", cause_of_death="Primary_Disease")
    ae = [dict(r) for r in BASE["adverse_events"]]
    ae[0].update(term="crs", grading="astct2019", serious="TRUE")
    folder = write_site(tmp_path / "site", replace={"infusions": inf, "followup": fu,
                                                    "adverse_events": ae})
    report = ingest(folder, tmp_path / "store", SECRET, today=TODAY)
    assert report.issues == ()
    store = open_store(tmp_path / "store")
    got = store.table("infusions")
    assert got["atmp_class"].tolist() == ["GTMP", "GTMP", "sCTMP"]
    assert got["route"].iloc[0] == "hospital_exemption"
    assert got["origin"].iloc[0] == "autologous"
    assert got["disease_status"].tolist()[::2] == ["PD", "NA"]
    assert store.table("followup")["cause_of_death"].iloc[1] == "primary_disease"
    assert store.table("adverse_events")["term"].iloc[0] == "CRS"
    assert bool(store.table("adverse_events")["serious"].iloc[0]) is True


def _typed_frames() -> dict[str, pd.DataFrame]:
    """The baseline site with real Parquet types (dates, Int64, float, bool)."""
    out = {}
    for name, frame in site_frames().items():
        frame = frame.replace("", None)
        for col in frame.columns:
            if col.endswith("_date"):
                frame[col] = pd.to_datetime(frame[col])
            elif col in ("birth_year", "prior_lines", "ecog", "max_grade", "day"):
                frame[col] = pd.to_numeric(frame[col]).astype("Int64")
            elif col == "value":
                frame[col] = frame[col].astype(float)
            elif col in ("serious", "best"):
                frame[col] = frame[col].map({"true": True, "yes": True, "false": False})
        out[name] = frame
    return out


def test_typed_parquet_input_stores_the_same_as_csv(tmp_path: Path) -> None:
    csv_site = write_site(tmp_path / "csv")
    pq_site = tmp_path / "pq"
    pq_site.mkdir()
    for name, frame in _typed_frames().items():
        frame.to_parquet(pq_site / f"{name}.parquet", index=False)
    ingest(csv_site, tmp_path / "s1", SECRET, today=TODAY)
    report = ingest(pq_site, tmp_path / "s2", SECRET, today=TODAY)
    assert report.issues == ()
    a, b = open_store(tmp_path / "s1"), open_store(tmp_path / "s2")
    for name in BASE:
        pd.testing.assert_frame_equal(a.table(name), b.table(name))


def test_parquet_date32_and_integer_ids_are_read(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site", fmt="parquet")
    patients = pa.table({"patient_id": pa.array([1, 2, 3], pa.int64()),
                         "sex": ["F", "M", "U"], "birth_year": pa.array([1960, 1975, 1990])})
    pq.write_table(patients, folder / "patients.parquet")
    inf = pq.read_table(folder / "infusions.parquet").to_pandas()
    inf["patient_id"] = ["1", "2", "3"]
    table = pa.Table.from_pandas(inf, preserve_index=False)
    dates = pa.array([date.fromisoformat(d) for d in inf["infusion_date"]], pa.date32())
    table = table.set_column(table.column_names.index("infusion_date"), "infusion_date", dates)
    pq.write_table(table, folder / "infusions.parquet")
    report = validate_folder(folder, today=TODAY)
    assert report.issues == ()


def test_parquet_issue_rows_are_one_based(tmp_path: Path) -> None:
    fu = [dict(r) for r in BASE["followup"]]
    fu[2]["vital_status"] = "Z"
    folder = write_site(tmp_path / "site", replace={"followup": fu}, fmt="parquet")
    [issue] = validate_folder(folder, today=TODAY).issues
    assert (issue.file, issue.row, issue.column, issue.rule) == (
        "followup.parquet", 3, "vital_status", "unknown_enum")


def test_unknown_files_are_reported_and_ignored(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site")
    (folder / "notes.txt").write_text("hello", encoding="utf-8")
    (folder / "labs_extra.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    report = ingest(folder, tmp_path / "store", SECRET, today=TODAY)
    assert report.ignored_files == ("labs_extra.csv", "notes.txt")
    assert "labs_extra.csv" in report.summary()
    assert report.ok
    assert open_store(tmp_path / "store").manifest["ignored_files"] == ["labs_extra.csv",
                                                                      "notes.txt"]


def test_unknown_column_is_an_error_naming_file_and_column(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site")
    frame = pd.read_csv(folder / "patients.csv", dtype=str)
    frame["height_cm"] = "170"
    frame.to_csv(folder / "patients.csv", index=False)
    with pytest.raises(IngestError, match=r"patients\.csv: unknown column 'height_cm'"):
        validate_folder(folder, today=TODAY)


def test_missing_required_table_is_an_error(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site", drop=("followup",))
    with pytest.raises(IngestError, match=r"followup\.csv or followup\.parquet"):
        validate_folder(folder, today=TODAY)


def test_missing_required_column_is_an_error(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site")
    frame = pd.read_csv(folder / "infusions.csv", dtype=str).drop(columns=["route"])
    frame.to_csv(folder / "infusions.csv", index=False)
    with pytest.raises(IngestError, match=r"infusions\.csv: required column 'route'"):
        validate_folder(folder, today=TODAY)


def test_missing_optional_column_is_fine(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site")
    frame = pd.read_csv(folder / "infusions.csv", dtype=str).drop(columns=["ecog", "batch_id"])
    frame.to_csv(folder / "infusions.csv", index=False)
    ingest(folder, tmp_path / "store", SECRET, today=TODAY)
    assert open_store(tmp_path / "store").table("infusions")["ecog"].isna().all()


def test_same_table_twice_is_an_error(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site")
    site_frames()["patients"].to_parquet(folder / "patients.parquet")
    with pytest.raises(IngestError, match="both"):
        validate_folder(folder, today=TODAY)


def test_not_a_folder_and_empty_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="not a folder"):
        validate_folder(tmp_path / "nowhere")
    folder = write_site(tmp_path / "site")
    (folder / "responses.csv").write_bytes(b"")
    with pytest.raises(IngestError, match=r"responses\.csv: file is empty"):
        validate_folder(folder, today=TODAY)


def test_header_only_optional_table_has_zero_rows(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site")
    (folder / "responses.csv").write_text("infusion_id,assessment_date,response,best\n",
                                          encoding="utf-8")
    report = validate_folder(folder, today=TODAY)
    assert (report.tables["responses"].file, report.tables["responses"].input) == (
        "responses.csv", 0)


def test_bom_header_case_and_whitespace_are_tolerated(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site")
    text = (folder / "patients.csv").read_text(encoding="utf-8")
    text = text.replace("patient_id,sex,birth_year", " Patient_ID ,SEX,birth_year")
    text = text.replace("P2,M,1975", " P2 , m ,1975 ")
    assert text.startswith(" Patient_ID ,SEX") and " P2 , m ,1975 " in text
    (folder / "patients.csv").write_bytes("\ufeff".encode() + text.encode())
    ingest(folder, tmp_path / "store", SECRET, today=TODAY)
    store = open_store(tmp_path / "store")
    assert store.table("patients")["sex"].tolist() == ["F", "M", "U"]
    assert store.stored_rows("infusions") == 3  # P2 still matches its infusion


def test_malformed_csv_names_the_row_not_the_content(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site")
    with open(folder / "patients.csv", "a", encoding="utf-8") as fh:
        fh.write("P9,F,1970,SECRET-EXTRA-FIELD\n")
    with pytest.raises(IngestError) as err:
        validate_folder(folder, today=TODAY)
    assert "patients.csv" in str(err.value)
    assert "row 4" in str(err.value)
    assert "SECRET" not in str(err.value) and "P9" not in str(err.value)


def test_invalid_utf8_is_an_error(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site")
    with open(folder / "patients.csv", "ab") as fh:
        fh.write(b"P9,F,19\xff0\n")
    with pytest.raises(IngestError, match="UTF-8"):
        validate_folder(folder, today=TODAY)


def test_messages_name_file_row_column_and_rule_but_never_values(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret_value = "Xylophone-Sex-Value"
    folder = write_site(tmp_path / "site", add={
        "patients": [{"patient_id": "HOSP-ID-778899", "sex": secret_value,
                      "birth_year": "1980"}],
        "followup": [{"infusion_id": "I3", "contact_date": "2022-05-01",
                      "vital_status": "alive"}]})
    caplog.set_level(logging.DEBUG)
    report = ingest(folder, tmp_path / "store", SECRET, today=TODAY)
    messages = [i.message for i in report.issues]
    assert messages == [
        "patients.csv row 4, column sex: unknown_enum: value is not one of F, M, U",
        "followup.csv row 5, column contact_date: before_infusion: date is before the "
        "infusion date",
    ]
    texts = [report.summary(), json.dumps(report.to_dict()), caplog.text]
    for text in texts:
        for value in (secret_value, "HOSP-ID-778899", "2022-05-01"):
            assert value not in text


def test_validate_folder_writes_nothing(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site", add={"patients": [{"patient_id": "P9"}]})
    before = sorted(p.name for p in tmp_path.rglob("*"))
    report = validate_folder(folder, today=TODAY)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert not report.stored and report.snapshot is None
    assert not report.ok
    assert report.quarantined == 1
    assert "validated (nothing written)" in report.summary()


def test_warnings_are_stored_reported_and_not_quarantined(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site", add={"adverse_events": [
        {"infusion_id": "I3", "term": "CRS", "grading": "ASTCT2019", "max_grade": "1",
         "onset_date": "2022-06-20", "serious": "false"},      # day 19
        {"infusion_id": "I3", "term": "ICANS", "grading": "ASTCT2019", "max_grade": "2",
         "onset_date": "2022-07-15", "serious": "true"},       # day 44
    ]})
    # cutoff 2024-03-01: I2's last contact (2024-01-15, alive) is stale, I3's (2024-03-01) not
    report = ingest(folder, tmp_path / "store", SECRET, today=date(2026, 3, 1))
    assert report.ok
    assert_invariant(report)
    got = [(i.table, i.row, i.column, i.rule, i.severity) for i in report.issues]
    assert got == [
        ("followup", 3, "contact_date", "stale_alive_contact", "warning"),
        ("adverse_events", 4, "onset_date", "crs_onset_after_day_14", "warning"),
        ("adverse_events", 5, "onset_date", "icans_onset_after_day_28", "warning"),
    ]
    assert report.warnings == 3 and report.errors == 0
    store = open_store(tmp_path / "store")
    assert store.stored_rows("adverse_events") == 5
    warnings = store.warnings()
    assert warnings[["table", "row", "rule", "infusion_id"]].values.tolist() == [
        ["followup", 3, "stale_alive_contact", "I2"],
        ["adverse_events", 4, "crs_onset_after_day_14", "I3"],
        ["adverse_events", 5, "icans_onset_after_day_28", "I3"]]
    assert store.manifest["warnings"] == 3
    assert store.manifest["tables"]["adverse_events"]["warnings"] == 2
    assert len(store.quarantine()) == 0


def test_stale_contact_uses_the_latest_contact_only(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site", add={"followup": [
        {"infusion_id": "I2", "contact_date": "2025-01-01", "vital_status": "alive"}]})
    report = validate_folder(folder, today=date(2026, 3, 1))
    assert report.issues == ()


def test_report_to_dict_and_summary(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site", add={"patients": [{"patient_id": "P9",
                                                              "sex": "F"}]})
    report = ingest(folder, tmp_path / "store", SECRET, today=TODAY)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["stored"] is True
    assert data["tables"]["patients"] == {"file": "patients.csv", "input": 4, "stored": 3,
                                          "quarantined": 1, "warnings": 0}
    assert data["issues"] == [{
        "table": "patients", "file": "patients.csv", "row": 4, "column": "birth_year",
        "rule": "missing_required", "severity": "error",
        "message": "patients.csv row 4, column birth_year: missing_required: a required "
                   "value is missing"}]
    assert data["snapshot"] == report.snapshot
    summary = report.summary()
    assert "patients.csv: 4 rows, 3 stored, 1 quarantined, 0 warnings" in summary
    assert "clinical_events.csv: 2 rows, 2 stored" in summary


def test_progress_callback_gets_steps(tmp_path: Path) -> None:
    seen: list[str] = []
    ingest(write_site(tmp_path / "site"), tmp_path / "store", SECRET, today=TODAY,
           progress=seen.append)
    assert seen[0] == "reading adverse_events.csv"
    assert "validating" in seen and "writing snapshot" in seen
    assert seen[-1].startswith("done")


def test_parquet_pandas_index_is_ignored_and_timestamps_need_midnight(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site", fmt="parquet")
    frames = _typed_frames()
    frames["patients"].set_index("sex", drop=False).to_parquet(folder / "patients.parquet")
    fu = frames["followup"]
    fu.loc[2, "contact_date"] = pd.Timestamp("2024-01-15 13:30")
    fu.to_parquet(folder / "followup.parquet", index=False)
    [issue] = validate_folder(folder, today=TODAY).issues
    assert (issue.file, issue.row, issue.column, issue.rule) == (
        "followup.parquet", 3, "contact_date", "bad_type")
