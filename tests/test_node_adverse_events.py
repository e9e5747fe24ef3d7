"""Per-site adverse-event summaries: hand-built tables with hand-computed counts and days."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from node.errors import StudyRefused
from node.ingestion.store import open_store, write_snapshot
from node.releases.adverse_events import GRADES, TermSummary, ae_site_summary

D0 = pd.Timestamp("2020-01-01")
X0 = pd.Timestamp("2021-06-15")  # infusion P6 starts here
IDS = ["P1", "P2", "P3", "P4", "P5", "P6", "P7"]
WINDOW = 28


def _start(iid: str) -> pd.Timestamp:
    return X0 if iid == "P6" else D0


def _day(iid: str, n: int | None) -> pd.Timestamp | None:
    return None if n is None else _start(iid) + pd.Timedelta(days=n)


COHORT = pd.DataFrame({
    "infusion_id": pd.array(IDS, dtype="string"),
    "infusion_date": pd.to_datetime([_start(i) for i in IDS]).astype("datetime64[ns]"),
}, index=pd.RangeIndex(50, 50 + len(IDS)))

# (infusion, contact day, vital status, death day); P7 has no follow-up (censored at day 0)
FOLLOWUP = [
    ("P1", 100, "alive", None),
    ("P2", 10, "dead", 10),       # death before the window ends
    ("P3", 15, "alive", None),    # censored inside the window
    ("P4", 200, "alive", None),
    ("P5", 60, "alive", None),
    ("P6", 28, "dead", 28),       # event and death on the last window day
]

# (infusion, term, grade, onset day)
AES = [
    ("P1", "CRS", 2, 3), ("P1", "CRS", 3, 5),       # first day 3, max grade 3
    ("P1", "ICANS", 1, 40),                         # after the window
    ("P1b", "CRS", 4, 1),                           # another infusion, not in the cohort
    ("P2", "ICANS", 4, 8),
    ("P2", "infection_viral", 2, 4), ("P2", "infection_viral", 5, 10),  # fatal: grade 5
    ("P4", "CRS", 1, 30),                           # after the window: no event
    ("P5", "CRS", 1, 0), ("P5", "CRS", 2, 28),      # day 0 and the window's last day
    ("P6", "CRS", 4, 28),                           # day 28 of its own infusion
    ("P3", "infection_fungal", 3, 20),              # recorded after the latest contact
]


def _tables(fu: Sequence[tuple] = FOLLOWUP, ae: Sequence[tuple] = AES) -> dict:
    followup = pd.DataFrame({
        "infusion_id": pd.array([r[0] for r in fu], dtype="string"),
        "contact_date": pd.to_datetime([_day(r[0], r[1]) for r in fu]).astype("datetime64[ns]"),
        "vital_status": pd.array([r[2] for r in fu], dtype="string"),
        "death_date": pd.to_datetime([_day(r[0], r[3]) for r in fu]).astype("datetime64[ns]"),
        "cause_of_death": pd.array([None] * len(fu), dtype="string"),
    })
    adverse = pd.DataFrame({
        "infusion_id": pd.array([r[0] for r in ae], dtype="string"),
        "term": pd.array([r[1] for r in ae], dtype="string"),
        "meddra_pt": pd.array([None] * len(ae), dtype="string"),
        "grading": pd.array(["CTCAE5"] * len(ae), dtype="string"),
        "max_grade": pd.array([r[2] for r in ae], dtype="Int64"),
        "onset_date": pd.to_datetime([_day(r[0], r[3]) for r in ae]).astype("datetime64[ns]"),
        "resolution_date": pd.Series([pd.NaT] * len(ae), dtype="datetime64[ns]"),
        "serious": pd.array([False] * len(ae), dtype="boolean"),
    })
    return {"followup": followup, "adverse_events": adverse}


def _grades(**counts: int) -> dict[str, int]:
    return {g: counts.get(f"g{g}", 0) for g in GRADES}


def _hist(window: int, days: Sequence[int]) -> list[int]:
    out = [0] * (window + 1)
    for d in days:
        out[d] += 1
    return out


def test_crs_events_grades_person_days_and_onsets():
    res = ae_site_summary(_tables(), COHORT, ["CRS"], by_grade=True, window_days=WINDOW)
    crs = res["CRS"]
    assert isinstance(crs, TermSummary)
    assert crs.at_risk == 7
    # P1 (day 3), P5 (day 0), P6 (day 28); P4's day-30 CRS is outside, P1b not in the cohort
    assert crs.with_event == 3
    assert crs.grades == _grades(g2=1, g3=1, g4=1)  # P5 max 2, P1 max 3, P6 max 4
    # P1 3 (event), P2 10 (death), P3 15 (censored), P4 28 (window cap), P5 0 (day-0 event),
    # P6 28 (event on the last day), P7 0 (no follow-up)
    assert crs.person_days == 3 + 10 + 15 + 28 + 0 + 28 + 0
    assert crs.onset_histogram.dtype == np.int64
    assert crs.onset_histogram.tolist() == _hist(WINDOW, [0, 3, 28])


def test_several_terms_and_events_outside_the_window():
    res = ae_site_summary(_tables(), COHORT, ["CRS", "ICANS", "infection_bacterial"],
                          by_grade=True, window_days=WINDOW)
    assert list(res) == ["CRS", "ICANS", "infection_bacterial"]
    icans = res["ICANS"]
    # P2 day 8; P1's ICANS on day 40 is outside the window
    assert icans.with_event == 1 and icans.grades == _grades(g4=1)
    assert icans.person_days == 28 + 8 + 15 + 28 + 28 + 28 + 0
    assert icans.onset_histogram.tolist() == _hist(WINDOW, [8])
    none = res["infection_bacterial"]
    assert none.with_event == 0 and none.grades == _grades()
    assert none.person_days == 28 + 10 + 15 + 28 + 28 + 28 + 0
    assert none.onset_histogram.tolist() == _hist(WINDOW, [])


def test_maximum_grade_per_patient_counts_once():
    res = ae_site_summary(_tables(), COHORT, ["infection_viral"], by_grade=True, window_days=7)
    # P2 grade 2 on day 4 is in the window, the grade-5 event on day 10 is not
    v = res["infection_viral"]
    assert v.with_event == 1 and v.grades == _grades(g2=1)
    res = ae_site_summary(_tables(), COHORT, ["infection_viral"], by_grade=True, window_days=10)
    v = res["infection_viral"]
    assert v.with_event == 1 and v.grades == _grades(g5=1)
    assert v.onset_histogram.tolist() == _hist(10, [4])
    # P1 10, P2 4 (first onset), P3 10, P4 10, P5 10, P6 10, P7 0
    assert v.person_days == 10 + 4 + 10 + 10 + 10 + 10 + 0


def test_event_after_latest_contact_extends_follow_up_to_its_onset():
    res = ae_site_summary(_tables(), COHORT, ["infection_fungal"], False, WINDOW)
    f = res["infection_fungal"]
    assert f.with_event == 1 and f.onset_histogram.tolist() == _hist(WINDOW, [20])
    assert f.person_days == 28 + 10 + 20 + 28 + 28 + 28 + 0


def test_without_grades_and_case_insensitive_terms():
    res = ae_site_summary(_tables(), COHORT, ["crs", "CRS"], by_grade=False, window_days=WINDOW)
    assert list(res) == ["CRS"]
    assert res["CRS"].grades == {} and res["CRS"].with_event == 3


def test_window_zero_counts_day_zero_only():
    res = ae_site_summary(_tables(), COHORT, ["CRS"], by_grade=True, window_days=0)
    crs = res["CRS"]
    assert crs.with_event == 1 and crs.grades == _grades(g1=1)  # P5, grade 1 on day 0
    assert crs.onset_histogram.tolist() == [1]
    assert crs.person_days == 0


def test_no_adverse_events_table():
    tables = {"followup": _tables()["followup"]}
    crs = ae_site_summary(tables, COHORT, ["CRS"], by_grade=True, window_days=WINDOW)["CRS"]
    assert crs.at_risk == 7 and crs.with_event == 0 and crs.grades == _grades()
    assert crs.person_days == 28 + 10 + 15 + 28 + 28 + 28 + 0
    assert crs.onset_histogram.tolist() == _hist(WINDOW, [])


def test_empty_cohort():
    crs = ae_site_summary(_tables(), COHORT.iloc[:0], ["CRS"], True, WINDOW)["CRS"]
    assert (crs.at_risk, crs.with_event, crs.person_days) == (0, 0, 0)
    assert crs.grades == _grades() and crs.onset_histogram.tolist() == _hist(WINDOW, [])


def test_histogram_is_read_only():
    crs = ae_site_summary(_tables(), COHORT, ["CRS"], False, WINDOW)["CRS"]
    with pytest.raises(ValueError):
        crs.onset_histogram[0] = 5


@pytest.mark.parametrize("terms", [["CRS", "cytokine_storm"], ["CRS2"], [""]])
def test_unknown_term_refused(terms):
    with pytest.raises(StudyRefused, match="term"):
        ae_site_summary(_tables(), COHORT, terms, True, WINDOW)


@pytest.mark.parametrize("window", [-1, 2.5, True])
def test_bad_window_refused(window):
    with pytest.raises(StudyRefused, match="window_days"):
        ae_site_summary(_tables(), COHORT, ["CRS"], True, window)


def test_node_store_round_trip(tmp_path):
    write_snapshot(tmp_path / "s", _tables(), pd.DataFrame(), {})
    crs = ae_site_summary(open_store(tmp_path / "s"), COHORT, ["CRS"], True, WINDOW)["CRS"]
    assert crs.with_event == 3 and crs.grades == _grades(g2=1, g3=1, g4=1)
    assert crs.person_days == 84
    assert crs.onset_histogram.tolist() == _hist(WINDOW, [0, 3, 28])
