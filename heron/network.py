"""A real heron network on loopback: an aggregator and one node per site, as subprocesses.

Used by ``heron simulate`` (the sites' own data folders and study) and ``heron demo``
(synthetic sites and the embedded study). Everything talks gRPC with mutual TLS, exactly as
in production; only the addresses are loopback. ``heron simulate --runtime inprocess|grpc``
runs the network of :mod:`heron.simulation` in this process instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from heron.coordinator import CoordinatorClient
from heron.errors import HeronError
from heron.simulation import Runtime, SimulatedNetwork, ingest_sites
from node.governance.policy import Policy, default_policy, load_policy
from node.runtime.config import NodeConfig
from node.runtime.service import ingest_site, init_node
from protocol.keys import generate_signing_key
from protocol.pki import init_ca, issue_aggregator, issue_coordinator, issue_site
from protocol.signing import sign_study
from protocol.study import Study

__all__ = ["SIMULATE_RUNTIMES", "LocalNetwork", "SimulateRuntime", "SimulationResult",
           "simulate"]

logger = logging.getLogger(__name__)
Progress = Callable[[str], None]
SimulateRuntime = Literal["daemons", "inprocess", "grpc"]
SIMULATE_RUNTIMES: tuple[SimulateRuntime, ...] = ("daemons", "inprocess", "grpc")


@dataclass
class SimulationResult:
    """Where a simulated study's outputs are."""

    results: dict[str, Any]
    results_path: Path
    report_path: Path
    workspace: Path


@dataclass
class LocalNetwork:
    """Processes of a loopback network; stop() ends them with SIGTERM."""

    workspace: Path
    site_timeout_s: float = 60.0
    verify_at_aggregator: bool = True
    progress: Progress = lambda msg: None
    aggregator: subprocess.Popen[bytes] | None = None
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    port: int = 0

    @property
    def target(self) -> str:
        """Address of the aggregator."""
        return f"127.0.0.1:{self.port}"

    @property
    def coordinator_dir(self) -> Path:
        """Coordinator credentials and signing key."""
        return self.workspace / "coordinator"

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with log.open("ab") as out:
            return subprocess.Popen([sys.executable, "-m", "heron.cli", *args], stdout=out,
                                    stderr=subprocess.STDOUT, env=env)

    def setup_pki(self) -> None:
        """Network CA, aggregator and coordinator credentials, coordinator signing key."""
        ca = self.workspace / "ca"
        init_ca(ca)
        issue_aggregator(ca, self.workspace / "aggregator" / "credentials")
        issue_coordinator(ca, "coordinator", self.coordinator_dir / "credentials")
        generate_signing_key(self.coordinator_dir / "signing.key")

    def start_aggregator(self, timeout_s: float = 30.0) -> None:
        """Start the aggregator daemon (again on the same port if it ran before)."""
        agg = self.workspace / "aggregator"
        port_file = agg / "port"
        port_file.unlink(missing_ok=True)
        trust = ["--trusted-coordinator", str(self.coordinator_dir / "signing.pub")] \
            if self.verify_at_aggregator else []
        self.aggregator = self._spawn([
            "aggregator", "run", "--listen", f"127.0.0.1:{self.port}", "--port-file",
            str(port_file), "--db", str(agg / "aggregator.db"),
            "--credentials", str(agg / "credentials"), *trust,
            "--site-timeout", str(self.site_timeout_s),
        ], agg / "aggregator.log")
        deadline = time.monotonic() + timeout_s
        while not port_file.exists() or not port_file.read_text().strip():
            if self.aggregator.poll() is not None:
                raise HeronError(f"aggregator exited; see {agg / 'aggregator.log'}")
            if time.monotonic() > deadline:
                raise HeronError("aggregator did not start in time")
            time.sleep(0.05)
        self.port = int(port_file.read_text().strip())

    def add_site(self, site_id: str, data: Path, policy: Policy) -> NodeConfig:
        """Create a node folder for a site, trusting this network's coordinator, and ingest."""
        node_dir = self.workspace / "nodes" / site_id
        issue_site(self.workspace / "ca", site_id, node_dir / "credentials")
        shutil.copyfile(self.coordinator_dir / "signing.pub", node_dir / "coordinator.pub")
        trusted = tuple(dict.fromkeys((*policy.trusted_coordinators, "coordinator.pub")))
        config = NodeConfig(node_dir=node_dir, site_id=site_id, aggregator=self.target)
        init_node(config, policy=replace(policy, trusted_coordinators=trusted))
        report = ingest_site(config, data)
        self.progress(f"  {site_id}: {report.summary().splitlines()[0]}")
        return config

    def start_node(self, config: NodeConfig) -> None:
        """Start one node daemon."""
        self.nodes[config.site_id] = self._spawn(
            ["node", "run", "--dir", str(config.node_dir)], config.node_dir / "node.log")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every process, then wait (kill after the timeout)."""
        procs = [*self.nodes.values(), *([self.aggregator] if self.aggregator else [])]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _run_daemons(sites: Mapping[str, Path], study: Study, workspace: Path, policy: Policy,
                 progress: Progress, timeout_s: float, site_timeout_s: float) -> dict[str, Any]:
    """Today's loopback network: the aggregator and one node per site as subprocesses."""
    net = LocalNetwork(workspace, site_timeout_s=site_timeout_s, progress=progress)
    try:
        progress("network CA, aggregator and coordinator credentials")
        net.setup_pki()
        net.start_aggregator()
        progress(f"aggregator listening on {net.target} (mutual TLS)")
        progress("loading site data into the site nodes")
        configs = [net.add_site(s, Path(d), policy) for s, d in sites.items()]
        for config in configs:
            net.start_node(config)
        creds = net.coordinator_dir / "credentials"
        with CoordinatorClient(net.target, creds) as client:
            client.wait_for_sites(set(sites), timeout_s=60.0)
            progress(f"{len(sites)} site nodes connected")
            from protocol.keys import load_private_key

            signed = sign_study(study, load_private_key(net.coordinator_dir / "signing.key"))
            client.submit(signed)
            progress(f"study {study.id} signed and submitted")
            client.wait_for_completion(study.id, timeout_s)
            return client.results(study.id)
    finally:
        net.stop()


