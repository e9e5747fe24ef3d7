"""The Cox design at a node: several labs from one read, and one design per snapshot and
cohort however often a model is prepared (node.releases.cox)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest

import node.releases.cox as cox
from heron.simulation import make_study
from node.cohorts.covariates import build_design
from node.governance.policy import Policy

COHORT = pd.DataFrame({
    "infusion_id": pd.array(list("ABCDEF"), dtype="string"),
    "infusion_date": pd.to_datetime(["2021-01-01"] * 6).astype("datetime64[ns]"),
}, index=pd.RangeIndex(10, 16))


def _labs(rows: list[tuple[str, str, float, int]]) -> pd.DataFrame:
    """baseline_measurements from (infusion, measurement, value, day)."""
    cols = list(zip(*rows, strict=True))
    return pd.DataFrame({
        "infusion_id": pd.array(cols[0], dtype="string"),
        "measurement": pd.array(cols[1], dtype="string"),
        "value": np.array(cols[2], dtype="float64"),
        "unit": pd.array(["U/L"] * len(rows), dtype="string"),
        "day": pd.array(cols[3], dtype="Int64"),
    })


LABS = _labs([
    ("A", "LDH", 100.0, -10), ("A", "LDH", 250.0, -1),   # closest to day 0: -1 -> 250
    ("A", "LDH", 999.0, 2),                              # after infusion: never counts
    ("B", "LDH", 300.0, -2), ("B", "LDH", 310.0, -2),    # tie on day -2: mean 305
    ("C", "CRP", 12.0, -1),                              # no LDH for C
    ("D", "LDH", 400.0, 0),                              # day 0 counts
    ("E", "ldh", 123.0, -1),                             # names are case-sensitive
    ("Z", "LDH", 50.0, -1),                              # not in the cohort
    ("A", "CRP", 7.0, -3), ("B", "CRP", 8.0, 0), ("D", "CRP", 9.0, -1), ("D", "CRP", 11.0, -1),
])


def test_two_labs_at_once_equal_each_lab_alone() -> None:
    both = build_design({"baseline_measurements": LABS}, COHORT, ["lab:LDH", "lab:CRP"])
    ldh = build_design({"baseline_measurements": LABS}, COHORT, ["lab:LDH"])
    crp = build_design({"baseline_measurements": LABS}, COHORT, ["lab:CRP"])
    np.testing.assert_array_equal(both.mask, ldh.mask & crp.mask)
    # A: LDH 250 (day -1), CRP 7; B: LDH 305 (tie), CRP 8 (day 0); D: LDH 400, CRP mean 10
    np.testing.assert_array_equal(both.matrix(["lab:LDH", "lab:CRP"]),
                                  [[250.0, 7.0], [305.0, 8.0], [400.0, 10.0]])
    assert both.dropped == {"missing lab:LDH": 3, "missing lab:CRP": 0}


class _Snapshot:
    """A node's snapshot cache as cox.prepare sees it: tables and ``derived``."""

    reads_columns = True

    def __init__(self, tables: dict[str, pd.DataFrame]) -> None:
        self.tables = tables
        self.read: list[tuple[str, tuple[str, ...] | None]] = []
        self.held: dict[Hashable, Any] = {}

    def table(self, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        self.read.append((name, None if columns is None else tuple(columns)))
        frame = self.tables[name]
        return frame if columns is None else frame[[c for c in columns if c in frame]]

    def derived(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key not in self.held:
            self.held[key] = compute()
        return self.held[key]


def test_a_model_prepared_again_reuses_the_design_of_the_snapshot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from node.cohorts.cohort import TABLE_COLUMNS
    empty = {name: pd.DataFrame({c: pd.Series(dtype=t) for c, t in cols.items()})
             for name, cols in TABLE_COLUMNS.items()}
    snapshot = _Snapshot({**empty, "baseline_measurements": LABS})
    built: list[tuple[str, ...]] = []

    def counted(tables: Any, cohort: pd.DataFrame, covariates: Sequence[str]) -> Any:
        built.append(tuple(covariates))
        return build_design(tables, cohort, covariates)

    monkeypatch.setattr(cox, "build_design", counted)
    study = make_study("design-cache", [{"name": "m", "kind": "cox",
                                         "endpoint": "overall_survival",
                                         "covariates": ["lab:LDH", "lab:CRP"]}], cohort={})
    policy = Policy(min_cohort=1, min_cell=1, min_bin_events=1)
    first = cox.prepare(study.analyses[0], study, snapshot, COHORT, policy, coarsen=False)
    again = cox.prepare(study.analyses[0], study, snapshot, COHORT, policy, coarsen=False)
    assert built == [("lab:LDH", "lab:CRP")]
    assert again.design is first.design and first.design.n == 3
    reads = [r for r in snapshot.read if r[0] == "baseline_measurements"]
    assert reads == [("baseline_measurements", ("infusion_id", "measurement", "value", "day"))]
    # another cohort (another study's) gets its own design
    cox.prepare(study.analyses[0], study, snapshot, COHORT.iloc[:2], policy, coarsen=False)
    assert len(built) == 2
