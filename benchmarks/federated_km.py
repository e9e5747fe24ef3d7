"""Benchmark: federated Kaplan-Meier on a running loopback network versus lifelines.

Prints, for S sites x N patients (default 3 x 1,000,000), the wall time of the federated KM
study (submit to results, all daemons running, gRPC over mutual TLS) and of lifelines'
KaplanMeierFitter on the pooled individual data in the same run, with their ratio and the
largest difference between the two survival curves; then the median round-trip time of a
study task to R connected nodes (default 20).

``--runtime`` says how the network runs:

``daemons`` (default)
    heron.network's LocalNetwork: the aggregator and one ``heron node run`` per site as
    subprocesses, gRPC over mutual TLS on loopback (the figures' setup since the first
    benchmark; compare figures only between runs of the same runtime).
``grpc``
    heron.simulation's network: the aggregator and one node daemon per site as threads of
    this process, gRPC over mutual TLS on loopback.
``inprocess``
    heron.simulation's network without a wire (in-process transport).

Run: ``.venv/bin/python benchmarks/federated_km.py [--patients 1000000] [--sites 3]
[--runtime daemons|grpc|inprocess]`` (quick: ``--patients 2000 --nodes 4 --repeats 3``)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from lifelines import KaplanMeierFitter

from heron.coordinator import CoordinatorClient
from heron.network import LocalNetwork
from heron.simulation import (
    RUNTIMES,
    SimulatedNetwork,
    make_study,
    pooled_survival_data,
    synthetic_sites,
)
from heron.synth import synthesize_site
from node.governance.policy import Policy
from protocol.keys import load_private_key
from protocol.signing import sign_study
from protocol.study import Study

KEY = Ed25519PrivateKey.generate()
DAY_RESOLUTION = Policy(min_cohort=1, min_cell=1, min_bin_events=1)
BENCH_RUNTIMES = ("daemons", *RUNTIMES)
RUNTIME_HELP = ("daemons: aggregator and node daemons as subprocesses, gRPC over mutual TLS "
                "(default); grpc: the same daemons as threads of this process; "
                "inprocess: no wire")


class Network(Protocol):
    """What the benchmarks need of a running network."""

    @property
    def db_path(self) -> Path: ...

    def run(self, study: Study, timeout_s: float = 120.0) -> dict[str, Any]: ...

    def close(self) -> None: ...


class DaemonNetwork:
    """heron.network.LocalNetwork driven as a coordinator does (signed study over mutual TLS)."""

    def __init__(self, net: LocalNetwork) -> None:
        self.net = net

    @property
    def db_path(self) -> Path:
        """The aggregator daemon's database."""
        return self.net.workspace / "aggregator" / "aggregator.db"

    def client(self) -> CoordinatorClient:
        """A coordinator client of the aggregator."""
        return CoordinatorClient(self.net.target, self.net.coordinator_dir / "credentials")

    def run(self, study: Study, timeout_s: float = 120.0) -> dict[str, Any]:
        """Sign with the coordinator key, submit, wait and return results.json."""
        signed = sign_study(study, load_private_key(self.net.coordinator_dir / "signing.key"))
        with self.client() as c:
            study_id = c.submit(signed)
            c.wait_for_completion(study_id, timeout_s)
            return c.results(study_id)

    def close(self) -> None:
        """SIGTERM the daemons."""
        self.net.stop()


def _daemons(work: Path, sizes: list[int], label: str) -> tuple[DaemonNetwork, dict[str, Path]]:
    net = LocalNetwork(work / "network", site_timeout_s=600.0, verify_at_aggregator=True)
    network = DaemonNetwork(net)
    try:
        net.setup_pki()
        net.start_aggregator()
        configs = []
        t0 = time.perf_counter()
        for i, n in enumerate(sizes):
            site = f"{label}-{i + 1:02d}"
            t1 = time.perf_counter()
            folder = synthesize_site(work / "sites" / site, site, n, seed=100 + i,
                                     fmt="parquet", site_index=i)
            t2 = time.perf_counter()
            configs.append(net.add_site(site, folder.path, DAY_RESOLUTION))
            print(f"  {site}: synthesised {n:,} patients in {t2 - t1:.1f} s, "
                  f"ingested in {time.perf_counter() - t2:.1f} s", flush=True)
        print(f"  synthesised and ingested {len(sizes)} sites in "
              f"{time.perf_counter() - t0:.1f} s")
        for config in configs:
            net.start_node(config)
        with network.client() as c:
            c.wait_for_sites({c.site_id for c in configs}, timeout_s=300)
    except BaseException:
        network.close()
        raise
    return network, {c.site_id: c.path("store_dir") for c in configs}


def start_network(work: Path, sizes: list[int], label: str,
                  runtime: str) -> tuple[Network, dict[str, Path]]:
    """Synthesise and ingest sites of the given sizes and start a network of them."""
    if runtime == "daemons":
        return _daemons(work, sizes, label)
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {BENCH_RUNTIMES}")
    sites = synthetic_sites(work, sizes, prefix=label, policy=DAY_RESOLUTION, progress=print)
    net = SimulatedNetwork(work / "network", sites, KEY, runtime=runtime, site_timeout_s=600.0,
                           connect_timeout_s=300.0)
    return net, {s.site_id: s.store_dir for s in sites if s.store_dir is not None}


def km_benchmark(work: Path, sites: int, patients: int, runtime: str) -> None:
    print(f"federated Kaplan-Meier: {sites} sites x {patients:,} patients", flush=True)
    net, stores = start_network(work / "km", [patients] * sites, "site", runtime)
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
    print(f"  target: federated KM of {sites} x {patients:,} <= 4 s end to end: "
          f"{'met' if federated_s <= 4 else 'NOT met'} ({federated_s:.2f} s)")


def rtt_benchmark(work: Path, nodes: int, repeats: int, runtime: str) -> None:
    print(f"study task round trip to {nodes} connected nodes ({repeats} studies)")
    net, _ = start_network(work / "rtt", [60] * nodes, "node", runtime)
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
    parser.add_argument("--runtime", choices=BENCH_RUNTIMES, default="daemons",
                        help=RUNTIME_HELP)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        km_benchmark(work, args.sites, args.patients, args.runtime)
        rtt_benchmark(work, args.nodes, args.repeats, args.runtime)


if __name__ == "__main__":
    main()
