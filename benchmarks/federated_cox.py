"""Benchmark: federated Cox regression on a running loopback network versus lifelines.

Prints, for S sites x N patients (default 3 x 200,000) and 5 covariates, the wall time of the
federated Cox study (submit to results; by default aggregator and nodes as subprocesses talking
gRPC over mutual TLS, see ``--runtime`` in federated_km.py), lifelines' CoxPHFitter on the
pooled individual data in the same run, their ratio, the number of Newton steps, and the time
per round trip (from the aggregator's round records).

Run: ``.venv/bin/python benchmarks/federated_cox.py [--patients 200000] [--sites 3]
[--runtime daemons|grpc|inprocess]`` (quick: ``--patients 3000``; run it as a script: it
imports its sibling federated_km)
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
from federated_km import BENCH_RUNTIMES, RUNTIME_HELP, start_network
from lifelines import CoxPHFitter

from heron.simulation import make_study, pooled_cox_data

REFERENCE_TODAY = dt.date(2026, 11, 1)  # the calendar of the pooled reference data

COVARIATES = ["age_at_infusion", "sex", "ecog", "prior_lines", "lab:LDH"]


def round_times(db: Path, study_id: str) -> list[float]:
    """Seconds between the last answers of consecutive Newton rounds (one Newton step each).

    Round 1, where the sites describe their part of the model, is no Newton step and is left
    out, as before the one study runtime (whose round_tasks held only the rounds after it).
    """
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT round, MAX(updated_at) FROM round_tasks WHERE study_id=?"
                            " AND round > 1 AND state='answered' GROUP BY round ORDER BY round",
                            (study_id,)).fetchall()
    ends = [r[1] for r in rows]
    return [b - a for a, b in itertools.pairwise(ends)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--patients", type=int, default=200_000)
    parser.add_argument("--runtime", choices=BENCH_RUNTIMES, default="daemons",
                        help=RUNTIME_HELP)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        print(f"federated Cox: {args.sites} sites x {args.patients:,} patients, "
              f"covariates {', '.join(COVARIATES)}", flush=True)
        net, stores = start_network(work / "cox", [args.patients] * args.sites, "site",
                                    args.runtime)
        study = make_study("bench-cox", [{"name": "cox", "kind": "cox",
                                          "endpoint": "overall_survival",
                                          "covariates": COVARIATES}],
                           min_sites=args.sites, cohort={})
        try:
            t0 = time.perf_counter()
            results = net.run(study, timeout_s=1800)
            federated_s = time.perf_counter() - t0
        finally:
            net.close()
        got = results["analyses"]["cox"]
        steps = round_times(net.db_path, study.id)
        t0 = time.perf_counter()
        data = pooled_cox_data(stores, study, COVARIATES, today=REFERENCE_TODAY)
        prepare_s = time.perf_counter() - t0
        coded = data.drop(columns="site").assign(
            sex_M=(data["sex"] == "M").astype(float), sex_U=(data["sex"] == "U").astype(float)
        ).drop(columns="sex").astype(float)
        t0 = time.perf_counter()
        cph = CoxPHFitter().fit(coded, "duration", "event")
        lifelines_s = time.perf_counter() - t0
        ours = np.array([got["coefficients"][c]["coef"] for c in
                         ["age_at_infusion", "ecog", "prior_lines", "lab:LDH"]])
        theirs = cph.params_[["age_at_infusion", "ecog", "prior_lines", "lab:LDH"]].to_numpy()
        print(f"  patients in the model (complete cases): {got['n']:,}; events {got['events']:,}")
        print(f"  federated Cox study (submit->results):  {federated_s:.2f} s")
        print(f"  lifelines CoxPHFitter on pooled data:   {lifelines_s:.2f} s (fit only)")
        print(f"  ratio federated / lifelines fit:        {federated_s / lifelines_s:.2f}")
        print(f"  pooled data read from the stores:       {prepare_s:.2f} s (one process)")
        print(f"  Newton steps: {got['iterations']}; network rounds after the first: "
              f"{len(steps) + 1}")
        print(f"  time per Newton round trip: median {np.median(steps) * 1000:.0f} ms "
              f"(min {min(steps) * 1000:.0f}, max {max(steps) * 1000:.0f})")
        print(f"  max |coef federated - coef lifelines| (numeric covariates): "
              f"{np.max(np.abs(ours - theirs)):.1e}")


if __name__ == "__main__":
    main()