def _run_harness(sites: Mapping[str, Path], study: Study, workspace: Path, policy: Policy,
                 progress: Progress, timeout_s: float, site_timeout_s: float,
                 runtime: Runtime) -> dict[str, Any]:
    """The network of :mod:`heron.simulation` in this process (in-process or real gRPC)."""
    progress("loading site data into the site nodes")
    simulated = ingest_sites(workspace, sites, policy=policy, progress=progress)
    key = Ed25519PrivateKey.generate()
    with SimulatedNetwork(workspace, simulated, key, runtime=runtime,
                          site_timeout_s=site_timeout_s, ledger=True) as net:
        where = "in process" if net.target is None else \
            f"over gRPC with mutual TLS on {net.target}"
        progress(f"aggregator and {len(sites)} site nodes running {where}")
        net.submit(study)
        progress(f"study {study.id} signed and submitted")
        return net.wait(study.id, timeout_s)


def simulate(
    sites: Mapping[str, Path],
    study: Study,
    out_dir: Path,
    policy_file: Path | None = None,
    progress: Progress = lambda msg: None,
    timeout_s: float = 600.0,
    site_timeout_s: float = 120.0,
    runtime: SimulateRuntime = "daemons",
) -> SimulationResult:
    """Run a study on a loopback network of the given sites; write results.json and report.

    Parameters
    ----------
    sites
        Site id -> the site's data folder.
    study
        The study (signed here with a fresh coordinator key the nodes trust).
    out_dir
        Where results.json, report.html and the network's workspace (``network/``) go.
    policy_file
        The site policy of every site (default: the default policy).
    progress
        Receives progress lines.
    timeout_s, site_timeout_s
        Limits of the whole study and of one site's answer.
    runtime
        ``"daemons"``: aggregator and nodes as subprocesses (gRPC, mutual TLS);
        ``"grpc"``: the same daemons as threads of this process (:mod:`heron.simulation`);
        ``"inprocess"``: no wire, the in-process transport.
    """
    if runtime not in SIMULATE_RUNTIMES:
        raise HeronError(f"unknown runtime {runtime!r}; expected one of {SIMULATE_RUNTIMES}")
    if not sites:
        raise HeronError("no sites given (use --site ID=FOLDER)")
    for site_id, folder in sites.items():
        if not Path(folder).is_dir():
            raise HeronError(f"site {site_id}: {folder} is not a folder")
    policy = load_policy(policy_file) if policy_file else default_policy()
    out_dir.mkdir(parents=True, exist_ok=True)
    workspace = out_dir / "network"
    if workspace.exists():
        shutil.rmtree(workspace)
    if runtime == "daemons":
        results = _run_daemons(sites, study, workspace, policy, progress, timeout_s,
                               site_timeout_s)
    else:
        results = _run_harness(sites, study, workspace, policy, progress, timeout_s,
                               site_timeout_s, runtime)
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    from heron.report import render_report

    report_path = render_report(results, out_dir / "report.html")
    return SimulationResult(results, results_path, report_path, workspace)
