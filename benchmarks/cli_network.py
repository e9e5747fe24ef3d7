"""Benchmark: asking a running network through the CLI, against pooling the raw files.

The coordinator's question: overall survival (Kaplan-Meier) of the LBCL cohort over S sites
(default 4 x 97,500 patients on average, about 390,000 in all). Two ways to get the answer,
timed in turn (A B A B ...) in one run:

``network``
    the running network: an aggregator and one ``heron node run`` daemon per site, as
    subprocesses on loopback with mutual TLS (:class:`heron.network.LocalNetwork`), the sites'
    data ingested beforehand (untimed, as at a real site). The time is one command,
    ``heron study submit STUDY --wait`` in a fresh process (start, submit, the study's rounds at
    every node, completion pushed back): what a coordinator waits for. Each repeat submits a
    new signed study (another id, same content). With ``--poll`` the older way is timed too:
    ``heron study submit`` then ``heron study status`` every 0.1 s until ``completed``.
``pooled``
    the peer that needs the raw data in one place: a fresh process reads the needed columns of
    every site's raw Parquet files with pyarrow (4 of infusions, 4 of follow-up), derives each
    patient's overall survival from the first infusion with numpy, and fits lifelines'
    ``KaplanMeierFitter`` on the pooled arrays.

Both answers are compared (the largest difference between the two survival curves, printed) so
the two compute the same thing. The study runs with secure aggregation, the study format's
default (key exchange, screening and data rounds): the pooled curve is exact, so the difference
is 0. ``--unmasked`` runs it without: each site then coarsens its counts to time bins before
release (docs/threat-model.md), so the curves differ by the coarsening, and a site whose own
cohort is below its ``min_cohort`` refuses (the reference pools the sites that took part).

Run: ``.venv/bin/python benchmarks/cli_network.py [--sites 4] [--patients 97500]
[--repeats 5] [--unmasked] [--poll]`` (quick: ``--patients 1000 --repeats 2``)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HORIZON = 1826
GROUP = "LBCL"

_POOLED = r"""
import sys, json, datetime as dt
import numpy as np, pyarrow.compute as pc, pyarrow.parquet as pq
from lifelines import KaplanMeierFitter
folders, horizon, group = json.loads(sys.argv[1])
EPOCH = np.datetime64("1970-01-01", "D")

def days(col):
    arr = col.to_numpy(zero_copy_only=False).astype("datetime64[D]")
    out = (arr - EPOCH).astype("float64")
    out[np.isnat(arr)] = np.nan
    return out

durations, events = [], []
for folder in folders:
    inf = pq.read_table(f"{folder}/infusions.parquet",
                        columns=["infusion_id", "patient_id", "infusion_date", "indication_group"])
    t0 = days(inf["infusion_date"])
    patient = inf["patient_id"].to_numpy(zero_copy_only=False)
    order = np.lexsort((t0, patient))                   # each patient's first infusion
    first = order[np.r_[True, patient[order][1:] != patient[order][:-1]]]
    grp = inf["indication_group"].to_numpy(zero_copy_only=False)
    keep = first[grp[first] == group]
    ids = inf["infusion_id"].take(keep)
    t0 = t0[keep]
    fu = pq.read_table(f"{folder}/followup.parquet",
                       columns=["infusion_id", "contact_date", "vital_status", "death_date"])
    pos = pc.index_in(fu["infusion_id"], value_set=ids).to_numpy(zero_copy_only=False)
    sel = ~np.isnan(pos.astype("float64"))
    pos = np.nan_to_num(pos.astype("float64")).astype(np.int64)[sel]
    n = len(ids)
    contact = days(fu["contact_date"])[sel] - t0[pos]
    latest = np.full(n, -np.inf)
    ok = ~np.isnan(contact)
    np.maximum.at(latest, pos[ok], contact[ok])
    dead = (fu["vital_status"].to_numpy(zero_copy_only=False) == "dead")[sel]
    death = days(fu["death_date"])[sel] - t0[pos]
    death_day = np.full(n, np.inf)
    d = dead & (contact == latest[pos]) & ~np.isnan(death)
    np.minimum.at(death_day, pos[d], death[d])
    last = np.where(np.isneginf(latest), 0.0, latest)
    event = np.isfinite(death_day)
    duration = np.where(event, death_day, last)
    beyond = duration > horizon
    durations.append(np.maximum(np.where(beyond, horizon, duration), 0))
    events.append(event & ~beyond)
