"""Benchmark: one node answering a Kaplan-Meier study, against a columnar reference query.

Builds (or reuses, cached under ``--cache``, default ``/tmp/heron-node-answer``) a synthetic
site of N patients (default 1,000,000; :func:`heron.synth.synthesize_site` then the node's
ingestion), then times, in one run, the variants below. Every measurement is a fresh
subprocess; the variants are taken in turn (A B C A B C ...) so a drift of the machine touches
all of them alike. For each variant it prints the wall time of the measured step (min, median,
max, in s) and the peak resident memory of its process (VmHWM; min and max over the runs, in
MB), then the ratio of the node's median to the reference's median.

``heron``
    :meth:`node.runtime.engine.NodeEngine.answer` of one KM study (overall survival of the
    LBCL cohort, unmasked, horizon 1826 days) on the real store, under the default policy, with
    an audit trail and a disclosure ledger (both fresh per measurement): verification, cohort,
    endpoint, counts, disclosure rules, ledger, audit.
``heron-2nd``
    the same node answering a second study (another id, the same cohort and endpoint) on the
    same snapshot, after the first: only the second answer is timed.
``columnar``
    the reference: pyarrow reads only the columns needed (4 of infusions, 4 of followup),
    numpy computes each infusion's duration and event, ``np.bincount`` the per-day events and
    censorings. The synthetic data have one infusion per patient (checked), so the reference
    skips the first-infusion rule. ``--check`` compares its counts with the node's endpoint
    (:func:`node.cohorts.endpoints.survival_endpoint`) before timing.

``duckdb`` (with ``--duckdb``)
    the same cohort, endpoint and counts as one DuckDB SQL query over the Parquet files (the
    other engine the issue names; the node does not use it).

A store of more than 1M patients is synthesised and ingested in parts of 1M whole patients
(:func:`node.ingestion.parts.ingest_parts`); ``--patients 10000000`` takes about 25 minutes on
a loaded 2-core machine and is cached like the others.

``--pools`` runs every variant once per Arrow memory pool (``ARROW_DEFAULT_MEMORY_POOL``
in the child's environment; ``default`` leaves the environment alone); every child prints the
pool it used.

Run: ``.venv/bin/python benchmarks/node_answer.py [--patients 1000000] [--repeats 5]
[--pools default,mimalloc] [--check]`` (quick: ``--patients 20000 --repeats 3 --check``)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HORIZON = 1826
GROUP = "LBCL"
_NS_PER_DAY = 86_400 * 10**9


def build_store(cache: Path, patients: int) -> Path:
    """The store of a synthetic site of ``patients`` patients (built once, then reused), with
    its facts and the ledger digests under the site's ledger salt (``ledger.salt`` next to the
    store), as ``heron node ingest`` leaves it."""
    work = cache / f"p{patients}"
    store = work / "nodes" / "site-01" / "store"
    if (store / "current").is_symlink():
        print(f"reusing the store of {patients:,} patients at {store}", flush=True)
    elif patients > PART:
        _build_in_parts(work, store, patients)
    else:
        from heron.simulation import synthetic_sites
        print(f"building a store of {patients:,} patients under {work}", flush=True)
        synthetic_sites(work, [patients], prefix="site", progress=print)
    _derive(store)
    return store


PART = 1_000_000


def _build_in_parts(work: Path, store: Path, patients: int) -> None:
    """A store too large to ingest at once: synthesised in parts of ``PART`` patients (ids
    made distinct by a part prefix), ingested with :func:`node.ingestion.parts.ingest_parts`,
    one part in memory at a time; the part folders are removed afterwards."""
    import shutil

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from heron.synth import synthesize_site
    from node.governance.ledger import load_or_create_salt
    from node.ingestion.parts import ingest_parts
    from node.ingestion.pseudonym import load_or_create_secret
    print(f"building a store of {patients:,} patients in parts of {PART:,} under {work}",
          flush=True)
    t0 = time.perf_counter()
    folders = []
    for k, start in enumerate(range(0, patients, PART)):
        folder = synthesize_site(work / "parts" / f"part-{k:02d}", "site-01",
                                 min(PART, patients - start), seed=100, fmt="parquet",
                                 site_index=k).path
        for path in folder.glob("*.parquet"):
            table = pq.read_table(path)
            for col in ("infusion_id", "patient_id"):
                if col in table.column_names:
                    prefixed = pc.binary_join_element_wise(
                        pa.scalar(f"{col[0].upper()}{k:03d}-"),
                        table[col].cast(pa.string()), "")
                    table = table.set_column(table.schema.get_field_index(col), col, prefixed)
            pq.write_table(table, path)
        folders.append(folder)
        print(f"  part {k}: synthesised ({time.perf_counter() - t0:.0f} s)", flush=True)
    node_dir = store.parent
    node_dir.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    ingest_parts(folders, store, load_or_create_secret(node_dir / "secret"),
                 ledger_salt=load_or_create_salt(node_dir / "ledger.salt"),
                 progress=lambda msg: None)
    print(f"  ingested {len(folders)} parts in {time.perf_counter() - t1:.0f} s "
          f"(synthesis and ingestion {time.perf_counter() - t0:.0f} s; peak RSS of this "
          f"process {_peak_mb():.0f} MB)", flush=True)
    shutil.rmtree(work / "parts", ignore_errors=True)


def _ledger(store: Path, work: Path) -> Any:
    from node.governance.ledger import DisclosureLedger, load_or_create_salt
    return DisclosureLedger(work / "ledger", load_or_create_salt(store.parent / "ledger.salt"))


def _derive(store: Path) -> None:
    """Add the facts and ledger digests to a store made before they existed (once)."""
    import numpy as np

    from node.ingestion.store import open_store
    snap = open_store(store)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ledger = _ledger(store, Path(tmp))
        kept = snap.ledger_digests(ledger, snap.facts())
        path = snap.path / f"ledger-{ledger.fingerprint}.npz"
        with np.load(path) as npz:
            older = npz["rows"].dtype != kept.rows.dtype
        if older:  # written before the row numbers were int32: as an ingestion now writes it
            kept.save(path)
    if time.perf_counter() - t0 > 1:
        print(f"derived the snapshot's facts and ledger digests in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)


# --- the measured steps (run in the child) -------------------------------------------------


def _studies() -> tuple[Any, Any]:
    from heron.simulation import make_study
    km = [{"name": "os", "kind": "kaplan_meier", "endpoint": "overall_survival"}]
    return (make_study("bench-node-1", km, horizon=HORIZON, min_sites=1),
            make_study("bench-node-2", km, horizon=HORIZON, min_sites=1))


def _engine(store: Path, work: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from node.governance.audit import AuditTrail
    from node.governance.policy import default_policy
    from node.ingestion.store import open_store
    from node.runtime.engine import NodeEngine
    from protocol.signing import sign_study
    key = Ed25519PrivateKey.generate()
    engine = NodeEngine("site-01", default_policy(), [key.public_key()],
                        lambda: open_store(store), AuditTrail(work / "audit.jsonl"),
                        ledger=_ledger(store, work))
    return engine, lambda study: sign_study(study, key)


def _answer(engine: Any, signed: Any, study: Any) -> float:
    """Seconds of the node's answer to the study's first round (one summary per analysis)."""
    from protocol.rounds import summary_requests
    requests = summary_requests(study)
    t0 = time.perf_counter()
    out = engine.answer(study.id, signed, 1, requests)
    seconds = time.perf_counter() - t0
    if out.refusal or len(out.releases) != len(requests) or any(r.error for r in out.releases):
        raise SystemExit(f"node refused: {out.refusal or [r.error for r in out.releases]}")
    return seconds


def measure_heron(store: Path, second: bool) -> float:
    """Seconds of one answer (the second study's when ``second``)."""
    first, other = _studies()
    with tempfile.TemporaryDirectory() as tmp:
        engine, sign = _engine(store, Path(tmp))
        signed = [sign(first), sign(other)]
        seconds = _answer(engine, signed[0], first)
        if second:
            seconds = _answer(engine, signed[1], other)
    return seconds


def columnar_counts(store: Path, today: dt.date) -> tuple[Any, Any, int]:
    """(events per day, censorings per day, cohort size) of the LBCL cohort's overall survival,
    read column by column with pyarrow and computed with numpy."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    snap = (store / "current").resolve()
    inf = pq.read_table(snap / "infusions.parquet",
                        columns=["infusion_id", "patient_id", "infusion_date", "indication_group"])
    keep = pc.and_(pc.equal(inf["indication_group"], GROUP),
                   pc.less_equal(inf["infusion_date"], pa_timestamp(today)))
    inf = inf.filter(pc.fill_null(keep, False))
    if pc.count_distinct(inf["patient_id"]).as_py() != inf.num_rows:
        raise SystemExit("the reference assumes one infusion per patient")
    ids = inf["infusion_id"]
    t0 = _day_numbers(inf["infusion_date"])
    fu = pq.read_table(snap / "followup.parquet",
                       columns=["infusion_id", "contact_date", "vital_status", "death_date"])
    pos = pc.index_in(fu["infusion_id"], value_set=ids.combine_chunks())
    pos = pos.to_numpy(zero_copy_only=False)
    sel = ~np.isnan(pos) if pos.dtype.kind == "f" else np.ones(len(pos), bool)
    pos = np.nan_to_num(pos).astype(np.int64)[sel]
    n = inf.num_rows
    contact = _day_numbers(fu["contact_date"])[sel] - t0[pos]
    latest = np.full(n, -np.inf)
    ok = ~np.isnan(contact)
    np.maximum.at(latest, pos[ok], contact[ok])
    dead = pc.fill_null(pc.equal(fu["vital_status"], "dead"), False).to_numpy(
        zero_copy_only=False)[sel]
    death = _day_numbers(fu["death_date"])[sel] - t0[pos]
    on_latest = contact == latest[pos]
    death_day = np.full(n, np.inf)
    d = dead & on_latest & ~np.isnan(death)
    np.minimum.at(death_day, pos[d], death[d])
    last = np.where(np.isneginf(latest), 0.0, latest)
    event = np.isfinite(death_day)
    duration = np.where(event, death_day, last)
    beyond = duration > HORIZON
    duration = np.maximum(np.where(beyond, HORIZON, duration), 0).astype(np.int64)
    event &= ~beyond
    events = np.bincount(duration[event], minlength=HORIZON + 1)
    censored = np.bincount(duration[~event], minlength=HORIZON + 1)
    return events, censored, n


def pa_timestamp(day: dt.date) -> Any:
    import pyarrow as pa
    return pa.scalar(dt.datetime(day.year, day.month, day.day), pa.timestamp("ns"))


def _day_numbers(col: Any) -> Any:
    """Days since 1970-01-01 as float (NaN where missing) of an Arrow timestamp column."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    days = pc.cast(pc.cast(col, pa.date32()), pa.int32())
    out = pc.fill_null(days, 0).to_numpy().astype(np.float64)
    if days.null_count:
        out[pc.is_null(days).to_numpy(zero_copy_only=False)] = np.nan
    return out


_DUCKDB_SQL = """
WITH inf AS (
  SELECT infusion_id, CAST(infusion_date AS DATE) AS d0
  FROM read_parquet('{snap}/infusions.parquet')
  WHERE indication_group = '{group}' AND CAST(infusion_date AS DATE) <= DATE '{today}'),
fu AS (
  SELECT f.infusion_id, date_diff('day', i.d0, CAST(f.contact_date AS DATE)) AS c,
         coalesce(f.vital_status = 'dead', false) AS dead,
         date_diff('day', i.d0, CAST(f.death_date AS DATE)) AS dd
  FROM read_parquet('{snap}/followup.parquet') f JOIN inf i USING (infusion_id)),
lat AS (SELECT infusion_id, max(c) AS latest FROM fu GROUP BY infusion_id),
death AS (SELECT fu.infusion_id, min(dd) AS death FROM fu JOIN lat USING (infusion_id)
          WHERE dead AND c = latest AND dd IS NOT NULL GROUP BY fu.infusion_id),
per AS (SELECT coalesce(l.latest, 0) AS last, d.death FROM inf i
        LEFT JOIN lat l USING (infusion_id) LEFT JOIN death d USING (infusion_id)),
dur AS (SELECT coalesce(death, last) AS t, death IS NOT NULL AS ev FROM per)
SELECT greatest(least(t, {h}), 0) AS day, ev AND t <= {h} AS event, count(*) AS n
FROM dur GROUP BY ALL
"""


def duckdb_counts(store: Path, today: dt.date) -> tuple[Any, Any, int]:
    """The same counts as :func:`columnar_counts`, as one DuckDB query over the Parquet
    files (the other candidate engine of issue 9; measured, not used by the node)."""
    import duckdb
    import numpy as np
    snap = (store / "current").resolve()
    rows = duckdb.sql(_DUCKDB_SQL.format(snap=snap, group=GROUP, today=today.isoformat(),
                                         h=HORIZON)).fetchnumpy()
    day, event, n = (np.asarray(rows[k]) for k in ("day", "event", "n"))
    events = np.bincount(day[event].astype(np.int64), n[event], minlength=HORIZON + 1)
    censored = np.bincount(day[~event].astype(np.int64), n[~event], minlength=HORIZON + 1)
    return events.astype(np.int64), censored.astype(np.int64), int(n.sum())


def measure_duckdb(store: Path) -> float:
    """Seconds of the DuckDB reference (its import done before)."""
    import duckdb  # noqa: F401
    t0 = time.perf_counter()
    duckdb_counts(store, dt.date.today())
    return time.perf_counter() - t0


def measure_columnar(store: Path) -> float:
    """Seconds of the reference (its imports done before)."""
    import numpy  # noqa: F401
    import pyarrow.compute
    import pyarrow.parquet  # noqa: F401
    t0 = time.perf_counter()
    columnar_counts(store, dt.date.today())
    return time.perf_counter() - t0


def check(store: Path) -> None:
    """Assert the reference counts equal the node's own endpoint and counts."""
    import numpy as np

    from analytics import survival_counts
    from heron.simulation import make_study
    from node.cohorts.cohort import select_cohort
    from node.cohorts.endpoints import survival_endpoint
    from node.ingestion.store import open_store
    study = make_study("check", [{"name": "os", "kind": "kaplan_meier",
                                  "endpoint": "overall_survival"}], horizon=HORIZON)
    tables = open_store(store)
    cohort = select_cohort(tables, study.cohort)
    frame = survival_endpoint(tables, cohort, "overall_survival", HORIZON)
    counts = survival_counts(frame["duration"].to_numpy(), frame["event"].to_numpy(), HORIZON)
    for name, reference in (("columnar", columnar_counts), ("duckdb", duckdb_counts)):
        events, censored, n = reference(store, dt.date.today())
        assert n == len(cohort), (name, n, len(cohort))
        assert np.array_equal(np.asarray(counts.events), events[:len(counts.events)]), name
        assert np.array_equal(np.asarray(counts.censored), censored[:len(counts.censored)]), name
        print(f"check: the {name} reference's counts equal the node's ({n:,} infusions in "
              "the cohort)")


def child(variant: str, store: Path) -> None:
    import pyarrow as pa
    if variant == "columnar":
        seconds = measure_columnar(store)
    elif variant == "duckdb":
        seconds = measure_duckdb(store)
    else:
        seconds = measure_heron(store, second=variant == "heron-2nd")
    print(json.dumps({"seconds": seconds, "pool": pa.default_memory_pool().backend_name,
                      "peak_mb": _peak_mb()}))


def _peak_mb() -> float:
    """This process' peak resident memory (VmHWM: unlike ``ru_maxrss`` it does not carry the
    parent's peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the driver ------------------------------------------------------------------------------


def _run(variant: str, store: Path, pool: str) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, pool name) of one measurement in a fresh process."""
    env = dict(os.environ)
    if pool != "default":
        env["ARROW_DEFAULT_MEMORY_POOL"] = pool
    proc = subprocess.Popen([sys.executable, __file__, "--child", variant, "--store", str(store)],
                            stdout=subprocess.PIPE, env=env, cwd=Path(__file__).parent.parent)
    assert proc.stdout is not None
    out = proc.stdout.read()
    if proc.wait():
        raise SystemExit(f"{variant} failed (exit {proc.returncode})")
    got = json.loads(out.decode().strip().splitlines()[-1])
    return float(got["seconds"]), float(got["peak_mb"]), str(got["pool"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir())
                        / "heron-node-answer")
    parser.add_argument("--pools", default="default",
                        help="comma-separated Arrow memory pools "
                             "(default, mimalloc, jemalloc, system)")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--duckdb", action="store_true",
                        help="also time the same cohort and counts as one DuckDB query")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.store)
        return
    t0 = time.perf_counter()
    store = build_store(args.cache, args.patients)
    print(f"store ready in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.check:
        check(store)
    kinds = ("heron", "heron-2nd", "columnar", *(("duckdb",) if args.duckdb else ()))
    variants = [(f"{v}[{p}]" if p != "default" or "," in args.pools else v, v, p)
                for p in args.pools.split(",") for v in kinds]
    results: dict[str, list[tuple[float, float, str]]] = {name: [] for name, _, _ in variants}
    for _ in range(args.repeats):
        for name, variant, pool in variants:
            results[name].append(_run(variant, store, pool))
    print(f"node answer, {args.patients:,} patients, {args.repeats} runs per variant")
    print(f"  {'variant':24s} {'min':>7s} {'median':>7s} {'max':>7s}   {'peak RSS MB':>13s}  pool")
    medians = {}
    for name, runs in results.items():
        secs = sorted(r[0] for r in runs)
        rss = sorted(r[1] for r in runs)
        medians[name] = statistics.median(secs)
        print(f"  {name:24s} {secs[0]:7.3f} {medians[name]:7.3f} {secs[-1]:7.3f}   "
              f"{rss[0]:6.0f}-{rss[-1]:<6.0f}  {runs[0][2]}")
    for name, variant, _pool in variants:
        if variant == "heron":
            ref = name.replace("heron", "columnar")
            ratios = sorted(h[0] / c[0] for h, c in zip(results[name], results[ref],
                                                         strict=True))
            print(f"  ratio {name} / {ref} (medians): {medians[name] / medians[ref]:.2f} "
                  f"(target <= 1.5; per run, taken side by side: {ratios[0]:.2f}-"
                  f"{ratios[-1]:.2f})")
            duck = name.replace("heron", "duckdb")
            if duck in medians:
                print(f"  ratio {name} / {duck} (medians): {medians[name] / medians[duck]:.2f}")
        if variant == "heron-2nd":
            print(f"  {name}: median {medians[name] * 1000:.0f} ms (target <= 100 ms)")
    peak = max(r[1] for name, runs in results.items() if name.startswith("heron")
               for r in runs)
    print(f"  peak RSS of the node's answers: {peak:.0f} MB "
          f"({args.patients:,} patients; target at 10M: <= 2048 MB)")


if __name__ == "__main__":
    main()
