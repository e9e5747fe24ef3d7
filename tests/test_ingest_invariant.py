"""Property test: on messy random folders, input = stored + quarantined, and what is stored
breaks no rule when validated again."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.ingestion.ingest import ingest, validate_folder
from node.ingestion.schema import TABLE_NAMES, get_table
from node.ingestion.store import open_store

TODAY = date(2024, 6, 1)
DATES = ["2019-12-31", "2020-01-10", "2020-06-01", "2021-01-15", "2022-03-01", "2024-07-01",
         "2020-02-30", ""]
POOLS: dict[str, dict[str, list[str]]] = {
    "patients": {"patient_id": ["P1", "P2", "P3", ""], "sex": ["F", "m", "X", ""],
                 "birth_year": ["1950", "1899", "2010", "19x", ""]},
    "infusions": {"infusion_id": ["I1", "I2", "I3", "I4", ""],
                  "patient_id": ["P1", "P2", "P3", "P4"], "infusion_date": DATES,
                  "product": ["ARI-0001", ""], "atmp_class": ["GTMP", "tep", "bad"],
                  "route": ["hospital_exemption", "clinical_trial"],
                  "origin": ["autologous", "allogeneic"], "batch_id": ["B1", "B2", ""],
                  "indication_icd10": ["C83.3"], "indication_group": ["LBCL", "MM"],
                  "disease_status": ["CR", "NA", ""], "prior_lines": ["0", "-1", ""],
                  "ecog": ["0", "4", "5", ""], "manufacturing_site": ["", "X"]},
    "followup": {"infusion_id": ["I1", "I2", "I3", "I5"], "contact_date": DATES,
                 "vital_status": ["alive", "dead", "unknown", "Dead", ""],
                 "death_date": DATES, "cause_of_death": ["CRS", "other", "bad", ""]},
    "clinical_events": {"infusion_id": ["I1", "I2", "I3"],
                        "event": ["relapse_progression", "subsequent_hct", "x"],
                        "event_date": DATES},
    "adverse_events": {"infusion_id": ["I1", "I2", "I3"], "term": ["CRS", "ICANS", "TLS"],
                       "meddra_pt": ["", "Pyrexia"],
                       "grading": ["ASTCT2019", "CTCAE5", "CTCAE6", "who"],
                       "max_grade": ["0", "1", "4", "5", "6", ""], "onset_date": DATES,
                       "resolution_date": DATES, "serious": ["true", "0", "maybe"]},
    "responses": {"infusion_id": ["I1", "I2", "I3"], "assessment_date": DATES,
                  "response": ["CR", "pd", "NE", "x"], "best": ["true", "false", ""]},
    "baseline_measurements": {"infusion_id": ["I1", "I2", "I3"],
                              "measurement": ["LDH", "CRP"], "value": ["1.5", "inf", "x", ""],
                              "unit": ["U/L", "mg/L"], "day": ["-2", "0", "3", ""]},
}


def _table(name: str) -> st.SearchStrategy[pd.DataFrame]:
    pool = POOLS[name]
    row = st.fixed_dictionaries({c: st.sampled_from(v) for c, v in pool.items()})
    size = (1, 6) if name in ("patients", "infusions", "followup") else (0, 5)
    return st.lists(row, min_size=size[0], max_size=size[1]).map(
        lambda rows: pd.DataFrame(rows, columns=list(pool), dtype=object))


SITES = st.fixed_dictionaries({name: _table(name) for name in TABLE_NAMES})


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(site=SITES)
def test_every_row_is_stored_or_quarantined_and_stored_rows_are_clean(
        site: dict[str, pd.DataFrame]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "site"
        folder.mkdir()
        for name, frame in site.items():
            frame.to_csv(folder / f"{name}.csv", index=False)
        report = ingest(folder, Path(tmp) / "store", b"s" * 32, today=TODAY)
        store = open_store(Path(tmp) / "store")
        quarantine = store.quarantine()
        for name, counts in report.tables.items():
            assert counts.input == len(site[name])
            assert counts.input == counts.stored + counts.quarantined
            assert counts.stored == len(store.table(name))
            assert counts.quarantined == int((quarantine["table"] == name).sum())

        again = Path(tmp) / "again"
        again.mkdir()
        for name in TABLE_NAMES:
            frame = store.table(name)
            assert list(frame.columns) == get_table(name).column_names
            frame.to_parquet(again / f"{name}.parquet", index=False)
        recheck = validate_folder(again, today=TODAY)
        assert recheck.errors == 0, recheck.summary()
