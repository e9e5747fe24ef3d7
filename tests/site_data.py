"""A small, hand-checked valid site folder used by the ingestion and store tests.

``write_site`` writes the baseline tables as CSV (or Parquet) into a folder, optionally with
extra rows appended to, or rows replaced in, any table.  The baseline itself must ingest with
no issue at all; ``tests/test_ingest_sitedata.py`` checks that.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from node.ingestion.ingest import IngestReport
from node.ingestion.schema import TABLE_NAMES, get_table

TODAY = date(2024, 6, 1)

# Infusion dates: I1 2020-01-10 (P1, died 2021-01-15), I2 2021-03-15 (P2), I3 2022-06-01 (P3).
BASE: dict[str, list[dict[str, str]]] = {
    "patients": [
        {"patient_id": "P1", "sex": "F", "birth_year": "1960"},
        {"patient_id": "P2", "sex": "M", "birth_year": "1975"},
        {"patient_id": "P3", "sex": "U", "birth_year": "1990"},
    ],
    "infusions": [
        {"infusion_id": "I1", "patient_id": "P1", "infusion_date": "2020-01-10",
         "product": "ARI-0001", "atmp_class": "GTMP", "route": "hospital_exemption",
         "origin": "autologous", "batch_id": "B1", "indication_icd10": "C83.3",
         "indication_group": "LBCL", "disease_status": "PD", "prior_lines": "2", "ecog": "1",
         "manufacturing_site": "Hospital Clinic"},
        {"infusion_id": "I2", "patient_id": "P2", "infusion_date": "2021-03-15",
         "product": "axi-cel", "atmp_class": "GTMP", "route": "centrally_authorised",
         "origin": "autologous", "batch_id": "B2", "indication_icd10": "C83.3",
         "indication_group": "LBCL"},
        {"infusion_id": "I3", "patient_id": "P3", "infusion_date": "2022-06-01",
         "product": "ARI-0001", "atmp_class": "GTMP", "route": "hospital_exemption",
         "origin": "autologous", "batch_id": "B3", "indication_icd10": "C91.0",
         "indication_group": "B-ALL", "disease_status": "CR", "prior_lines": "1", "ecog": "0"},
    ],
    "followup": [
        {"infusion_id": "I1", "contact_date": "2020-04-10", "vital_status": "alive"},
        {"infusion_id": "I1", "contact_date": "2021-01-20", "vital_status": "dead",
         "death_date": "2021-01-15", "cause_of_death": "primary_disease"},
        {"infusion_id": "I2", "contact_date": "2024-01-15", "vital_status": "alive"},
        {"infusion_id": "I3", "contact_date": "2024-03-01", "vital_status": "alive"},
    ],
    "clinical_events": [
        {"infusion_id": "I1", "event": "relapse_progression", "event_date": "2020-09-01"},
        {"infusion_id": "I3", "event": "new_anticancer_treatment", "event_date": "2023-01-10"},
    ],
    "adverse_events": [
        {"infusion_id": "I1", "term": "CRS", "grading": "ASTCT2019", "max_grade": "2",
         "onset_date": "2020-01-12", "resolution_date": "2020-01-16", "serious": "true"},
        {"infusion_id": "I2", "term": "ICANS", "grading": "ASTCT2019", "max_grade": "1",
         "onset_date": "2021-03-20", "serious": "false"},
        {"infusion_id": "I3", "term": "infection_viral", "meddra_pt": "COVID-19",
         "grading": "CTCAE5", "max_grade": "3", "onset_date": "2022-08-01",
         "resolution_date": "2022-08-20", "serious": "yes"},
    ],
    "responses": [
        {"infusion_id": "I1", "assessment_date": "2020-04-10", "response": "PR", "best": "true"},
        {"infusion_id": "I1", "assessment_date": "2020-07-10", "response": "PD", "best": "false"},
        {"infusion_id": "I2", "assessment_date": "2021-06-15", "response": "CR", "best": "true"},
    ],
    "baseline_measurements": [
        {"infusion_id": "I1", "measurement": "LDH", "value": "250.5", "unit": "U/L", "day": "-3"},
        {"infusion_id": "I2", "measurement": "LDH", "value": "410", "unit": "U/L", "day": "-7"},
        {"infusion_id": "I3", "measurement": "CRP", "value": "12.0", "unit": "mg/L", "day": "0"},
    ],
}


def site_frames(add: dict[str, list[dict[str, str]]] | None = None,
                replace: dict[str, list[dict[str, str]]] | None = None,
                drop: tuple[str, ...] = ()) -> dict[str, pd.DataFrame]:
    """Baseline tables as all-string frames, with rows appended/replaced, tables dropped."""
    frames = {}
    for name in TABLE_NAMES:
        if name in drop:
            continue
        rows = list((replace or {}).get(name, BASE[name])) + list((add or {}).get(name, []))
        cols = get_table(name).column_names
        frames[name] = pd.DataFrame([[r.get(c, "") for c in cols] for r in rows], columns=cols,
                                    dtype=object)
    return frames


def write_site(folder: Path, add: dict[str, list[dict[str, str]]] | None = None,
               replace: dict[str, list[dict[str, str]]] | None = None,
               drop: tuple[str, ...] = (), fmt: str = "csv") -> Path:
    """Write the baseline site (modified as asked) into ``folder``; return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in site_frames(add, replace, drop).items():
        if fmt == "csv":
            frame.to_csv(folder / f"{name}.csv", index=False)
        else:
            frame.astype("string").replace("", pd.NA).to_parquet(folder / f"{name}.parquet",
                                                                  index=False)
    return folder


def assert_invariant(report: IngestReport) -> None:
    """Input rows = stored rows + quarantined rows, for every table."""
    for counts in report.tables.values():
        assert counts.input == counts.stored + counts.quarantined, counts
