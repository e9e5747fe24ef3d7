"""Endpoints derived at the site: hand-computed durations, events and causes for every rule."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from node.cohorts.endpoints import (
    competing_endpoint,
    group_labels,
    parse_ae_endpoint,
    survival_endpoint,
)
from node.errors import StudyRefused

D0 = pd.Timestamp("2020-01-01")
HORIZON = 1826
LATE_START = pd.Timestamp("2021-03-10")  # infusion X starts here


def _start(iid: str) -> pd.Timestamp:
    return LATE_START if iid == "X" else D0


def _day(iid: str, n: int | None) -> pd.Timestamp | None:
    return None if n is None else _start(iid) + pd.Timedelta(days=n)


def _cohort(ids: list[str]) -> pd.DataFrame:
    # a non-default index: results must be indexed like the cohort
    return pd.DataFrame({
        "infusion_id": pd.array(ids, dtype="string"),
        "infusion_date": pd.to_datetime([_start(i) for i in ids]).astype("datetime64[ns]"),
    }, index=pd.RangeIndex(100, 100 + len(ids)))


def _tables(fu: Sequence[tuple], ce: Sequence[tuple] = (),
            ae: Sequence[tuple] = ()) -> dict[str, pd.DataFrame]:
    followup = pd.DataFrame({
        "infusion_id": pd.array([r[0] for r in fu], dtype="string"),
        "contact_date": pd.to_datetime([_day(r[0], r[1]) for r in fu]).astype("datetime64[ns]"),
        "vital_status": pd.array([r[2] for r in fu], dtype="string"),
        "death_date": pd.to_datetime([_day(r[0], r[3]) for r in fu]).astype("datetime64[ns]"),
        "cause_of_death": pd.array([None] * len(fu), dtype="string"),
    })
    events = pd.DataFrame({
        "infusion_id": pd.array([r[0] for r in ce], dtype="string"),
        "event": pd.array([r[1] for r in ce], dtype="string"),
        "event_date": pd.to_datetime([_day(r[0], r[2]) for r in ce]).astype("datetime64[ns]"),
    })
    adverse = pd.DataFrame({
        "infusion_id": pd.array([r[0] for r in ae], dtype="string"),
        "term": pd.array([r[1] for r in ae], dtype="string"),
        "grading": pd.array(["ASTCT2019"] * len(ae), dtype="string"),
        "max_grade": pd.array([r[2] for r in ae], dtype="Int64"),
        "onset_date": pd.to_datetime([_day(r[0], r[3]) for r in ae]).astype("datetime64[ns]"),
    })
    return {"followup": followup, "clinical_events": events, "adverse_events": adverse}


# followup rows: (infusion, contact day, vital status, death day)
FOLLOWUP = [
    ("A", 100, "alive", None), ("A", 300, "alive", None),          # alive at last contact
    ("B", 50, "alive", None), ("B", 130, "dead", 120),             # death
    ("C", 200, "alive", None), ("C", 400, "unknown", None),        # unknown at last contact
    ("D", 500, "alive", None),                                     # relapse, alive
    ("E", 210, "dead", 200),                                       # relapse then death
    ("F", 100, "dead", 100),                                       # cell therapy day 50, death
    ("G", 100, "dead", 100),                                       # cell therapy same day
    ("H", 3000, "alive", None),                                    # beyond the horizon
    ("I", 1826, "dead", 1826),                                     # death on the horizon day
    ("J", 1830, "dead", 1827),                                     # death the day after
    # K: no follow-up row at all
    ("L", 500, "alive", None),                                     # cell therapy, no event
    ("M", 100, "alive", None),                                     # subsequent HCT day 40
    ("N", 200, "alive", None), ("N", 200, "dead", 195),            # tie at latest contact
    ("X", 30, "dead", 22),                                         # another infusion date
    ("R", 400, "alive", None),                                     # therapy before relapse
    ("P", 120, "dead", 100),                                       # relapse on day of death
    ("Z", 10, "dead", 5),                                          # not in the cohort
]
# clinical events: (infusion, event, day)
EVENTS = [
    ("D", "relapse_progression", 200), ("D", "relapse_progression", 80),
    ("E", "relapse_progression", 60),
    ("F", "subsequent_cell_therapy", 50),
    ("G", "subsequent_cell_therapy", 100),
    ("L", "subsequent_cell_therapy", 300),
    ("M", "subsequent_hct", 40),
    ("R", "new_anticancer_treatment", 20), ("R", "subsequent_cell_therapy", 100),
    ("R", "relapse_progression", 150),
    ("P", "relapse_progression", 100),
]
IDS = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "X", "R", "P"]

OS = {"A": (300, False), "B": (120, True), "C": (400, False), "D": (500, False),
      "E": (200, True), "F": (100, True), "G": (100, True), "H": (1826, False),
      "I": (1826, True), "J": (1826, False), "K": (0, False), "L": (500, False),
      "M": (100, False), "N": (195, True), "X": (22, True), "R": (400, False),
      "P": (100, True)}
PFS = {**OS, "D": (80, True), "E": (60, True), "R": (150, True), "P": (100, True)}
OS_CENSOR_SCT = {**OS, "F": (50, False), "G": (100, True), "L": (300, False),
                 "R": (100, False)}
PFS_CENSOR_SCT = {**PFS, "F": (50, False), "G": (100, True), "L": (300, False),
                  "R": (100, False)}
OS_CENSOR_HCT = {**OS, "M": (40, False)}


@pytest.mark.parametrize(("endpoint", "censor_at", "expected"), [
    ("overall_survival", (), OS),
    ("progression_free_survival", (), PFS),
    ("overall_survival", ("subsequent_cell_therapy",), OS_CENSOR_SCT),
    ("progression_free_survival", ("subsequent_cell_therapy",), PFS_CENSOR_SCT),
    ("overall_survival", ("subsequent_hct",), OS_CENSOR_HCT),
    ("overall_survival", ("subsequent_hct", "subsequent_cell_therapy"),
     {**OS_CENSOR_SCT, "M": (40, False)}),
])
def test_survival_endpoint(endpoint: str, censor_at: tuple[str, ...],
                           expected: dict[str, tuple[int, bool]]) -> None:
    cohort = _cohort(IDS)
    out = survival_endpoint(_tables(FOLLOWUP, EVENTS), cohort, endpoint, HORIZON, censor_at)
    assert list(out.columns) == ["infusion_id", "duration", "event"]
    assert out.index.equals(cohort.index)
    assert list(out["infusion_id"]) == IDS
    assert out["duration"].dtype == "int64" and out["event"].dtype == bool
    got = {i: (int(d), bool(e)) for i, d, e in out.itertuples(index=False)}
    assert got == {i: expected[i] for i in IDS}


def test_short_horizon_censors_events_after_it() -> None:
    out = survival_endpoint(_tables(FOLLOWUP, EVENTS), _cohort(["B", "E", "D"]),
                            "overall_survival", 120)
    assert list(out["duration"]) == [120, 120, 120]
    assert list(out["event"]) == [True, False, False]  # B dies on day 120 exactly


# competing risks: {infusion: (duration, cause)}
RELAPSE = {"A": (300, 0), "B": (120, 2), "C": (400, 0), "D": (80, 1), "E": (60, 1),
           "F": (100, 2), "G": (100, 2), "H": (1826, 0), "I": (1826, 2), "J": (1826, 0),
           "K": (0, 0), "L": (500, 0), "M": (100, 0), "N": (195, 2), "X": (22, 2),
           "R": (150, 1), "P": (100, 1)}
NRM = {i: (d, {0: 0, 1: 2, 2: 1}[c]) for i, (d, c) in RELAPSE.items()}
RELAPSE_CENSOR_SCT = {**RELAPSE, "F": (50, 0), "G": (100, 2), "L": (300, 0), "R": (100, 0)}


@pytest.mark.parametrize(("endpoint", "censor_at", "expected"), [
    ("relapse", (), RELAPSE),
    ("non_relapse_mortality", (), NRM),
    ("relapse", ("subsequent_cell_therapy",), RELAPSE_CENSOR_SCT),
])
def test_relapse_and_non_relapse_mortality(endpoint: str, censor_at: tuple[str, ...],
                                           expected: dict[str, tuple[int, int]]) -> None:
    cohort = _cohort(IDS)
    out = competing_endpoint(_tables(FOLLOWUP, EVENTS), cohort, endpoint, HORIZON, censor_at)
    assert list(out.columns) == ["infusion_id", "duration", "cause"]
    assert out.index.equals(cohort.index)
    assert out["duration"].dtype == "int64" and out["cause"].dtype == "int64"
    got = {i: (int(d), int(c)) for i, d, c in out.itertuples(index=False)}
    assert got == {i: expected[i] for i in IDS}


AE_FOLLOWUP = [
    ("Q", 100, "alive", None),
    ("S", 40, "dead", 30),
    ("T", 100, "alive", None),
    ("U", 10, "dead", 10),
    ("V", 60, "alive", None),
    ("W", 3000, "alive", None),
]
# adverse events: (infusion, term, max grade, onset day)
AES = [
    ("Q", "CRS", 2, 3), ("Q", "CRS", 3, 5),
    ("S", "CRS", 2, 2),
    ("T", "ICANS", 4, 7),
    ("U", "CRS", 4, 10),
    ("V", "CRS", 3, 4),
    ("W", "CRS", 3, 1900),
]
AE_EVENTS = [("V", "subsequent_cell_therapy", 2)]
AE_IDS = ["Q", "S", "T", "U", "V", "W"]


@pytest.mark.parametrize(("endpoint", "censor_at", "expected"), [
    ("ae:CRS", (), {"Q": (3, 1), "S": (2, 1), "T": (100, 0), "U": (10, 1), "V": (4, 1),
                    "W": (1826, 0)}),
    ("ae:CRS>=3", (), {"Q": (5, 1), "S": (30, 2), "T": (100, 0), "U": (10, 1), "V": (4, 1),
                       "W": (1826, 0)}),
    ("ae:CRS>=3", ("subsequent_cell_therapy",),
     {"Q": (5, 1), "S": (30, 2), "T": (100, 0), "U": (10, 1), "V": (2, 0), "W": (1826, 0)}),
    ("ae:icans>=4", (), {"Q": (100, 0), "S": (30, 2), "T": (7, 1), "U": (10, 2),
                         "V": (60, 0), "W": (1826, 0)}),
    ("ae:CRS>=5", (), {"Q": (100, 0), "S": (30, 2), "T": (100, 0), "U": (10, 2),
                       "V": (60, 0), "W": (1826, 0)}),
])
def test_adverse_event_endpoint(endpoint: str, censor_at: tuple[str, ...],
                                expected: dict[str, tuple[int, int]]) -> None:
    out = competing_endpoint(_tables(AE_FOLLOWUP, AE_EVENTS, AES), _cohort(AE_IDS), endpoint,
                             HORIZON, censor_at)
    got = {i: (int(d), int(c)) for i, d, c in out.itertuples(index=False)}
    assert got == expected


def test_parse_ae_endpoint() -> None:
    assert parse_ae_endpoint("ae:CRS") == ("CRS", 1)
    assert parse_ae_endpoint("ae:crs>=3") == ("CRS", 3)
    assert parse_ae_endpoint("ae:Infection_Bacterial>=2") == ("infection_bacterial", 2)
    with pytest.raises(StudyRefused):
        parse_ae_endpoint("ae:FOO")


def test_bad_endpoints_and_censor_events_are_refused() -> None:
    tables, cohort = _tables(FOLLOWUP, EVENTS), _cohort(["A"])
    with pytest.raises(StudyRefused):
        survival_endpoint(tables, cohort, "relapse", HORIZON)
    with pytest.raises(StudyRefused):
        competing_endpoint(tables, cohort, "overall_survival", HORIZON)
    with pytest.raises(StudyRefused):
        competing_endpoint(tables, cohort, "ae:NOPE>=2", HORIZON)
    with pytest.raises(StudyRefused):
        survival_endpoint(tables, cohort, "overall_survival", HORIZON, ("relapse_progression",))


def test_absent_optional_tables_and_empty_cohort() -> None:
    tables = {"followup": _tables(FOLLOWUP)["followup"]}  # no clinical_events, adverse_events
    out = survival_endpoint(tables, _cohort(["D", "E"]), "progression_free_survival", HORIZON,
                            ("subsequent_hct",))
    assert list(zip(out["duration"], out["event"], strict=True)) == [(500, False), (200, True)]
    out = competing_endpoint(tables, _cohort(["S"]), "ae:CRS", HORIZON)
    assert list(out["cause"]) == [0]
    empty = survival_endpoint(tables, _cohort([]), "overall_survival", HORIZON)
    assert empty.empty and list(empty.columns) == ["infusion_id", "duration", "event"]


def test_group_labels() -> None:
    cohort = pd.DataFrame({
        "route": pd.array(["hospital_exemption", None, "clinical_trial"], dtype="string"),
        "ecog": pd.array([0, None, 3], dtype="Int64"),
        "disease_status": pd.array(["NA", "unknown", ""], dtype="string"),
    }, index=[7, 8, 9])
    assert list(group_labels(cohort, None, "site-a")) == ["all", "all", "all"]
    assert list(group_labels(cohort, "site", "site-a")) == ["site-a"] * 3
    route = group_labels(cohort, "route", "site-a")
    assert list(route) == ["hospital_exemption", "unknown", "clinical_trial"]
    assert list(route.index) == [7, 8, 9]
    assert list(group_labels(cohort, "ecog", "s")) == ["0", "unknown", "3"]
    assert list(group_labels(cohort, "disease_status", "s")) == ["NA", "unknown", "unknown"]
    assert all(isinstance(v, str) for v in group_labels(cohort, "ecog", "s"))
    with pytest.raises(StudyRefused):
        group_labels(cohort, "birth_year", "s")


def _reference(fu: list[tuple], ce: list[tuple], ae: list[tuple], iid: str, endpoint: str,
               horizon: int, censor_at: tuple[str, ...]) -> tuple[int, int]:
    """Per-infusion loop implementation of the documented rules: (duration, cause)."""
    rows = [r for r in fu if r[0] == iid]
    last = max((r[1] for r in rows), default=0)
    deaths = [r[3] for r in rows if r[1] == last and r[2] == "dead" and r[3] is not None]
    death = min(deaths) if deaths else None
    relapse = min((r[2] for r in ce if r[0] == iid and r[1] == "relapse_progression"),
                  default=None)
    cens = min((r[2] for r in ce if r[0] == iid and r[1] in censor_at), default=None)
    if endpoint == "overall_survival":
        first, other = death, None
    elif endpoint == "progression_free_survival":
        first, other = min((t for t in (relapse, death) if t is not None), default=None), None
    elif endpoint in ("relapse", "non_relapse_mortality"):
        first, other = relapse, death
    else:
        term, grade = parse_ae_endpoint(endpoint)
        first = min((r[3] for r in ae if r[0] == iid and r[1] == term and r[2] >= grade),
                    default=None)
        other = death
    if first is not None and (other is None or first <= other):
        time, cause = first, 1
    elif other is not None:
        time, cause = other, 2
    else:
        time, cause = None, 0
    if endpoint == "non_relapse_mortality" and cause:
        cause = 3 - cause
    if cens is not None and (time is None or cens < time):
        time, cause = cens, 0
    if time is None:
        time = last
    if time > horizon:
        time, cause = horizon, 0
    return time, cause


def test_vectorised_matches_a_per_patient_loop() -> None:
    rng = np.random.default_rng(7)
    ids = [f"i{k:03d}" for k in range(300)]
    fu, ce, ae = [], [], []
    for iid in ids:
        contacts = sorted(rng.integers(0, 700, rng.integers(0, 4)).tolist())
        for j, day in enumerate(contacts):
            last = j == len(contacts) - 1
            status = rng.choice(["alive", "unknown", "dead"]) if last else "alive"
            death = int(day - rng.integers(0, 15)) if status == "dead" else None
            fu.append((iid, day, str(status), None if death is None else max(death, 0)))
        for _ in range(rng.integers(0, 4)):
            ce.append((iid, str(rng.choice(["relapse_progression", "subsequent_hct",
                                            "subsequent_cell_therapy"])),
                       int(rng.integers(0, 700))))
        for _ in range(rng.integers(0, 3)):
            ae.append((iid, str(rng.choice(["CRS", "ICANS"])), int(rng.integers(1, 5)),
                       int(rng.integers(0, 60))))
    tables, cohort = _tables(fu, ce, ae), _cohort(ids)
    for endpoint in ("overall_survival", "progression_free_survival", "relapse",
                     "non_relapse_mortality", "ae:CRS>=3", "ae:ICANS"):
        for censor_at in ((), ("subsequent_hct",),
                          ("subsequent_cell_therapy", "subsequent_hct")):
            expected = [_reference(fu, ce, ae, i, endpoint, 500, censor_at) for i in ids]
            if endpoint in ("overall_survival", "progression_free_survival"):
                out = survival_endpoint(tables, cohort, endpoint, 500, censor_at)
                got = list(zip(out["duration"], out["event"].astype(int), strict=True))
            else:
                out = competing_endpoint(tables, cohort, endpoint, 500, censor_at)
                got = list(zip(out["duration"], out["cause"], strict=True))
            assert got == expected, (endpoint, censor_at)
