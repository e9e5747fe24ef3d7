"""Cox design at a site: hand-built cohorts with hand-computed complete cases and matrices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from node.cohorts.covariates import Design, build_design, design_columns
from node.errors import StudyRefused
from node.ingestion.store import open_store, write_snapshot

NA = None


def _cohort(rows: list[tuple]) -> pd.DataFrame:
    """Cohort frame with store dtypes; rows are (id, age, sex, ecog, prior_lines, route,
    product, disease_status). A non-default index: the mask is positional."""
    cols = list(zip(*rows, strict=True))
    return pd.DataFrame({
        "infusion_id": pd.array(cols[0], dtype="string"),
        "infusion_date": pd.to_datetime(["2021-01-01"] * len(rows)).astype("datetime64[ns]"),
        "age_at_infusion": pd.array(cols[1], dtype="Int64"),
        "sex": pd.array(cols[2], dtype="string"),
        "ecog": pd.array(cols[3], dtype="Int64"),
        "prior_lines": pd.array(cols[4], dtype="Int64"),
        "route": pd.array(cols[5], dtype="string"),
        "product": pd.array(cols[6], dtype="string"),
        "disease_status": pd.array(cols[7], dtype="string"),
        "origin": pd.array(["autologous"] * len(rows), dtype="string"),
    }, index=pd.RangeIndex(10, 10 + len(rows)))


HE, CA = "hospital_exemption", "centrally_authorised"
COHORT = _cohort([
    ("A", 50, "M", 0, 2, HE, "P1", "CR"),
    ("B", 60, "F", 1, 3, CA, "P2", "NA"),   # disease_status "NA" is a real level
    ("C", 70, "F", NA, 1, HE, "P1", "PR"),  # ecog missing
    ("D", NA, "M", NA, 2, HE, "P1", "CR"),  # age and ecog missing
    ("E", 40, "U", 2, NA, CA, "P2", NA),    # prior_lines and disease_status missing
    ("F", 55, NA, 3, 0, HE, " ", "SD"),     # sex missing, product blank
])


def _baseline(rows: list[tuple]) -> pd.DataFrame:
    """baseline_measurements from (infusion, measurement, value, day)."""
    cols = list(zip(*rows, strict=True))
    return pd.DataFrame({
        "infusion_id": pd.array(cols[0], dtype="string"),
        "measurement": pd.array(cols[1], dtype="string"),
        "value": np.array(cols[2], dtype="float64"),
        "unit": pd.array(["U/L"] * len(rows), dtype="string"),
        "day": pd.array(cols[3], dtype="Int64"),
    })


BASELINE = _baseline([
    ("A", "LDH", 100.0, -10), ("A", "LDH", 250.0, -1),   # closest to day 0: -1 -> 250
    ("A", "LDH", 999.0, 2),                              # after infusion: never counts
    ("B", "LDH", 300.0, -2), ("B", "LDH", 310.0, -2),    # tie on day -2: mean 305
    ("B", "LDH", 1000.0, -5),
    ("C", "CRP", 12.0, -1),                              # no LDH for C
    ("D", "LDH", 400.0, 0),                              # day 0 counts
    ("E", "ldh", 123.0, -1),                             # names are case-sensitive
    ("Z", "LDH", 50.0, -1),                              # not in the cohort
])


def test_numeric_covariates_as_is_on_complete_cases():
    d = build_design({}, COHORT, ["age_at_infusion", "ecog", "prior_lines"])
    # C (ecog), D (age), E (prior_lines) dropped
    assert d.mask.tolist() == [True, True, False, False, False, True]
    assert d.n == 3
    m = d.matrix(["age_at_infusion", "ecog", "prior_lines"])
    assert m.dtype == np.float64
    np.testing.assert_array_equal(m, [[50, 0, 2], [60, 1, 3], [55, 3, 0]])
    np.testing.assert_array_equal(d.matrix(["prior_lines"]), [[2], [3], [0]])
    assert d.levels == {}


def test_dropped_counts_under_first_missing_covariate_in_study_order():
    d = build_design({}, COHORT, ["age_at_infusion", "ecog", "prior_lines", "sex"])
    # D misses age and ecog: counted under age only
    assert d.dropped == {"missing age_at_infusion": 1, "missing ecog": 1,
                         "missing prior_lines": 1, "missing sex": 1}
    d = build_design({}, COHORT, ["ecog", "age_at_infusion"])
    assert d.dropped == {"missing ecog": 2, "missing age_at_infusion": 0}
    assert sum(d.dropped.values()) == len(COHORT) - d.n


def test_categorical_levels_present_among_complete_cases_sorted():
    d = build_design({}, COHORT, ["sex", "disease_status", "route"])
    # E (disease_status missing) and F (sex missing) dropped; "NA" is a real level
    assert d.mask.tolist() == [True, True, True, True, False, False]
    assert d.levels == {"sex": ["F", "M"], "disease_status": ["CR", "NA", "PR"],
                        "route": [CA, HE]}
    assert d.dropped == {"missing sex": 1, "missing disease_status": 1, "missing route": 0}


def test_matrix_indicator_columns_and_absent_level_is_zero():
    d = build_design({}, COHORT, ["age_at_infusion", "sex", "route"])
    # complete: A, B, C, E (D misses age, F misses sex); U is present via E
    assert d.levels["sex"] == ["F", "M", "U"]
    cols = ["sex=M", "sex=U", "age_at_infusion", f"route={HE}", "sex=X", "route=compassionate"]
    np.testing.assert_array_equal(d.matrix(cols), [
        [1, 0, 50, 1, 0, 0],
        [0, 0, 60, 0, 0, 0],
        [0, 0, 70, 1, 0, 0],
        [0, 1, 40, 0, 0, 0],
    ])
    assert d.matrix([]).shape == (4, 0)


def test_blank_category_is_missing():
    d = build_design({}, COHORT, ["product"])
    assert d.mask.tolist() == [True, True, True, True, True, False]
    assert d.dropped == {"missing product": 1}
    assert d.levels == {"product": ["P1", "P2"]}


def test_lab_closest_to_day_zero_and_tie_mean():
    d = build_design({"baseline_measurements": BASELINE}, COHORT,
                     ["lab:LDH", "age_at_infusion"])
    # C and E have no LDH; F has none either; D has LDH but no age
    assert d.mask.tolist() == [True, True, False, False, False, False]
    assert d.dropped == {"missing lab:LDH": 3, "missing age_at_infusion": 1}
    np.testing.assert_array_equal(d.matrix(["lab:LDH", "age_at_infusion"]),
                                  [[250.0, 50], [305.0, 60]])
    d = build_design({"baseline_measurements": BASELINE}, COHORT, ["lab:LDH"])
    np.testing.assert_array_equal(d.matrix(["lab:LDH"]), [[250.0], [305.0], [400.0]])
    d = build_design({"baseline_measurements": BASELINE}, COHORT, ["lab:CRP"])
    assert d.n == 1 and d.matrix(["lab:CRP"]).tolist() == [[12.0]]


def test_lab_without_baseline_table_is_missing_for_everyone():
    d = build_design({}, COHORT, ["lab:LDH"])
    assert d.n == 0 and d.dropped == {"missing lab:LDH": 6}
    assert d.matrix(["lab:LDH"]).shape == (0, 1)


def test_store_like_source_with_table_method():
    class Source:
        def table(self, name: str) -> pd.DataFrame:
            assert name == "baseline_measurements"
            return BASELINE

    d = build_design(Source(), COHORT, ["lab:LDH", "sex"])
    assert isinstance(d, Design)
    np.testing.assert_array_equal(d.matrix(["lab:LDH", "sex=M"]), [[250, 1], [305, 0], [400, 1]])


def test_empty_cohort():
    d = build_design({}, COHORT.iloc[:0], ["age_at_infusion", "sex", "lab:LDH"])
    assert d.n == 0 and d.levels == {"sex": []}
    assert d.dropped == {"missing age_at_infusion": 0, "missing sex": 0, "missing lab:LDH": 0}
    assert d.matrix(["age_at_infusion", "sex=M"]).shape == (0, 2)


def test_design_columns_reference_is_first_sorted_pooled_level():
    pooled = {"sex": ["M", "F", "U", "F"], "route": [HE], "product": []}
    cols = design_columns(["age_at_infusion", "sex", "route", "lab:LDH", "product"], pooled)
    # sex: reference F; route: a single level gives no column; product: no level, no column
    assert cols == ["age_at_infusion", "sex=M", "sex=U", "lab:LDH"]
    with pytest.raises(ValueError, match="sex"):
        design_columns(["sex"], {})


@pytest.mark.parametrize("covs", [["age"], ["lab:"], ["sex", "sex"], ["site"]])
def test_unknown_or_repeated_covariate_refused(covs):
    with pytest.raises(StudyRefused, match="covariate"):
        build_design({}, COHORT, covs)
    with pytest.raises(StudyRefused, match="covariate"):
        design_columns(covs, {"sex": ["F", "M"]})


def test_matrix_column_of_no_covariate_refused():
    d = build_design({}, COHORT, ["sex"])
    with pytest.raises(StudyRefused, match="ecog"):
        d.matrix(["ecog"])
    with pytest.raises(StudyRefused, match="route=HE"):
        d.matrix(["route=HE"])


def test_node_store_round_trip(tmp_path):
    write_snapshot(tmp_path / "with", {"baseline_measurements": BASELINE}, pd.DataFrame(), {})
    write_snapshot(tmp_path / "without", {}, pd.DataFrame(), {})
    d = build_design(open_store(tmp_path / "with"), COHORT, ["lab:LDH"])
    np.testing.assert_array_equal(d.matrix(["lab:LDH"]), [[250.0], [305.0], [400.0]])
    d = build_design(open_store(tmp_path / "without"), COHORT, ["lab:LDH"])
    assert d.n == 0 and d.dropped == {"missing lab:LDH": 6}
