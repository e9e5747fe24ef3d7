"""The baseline site folder of ``tests/site_data.py`` ingests with no issue at all."""

from __future__ import annotations

from pathlib import Path

from node.ingestion.ingest import validate_folder
from tests.site_data import TODAY, assert_invariant, write_site


def test_baseline_site_is_clean(tmp_path: Path) -> None:
    report = validate_folder(write_site(tmp_path / "site"), today=TODAY)
    assert report.issues == ()
    assert report.ok
    assert {n: c.input for n, c in report.tables.items()} == {
        "patients": 3, "infusions": 3, "followup": 4, "clinical_events": 2,
        "adverse_events": 3, "responses": 3, "baseline_measurements": 3}
    assert_invariant(report)


def test_baseline_site_as_parquet_is_clean(tmp_path: Path) -> None:
    report = validate_folder(write_site(tmp_path / "site", fmt="parquet"), today=TODAY)
    assert report.issues == ()
    assert report.tables["followup"].file == "followup.parquet"
    assert report.tables["followup"].stored == 4
