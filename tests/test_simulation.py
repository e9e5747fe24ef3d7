"""The simulation harness: the same study gives the same results.json in process and over real
gRPC (node daemons as threads, mutual TLS on a free loopback port); a silent site is reported
unreachable."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.transport import NodeHandler, StudyTask, TaskReply
from heron.simulation import (
    SimulatedNetwork,
    SimulatedSite,
    SimulationTimeout,
    ingest_sites,
    make_study,
)
from heron.synth import synthesize
from node.governance.policy import Policy
from tests.conftest import assert_close, write_simulate_inputs

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date(2026, 11, 1)
DAY = Policy(min_cohort=1, min_cell=1, min_bin_events=1)
ANALYSES = [
    {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival", "group_by": "route",
     "timepoints": [365]},
    {"name": "lr", "kind": "logrank", "endpoint": "overall_survival", "group_by": "sex"},
    {"name": "ae", "kind": "adverse_events", "terms": ["CRS"], "window_days": 28},
]


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[SimulatedSite]:
    tmp = tmp_path_factory.mktemp("simulation")
    folders = {f.site_id: f.path for f in synthesize(tmp / "data", sites=3, patients=80, seed=4)}
    return [dataclasses.replace(s, policy=DAY) for s in ingest_sites(tmp / "stores", folders)]


def _run(workdir: Path, sites: list[SimulatedSite], runtime: str, study: Any) -> dict[str, Any]:
    with SimulatedNetwork(workdir, sites, KEY, runtime=runtime,  # type: ignore[arg-type]
                          today=lambda: TODAY) as net:
        assert sorted(net.transport.connected_sites()) == sorted(s.site_id for s in sites)
        return net.run(study, timeout_s=120)


@pytest.mark.parametrize("secure", [False, True], ids=["unmasked", "secure"])
def test_in_process_and_grpc_give_identical_results(tmp_path: Path, sites: list[SimulatedSite],
                                                    secure: bool) -> None:
    study = make_study(f"sim-{'secure' if secure else 'plain'}", ANALYSES, cohort={},
                       min_sites=3, secure_aggregation=secure)
    local = _run(tmp_path / "inprocess", sites, "inprocess", study)
    remote = _run(tmp_path / "grpc", sites, "grpc", study)
    assert local["status"] == "completed"
    assert local["privacy"]["secure_aggregation"] is secure
    assert local["sites"]["participated"] == sorted(s.site_id for s in sites)
    assert all("error" not in a for a in local["analyses"].values()), local["analyses"]
    assert_close(local, remote, rel=1e-12)


def _silent(handler: NodeHandler) -> NodeHandler:
    def never(task: StudyTask) -> TaskReply | None:
        return None
    return never


@pytest.mark.parametrize("runtime", ["inprocess", "grpc"])
def test_a_silent_site_is_reported_unreachable(tmp_path: Path, sites: list[SimulatedSite],
                                               runtime: str) -> None:
    silent = sites[0].site_id
    study = make_study(f"sim-silent-{runtime}", ANALYSES[:1], cohort={}, min_sites=2)
    with SimulatedNetwork(tmp_path, sites, KEY, runtime=runtime,  # type: ignore[arg-type]
                          today=lambda: TODAY, site_timeout_s=1.0,
                          node_wrappers={silent: _silent}) as net:
        results = net.run(study, timeout_s=60)
    assert results["status"] == "completed"
    assert silent in results["sites"]["unreachable"]
    assert sorted(results["sites"]["participated"]) == sorted(
        s.site_id for s in sites if s.site_id != silent)
    assert "error" not in results["analyses"]["km"]


def test_a_failing_site_refuses_and_a_stuck_study_times_out(tmp_path: Path,
                                                            sites: list[SimulatedSite]) -> None:
    def broken(handler: NodeHandler) -> NodeHandler:
        def fail(task: StudyTask) -> TaskReply | None:
            raise RuntimeError("disk on fire")
        return fail

    failing = sites[-1].site_id
    with SimulatedNetwork(tmp_path, sites, KEY, today=lambda: TODAY,
                          node_wrappers={failing: broken}) as net:
        results = net.run(make_study("sim-broken", ANALYSES[:1], cohort={}, min_sites=2))
        assert results["sites"]["refused"] == {failing: "internal error at the site node"}
    with SimulatedNetwork(tmp_path / "stuck", sites, KEY, today=lambda: TODAY,
                          site_timeout_s=600, node_wrappers={failing: _silent}) as net, \
            pytest.raises(SimulationTimeout):
        net.run(make_study("sim-stuck", ANALYSES[:1], cohort={}), timeout_s=0.5)


@pytest.mark.parametrize("runtime", ["inprocess", "grpc"])
def test_heron_simulate_runs_the_harness(tmp_path: Path, runtime: str) -> None:
    import json

    from heron.cli import main

    folders = synthesize(tmp_path / "sites", sites=3, patients=60, seed=12)
    study, policy = write_simulate_inputs(tmp_path, "sim-cli")
    sites = [f"--site={f.site_id}={f.path}" for f in folders]
    assert main(["simulate", *sites, "--study", str(study), "--out", str(tmp_path / "out"),
                 "--policy", str(policy), "--runtime", runtime]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(results["sites"]["participated"]) == sorted(f.site_id for f in folders)
    assert results["privacy"]["time_resolution_days"] == 1
    assert "error" not in results["analyses"]["os"]
    assert "not allowed by the site policy" in results["analyses"]["na"]["error"]
    assert (tmp_path / "out" / "report.html").exists()
