"""Benchmark: federated Kaplan-Meier on a running loopback network versus lifelines.

Prints, for S sites x N patients (default 3 x 1,000,000), the wall time of the federated KM
study (submit to results, all daemons running, gRPC over mutual TLS) and of lifelines'
KaplanMeierFitter on the pooled individual data in the same run, with their ratio and the
largest difference between the two survival curves; then the median round-trip time of a
study task to R connected nodes (default 20).

Run: ``.venv/bin/python benchmarks/federated_km.py [--patients 1000000] [--sites 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lifelines import KaplanMeierFitter  # noqa: E402

from heron.network import LocalNetwork  # noqa: E402
from heron.synth import synthesize_site  # noqa: E402
from tests.network_helpers import (  # noqa: E402
    DAY_RESOLUTION,
    client,
    make_study,
    pooled_individual_data,
    run_study,
)


def _network(work: Path, sizes: list[int], label: str) -> tuple[LocalNetwork, dict[str, Path]]:
    net = LocalNetwork(work / "network", site_timeout_s=600.0, verify_at_aggregator=True)
    net.setup_pki()
    net.start_aggregator()
    stores = {}
    t0 = time.perf_counter()
    for i, n in enumerate(sizes):
        site = f"{label}-{i + 1:02d}"
        t1 = time.perf_counter()
        folder = synthesize_site(work / "sites" / site, site, n, seed=100 + i, fmt="parquet",
                                 site_index=i)
        t2 = time.perf_counter()
        config = net.add_site(site, folder.path, DAY_RESOLUTION)
        print(f"  {site}: synthesised {n:,} patients in {t2 - t1:.1f} s, "
              f"ingested in {time.perf_counter() - t2:.1f} s", flush=True)
        stores[site] = config.path("store_dir")
    print(f"  synthesised and ingested {len(sizes)} sites in {time.perf_counter() - t0:.1f} s")
    for site in stores:
        net.start_node(net_config(net, site))
    with client(net) as c:
        c.wait_for_sites(set(stores), timeout_s=300)
    return net, stores


def net_config(net: LocalNetwork, site: str):
    from node.config import resolve_config

    return resolve_config(net.workspace / "nodes" / site)


def km_benchmark(work: Path, sites: int, patients: int) -> None:
    print(f"federated Kaplan-Meier: {sites} sites x {patients:,} patients", flush=True)
    net, stores = _network(work / "km", [patients] * sites, "site")
    try:
        study = make_study("bench-km", [{"name": "os", "kind": "kaplan_meier",
                                         "endpoint": "overall_survival"}],
                           min_sites=sites, cohort={})
        t0 = time.perf_counter()
        results = run_study(net, study, timeout_s=1800)
        federated_s = time.perf_counter() - t0
    finally:
        net.stop()
    t0 = time.perf_counter()
    data = pooled_individual_data(stores, study, "overall_survival", None)
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


def rtt_benchmark(work: Path, nodes: int, repeats: int) -> None:
    print(f"study task round trip to {nodes} connected nodes ({repeats} studies)")
    net, _ = _network(work / "rtt", [60] * nodes, "node")
    try:
        times = []
        for i in range(repeats):
            study = make_study(f"bench-rtt-{i:03d}", [{"name": "os", "kind": "kaplan_meier",
                                                       "endpoint": "overall_survival"}],
                               cohort={})
            t0 = time.perf_counter()
            results = run_study(net, study)
            times.append(time.perf_counter() - t0)
            assert len(results["sites"]["participated"]) == nodes, results["sites"]
    finally:
        net.stop()
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
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        km_benchmark(work, args.sites, args.patients)
        rtt_benchmark(work, args.nodes, args.repeats)


if __name__ == "__main__":
    main()
