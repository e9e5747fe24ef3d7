"""Every hard rule of docs/data-model.md: exactly the offending row is quarantined.

Each case appends one row to the clean baseline site (tests/test_ingest_sitedata.py), ingests
the folder into a real store and checks the single quarantine record: table, 1-based row,
rule and column, plus input = stored + quarantined for every table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node.ingestion.ingest import ingest, validate_folder
from node.ingestion.store import open_store
from tests.site_data import TODAY, assert_invariant, write_site

SECRET = bytes(range(32))

PAT = {"patient_id": "P4", "sex": "F", "birth_year": "1980"}
INF = {"infusion_id": "I4", "patient_id": "P3", "infusion_date": "2023-02-01",
       "product": "ARI-0001", "atmp_class": "GTMP", "route": "hospital_exemption",
       "origin": "autologous", "batch_id": "B4", "indication_icd10": "C91.0",
       "indication_group": "B-ALL"}
FU = {"infusion_id": "I3", "contact_date": "2024-04-01", "vital_status": "alive"}
CE = {"infusion_id": "I3", "event": "relapse_progression", "event_date": "2023-06-01"}
AE = {"infusion_id": "I3", "term": "infection_bacterial", "grading": "CTCAE5",
      "max_grade": "2", "onset_date": "2022-09-01", "serious": "false"}
RESP = {"infusion_id": "I3", "assessment_date": "2022-09-01", "response": "CR",
        "best": "false"}
LAB = {"infusion_id": "I3", "measurement": "ferritin", "value": "500", "unit": "ng/mL",
       "day": "-2"}
TEMPLATES = {"patients": PAT, "infusions": INF, "followup": FU, "clinical_events": CE,
             "adverse_events": AE, "responses": RESP, "baseline_measurements": LAB}
BASE_ROWS = {"patients": 3, "infusions": 3, "followup": 4, "clinical_events": 2,
             "adverse_events": 3, "responses": 3, "baseline_measurements": 3}

# (table, changes to the table's template row, rule, column)
CASES = [
    ("patients", {"sex": ""}, "missing_required", "sex"),
    ("patients", {"patient_id": ""}, "missing_required", "patient_id"),
    ("patients", {"birth_year": "19x0"}, "bad_type", "birth_year"),
    ("patients", {"sex": "X"}, "unknown_enum", "sex"),
    ("patients", {"patient_id": "P2"}, "duplicate_key", "patient_id"),
    ("patients", {"birth_year": "1899"}, "birth_year_out_of_range", "birth_year"),
    ("patients", {"birth_year": "2025"}, "birth_year_out_of_range", "birth_year"),
    ("infusions", {"route": "named_patient"}, "unknown_enum", "route"),
    ("infusions", {"disease_status": "MRD"}, "unknown_enum", "disease_status"),
    ("infusions", {"infusion_date": "01/02/2023"}, "bad_type", "infusion_date"),
    ("infusions", {"infusion_date": "2023-02-30"}, "bad_type", "infusion_date"),
    ("infusions", {"prior_lines": "two"}, "bad_type", "prior_lines"),
    ("infusions", {"ecog": "5"}, "value_out_of_range", "ecog"),
    ("infusions", {"prior_lines": "-1"}, "value_out_of_range", "prior_lines"),
    ("infusions", {"product": ""}, "missing_required", "product"),
    ("infusions", {"infusion_id": "I1"}, "duplicate_key", "infusion_id"),
    ("infusions", {"patient_id": "P9"}, "unknown_reference", "patient_id"),
    ("infusions", {"infusion_date": "2024-06-02"}, "date_in_future", "infusion_date"),
    ("infusions", {"batch_id": "B1"}, "batch_reused", "batch_id"),
    ("followup", {"infusion_id": "I9"}, "unknown_reference", "infusion_id"),
    ("followup", {"contact_date": "2023-13-01"}, "bad_type", "contact_date"),
    ("followup", {"vital_status": ""}, "missing_required", "vital_status"),
    ("followup", {"vital_status": "lost"}, "unknown_enum", "vital_status"),
    ("followup", {"contact_date": "2024-07-01"}, "date_in_future", "contact_date"),
    ("followup", {"contact_date": "2022-05-01"}, "before_infusion", "contact_date"),
    ("followup", {"infusion_id": "I1", "contact_date": "2021-06-01"}, "after_death",
     "contact_date"),
    ("followup", {"infusion_id": "I2", "contact_date": "2021-04-01", "vital_status": "dead",
                  "death_date": "2021-03-01", "cause_of_death": "primary_disease"},
     "death_before_infusion", "death_date"),
    ("followup", {"infusion_id": "I2", "vital_status": "dead", "cause_of_death": "infection"},
     "death_date_mismatch", "death_date"),
    ("followup", {"death_date": "2023-01-01"}, "death_date_mismatch", "death_date"),
    ("followup", {"infusion_id": "I2", "contact_date": "2024-02-01", "vital_status": "dead",
                  "death_date": "2024-01-20"}, "death_date_mismatch", "cause_of_death"),
    ("followup", {"infusion_id": "I1", "contact_date": "2021-02-01", "vital_status": "dead",
                  "death_date": "2021-01-10", "cause_of_death": "primary_disease"},
     "death_date_mismatch", "death_date"),
    ("followup", {"infusion_id": "I2", "contact_date": "2024-05-01", "vital_status": "dead",
                  "death_date": "2024-07-01", "cause_of_death": "infection"},
     "date_in_future", "death_date"),
    ("followup", {"infusion_id": "I2", "contact_date": "2024-05-01", "vital_status": "dead",
                  "death_date": "2024-04-01", "cause_of_death": "suicide"},
     "unknown_enum", "cause_of_death"),
    ("clinical_events", {"event": "remission"}, "unknown_enum", "event"),
    ("clinical_events", {"infusion_id": "I2", "event_date": "2021-03-01"}, "before_infusion",
     "event_date"),
    ("clinical_events", {"infusion_id": "I1", "event_date": "2021-02-01"}, "after_death",
     "event_date"),
    ("clinical_events", {"event_date": "2024-07-01"}, "date_in_future", "event_date"),
    ("clinical_events", {"infusion_id": "I9"}, "unknown_reference", "infusion_id"),
    ("adverse_events", {"onset_date": "2022-09-10", "resolution_date": "2022-09-01"},
     "onset_after_resolution", "resolution_date"),
    ("adverse_events", {"term": "CRS", "grading": "ASTCT2019", "max_grade": "5"},
     "grade_out_of_range", "max_grade"),
    ("adverse_events", {"grading": "CTCAE6", "max_grade": "6"}, "grade_out_of_range",
     "max_grade"),
    ("adverse_events", {"max_grade": "0"}, "grade_out_of_range", "max_grade"),
    ("adverse_events", {"max_grade": "5"}, "grade5_without_death", "max_grade"),
    ("adverse_events", {"onset_date": "2022-05-31"}, "before_infusion", "onset_date"),
    ("adverse_events", {"infusion_id": "I1", "onset_date": "2021-02-01"}, "after_death",
     "onset_date"),
    ("adverse_events", {"serious": "maybe"}, "bad_type", "serious"),
    ("adverse_events", {"grading": "CTCAE4"}, "unknown_enum", "grading"),
    ("adverse_events", {"max_grade": "2.5"}, "bad_type", "max_grade"),
    ("responses", {"infusion_id": "I1", "assessment_date": "2020-10-10", "best": "true"},
     "multiple_best_response", "best"),
    ("responses", {"assessment_date": "2022-05-01"}, "before_infusion", "assessment_date"),
    ("responses", {"infusion_id": "I1", "assessment_date": "2021-02-01"}, "after_death",
     "assessment_date"),
    ("responses", {"response": "MRD-"}, "unknown_enum", "response"),
    ("responses", {"best": ""}, "missing_required", "best"),
    ("baseline_measurements", {"measurement": "LDH", "unit": "ukat/L"}, "unit_inconsistent",
     "unit"),
    ("baseline_measurements", {"value": "inf"}, "non_finite_value", "value"),
    ("baseline_measurements", {"value": "NaN"}, "non_finite_value", "value"),
    ("baseline_measurements", {"value": "high"}, "bad_type", "value"),
    ("baseline_measurements", {"day": "3"}, "day_after_infusion", "day"),
    ("baseline_measurements", {"unit": ""}, "missing_required", "unit"),
]


def _case_id(case: tuple) -> str:
    table, changes, rule, column = case
    return f"{table}-{rule}-{column}-" + "-".join(f"{k}" for k in changes)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_rule_quarantines_exactly_the_offending_row(tmp_path: Path, case: tuple) -> None:
    table, changes, rule, column = case
    folder = write_site(tmp_path / "site", add={table: [{**TEMPLATES[table], **changes}]})
    report = ingest(folder, tmp_path / "store", SECRET, today=TODAY)

    assert_invariant(report)
    for name, counts in report.tables.items():
        assert counts.quarantined == (1 if name == table else 0), name
        assert counts.input == BASE_ROWS[name] + (1 if name == table else 0)
    quarantine = open_store(tmp_path / "store").quarantine()
    assert len(quarantine) == 1
    record = quarantine.iloc[0]
    row = BASE_ROWS[table] + 1
    assert (record["table"], record["row"], record["rule"], record["column"]) == (
        table, row, rule, column)
    errors = [i for i in report.issues if i.severity == "error"]
    assert {(i.table, i.row) for i in errors} == {(table, row)}
    assert (rule, column) in {(i.rule, i.column) for i in errors}


@pytest.mark.parametrize(("birth_year", "infusion_date", "rule"), [
    ("1915", "2016-02-01", "age_out_of_range"),           # 2016 - 1915 = 101 years
    ("2023", "2022-12-01", "birth_year_after_infusion"),  # born the year after
])
def test_birth_year_against_infusion_quarantines_the_infusion(
        tmp_path: Path, birth_year: str, infusion_date: str, rule: str) -> None:
    folder = write_site(tmp_path / "site", add={
        "patients": [{**PAT, "birth_year": birth_year}],
        "infusions": [{**INF, "patient_id": "P4", "infusion_date": infusion_date}]})
    report = ingest(folder, tmp_path / "store", SECRET, today=TODAY)
    assert_invariant(report)
    [issue] = report.issues
    assert (issue.table, issue.row, issue.rule, issue.column) == (
        "infusions", 4, rule, "infusion_date")
    assert report.tables["patients"].stored == 4
    [record] = open_store(tmp_path / "store").quarantine().to_dict("records")
    assert (record["table"], record["row"], record["rule"], record["column"]) == (
        "infusions", 4, rule, "infusion_date")


def test_age_exactly_100_is_accepted(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site", add={
        "patients": [{**PAT, "birth_year": "1916"}],
        "infusions": [{**INF, "patient_id": "P4", "infusion_date": "2016-12-31"}]})
    assert validate_folder(folder, today=TODAY).issues == ()


def test_quarantined_parent_cascades_to_every_child(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site", add={
        "patients": [{**PAT, "sex": "Q"}],
        "infusions": [{**INF, "patient_id": "P4"}],
        "followup": [{**FU, "infusion_id": "I4"}],
        "adverse_events": [{**AE, "infusion_id": "I4", "onset_date": "2023-02-03"}],
        "responses": [{**RESP, "infusion_id": "I4", "assessment_date": "2023-03-01"}]})
    report = ingest(folder, tmp_path / "store", SECRET, today=TODAY)
    assert_invariant(report)
    got = {(i.table, i.row, i.rule, i.column) for i in report.issues}
    assert got == {
        ("patients", 4, "unknown_enum", "sex"),
        ("infusions", 4, "unknown_reference", "patient_id"),
        ("followup", 5, "unknown_reference", "infusion_id"),
        ("adverse_events", 4, "unknown_reference", "infusion_id"),
        ("responses", 4, "unknown_reference", "infusion_id"),
    }
    cascade = next(i for i in report.issues if i.table == "infusions")
    assert "quarantined" in cascade.message
    store = open_store(tmp_path / "store")
    assert len(store.quarantine()) == 5
    assert "I4" not in set(store.table("followup")["infusion_id"])


def test_duplicate_key_keeps_the_first_row(tmp_path: Path) -> None:
    folder = write_site(tmp_path / "site", add={"infusions": [{**INF, "infusion_id": "I2"}]})
    ingest(folder, tmp_path / "store", SECRET, today=TODAY)
    inf = open_store(tmp_path / "store").table("infusions")
    assert inf.loc[inf["infusion_id"] == "I2", "product"].tolist() == ["axi-cel"]


@pytest.mark.parametrize("add", [
    # a fatal (grade 5) AE of a patient who died: allowed
    {"adverse_events": [{**AE, "infusion_id": "I1", "term": "infection_fungal",
                         "max_grade": "5", "onset_date": "2021-01-10"}]},
    # an allogeneic product may share a batch id with an autologous one
    {"infusions": [{**INF, "batch_id": "B1", "origin": "allogeneic"}]},
    # the same autologous batch twice to the same patient (split dose)
    {"infusions": [{**INF, "patient_id": "P1", "batch_id": "B1",
                    "infusion_date": "2020-02-01"}]},
    # event on the day of death, AE onset on the day of infusion
    {"clinical_events": [{**CE, "infusion_id": "I1", "event_date": "2021-01-15"}],
     "adverse_events": [{**AE, "onset_date": "2022-06-01"}]},
    # a second measurement with its own unit; baseline day 0
    {"baseline_measurements": [{**LAB, "unit": "ug/L", "day": "0", "measurement": "CRP2"}]},
    # CRS on day 14 and ICANS on day 28 are not late
    {"adverse_events": [{**AE, "term": "CRS", "grading": "ASTCT2019",
                         "onset_date": "2022-06-15"},
                        {**AE, "term": "ICANS", "grading": "ASTCT2019",
                         "onset_date": "2022-06-29"}]},
], ids=["grade5-with-death", "allogeneic-batch", "same-patient-batch", "boundary-dates",
        "other-unit", "day-14-and-28"])
def test_boundary_rows_are_accepted(tmp_path: Path, add: dict) -> None:
    report = validate_folder(write_site(tmp_path / "site", add=add), today=TODAY)
    assert report.issues == ()
    assert_invariant(report)
