"""Benchmark: federated Cox regression on a running loopback network versus lifelines.

For S sites x N patients (default 3 x 200,000) and 5 covariates (6 design columns), in one run
and ``--repeats`` times (default 3), side by side:

* the federated Cox study, submit to results (by default aggregator and nodes as subprocesses
  talking gRPC over mutual TLS, see ``--runtime`` in federated_km.py): **cold**, on freshly
  started node processes (nothing cached: the first study a node answers), and **warm**, a
  second study on the same snapshot (cohort, endpoint and design cached by the node);
* lifelines' ``CoxPHFitter`` on the pooled arrays (fit only), and the ratio of each federated
  time to it (target: cold <= 2x);
* per Newton round: the wall time between the last answers of consecutive rounds, and the bytes
  each site sends (its answer, as serialized) and receives (the previous round's releases of
  the other sites, relayed in base64, which it checks before it answers: docs/threat-model.md,
  attack 3);
* a site's per-round sums (``CoxRows.day_stats``, subjects sorted once) against per-round
  ``bincount`` sums of the same arrays (the code before issue 9);
* the largest difference between the federated and lifelines coefficients (exactness tests:
  1e-6; day resolution, so the times are the same).

Run: ``.venv/bin/python benchmarks/federated_cox.py [--patients 200000] [--sites 3]
[--repeats 3] [--runtime daemons|grpc|inprocess]`` (quick: ``--patients 3000 --repeats 2``;
run it as a script: it imports its sibling federated_km). Only the daemons runtime restarts
its nodes between repeats; the others report every repeat after the first as warm.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import signal
import sqlite3
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from federated_km import BENCH_RUNTIMES, RUNTIME_HELP, DaemonNetwork, Network, start_network
from lifelines import CoxPHFitter

from analytics import cox_rows
from heron.simulation import make_study, pooled_cox_data
from node.runtime.config import NodeConfig
from protocol.study import Study

REFERENCE_TODAY = dt.date(2026, 11, 1)  # the calendar of the pooled reference data
COVARIATES = ["age_at_infusion", "sex", "ecog", "prior_lines", "lab:LDH"]
COLUMNS = {"age_at_infusion": "age_at_infusion", "sex=M": "sex_M", "sex=U": "sex_U",
           "ecog": "ecog", "prior_lines": "prior_lines", "lab:LDH": "lab:LDH"}


def _wire_size(blob: bytes) -> int:
    """Bytes of a stored answer as it was sent (the aggregator stores it zlib-compressed)."""
    return len(zlib.decompress(blob)) if blob[:1] == b"\x78" else len(blob)


def rounds(db: Path, study_id: str) -> tuple[list[float], list[float], list[float]]:
    """Per Newton round (round 1, the description, left out): seconds between the last
    answers of consecutive rounds, and the mean bytes a site sent (its answer) and received
    (the other sites' releases of the round before, relayed in base64: 4/3 of their size)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT round, updated_at, result FROM round_tasks WHERE"
                            " study_id=? AND round > 1 AND state='answered' ORDER BY round",
                            (study_id,)).fetchall()
    by_round: dict[int, list[tuple[float, int]]] = {}
    for number, at, blob in rows:
        by_round.setdefault(number, []).append((at, _wire_size(blob)))
    ends = [max(a for a, _ in answers) for _, answers in sorted(by_round.items())]
    sizes = [[n for _, n in answers] for _, answers in sorted(by_round.items())]
    sent = [float(np.mean(s)) for s in sizes]
    # round k + 1 relays to each site the other sites' releases of round k, in base64
    received = [(sum(s) - float(np.mean(s))) * 4 / 3 for s in sizes[:-1]]
    return [b - a for a, b in itertools.pairwise(ends)], sent, received


def restart_nodes(network: Network) -> bool:
    """Fresh node processes (nothing cached), reconnected; False for in-process runtimes."""
    if not isinstance(network, DaemonNetwork):
        return False
    net = network.net
    for proc in net.nodes.values():
        proc.send_signal(signal.SIGTERM)
    for proc in net.nodes.values():
        proc.wait(60)
    time.sleep(1.0)  # the aggregator sees the streams close
    for site in list(net.nodes):
        net.start_node(NodeConfig(node_dir=net.workspace / "nodes" / site, site_id=site,
                                  aggregator=net.target))
    with network.client() as c:
        c.wait_for_sites(set(net.nodes), timeout_s=300)
    return True


def bincount_day_stats(t: np.ndarray, e: np.ndarray, x: np.ndarray, b: np.ndarray,
                       horizon: int, c: np.ndarray) -> list[np.ndarray]:
    """Per-day sums recomputed from scratch, one ``bincount`` per moment (the earlier code)."""
    days, size = np.minimum(t, horizon), horizon + 1
    observed = e & (t <= horizon)
    xc = x - c
    w = np.exp(xc @ b)
    iu = np.triu_indices(x.shape[1])
    cols = np.column_stack([w, w[:, None] * xc, (w[:, None] * xc)[:, iu[0]] * xc[:, iu[1]]])
    out = []
    for rows in (slice(None), observed):
        sums = np.stack([np.bincount(days[rows], weights=cols[rows, k], minlength=size)
                         for k in range(cols.shape[1])], axis=1)
        out.append(sums)
    out[0] = np.cumsum(out[0][::-1], axis=0)[::-1]
    return out


