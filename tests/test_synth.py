"""Tests of heron.synth: calibration (lifelines on the written files), data-model rules,
determinism and site layout."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter

from heron.synth import TABLES, synthesize, synthesize_site

TODAY = date(2026, 6, 30)
DATES = {"infusions": ["infusion_date"], "followup": ["contact_date", "death_date"],
         "clinical_events": ["event_date"], "adverse_events": ["onset_date", "resolution_date"],
         "responses": ["assessment_date"]}


def read_site(path: Path) -> dict[str, pd.DataFrame]:
    """Read a site folder as plain CSV (no help from heron)."""
    out = {}
    for name in TABLES:
        df = pd.read_csv(path / f"{name}.csv", keep_default_na=False, na_values=[""])
        for col in DATES.get(name, []):
            df[col] = pd.to_datetime(df[col])
        out[name] = df
    return out


def days(later: pd.Series, earlier: pd.Series) -> pd.Series:
    return (later - earlier).dt.days


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    """About 4000 patients from four sites, pooled with site-qualified ids."""
    folders = synthesize(tmp_path_factory.mktemp("synth"), sites=4, patients=1000, seed=11)
    sites = [read_site(f.path) for f in folders]
    pooled = {}
    for name in TABLES:
        frames = []
        for folder, tables in zip(folders, sites, strict=True):
            df = tables[name].copy()
            for col in ("infusion_id", "patient_id"):
                if col in df:
                    df[col] = folder.site_id + "/" + df[col]
            frames.append(df)
        pooled[name] = pd.concat(frames, ignore_index=True)
    return pooled


@pytest.fixture(scope="module")
def endpoints(big: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """OS and PFS per infusion, derived directly from the files as docs/data-model.md says."""
    inf, fu, ev = big["infusions"], big["followup"], big["clinical_events"]
    per = fu.groupby("infusion_id").agg(last=("contact_date", "max"), death=("death_date", "max"))
    df = inf.set_index("infusion_id").join(per)
    df["dead"] = df["death"].notna()
    df["os_days"] = days(df["death"].fillna(df["last"]), df["infusion_date"])
    relapse = ev[ev["event"] == "relapse_progression"].groupby("infusion_id")["event_date"].min()
    df["relapse"] = relapse
    df["pfs_event"] = df["dead"] | df["relapse"].notna()
    first = pd.concat([df["relapse"], df["death"]], axis=1).min(axis=1)
    df["pfs_days"] = days(first.fillna(df["last"]), df["infusion_date"])
    return df


def km_at(time: pd.Series, event: pd.Series, t: float) -> float:
    return float(KaplanMeierFitter().fit(time, event).predict(t))


def test_survival_calibration_lbcl(endpoints: pd.DataFrame) -> None:
    lbcl = endpoints[endpoints["indication_group"] == "LBCL"]
    assert len(lbcl) > 2500
    assert km_at(lbcl["os_days"], lbcl["dead"], 365) == pytest.approx(0.57, abs=0.05)
    assert km_at(lbcl["pfs_days"], lbcl["pfs_event"], 365) == pytest.approx(0.34, abs=0.05)
    assert 0.28 <= km_at(lbcl["os_days"], lbcl["dead"], 1826) <= 0.45  # cure plateau
    everyone = km_at(endpoints["os_days"], endpoints["dead"], 365)
    assert 0.52 <= everyone <= 0.67  # B-ALL and MM do a little better at one year


def test_toxicity_calibration_lbcl(big: dict[str, pd.DataFrame]) -> None:
    inf, ae = big["infusions"], big["adverse_events"]
    lbcl = set(inf.loc[inf["indication_group"] == "LBCL", "infusion_id"])
    ae = ae[ae["infusion_id"].isin(lbcl)].merge(inf[["infusion_id", "infusion_date"]])
    crs, icans = ae[ae["term"] == "CRS"], ae[ae["term"] == "ICANS"]
    n = len(lbcl)
    assert crs["infusion_id"].nunique() / n == pytest.approx(0.70, abs=0.05)
    assert 0.10 <= crs.loc[crs["max_grade"] >= 3, "infusion_id"].nunique() / n <= 0.20
    assert 3 <= days(crs["onset_date"], crs["infusion_date"]).median() <= 5
    assert icans["infusion_id"].nunique() / n == pytest.approx(0.30, abs=0.05)
    assert 5 <= days(icans["onset_date"], icans["infusion_date"]).median() <= 9
    for term in ("infection_bacterial", "prolonged_cytopenia", "hypogammaglobulinaemia"):
        assert 0.1 < ae.loc[ae["term"] == term, "infusion_id"].nunique() / n < 0.4


def test_data_model_rules(big: dict[str, pd.DataFrame]) -> None:
    pat, inf, fu = big["patients"], big["infusions"], big["followup"]
    ev, ae, resp, lab = (big[k] for k in ("clinical_events", "adverse_events", "responses",
                                          "baseline_measurements"))
    assert pat["patient_id"].is_unique and inf["infusion_id"].is_unique
    assert inf["batch_id"].is_unique and inf["patient_id"].isin(pat["patient_id"]).all()
    assert pat["patient_id"].str.fullmatch(r"[a-z]+-[a-z]+/P\d{6}").all()
    assert set(pat["sex"]) <= {"F", "M", "U"}
    when = inf["infusion_date"]
    assert when.min() >= pd.Timestamp(2018, 1, 1) and when.max() <= pd.Timestamp(2025, 12, 31)
    age = when.dt.year - inf.merge(pat)["birth_year"]
    assert age.between(18, 80).all()
    assert set(inf["atmp_class"]) == {"GTMP"} and set(inf["origin"]) == {"autologous"}
    assert set(inf["route"]) == {"hospital_exemption", "centrally_authorised", "clinical_trial"}
    codes = dict(zip(inf["indication_group"], inf["indication_icd10"], strict=True))
    assert codes == {"LBCL": "C83.3", "B-ALL": "C91.0", "MM": "C90.0"}
    assert inf["ecog"].between(0, 2).all() and inf["prior_lines"].between(2, 5).all()
    assert set(inf["disease_status"].dropna()) <= {"CR", "PR", "SD", "PD"}

    fu = fu.merge(inf[["infusion_id", "infusion_date"]])
    assert set(fu["infusion_id"]) == set(inf["infusion_id"])  # every infusion followed up
    assert (fu["contact_date"] >= fu["infusion_date"]).all()
    assert (fu["contact_date"] <= pd.Timestamp(TODAY)).all()
    dead = fu["vital_status"] == "dead"
    assert set(fu["vital_status"]) == {"alive", "dead"}
    assert (fu["death_date"].notna() == dead).all() and (fu["cause_of_death"].notna() == dead).all()
    assert (fu.loc[dead, "death_date"] == fu.loc[dead, "contact_date"]).all()
    assert fu.loc[dead, "infusion_id"].is_unique
    death = fu.loc[dead].set_index("infusion_id")["death_date"]
    last = fu.groupby("infusion_id")["contact_date"].max()
    assert (last[death.index] == death).all()  # nothing recorded after a death

    def within(df: pd.DataFrame, col: str) -> None:
        d = df.merge(inf[["infusion_id", "infusion_date"]])
        assert (d[col] >= d["infusion_date"]).all(), col
        assert (d[col] <= d["infusion_id"].map(last)).all(), col  # also <= death date

    for df, col in ((ev, "event_date"), (ae, "onset_date"), (resp, "assessment_date")):
        within(df, col)
    res = ae.dropna(subset=["resolution_date"])
    assert (res["resolution_date"] >= res["onset_date"]).all()
    assert (res["resolution_date"] <= res["infusion_id"].map(last)).all()
    astct = ae["grading"] == "ASTCT2019"
    assert ae.loc[astct, "max_grade"].between(1, 4).all()
    assert ae.loc[~astct, "max_grade"].between(1, 5).all()
    assert set(ae.loc[astct, "term"]) == {"CRS", "ICANS"}
    onset = days(ae["onset_date"], ae.merge(inf[["infusion_id", "infusion_date"]])["infusion_date"])
    assert onset[ae["term"] == "CRS"].max() <= 14 and onset[ae["term"] == "ICANS"].max() <= 28

    grade5 = ae[ae["max_grade"] == 5]
    assert len(grade5) > 0 and grade5["infusion_id"].isin(death.index).all()
    assert (grade5["onset_date"] <= grade5["infusion_id"].map(death)).all()
    assert grade5["resolution_date"].isna().all() and grade5["serious"].all()
    cause = fu.loc[dead].set_index("infusion_id")["cause_of_death"]
    term_cause = grade5["term"].str.replace(r"infection_\w+", "infection", regex=True)
    assert (grade5["infusion_id"].map(cause) == term_cause).all()
    for term in ("CRS", "ICANS"):  # a toxicity death has that toxicity at grade 4
        ids = cause[cause == term].index
        hit = ae[(ae["term"] == term) & (ae["max_grade"] == 4)]["infusion_id"]
        assert set(ids) <= set(hit)
    assert ae["infusion_id"].isin(cause[cause == "infection"].index).any()

    best = resp.groupby("infusion_id")["best"].sum()
    assert (best == 1).all()
    assert set(resp["response"]) == {"CR", "PR", "SD", "PD", "NE"}
    relapsed = set(ev.loc[ev["event"] == "relapse_progression", "infusion_id"])
    assert set(resp.loc[resp["response"] == "PD", "infusion_id"]) <= relapsed

    assert (lab["day"] <= 0).all() and np.isfinite(lab["value"]).all()
    assert (lab.groupby("measurement")["unit"].nunique() == 1).all()
    assert set(lab["measurement"]) == {"LDH", "CRP", "ferritin", "ANC", "hemoglobin",
                                       "platelets", "albumin"}


def test_followup_schedule_and_events(big: dict[str, pd.DataFrame]) -> None:
    fu = big["followup"].merge(big["infusions"][["infusion_id", "infusion_date"]])
    day = days(fu["contact_date"], fu["infusion_date"])
    alive = fu["vital_status"] == "alive"
    for visit in (30, 100, 180, 365, 730):  # CIBMTR-like visits, then yearly
        assert ((day - visit).abs() <= max(3, visit // 10))[alive].sum() > 500
    ev = big["clinical_events"]
    assert set(ev["event"]) == {"relapse_progression", "new_anticancer_treatment",
                                "subsequent_hct", "subsequent_cell_therapy", "new_malignancy"}
    first = ev.sort_values("event_date").groupby("infusion_id").first()
    later = first[first["event"].isin(["subsequent_hct", "subsequent_cell_therapy"])]
    assert later.empty  # subsequent therapy only after a relapse


def folder_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthesize(tmp_path / name, sites=3, patients=150, seed=seed)
    a, b, c = (folder_hashes(tmp_path / x) for x in "abc")
    assert a == b and len(a) == 3 * len(TABLES)
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if "mt-valletta" not in k)
    for name in ("p1", "p2"):
        synthesize(tmp_path / name, sites=1, patients=200, seed=3, fmt="parquet")
    assert folder_hashes(tmp_path / "p1") == folder_hashes(tmp_path / "p2")


def test_sites_layout_and_sizes(tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    folders = synthesize(tmp_path, sites=4, patients=300, seed=0,
                         progress=lambda *a: calls.append(a))
    ids = [f.site_id for f in folders]
    assert ids == ["se-uppsala", "pt-lisbon", "si-ljubljana", "mt-valletta"]
    sizes = [f.patients for f in folders]
    assert sizes[-1] == 8 and len(set(sizes)) == 4 and sum(sizes) == 1200
    assert calls == [(sid, i + 1, 4) for i, sid in enumerate(ids)]
    for f in folders:
        assert f.path == tmp_path / f.site_id
        assert len(pd.read_csv(f.path / "patients.csv")) == f.patients
    two = synthesize(tmp_path / "two", sites=2, patients=50)
    assert [f.patients for f in two] != [50, 50] and sum(f.patients for f in two) == 100
    assert len({f.site_id for f in synthesize(tmp_path / "many", sites=25, patients=12)}) == 25


def test_parquet_replaces_csv_and_data_cut(tmp_path: Path) -> None:
    synthesize_site(tmp_path, "de-heidelberg", 120, seed=1)
    synthesize_site(tmp_path, "de-heidelberg", 120, seed=1, fmt="parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{t}.parquet" for t in TABLES)
    fu = pd.read_parquet(tmp_path / "followup.parquet")
    assert len(fu) > 120
    early = tmp_path / "early"
    synthesize_site(early, "de-heidelberg", 200, seed=1, today=date(2019, 3, 1))
    tables = read_site(early)
    assert tables["infusions"]["infusion_date"].max() < pd.Timestamp(2019, 3, 1)
    assert tables["followup"]["contact_date"].max() <= pd.Timestamp(2019, 3, 1)
    with pytest.raises(ValueError):
        synthesize_site(tmp_path, "x", 10, fmt="xlsx")
    with pytest.raises(ValueError):
        synthesize_site(tmp_path, "x", 10, today=date(2017, 6, 1))


def test_node_validation_finds_no_errors(tmp_path: Path) -> None:
    ingest = pytest.importorskip("node.ingestion.ingest")
    for folder in synthesize(tmp_path, sites=3, patients=400, seed=8):
        report = ingest.validate_folder(folder.path, today=TODAY)
        assert report.errors == 0 and report.ok, report.summary()
        assert report.warnings <= 0.03 * folder.patients  # a few stale contacts (lost patients)