kmf = KaplanMeierFitter().fit(np.concatenate(durations), np.concatenate(events))
sf = kmf.survival_function_.iloc[:, 0]
print(json.dumps({"n": int(sum(len(x) for x in durations)),
                  "times": [float(t) for t in sf.index], "survival": [float(s) for s in sf]}))
"""


def _heron() -> list[str]:
    script = Path(sys.executable).parent / "heron"
    return [str(script)] if script.exists() else [sys.executable, "-m", "heron"]


def _study_yaml(study_id: str, secure: bool) -> str:
    expires = dt.date.today() + dt.timedelta(days=30)
    return f"""heron: 1
id: {study_id}
title: Overall survival after CAR-T in LBCL
expires: {expires.isoformat()}
horizon_days: {HORIZON}
cohort:
  indication_group: [{GROUP}]
analyses:
  - name: os
    kind: kaplan_meier
    endpoint: overall_survival
privacy:
  secure_aggregation: {"true" if secure else "false"}
"""


def _network(sites: dict[str, Path], workspace: Path) -> Any:
    """Start the aggregator and the node daemons; the sites' data ingested first."""
    from heron.coordinator import CoordinatorClient
    from heron.network import LocalNetwork
    from node.governance.policy import default_policy

    net = LocalNetwork(workspace)
    net.setup_pki()
    net.start_aggregator()
    configs = [net.add_site(s, d, default_policy()) for s, d in sites.items()]
    for config in configs:
        net.start_node(config)
    with CoordinatorClient(net.target, net.coordinator_dir / "credentials") as client:
        client.wait_for_sites(set(sites), timeout_s=120.0)
    return net


