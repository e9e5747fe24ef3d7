"""Cohort selection: first infusion, every filter, output shape; tables from frames and Parquet."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from node.cohorts.cohort import COHORT_COLUMNS, get_table, select_cohort
from protocol.study import Cohort

TODAY = dt.date(2025, 1, 1)


def _tables() -> dict[str, pd.DataFrame]:
    patients = pd.DataFrame({
        "patient_id": pd.array(["P1", "P2", "P3", "P4", "P5"], dtype="string"),
        "sex": pd.array(["F", "M", "F", "U", "M"], dtype="string"),
        "birth_year": pd.array([1960, 1950, 2000, 1980, 1970], dtype="Int64"),
    })
    rows = [
        ("I1", "P1", "2019-03-01", "axi-cel", "GTMP", "centrally_authorised",
         "autologous", "LBCL", "CR", 0, 2),
        ("I2", "P1", "2021-06-01", "ARI-0001", "GTMP", "hospital_exemption",
         "autologous", "B-ALL", "PR", 1, 3),
        ("I3", "P2", "2020-01-15", "ARI-0001", "GTMP", "hospital_exemption",
         "allogeneic", "B-ALL", None, None, None),
        ("I4", "P3", "2018-12-31", "tisa-cel", "GTMP", "centrally_authorised",
         "autologous", "LBCL", "SD", 2, 1),
        ("I5", "P4", "2022-07-07", "TEP-x", "TEP", "clinical_trial",
         "autologous", "MM", "NA", 1, 4),
        ("I6b", "P5", "2020-05-05", "ARI-0001", "GTMP", "hospital_exemption",
         "autologous", "B-ALL", "CR", 0, 1),
        ("I6a", "P5", "2020-05-05", "ARI-0001", "GTMP", "compassionate",
         "autologous", "B-ALL", "CR", 0, 1),
        ("I7", "P4", "2030-01-01", "TEP-x", "TEP", "clinical_trial",
         "autologous", "MM", "PD", 1, 5),
    ]
    cols = ["infusion_id", "patient_id", "infusion_date", "product", "atmp_class", "route",
            "origin", "indication_group", "disease_status", "ecog", "prior_lines"]
    raw = pd.DataFrame(rows, columns=cols)
    infusions = pd.DataFrame({c: pd.array(raw[c], dtype="string") for c in cols
                              if c not in ("infusion_date", "ecog", "prior_lines")})
    infusions["infusion_date"] = pd.to_datetime(raw["infusion_date"]).astype("datetime64[ns]")
    infusions["ecog"] = pd.array(raw["ecog"], dtype="Int64")
    infusions["prior_lines"] = pd.array(raw["prior_lines"], dtype="Int64")
    return {"patients": patients, "infusions": infusions}


def _ids(cohort: Cohort, **kw: object) -> list[str]:
    return list(select_cohort(_tables(), cohort, today=TODAY, **kw)["infusion_id"])


def test_first_infusion_only_by_default() -> None:
    # P1 -> I1 (2019 before 2021); P5 -> I6a (same day as I6b, smaller id); P4 -> I5
    assert _ids(Cohort()) == ["I1", "I3", "I4", "I5", "I6a"]


def test_all_infusions_but_not_future_ones() -> None:
    assert _ids(Cohort(first_infusion_only=False)) == ["I1", "I2", "I3", "I4", "I5", "I6a",
                                                       "I6b"]
    later = select_cohort(_tables(), Cohort(first_infusion_only=False),
                          today=dt.date(2031, 1, 1))
    assert "I7" in set(later["infusion_id"])


def test_first_infusion_is_chosen_before_filters() -> None:
    # P1's first infusion is centrally authorised, P5's first is compassionate: both drop out
    assert _ids(Cohort(route=("hospital_exemption",))) == ["I3"]
    assert _ids(Cohort(route=("hospital_exemption",), first_infusion_only=False)) == [
        "I2", "I3", "I6b"]
    assert _ids(Cohort(infusion_date_from=dt.date(2021, 1, 1))) == ["I5"]


@pytest.mark.parametrize(("cohort", "expected"), [
    (Cohort(atmp_class=("TEP",)), ["I5"]),
    (Cohort(atmp_class=("GTMP", "TEP")), ["I1", "I3", "I4", "I5", "I6a"]),
    (Cohort(route=("compassionate", "clinical_trial")), ["I5", "I6a"]),
    (Cohort(origin=("allogeneic",)), ["I3"]),
    (Cohort(product=("ARI-0001",)), ["I3", "I6a"]),
    (Cohort(indication_group=("LBCL", "MM")), ["I1", "I4", "I5"]),
    (Cohort(sex=("F",)), ["I1", "I4"]),
    (Cohort(sex=("f",)), []),  # canonical values, case-sensitive
    (Cohort(disease_status=("CR", "SD")), ["I1", "I4", "I6a"]),  # I3 missing: never matches
    (Cohort(disease_status=("NA",)), ["I5"]),  # "NA" is a value, not a missing value
    (Cohort(infusion_date_from=dt.date(2019, 3, 1), infusion_date_to=dt.date(2020, 1, 15)),
     ["I1", "I3"]),  # both bounds inclusive
    (Cohort(infusion_date_to=dt.date(2018, 12, 31)), ["I4"]),
    (Cohort(age_min=18, age_max=59), ["I1", "I4", "I5", "I6a"]),  # ages 59, 18, 42, 50; I3 is 70
    (Cohort(age_min=60), ["I3"]),
    (Cohort(age_max=17), []),
    (Cohort(indication_group=("B-ALL",), age_min=60, origin=("allogeneic",)), ["I3"]),
    (Cohort(indication_group=("B-ALL",), sex=("F",)), []),
])
def test_each_filter(cohort: Cohort, expected: list[str]) -> None:
    assert _ids(cohort) == expected


def test_output_columns_dtypes_and_values() -> None:
    out = select_cohort(_tables(), Cohort(), today=TODAY)
    assert tuple(out.columns) == COHORT_COLUMNS
    assert list(out.index) == list(range(5))
    assert list(out["age_at_infusion"]) == [59, 70, 18, 42, 50]
    assert str(out["age_at_infusion"].dtype) == "Int64"
    assert out["infusion_date"].dtype == "datetime64[ns]"
    row = out.set_index("infusion_id").loc["I1"]
    assert (row["patient_id"], row["sex"], row["route"], row["product"]) == (
        "P1", "F", "centrally_authorised", "axi-cel")
    assert (row["ecog"], row["prior_lines"], row["disease_status"]) == (0, 2, "CR")
    i3 = out.set_index("infusion_id").loc["I3"]
    assert pd.isna(i3["ecog"]) and pd.isna(i3["disease_status"])


def test_empty_infusions_give_empty_cohort() -> None:
    tables = _tables()
    tables["infusions"] = tables["infusions"].iloc[:0]
    out = select_cohort(tables, Cohort(), today=TODAY)
    assert out.empty and tuple(out.columns) == COHORT_COLUMNS


class _ParquetStore:
    """Stand-in for node.ingestion.store: reads ``<name>.parquet`` from a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def table(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.folder / f"{name}.parquet")


def test_reads_through_a_store_backed_by_parquet(tmp_path: Path) -> None:
    for name, frame in _tables().items():
        frame.to_parquet(tmp_path / f"{name}.parquet", index=False)
    store = _ParquetStore(tmp_path)
    out = select_cohort(store, Cohort(age_min=18, age_max=59), today=TODAY)
    assert list(out["infusion_id"]) == ["I1", "I4", "I5", "I6a"]
    assert list(out["age_at_infusion"]) == [59, 18, 42, 50]


def test_get_table_gives_empty_frame_for_absent_optional_table() -> None:
    ae = get_table(_tables(), "adverse_events")
    assert ae.empty and {"infusion_id", "term", "max_grade", "onset_date"} <= set(ae.columns)
