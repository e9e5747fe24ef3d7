"""Realistic synthetic site folders (docs/data-model.md, v1) for demos, tests and benchmarks.

CAR-T outcomes from a mixture-cure model (durable remission, relapse, non-relapse death) with
registry-style toxicity grading and CIBMTR-like follow-up; parameters in data/synth_model.json.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

MODEL: dict[str, Any] = json.loads(
    resources.files("heron").joinpath("data", "synth_model.json").read_text("utf-8"))
DEFAULT_TODAY = date(2026, 6, 30)
TINY_SITE_PATIENTS = 8
TABLES = ("patients", "infusions", "followup", "clinical_events", "adverse_events",
          "responses", "baseline_measurements")
CAUSES = ("primary_disease", "infection", "CRS", "ICANS", "IEC_HS", "second_malignancy",
          "other_treatment_related", "other", "unknown")
EVENTS = ("relapse_progression", "new_anticancer_treatment", "subsequent_hct",
          "subsequent_cell_therapy", "new_malignancy")
RESPONSES = ("CR", "PR", "SD", "PD", "NE")
GRADINGS = ("ASTCT2019", "CTCAE5", "CTCAE6")
_IND, _PROD = MODEL["indications"], MODEL["products"]
_I = {k: np.array([d[k] for d in _IND]) for k in _IND[0]}  # one array per parameter
_P = {k: np.array([p[k] for p in _PROD]) for k in _PROD[0]}
_FIRST, _LAST = date(2018, 1, 1), date(2025, 12, 31)
_EPOCH = date(1970, 1, 1).toordinal()
_NEVER = 10**7  # relapse day of patients who never relapse
_Arrays = dict[str, np.ndarray]
_Rows = tuple[np.ndarray, dict[str, Any]]


@dataclass(frozen=True)
class SiteFolder:
    """One generated site: its id, data folder and number of patients."""

    site_id: str
    path: Path
    patients: int


def site_ids(sites: int) -> list[str]:
    """Return ``sites`` European centre ids; with three or more the last is the tiny site."""
    named = list(MODEL["site_ids"]) + [f"eu-centre-{i:03d}" for i in range(sites)]
    return [*named[: sites - 1], MODEL["tiny_site_id"]] if sites >= 3 else named[:sites]


def site_sizes(sites: int, patients: int) -> list[int]:
    """Split ``sites * patients`` into sites of different sizes (the last tiny when >= 3)."""
    if sites < 1 or patients < 1:
        raise ValueError("sites and patients must be at least 1")
    rest = sites * patients - TINY_SITE_PATIENTS * (tiny := sites >= 3)
    w = np.resize(np.array(MODEL["size_weights"]), sites - tiny)  # repeats cyclically
    sizes = np.maximum(np.floor(rest * w / w.sum()).astype(int), 1)
    sizes[0] += max(rest - int(sizes.sum()), 0)
    return [int(s) for s in sizes] + ([TINY_SITE_PATIENTS] if tiny else [])


def synthesize(out_dir: Path, sites: int = 4, patients: int = 300, seed: int = 0,
               today: date | None = None, fmt: str = "csv",
               progress: Callable[[str, int, int], None] | None = None) -> list[SiteFolder]:
    """Write one data folder per site (named by site id) under ``out_dir``; return them in order.

    Sites hold about ``patients`` each but differ in size; with three or more sites the last
    has 8 (below the default min_cohort). Same arguments, same bytes. ``today`` is the data
    cut (default 2026-06-30); ``progress(site_id, done, total)`` is called after each site.
    """
    out: list[SiteFolder] = []
    for i, (sid, n) in enumerate(zip(site_ids(sites), site_sizes(sites, patients), strict=True)):
        out.append(synthesize_site(Path(out_dir) / sid, sid, n, seed, today, fmt, site_index=i))
        if progress is not None:
            progress(sid, i + 1, sites)
    return out


def synthesize_site(path: Path, site_id: str, patients: int, seed: int = 0,
                    today: date | None = None, fmt: str = "csv",
                    site_index: int = 0) -> SiteFolder:
    """Write one site folder with exactly ``patients`` patients, seeded by (seed, site_index)."""
    if fmt not in ("csv", "parquet") or patients < 1:
        raise ValueError(f"need fmt 'csv' or 'parquet' and patients >= 1, not {fmt!r}, {patients}")
    today = today or DEFAULT_TODAY
    last = min(_LAST, date.fromordinal(today.toordinal() - 1))
    if last < _FIRST:
        raise ValueError(f"data cut {today} is before the first infusion date {_FIRST}")
    rng = np.random.default_rng([seed, site_index])
    c = _outcomes(rng, _cohort(rng, patients, last))
    iid, pids = (_ids(x, np.arange(1, patients + 1), max(6, len(str(patients)))) for x in "IP")

    def table(rows: _Rows) -> pa.Table:
        return pa.table({"infusion_id": iid.take(pa.array(rows[0])), **rows[1]})

    tables = {"patients": pa.table({"patient_id": pids, "sex": _labels(c["sex"], "FMU"),
                                    "birth_year": c["year"] - c["age"]}),
              "infusions": _infusions(rng, c, site_id, iid, pids),
              "followup": table(_followup(rng, c, today.toordinal() - _EPOCH)),  # sets end
              "clinical_events": table(_events(rng, c)),
              "adverse_events": table(_adverse_events(rng, c)),
              "responses": table(_responses(rng, c)),
              "baseline_measurements": table(_labs(rng, c))}
    (path := Path(path)).mkdir(parents=True, exist_ok=True)
    opts = pacsv.WriteOptions(quoting_style="none", quoting_header="none")
    for name, table in tables.items():
        (path / f"{name}.{'parquet' if fmt == 'csv' else 'csv'}").unlink(missing_ok=True)
        write = pq.write_table if fmt == "parquet" else partial(pacsv.write_csv, write_options=opts)
        write(table, path / f"{name}.{fmt}")
    log.info("synthesised %s: %d patients in %s", site_id, patients, path)
    return SiteFolder(site_id, path, patients)


def _lognormal(rng: np.random.Generator, median: Any, sigma: Any, n: int,
               lo: int | None = None, hi: int = 10**6) -> np.ndarray:
    """Lognormal draws; with ``lo`` given, whole days clipped to ``[lo, hi]``."""
    x = np.asarray(median) * np.exp(np.asarray(sigma) * rng.standard_normal(n))
    return x if lo is None else np.clip(np.rint(x), lo, hi).astype(np.int64)


def _choice(rng: np.random.Generator, probs: Any, n: int) -> np.ndarray:
    """Draw ``n`` category codes with probabilities ``probs`` (1-d) or per row (2-d)."""
    cum = np.cumsum(probs, axis=-1) / np.sum(probs, axis=-1, keepdims=True)
    return np.minimum((rng.random(n)[:, None] >= cum).sum(axis=1), cum.shape[-1] - 1)


def _calibrated(lp: np.ndarray, target: float) -> np.ndarray:
    """Probabilities ``sigmoid(b + lp)`` whose mean is ``target`` (Newton steps on b)."""
    b = np.log(target / (1 - target)) - float(lp.mean())
    for _ in range(8):
        s = 1 / (1 + np.exp(-(b + lp)))
        b -= (s.mean() - target) / max(float((s * (1 - s)).mean()), 1e-9)
    return 1 / (1 + np.exp(-(b + lp)))


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pa.array(numbers).cast(pa.string()), width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _labels(codes: np.ndarray, labels: Any, valid: np.ndarray | None = None) -> pa.Array:
    idx = pa.array(codes, pa.int64(), mask=None if valid is None else ~valid)
    return pa.array(list(labels), pa.string()).take(idx)


def _dates(origin: np.ndarray, days: Any, valid: np.ndarray | None = None) -> pa.Array:
    return pa.array((origin + np.asarray(days)).astype(np.int32), pa.date32(),
                    mask=None if valid is None else ~valid)


def _gather(parts: list[tuple[np.ndarray, dict[str, Any]]], *order: str) -> _Rows:
    """Per-patient candidate rows ``(mask, columns)`` -> rows by patient, then ``order``."""
    n, width = len(parts[0][0]), len(parts)
    flat = np.flatnonzero(np.stack([m for m, _ in parts], axis=1))
    cols = {k: np.stack([np.broadcast_to(np.asarray(v[k]), (n,)) for _, v in parts],
                        axis=1).ravel().take(flat) for k in parts[0][1]}
    pid, key = flat // width, flat // width
    for k in order:  # one int64 key: patient, then the order columns (small ints >= 0)
        key = key * (int(cols[k].max(initial=0)) + 1) + cols[k]
    sort = np.argsort(key, kind="stable") if order else slice(None)
    return pid[sort], {k: v[sort] for k, v in cols.items()}


def _cohort(rng: np.random.Generator, n: int, last: date) -> _Arrays:
    c: _Arrays = {"n": np.array(n), "ind": _choice(rng, _I["share"], n)}
    first, span = _FIRST.toordinal(), last.toordinal() - _FIRST.toordinal()
    x = np.where(rng.random(n) < 0.35, rng.random(n), np.sqrt(rng.random(n)))  # uptake grows
    c["inf"] = first - _EPOCH + np.floor(x * (span + 1)).astype(np.int64)
    since = _P["since"].astype("datetime64[D]").astype(np.int64)  # authorisation dates
    c["prod"] = np.zeros(n, np.int64)
    for k, ind in enumerate(_IND):  # product mix varies a little between sites
        members = np.flatnonzero(_P["group"] == ind["group"])
        w = _P["share"][members] * rng.gamma(60.0, 1 / 60, len(members))
        idx = np.flatnonzero(c["ind"] == k)
        c["prod"][idx] = members[_choice(rng, w, len(idx))]
        idx = idx[c["inf"][idx] < since[c["prod"][idx]]]  # not yet authorised: HE or trial
        ready = since[members] <= first - _EPOCH
        c["prod"][idx] = members[ready][_choice(rng, w[ready], len(idx))]
    ab = _I["age_beta"][c["ind"]]
    c["age"] = 18 + np.floor(63 * rng.beta(ab[:, 0], ab[:, 1])).astype(np.int64)
    c["year"] = c["inf"].astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    c["sex"], c["ecog"] = _choice(rng, (0.38, 0.615, 0.005), n), _choice(rng, (0.42, 0.48, 0.1), n)
    c["lines"] = np.minimum(2 + _choice(rng, (0.45, 0.30, 0.15, 0.10), n) + (c["ind"] == 2), 5)
    c["status"] = _choice(rng, (0.05, 0.2, 0.2, 0.5, 0.05), n)  # CR PR SD PD, 4 = missing
    c["z"] = rng.standard_normal(n)  # latent tumour burden and inflammation
    p_crs, p_icans = _P["crs"][c["prod"]], _P["icans"][c["prod"]]  # toxicity by product
    c["crs"] = rng.random(n) < p_crs
    c["crs_grade"] = 1 + _choice(rng, (0.5, 0.3, 0.15, 0.05), n)
    c["crs_onset"] = _lognormal(rng, 4.0, 0.5, n, 0, 14)
    k1 = (1 - 0.2 * (1 - p_crs)) / p_crs  # ICANS mostly follows CRS; marginal kept
    c["icans"] = rng.random(n) < p_icans * np.where(c["crs"], k1, 0.2)
    c["icans_grade"] = 1 + _choice(rng, (0.4, 0.25, 0.25, 0.10), n)
    onset = _lognormal(rng, 6.5, 0.45, n, 1, 28)
    after_crs = np.minimum(np.maximum(onset, c["crs_onset"] + 1), 28)
    c["icans_onset"] = np.where(c["crs"], after_crs, onset)
    c["iec"] = c["crs"] & (rng.random(n) < 0.04)
    c["iec_onset"] = c["crs_onset"] + rng.integers(5, 16, n)
    return c


def _outcomes(rng: np.random.Generator, c: _Arrays) -> _Arrays:
    n, ind, age, ecog = int(c["n"]), c["ind"], c["age"], c["ecog"]
    lp_durable = (-0.35 * (ecog == 1) - 0.8 * (ecog == 2) - 0.45 * c["z"]
                  - 0.12 * (c["lines"] - 2) + np.array([0.5, 0.2, 0.0, -0.4, 0.0])[c["status"]])
    lp_nrm = 0.03 * (age - 60) + 0.4 * (ecog == 2)
    p_durable, p_nrm = np.zeros(n), np.zeros(n)
    for k, d in enumerate(_IND):  # covariates shift risk; each group keeps its calibration
        if (m := ind == k).any():
            p_durable[m] = _calibrated(lp_durable[m], d["durable"])
            p_nrm[m] = _calibrated(lp_nrm[m], d["nrm"] / (1 - d["durable"]))
    durable = rng.random(n) < p_durable
    nrm = ~durable & (rng.random(n) < p_nrm)
    relapse = ~durable & ~nrm
    salvaged = relapse & (rng.random(n) < _I["salvage"][ind])
    rel, post = _I["relapse"][ind], _I["post"][ind]
    r = np.maximum(_lognormal(rng, rel[:, 0], rel[:, 1], n), 14)
    mix = [[MODEL["death_causes"][k].get(x, 0.0) for x in CAUSES]
           for k in ("durable", "non_relapse", "salvaged", "relapse")]
    cause = np.select([durable, nrm, salvaged], [_choice(rng, m, n) for m in mix[:3]],
                      _choice(rng, mix[3], n))
    crs_d, icans_d, iec_d = (nrm & (cause == CAUSES.index(x)) for x in ("CRS", "ICANS", "IEC_HS"))
    nrm_t = np.select([crs_d, icans_d, iec_d, cause == 1, cause == 5, cause == 6],
                      [c["crs_onset"] + 1 + _lognormal(rng, 6, 0.5, n),
                       c["icans_onset"] + 1 + _lognormal(rng, 9, 0.5, n),
                       c["iec_onset"] + 1 + _lognormal(rng, 9, 0.5, n),
                       5 + _lognormal(rng, 70, 1.0, n), 300 + _lognormal(rng, 400, 0.7, n),
                       _lognormal(rng, 120, 0.9, n)], _lognormal(rng, 220, 1.1, n))
    bg = 0.012 / 365.25 * np.exp(0.06 * (age - 60))  # background mortality per day
    t = np.select([durable, nrm, salvaged],
                  [rng.exponential(1 / bg), nrm_t, r + 30 + rng.exponential(1 / (3 * bg))],
                  r + _lognormal(rng, post[:, 0], post[:, 1], n))
    c["t"] = np.ceil(np.minimum(t, 1e6)).astype(np.int64)
    c["r"] = np.where(relapse, np.ceil(r), _NEVER).astype(np.int64)
    c["cause"], c["salvaged"], c["nrm"] = cause, salvaged, nrm
    c["crs"], c["icans"], c["iec"] = c["crs"] | crs_d, c["icans"] | icans_d, c["iec"] | iec_d
    c["crs_grade"] = np.where(crs_d, 4, c["crs_grade"])  # a toxicity death: grade 4 (ASTCT)
    c["icans_grade"] = np.where(icans_d, 4, c["icans_grade"])
    fatal_malignancy = cause == CAUSES.index("second_malignancy")
    late = _lognormal(rng, 700, 0.6, n, 60)
    early = np.maximum(c["t"] - rng.integers(30, 301, n), c["t"] // 2)
    c["malignancy"] = fatal_malignancy | ((rng.random(n) < 0.015) & (late < c["t"]))
    c["malignancy_day"] = np.where(fatal_malignancy, early, late)
    return c


def _followup(rng: np.random.Generator, c: _Arrays, today: int) -> _Rows:
    n, t = int(c["n"]), c["t"]
    horizon = today - c["inf"]
    sweep = np.maximum(horizon - rng.integers(0, 46, n), 1)  # vital-status check near the cut
    base = np.array([30, 100, 180] + [365 * k for k in range(1, int(horizon.max()) // 365 + 1)])
    jitter = np.minimum(base // 10, 30)
    visits = base + rng.integers(-jitter, jitter + 1, (n, len(base)))
    attended = (rng.random(visits.shape) >= 0.05) | (np.arange(len(base)) == 0)
    lost_at = np.minimum(100 + rng.exponential(700.0, n), sweep)
    last_seen = np.where(attended & (visits < lost_at[:, None]), visits, -1).max(axis=1)
    lost = (rng.random(n) < 0.04) & (last_seen >= 0)  # censored at the last visit attended
    cens = np.where(lost, last_seen, sweep)
    c["dead"] = dead = t <= cens
    c["end"] = np.where(dead, t, cens)
    keep = attended & (visits < t[:, None]) & np.where(lost[:, None], visits <= cens[:, None],
                                                       visits < sweep[:, None])
    final = (dead | ~lost)[:, None]  # a death, or the vital-status check
    pid, j = np.nonzero(np.hstack([keep, final]))  # visits precede the final row: in order
    day = np.hstack([visits, c["end"][:, None]])[pid, j]
    d = np.hstack([np.zeros_like(keep), dead[:, None]])[pid, j]
    origin = c["inf"][pid]
    return pid, {"contact_date": _dates(origin, day),
                 "vital_status": _labels(d.astype(np.int64), ("alive", "dead")),
                 "death_date": _dates(origin, day, d),
                 "cause_of_death": _labels(c["cause"][pid], CAUSES, d)}


def _events(rng: np.random.Generator, c: _Arrays) -> _Rows:
    n, r, end = int(c["n"]), c["r"], c["end"]
    seen = r <= end  # relapse or progression known at the site
    hct = rng.random(n) < np.where(c["salvaged"], 0.4, 0.05)
    parts = [(seen, {"event": 0, "day": r}),
             (seen & (rng.random(n) < 0.75), {"event": 1, "day": r + rng.integers(3, 22, n)}),
             (seen & hct, {"event": 2, "day": r + rng.integers(60, 151, n)}),
             (seen & (rng.random(n) < 0.05), {"event": 3, "day": r + rng.integers(60, 201, n)}),
             (c["malignancy"], {"event": 4, "day": c["malignancy_day"]})]
    pid, v = _gather([(m & (cols["day"] <= end), cols) for m, cols in parts], "day", "event")
    return pid, {"event": _labels(v["event"], EVENTS),
                 "event_date": _dates(c["inf"][pid], v["day"])}


def _adverse_events(rng: np.random.Generator, c: _Arrays) -> _Rows:
    n, end, dead, cause = int(c["n"]), c["end"], c["dead"], c["cause"]
    terms: list[str] = []
    meddra: list[str] = []
    parts: list[tuple[np.ndarray, dict[str, Any]]] = []

    def add(term: str, grading: str, mask: np.ndarray, grade: Any, onset: np.ndarray,
            duration: Any, pts: list[str]) -> None:
        terms.append(term)
        meddra.extend(p for p in pts if p not in meddra)
        res = onset + duration
        resolved = (np.asarray(duration) > 0) & (np.asarray(grade) < 5) & (res <= end)
        parts.append((mask & (onset <= end), {
            "term": len(terms) - 1, "grading": GRADINGS.index(grading), "grade": grade,
            "onset": onset, "res": np.where(resolved, res, -1),
            "meddra": np.array([meddra.index(p) for p in pts])[rng.integers(0, len(pts), n)],
            "serious": (np.asarray(grade) >= 3) | (rng.random(n) < 0.3)}))

    for term, key, dur in (("CRS", "crs", 6), ("ICANS", "icans", 5), ("IEC_HS", "iec", 14)):
        fatal = c["nrm"] & (cause == CAUSES.index(term))
        grade = c[f"{key}_grade"] if key != "iec" else np.where(
            fatal & dead, 5, 3 + (rng.random(n) < 0.4))
        add(term, "CTCAE5" if key == "iec" else "ASTCT2019", c[key], grade, c[f"{key}_onset"],
            np.where(fatal, 0, np.ceil(_lognormal(rng, dur, 0.6, n))), [MODEL["meddra"][term]])
    fatal = dead & (cause == CAUSES.index("second_malignancy"))
    add("second_malignancy", "CTCAE5", c["malignancy"], np.where(fatal, 5, 3 + (
        rng.random(n) < 0.4)), c["malignancy_day"], 0, MODEL["meddra"]["second_malignancy"])
    fatal_specs = [s for s in MODEL["adverse_events"] if "fatal_share" in s]
    kind = _choice(rng, [s["fatal_share"] for s in fatal_specs], n)
    died_of_infection = dead & (cause == CAUSES.index("infection"))
    for spec in MODEL["adverse_events"]:
        # kind never equals len(fatal_specs): terms without fatal_share have no fatal row
        fatal = died_of_infection & (kind == [*fatal_specs, spec].index(spec))
        median, sigma, lo, hi = spec["onset"]
        onset = _lognormal(rng, median, sigma, n, lo, hi)
        p = _calibrated(spec.get("risk", 0.0) * c["z"], spec["p"])
        dur_median, dur_sigma = spec["duration"]
        duration = np.where(rng.random(n) < spec["resolved"],
                            np.ceil(_lognormal(rng, dur_median, dur_sigma, n)), 0)
        grade = 1 + _choice(rng, spec["grades"], n)
        args = spec["term"], spec["grading"]
        add(*args, (rng.random(n) < p) & ~fatal, grade, onset, duration, spec["meddra"])
        add(*args, fatal, 5, np.maximum(c["t"] - rng.integers(0, 11, n), 0), 0, spec["meddra"])
    pid, v = _gather(parts, "onset", "term")
    origin = c["inf"][pid]
    return pid, {"term": _labels(v["term"], terms), "meddra_pt": _labels(v["meddra"], meddra),
                 "grading": _labels(v["grading"], GRADINGS), "max_grade": v["grade"],
                 "onset_date": _dates(origin, v["onset"]),
                 "resolution_date": _dates(origin, v["res"], v["res"] >= 0),
                 "serious": v["serious"]}


def _responses(rng: np.random.Generator, c: _Arrays) -> _Rows:
    n = int(c["n"])
    days = np.array([30, 90, 180]) + rng.integers([-3, -7, -14], [4, 8, 15], (n, 3))
    seen = (days <= c["end"][:, None]) & (rng.random((n, 3)) >= 0.05)
    probs = np.array([[0.7, 0.3, 0], [0.3, 0.45, 0.25], [0.4, 0.45, 0.15]])[
        np.where(c["nrm"], 2, c["r"] < _NEVER)]  # CR PR SD by durable, relapse, NRM; PD below
    resp = np.minimum.accumulate(np.stack([_choice(rng, probs, n) for _ in range(3)], axis=1),
                                 axis=1)  # responses deepen over time, until progression
    resp = np.where(c["r"][:, None] <= days, 3, resp)
    best = np.arange(3) == np.where(seen, resp, 9).argmin(axis=1)[:, None]  # first best row
    never = c["dead"] & ~seen.any(axis=1)  # died before any assessment: NE at death
    parts = [(seen[:, k], {"day": days[:, k], "resp": resp[:, k], "best": best[:, k]})
             for k in range(3)] + [(never, {"day": c["t"], "resp": 4, "best": True})]
    pid, v = _gather(parts)
    return pid, {"assessment_date": _dates(c["inf"][pid], v["day"]),
                 "response": _labels(v["resp"], RESPONSES), "best": v["best"]}


def _labs(rng: np.random.Generator, c: _Arrays) -> _Rows:
    n, labs = int(c["n"]), MODEL["labs"]
    parts: list[tuple[np.ndarray, dict[str, Any]]] = []
    for k, lab in enumerate(labs):  # log value = median + sigma * (risk * z + noise)
        noise = np.sqrt(1 - lab["risk"] ** 2) * rng.standard_normal(n)
        value = lab["median"] * np.exp(lab["sigma"] * (lab["risk"] * c["z"] + noise))
        parts.append((rng.random(n) >= 0.04, {"m": k, "day": -rng.integers(0, 15, n),
                                               "value": np.round(value, lab["decimals"])}))
        if lab.get("screening"):  # an earlier screening value; the later one counts
            earlier = np.round(value * np.exp(0.2 * rng.standard_normal(n)), lab["decimals"])
            parts.append((rng.random(n) < 0.3,
                          {"m": k, "day": -rng.integers(15, 31, n), "value": earlier}))
    pid, v = _gather(parts)
    return pid, {"measurement": _labels(v["m"], [lab["measurement"] for lab in labs]),
                 "value": v["value"], "unit": _labels(v["m"], [lab["unit"] for lab in labs]),
                 "day": v["day"]}


def _infusions(rng: np.random.Generator, c: _Arrays, site_id: str, iid: pa.Array,
               pids: pa.Array) -> pa.Table:
    n, prod, ind = int(c["n"]), c["prod"], c["ind"]
    yy = pc.utf8_lpad(pa.array(c["year"] % 100).cast(pa.string()), 2, padding="0")
    serial = _ids("", rng.permutation(n) + 1, max(6, len(str(n))))  # unique per patient
    makers = [p["maker"] or f"{site_id} GMP unit" for p in _PROD]
    return pa.table({
        "infusion_id": iid, "patient_id": pids,
        "infusion_date": _dates(c["inf"], 0), "product": _labels(prod, _P["name"]),
        "atmp_class": pa.repeat("GTMP", n), "route": _labels(prod, _P["route"]),
        "origin": pa.repeat("autologous", n),
        "batch_id": pc.binary_join_element_wise(site_id.upper()[:6], yy, serial, "-"),
        "indication_icd10": _labels(ind, _I["icd10"]),
        "indication_group": _labels(ind, _I["group"]),
        "disease_status": _labels(c["status"], RESPONSES[:4], c["status"] < 4),
        "prior_lines": c["lines"], "ecog": c["ecog"], "manufacturing_site": _labels(prod, makers)})
