"""The coordinator's commands against a running network: sign, submit, status, list, results.

Real subprocess daemons (aggregator and nodes, gRPC over mutual TLS) and the real ``heron``
console entry point in subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.conftest import write_simulate_inputs
from tests.network_helpers import DAY_RESOLUTION, start_network


def heron(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heron.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_coordinator_commands_run_a_study_end_to_end(tmp_path):
    net, stores = start_network(tmp_path, site_sizes=80, n_sites=4, policy=DAY_RESOLUTION,
                                verify_at_aggregator=True)
    try:
        study = tmp_path / "study.yaml"
        study.write_text(yaml.safe_dump({
            "heron": 1, "id": "cli-study", "title": "CLI study", "expires": "2099-01-01",
            "horizon_days": 730,
            "analyses": [{"name": "os", "kind": "kaplan_meier",
                          "endpoint": "overall_survival", "timepoints": [365]}],
            "privacy": {"min_sites": 2}}))
        coordinator = net.coordinator_dir
        signed = tmp_path / "study.signed.json"
        out = heron("study", "sign", str(study), "--key", str(coordinator / "signing.key"),
                    "--out", str(signed))
        assert out.returncode == 0, out.stderr
        client = ["--aggregator", net.target, "--credentials",
                  str(coordinator / "credentials")]
        out = heron("study", "submit", str(signed), *client)
        assert out.returncode == 0 and "cli-study" in out.stdout, out.stderr
        for _ in range(600):
            status = json.loads(heron("study", "status", "cli-study", *client, "--json").stdout)
            if status["status"] != "running":
                break
        assert status["status"] == "completed"
        assert {s["state"] for s in status["sites"].values()} == {"released"}
        listing = heron("study", "list", *client, "--json")
        assert [s["study_id"] for s in json.loads(listing.stdout)] == ["cli-study"]
        out = heron("study", "results", "cli-study", *client, "--out", str(tmp_path / "res"))
        assert out.returncode == 0, out.stderr
        results = json.loads((tmp_path / "res" / "results.json").read_text())
        assert results["privacy"]["secure_aggregation"] is True  # the default
        assert sorted(results["sites"]["participated"]) == sorted(stores)
        assert (tmp_path / "res" / "report.html").stat().st_size > 10_000
        # a resubmission is refused by the aggregator with a one-line reason
        again = heron("study", "submit", str(signed), *client)
        assert again.returncode != 0 and "ALREADY_EXISTS" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1
    finally:
        net.stop()


def test_simulate_runs_a_study_on_site_folders_under_a_policy_file(tmp_path):
    from heron.synth import synthesize

    folders = synthesize(tmp_path / "sites", sites=4, patients=60, seed=12)
    study, policy = write_simulate_inputs(tmp_path, "sim-study")
    sites = [f"--site={f.site_id}={f.path}" for f in folders]
    out = heron("simulate", *sites, "--study", str(study), "--out", str(tmp_path / "out"),
                "--policy", str(policy))
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(results["sites"]["participated"]) == sorted(f.site_id for f in folders)
    assert results["privacy"]["time_resolution_days"] == 1  # the policy's thresholds of 1
    assert "error" not in results["analyses"]["os"]
    assert "not allowed by the site policy" in results["analyses"]["na"]["error"]
    assert (tmp_path / "out" / "report.html").exists()
