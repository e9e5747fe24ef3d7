"""A crash between the store's snapshot switch and the audit append is detected.

The fault is injected through the ingestion's progress callback, which is called after the new
snapshot is current and before ``ingest_site`` appends its ``ingest`` entry: raising there is
the process dying at that point. The trail's hash chain still verifies; checking it together
with the store reports the snapshot that no entry accounts for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node.governance.audit import AuditTrail, unaudited_snapshot, verify_audit
from node.ingestion.store import open_store
from node.runtime import service
from node.runtime.config import NodeConfig
from tests.site_data import TODAY, write_site


class Crash(Exception):
    """The simulated process death."""


def _crash_after_switch(message: str) -> None:
    if message.startswith("done: snapshot"):
        raise Crash(message)


@pytest.fixture
def node(tmp_path: Path) -> NodeConfig:
    config = NodeConfig(node_dir=tmp_path / "node", site_id="se-test")
    service.init_node(config)
    return config


def test_an_audited_ingestion_verifies_with_the_store(node: NodeConfig, tmp_path: Path) -> None:
    service.ingest_site(node, write_site(tmp_path / "site"))
    audit, store = node.path("audit_file"), node.path("store_dir")
    assert verify_audit(audit, store_dir=store).ok
    assert unaudited_snapshot(audit, store) is None


def test_a_crash_after_the_switch_leaves_an_unaudited_snapshot_that_is_reported(
        node: NodeConfig, tmp_path: Path) -> None:
    audit, store = node.path("audit_file"), node.path("store_dir")
    service.ingest_site(node, write_site(tmp_path / "site"))
    first = open_store(store).snapshot_id
    added = {"patients": [{"patient_id": "P4", "sex": "F", "birth_year": "1970"}]}
    with pytest.raises(Crash):
        service.ingest_site(node, write_site(tmp_path / "site2", add=added),
                            progress=_crash_after_switch)
    second = open_store(store).snapshot_id
    assert second != first  # the new data is current ...
    assert [e["event"] for e in AuditTrail(audit).entries()].count("ingest") == 1  # ... unaudited
    assert verify_audit(audit).ok  # the chain alone cannot tell
    report = verify_audit(audit, store_dir=store)
    assert not report.ok
    assert report.reason.startswith(f"the store's current snapshot {second} has no ingest entry")
    # re-running the ingestion records a snapshot again
    service.ingest_site(node, write_site(tmp_path / "site2", add=added))
    assert verify_audit(audit, store_dir=store).ok


def test_an_entry_naming_the_snapshot_accounts_for_it(tmp_path: Path) -> None:
    from node.ingestion.ingest import ingest

    store = tmp_path / "store"
    ingest(write_site(tmp_path / "site"), store, b"k" * 32, today=TODAY)
    trail = AuditTrail(tmp_path / "audit.jsonl")
    trail.append("node_initialised", None, site_id="se-test")
    assert unaudited_snapshot(trail.path, store) is not None
    trail.append("ingest", None, ok=True, snapshot=open_store(store).snapshot_id)
    assert unaudited_snapshot(trail.path, store) is None
    # an ingest entry from before the snapshot was begun does not count
    ingest(write_site(tmp_path / "site"), store, b"k" * 32, today=TODAY)
    assert unaudited_snapshot(trail.path, store) is not None


def test_node_status_and_audit_verify_report_the_unaudited_snapshot(
        node: NodeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from heron.cli import main

    service.ingest_site(node, write_site(tmp_path / "site"))
    entry = [e for e in AuditTrail(node.path("audit_file")).entries()
             if e["event"] == "ingest"][-1]
    assert entry["details"]["snapshot"] == open_store(node.path("store_dir")).snapshot_id
    assert service.node_status(node).audit_ok
    with pytest.raises(Crash):
        service.ingest_site(node, write_site(tmp_path / "site2"), progress=_crash_after_switch)
    assert not service.node_status(node).audit_ok
    assert main(["node", "audit", "--dir", str(node.node_dir), "--verify"]) == 1
    assert "has no ingest entry" in capsys.readouterr().out