def site_sums(site: pd.DataFrame, horizon: int, repeats: int) -> None:
    """A site's per-round sums: sorted once vs recomputed (same arrays, same process)."""
    t = site["duration"].to_numpy(dtype=np.int64)
    e = site["event"].to_numpy(dtype=bool)
    x = site[list(COLUMNS.values())].to_numpy(dtype=float)
    b, c = np.full(x.shape[1], 0.01), x.mean(axis=0)
    t0 = time.perf_counter()
    rows = cox_rows(t, e, x, horizon)
    sort_s = time.perf_counter() - t0
    ours, theirs = [], []
    for _ in range(max(repeats, 5)):
        t0 = time.perf_counter()
        got = rows.day_stats(b, c)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = bincount_day_stats(t, e, x, b, horizon, c)
        theirs.append(time.perf_counter() - t0)
    ratios = [a / r for a, r in zip(ours, theirs, strict=True)]
    same = np.allclose(got.s0, ref[0][:, 0], rtol=1e-10) and np.allclose(
        got.e2[:, 0, 0], ref[1][:, 1 + x.shape[1]], rtol=1e-10)
    print(f"  site sums per round ({len(t):,} complete cases, p = {x.shape[1]}): sorted once "
          f"{_range(ours, 1e3, 'ms')} (sort {sort_s * 1e3:.0f} ms, once per fit) vs bincount "
          f"{_range(theirs, 1e3, 'ms')}; ratio {_range(ratios)}; equal: {same}")


def _range(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    v = np.asarray(values) * scale
    digits = 0 if unit in ("ms", "kB") else 2
    return (f"median {np.median(v):.{digits}f}{' ' + unit if unit else ''} "
            f"(range {v.min():.{digits}f}-{v.max():.{digits}f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--patients", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtime", choices=BENCH_RUNTIMES, default="daemons",
                        help=RUNTIME_HELP)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        print(f"federated Cox: {args.sites} sites x {args.patients:,} patients, "
              f"covariates {', '.join(COVARIATES)}; runtime {args.runtime}", flush=True)
        net, stores = start_network(work / "cox", [args.patients] * args.sites, "site",
                                    args.runtime)
        try:
            run(net, stores, args)
        finally:
            net.close()


def run(net: Network, stores: dict[str, Path], args: argparse.Namespace) -> None:
    """The repeats (see the module docstring) and the figures."""
    def study(name: str) -> Study:
        return make_study(name, [{"name": "cox", "kind": "cox", "endpoint": "overall_survival",
                                  "covariates": COVARIATES}], min_sites=args.sites, cohort={})

    reference = study("bench-cox-ref")
    data = pooled_cox_data(stores, reference, COVARIATES, today=REFERENCE_TODAY)
    coded = data.drop(columns="site").assign(
        sex_M=(data["sex"] == "M").astype(float), sex_U=(data["sex"] == "U").astype(float)
    ).drop(columns="sex").astype(float)
    times: dict[str, list[float]] = {"cold": [], "warm": [], "lifelines": []}
    per_round: list[float] = []
    sent: list[float] = []
    received: list[float] = []
    got: dict[str, Any] = {}
    for r in range(args.repeats):
        cold = r == 0 or restart_nodes(net)
        for label in ("cold", "warm") if cold else ("warm",):
            s = study(f"bench-cox-{r}-{label}")
            t0 = time.perf_counter()
            results = net.run(s, timeout_s=1800)
            times[label].append(time.perf_counter() - t0)
            got = results["analyses"]["cox"]
            if "error" in got:
                raise SystemExit(f"the federated fit failed: {got['error']}")
            steps, up, down = rounds(net.db_path, s.id)
            per_round += steps
            sent += up
            received += down
        t0 = time.perf_counter()
        cph = CoxPHFitter().fit(coded, "duration", "event")
        times["lifelines"].append(time.perf_counter() - t0)
    ours = np.array([got["coefficients"][c]["coef"] for c in COLUMNS])
    theirs = cph.params_[list(COLUMNS.values())].to_numpy()
    lifelines = times["lifelines"]
    print(f"  patients in the model (complete cases): {got['n']:,}; events {got['events']:,}; "
          f"Newton steps {got['iterations']}; repeats {args.repeats}")
    print(f"  lifelines CoxPHFitter on the pooled arrays (fit): {_range(lifelines, 1, 's')}")
    for label in ("cold", "warm"):
        if not times[label]:
            continue
        n = len(times[label])
        ratios = [a / b for a, b in zip(times[label], lifelines[-n:], strict=True)]
        print(f"  federated Cox study, {label} (submit->results): "
              f"{_range(times[label], 1, 's')}; ratio to lifelines {_range(ratios)}"
              + (" (target <= 2)" if label == "cold" else ""))
    print(f"  time per Newton round trip: {_range(per_round, 1e3, 'ms')} over "
          f"{len(per_round)} rounds")
    print(f"  bytes per round and site (as sent, uncompressed): sent {_range(sent, 1e-3, 'kB')}, "
          f"received (relayed releases of the other sites, base64) {_range(received, 1e-3, 'kB')}")
    site_sums(data[data["site"] == data["site"].iloc[0]].assign(
        sex_M=lambda d: (d["sex"] == "M").astype(float),
        sex_U=lambda d: (d["sex"] == "U").astype(float)), reference.horizon_days, args.repeats)
    print(f"  max |coef federated - coef lifelines| (all {len(COLUMNS)} columns): "
          f"{np.max(np.abs(ours - theirs)):.1e} (exactness tests: 1e-6)")


if __name__ == "__main__":
    main()
