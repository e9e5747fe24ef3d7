"""The aggregator's SQLite store: state survives reopening, writes are all-or-nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aggregator.errors import StoreError
from aggregator.store import Store, StudyRecord


def _record(study_id: str = "s-001", at: float = 100.0) -> StudyRecord:
    return StudyRecord(study_id, b'{"id":"s-001"}', b"sig", b"k" * 32, "A study", "running", at,
                       None, None)


def test_state_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "agg.sqlite"
    store = Store(db)
    store.upsert_site("site-a", "node/1", "2026-01-01T00:00:00Z", 12, now=10.0)
    store.upsert_site("site-b", "node/1", "", 0, now=11.0)
    store.set_site_connected("site-b", False, now=12.0)
    store.add_study(_record(), {"site-a": "t-a", "site-b": "t-b"})
    assert store.set_site_state("s-001", "site-a", "sent", 13.0)
    assert store.set_site_state("s-001", "site-a", "released", 14.0, release=b"\x01blob")
    assert store.set_site_state("s-001", "site-b", "refused", 15.0, reason="too few")
    store.close()

    again = Store(db)
    sites = {s.site_id: s for s in again.list_sites()}
    assert sites["site-a"].connected and not sites["site-b"].connected
    assert (sites["site-a"].software_version, sites["site-a"].stored_infusions) == ("node/1", 12)
    assert sites["site-b"].last_seen == 12.0
    assert again.get_study("s-001") == _record()
    rows = {r.site_id: r for r in again.study_sites("s-001")}
    assert (rows["site-a"].state, rows["site-a"].release, rows["site-a"].task_id) == (
        "released", b"\x01blob", "t-a")
    assert (rows["site-b"].state, rows["site-b"].reason) == ("refused", "too few")
    again.finish_study("s-001", "completed", '{"heron": 1}', now=20.0)
    again.close()

    third = Store(db)
    done = third.get_study("s-001")
    assert done is not None
    assert (done.status, done.results_json, done.completed_at) == ("completed", '{"heron": 1}',
                                                                   20.0)
    third.close()


def test_duplicate_study_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "agg.sqlite")
    store.add_study(_record(), {"site-a": "t-a"})
    with pytest.raises(sqlite3.IntegrityError):
        store.add_study(_record(at=200.0), {"site-a": "t-x", "site-c": "t-c"})
    assert [r.task_id for r in store.study_sites("s-001")] == ["t-a"]
    assert store.get_study("s-001").submitted_at == 100.0  # type: ignore[union-attr]
    store.close()


def test_final_states_are_final(tmp_path: Path) -> None:
    store = Store(tmp_path / "agg.sqlite")
    store.add_study(_record(), {"site-a": "t-a"})
    assert store.set_site_state("s-001", "site-a", "refused", 1.0, reason="no")
    assert not store.set_site_state("s-001", "site-a", "released", 2.0, release=b"x")
    assert not store.set_site_state("s-001", "nobody", "released", 2.0)
    (row,) = store.study_sites("s-001")
    assert (row.state, row.reason, row.release) == ("refused", "no", None)
    store.close()


def test_open_tasks_and_reset_after_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "agg.sqlite")
    store.add_study(_record("s-001", 1.0), {"site-a": "t1"})
    store.add_study(_record("s-002", 2.0), {"site-a": "t2"})
    store.add_study(_record("s-003", 3.0), {"site-a": "t3"})
    store.set_site_state("s-001", "site-a", "sent", 5.0)
    store.set_site_state("s-003", "site-a", "released", 5.0, release=b"r")
    store.finish_study("s-003", "completed", "{}", 6.0)
    assert [t.task_id for t in store.open_tasks("site-a")] == ["t1", "t2"]
    assert store.reset_sent_tasks(7.0) == 1
    assert [t.state for t in store.open_tasks("site-a")] == ["pending", "pending"]
    assert [s.study_id for s in store.list_studies("running")] == ["s-001", "s-002"]
    store.close()


def test_closed_store_raises(tmp_path: Path) -> None:
    store = Store(tmp_path / "agg.sqlite")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.site_ids()
