"""The example configuration files in deploy/ load with the real loaders."""

from __future__ import annotations

from pathlib import Path

from aggregator.config import load_config
from node.governance.policy import load_policy
from node.runtime.config import resolve_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_aggregator_example_loads():
    config = load_config(DEPLOY / "aggregator.toml")
    assert config.listen == "0.0.0.0:50051" and config.site_timeout_s == 86400


def test_node_example_loads(tmp_path):
    (tmp_path / "node.toml").write_text((DEPLOY / "node.toml").read_text())
    config = resolve_config(tmp_path, env={})
    assert config.site_id == "se-uppsala"
    assert config.path("store_dir") == tmp_path.resolve() / "store"


def test_policy_example_loads():
    policy = load_policy(DEPLOY / "policy.toml")
    assert policy.approval == "manual" and policy.min_cell == 5


def test_deploy_holds_no_python():
    assert not list(DEPLOY.rglob("*.py"))