def _signed_study(net: Any, study_id: str, secure: bool, folder: Path) -> Path:
    src, out = folder / f"{study_id}.yaml", folder / f"{study_id}.signed.json"
    src.write_text(_study_yaml(study_id, secure))
    subprocess.run([*_heron(), "study", "sign", str(src), "--key",
                    str(net.coordinator_dir / "signing.key"), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def _cli(net: Any) -> list[str]:
    return ["--credentials", str(net.coordinator_dir / "credentials"), "--aggregator",
            net.target]


def _submit_wait(net: Any, signed: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([*_heron(), "study", "submit", str(signed), "--wait", *_cli(net)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"study failed: {done.stdout}{done.stderr}")
    return wall


def _submit_poll(net: Any, signed: Path, study_id: str) -> float:
    start = time.perf_counter()
    subprocess.run([*_heron(), "study", "submit", str(signed), *_cli(net)], check=True,
                   stdout=subprocess.DEVNULL)
    while True:
        out = subprocess.run([*_heron(), "study", "status", study_id, "--json", *_cli(net)],
                             check=True, capture_output=True, text=True).stdout
        status = json.loads(out)["status"]
        if status in ("completed", "failed"):
            break
        time.sleep(0.1)
    wall = time.perf_counter() - start
    if status != "completed":
        raise SystemExit(f"study {study_id} {status}")
    return wall


def _pooled(folders: list[Path]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _POOLED,
                          json.dumps([[str(f) for f in folders], HORIZON, GROUP])],
                         check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, json.loads(out)


def _curve_difference(results: dict[str, Any], pooled: dict[str, Any]) -> float:
    """Largest |S_heron(t) - S_lifelines(t)| over the event times of both."""
    import numpy as np

    groups = results["analyses"]["os"]["groups"]
    curve = next(iter(groups.values()))
    table = curve["table"]
    t_h, s_h = np.asarray(table["time"], float), np.asarray(table["survival"], float)
    t_l, s_l = np.asarray(pooled["times"]), np.asarray(pooled["survival"])
    grid = np.union1d(t_h, t_l)
    at_h = s_h[np.maximum(np.searchsorted(t_h, grid, side="right") - 1, 0)]
    at_l = s_l[np.maximum(np.searchsorted(t_l, grid, side="right") - 1, 0)]
    return float(np.max(np.abs(np.where(grid < t_h[0], 1.0, at_h)
                               - np.where(grid < t_l[0], 1.0, at_l))))


def _summary(name: str, values: list[float], ref: float) -> str:
    med = statistics.median(values)
    return (f"{name:<34} {min(values):7.2f} {med:7.2f} {max(values):7.2f} {med / ref:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--patients", type=int, default=97_500, help="per site (on average)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--unmasked", action="store_true", help="secure aggregation off")
    parser.add_argument("--poll", action="store_true",
                        help="also time submit + status polling (0.1 s) until completed")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/heron-cli-network"))
    args = parser.parse_args()

    data = args.cache / f"{args.sites}x{args.patients}"
    if not (data / "done").exists():
        subprocess.run([*_heron(), "synth", "--sites", str(args.sites), "--patients",
                        str(args.patients), "--out", str(data), "--format", "parquet"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (data / "done").write_text("")
    sites = {p.name: p for p in sorted(data.iterdir()) if p.is_dir()}
    with tempfile.TemporaryDirectory() as tmp:
        t_setup = time.perf_counter()
        net = _network(sites, Path(tmp) / "net")
        t_setup = time.perf_counter() - t_setup
        try:
            from heron.coordinator import CoordinatorClient

            walls: dict[str, list[float]] = {"network": [], "pooled": []}
            if args.poll:
                walls["network (submit, poll status)"] = []
            # warm-up: the first study also tells which sites take part (a site whose cohort
            # is below its min_cohort refuses); the reference pools exactly those sites
            _submit_wait(net, _signed_study(net, "bench-os-0", not args.unmasked, Path(tmp)))
            with CoordinatorClient(net.target, net.coordinator_dir / "credentials") as client:
                participated = client.results("bench-os-0")["sites"]["participated"]
            folders = [sites[s] for s in participated]
            _pooled(folders)
            pooled: dict[str, Any] = {}
            last_id = ""
            for r in range(1, args.repeats + 1):
                study_id = f"bench-os-{r}"
                signed = _signed_study(net, study_id, not args.unmasked, Path(tmp))
                walls["network"].append(_submit_wait(net, signed))
                wall_pool, pooled = _pooled(folders)
                walls["pooled"].append(wall_pool)
                if args.poll:
                    poll_id = f"bench-os-poll-{r}"
                    walls["network (submit, poll status)"].append(_submit_poll(
                        net, _signed_study(net, poll_id, not args.unmasked, Path(tmp)), poll_id))
                last_id = study_id
            with CoordinatorClient(net.target, net.coordinator_dir / "credentials") as client:
                results = client.results(last_id)
        finally:
            net.stop()
    ref = statistics.median(walls["pooled"])
    print(f"{len(participated)} of {len(sites)} sites took part, "
          f"{pooled['n']:,} patients in the cohort "
          f"({args.patients:,} per site synthesised), secure aggregation "
          f"{'off' if args.unmasked else 'on'}; {args.repeats} repeats after one warm-up; "
          f"network set up (PKI, ingestion, daemons) in {t_setup:.1f} s, not timed")
    print(f"{'way to the answer':<34} {'min s':>7} {'median':>7} {'max s':>7} {'x pooled':>8}")
    for name, values in walls.items():
        print(_summary(name, values, ref))
    heron_n = next(iter(results["analyses"]["os"]["groups"].values()))["n"]
    print(f"patients: heron {heron_n:,}, pooled {pooled['n']:,}; largest |S_heron - "
          f"S_lifelines| over all times: {_curve_difference(results, pooled):.2e}")


if __name__ == "__main__":
    main()
