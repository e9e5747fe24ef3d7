"""Benchmark: federated Kaplan-Meier on a running loopback network versus lifelines.

Prints, for S sites x N patients (default 3 x 1,000,000), the wall time of the federated KM
study (submit to results; heron.simulation's network: the aggregator and one node daemon per
site in this process, gRPC over mutual TLS on loopback) and of lifelines' KaplanMeierFitter on
the pooled individual data in the same run, with their ratio and the largest difference between
the two survival curves; then the median round-trip time of a study task to R connected nodes
(default 20).

Run: ``.venv/bin/python benchmarks/federated_km.py [--patients 1000000] [--sites 3]
[--runtime grpc|inprocess]`` (quick: ``--patients 2000 --nodes 4 --repeats 3``)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from lifelines import KaplanMeierFitter

from heron.simulation import (
    RUNTIMES,
    Runtime,
    SimulatedNetwork,
    make_study,
    pooled_survival_data,
    synthetic_sites,
)
from node.governance.policy import Policy

KEY = Ed25519PrivateKey.generate()
DAY_RESOLUTION = Policy(min_cohort=1, min_cell=1, min_bin_events=1)


def _network(work: Path, sizes: list[int], label: str,
             runtime: Runtime) -> tuple[SimulatedNetwork, dict[str, Path]]:
    sites = synthetic_sites(work, sizes, prefix=label, policy=DAY_RESOLUTION, progress=print)
    net = SimulatedNetwork(work / "network", sites, KEY, runtime=runtime, site_timeout_s=600.0,
                           connect_timeout_s=300.0)
    return net, {s.site_id: s.store_dir for s in sites if s.store_dir is not None}


def km_benchmark(work: Path, sites: int, patients: int, runtime: Runtime) -> None:
    print(f"federated Kaplan-Meier: {sites} sites x {patients:,} patients", flush=True)
    net, stores = _network(work / "km", [patients] * sites, "site", runtime)
    try:
        study = make_study("bench-km", [{"name": "os", "kind": "kaplan_meier",
                                         "endpoint": "overall_survival"}],
                           min_sites=sites, cohort={})
        t0 = time.perf_counter()
        results = net.run(study, timeout_s=1800)
        federated_s = time.perf_counter() - t0
    finally:
        net.close()
    t0 = time.perf_counter()
    data = pooled_survival_data(stores, study, "overall_survival", None)
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    kmf = KaplanMeierFitter().fit(data.duration, data.event)
    lifelines_s = time.perf_counter() - t0
    got = np.asarray(results["analyses"]["os"]["groups"]["all"]["table"]["survival"])
    diff = float(np.max(np.abs(got - kmf.survival_function_.iloc[:, 0].to_numpy())))
    print(f"  pooled patients in cohort:            {len(data):,}")
    print(f"  federated KM study (submit->results): {federated_s:.2f} s")
    print(f"  lifelines KM on pooled data (fit):    {lifelines_s:.2f} s")
    print(f"  ratio federated / lifelines fit:      {federated_s / lifelines_s:.1f}")
    print(f"  pooled data read from the 3 stores:   {prepare_s:.2f} s (one process)")
    print(f"  ratio federated / (read + fit):       {federated_s / (prepare_s + lifelines_s):.2f}")
    print(f"  max |S_federated - S_lifelines|:      {diff:.2e}")


def rtt_benchmark(work: Path, nodes: int, repeats: int, runtime: Runtime) -> None:
    print(f"study task round trip to {nodes} connected nodes ({repeats} studies)")
    net, _ = _network(work / "rtt", [60] * nodes, "node", runtime)
    try:
        times = []
        for i in range(repeats):
            study = make_study(f"bench-rtt-{i:03d}", [{"name": "os", "kind": "kaplan_meier",
                                                       "endpoint": "overall_survival"}],
                               cohort={})
            t0 = time.perf_counter()
            results = net.run(study)
            times.append(time.perf_counter() - t0)
            assert len(results["sites"]["participated"]) == nodes, results["sites"]
    finally:
        net.close()
    times.sort()
    print(f"  median round trip (submit -> all {nodes} answers pooled): "
          f"{statistics.median(times) * 1000:.0f} ms")
    print(f"  min / max: {times[0] * 1000:.0f} / {times[-1] * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--runtime", choices=RUNTIMES, default="grpc",
                        help="grpc: node daemons over mutual TLS (default); inprocess: no wire")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        km_benchmark(work, args.sites, args.patients, args.runtime)
        rtt_benchmark(work, args.nodes, args.repeats, args.runtime)


if __name__ == "__main__":
    main()
