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
    store.upsert_site("site-a", "node/1", "2026-01-01T00:00:00Z", now=10.0)
    store.upsert_site("site-b", "node/1", "", now=11.0)
    store.set_site_connected("site-b", False, now=12.0)
    store.add_study(_record(), {"site-a": "t-a", "site-b": "t-b"})
    assert store.set_site_state("s-001", "site-a", "sent", 13.0)
    assert store.set_site_state("s-001", "site-a", "released", 14.0)
    store.save_round("s-001", 1, '{"round": 1}', 14.0, {"site-a": "r-a"})
    assert store.set_round_task("r-a", "answered", 14.5, result=b"\x01blob")
    assert store.set_site_state("s-001", "site-b", "refused", 15.0, reason="too few")
    store.close()

    again = Store(db)
    sites = {s.site_id: s for s in again.list_sites()}
    assert sites["site-a"].connected and not sites["site-b"].connected
    assert (sites["site-a"].software_version, sites["site-a"].ingested_at) == (
        "node/1", "2026-01-01T00:00:00Z")
    assert sites["site-b"].last_seen == 12.0
    assert again.get_study("s-001") == _record()
    rows = {r.site_id: r for r in again.study_sites("s-001")}
    assert (rows["site-a"].state, rows["site-a"].task_id) == ("released", "t-a")
    (task,) = again.round_tasks("s-001", 1)
    assert (task.site_id, task.state, task.result) == ("site-a", "answered", b"\x01blob")
    assert again.current_round("s-001").state_json == '{"round": 1}'  # type: ignore[union-attr]
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
    assert not store.set_site_state("s-001", "site-a", "released", 2.0)
    assert not store.set_site_state("s-001", "nobody", "released", 2.0)
    (row,) = store.study_sites("s-001")
    assert (row.state, row.reason) == ("refused", "no")
    store.save_round("s-001", 1, "{}", 1.0, {"site-a": "r1"})
    assert store.set_round_task("r1", "refused", 2.0, reason="no")
    assert not store.set_round_task("r1", "answered", 3.0, result=b"x")
    store.close()


def test_open_tasks_and_reset_after_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "agg.sqlite")
    store.add_study(_record("s-001", 1.0), {"site-a": "t1"})
    store.add_study(_record("s-002", 2.0), {"site-a": "t2"})
    store.add_study(_record("s-003", 3.0), {"site-a": "t3"})
    for i, study in enumerate(("s-001", "s-002", "s-003"), start=1):
        store.save_round(study, 1, "{}", 4.0, {"site-a": f"t{i}"})
    store.set_round_task("t1", "sent", 5.0)
    store.set_round_task("t3", "answered", 5.0, result=b"r")
    store.finish_study("s-003", "completed", "{}", 6.0)
    assert [t.task_id for t in store.open_round_tasks("site-a")] == ["t1", "t2"]
    assert store.reset_sent_tasks(7.0) == 1
    assert [t.state for t in store.open_round_tasks("site-a")] == ["pending", "pending"]
    assert [s.study_id for s in store.list_studies("running")] == ["s-001", "s-002"]
    store.close()


def test_version_1_database_is_migrated(tmp_path: Path) -> None:
    """A schema-1 file (site sizes, release blobs) opens as schema 2; running studies fail."""
    db = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE sites (site_id TEXT PRIMARY KEY, software_version TEXT NOT NULL DEFAULT '',
            ingested_at TEXT NOT NULL DEFAULT '', stored_infusions INTEGER NOT NULL DEFAULT 0,
            last_seen REAL NOT NULL, connected INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE studies (study_id TEXT PRIMARY KEY, canonical_study BLOB NOT NULL,
            signature BLOB NOT NULL, public_key BLOB NOT NULL, title TEXT NOT NULL,
            status TEXT NOT NULL, submitted_at REAL NOT NULL, completed_at REAL,
            results_json TEXT);
        CREATE TABLE study_sites (study_id TEXT NOT NULL, site_id TEXT NOT NULL,
            state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL,
            task_id TEXT NOT NULL UNIQUE, release BLOB, PRIMARY KEY (study_id, site_id));
        CREATE TABLE iterations (study_id TEXT PRIMARY KEY, round INTEGER NOT NULL,
            round_started_at REAL NOT NULL, state_json TEXT NOT NULL);
        CREATE TABLE round_tasks (study_id TEXT NOT NULL, round INTEGER NOT NULL,
            site_id TEXT NOT NULL, task_id TEXT NOT NULL UNIQUE, state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL, result BLOB,
            PRIMARY KEY (study_id, round, site_id));
        INSERT INTO sites VALUES ('site-a', 'node/0', '', 99, 1.0, 1);
        INSERT INTO studies VALUES ('old', x'7b7d', x'00', x'00', 'Old', 'running', 1.0, NULL,
            NULL);
        INSERT INTO study_sites VALUES ('old', 'site-a', 'released', '', 1.0, 't', x'00');
        PRAGMA user_version = 1;
    """)
    conn.close()
    store = Store(db)
    (site,) = store.list_sites()
    assert (site.site_id, site.software_version) == ("site-a", "node/0")
    old = store.get_study("old")
    assert old is not None and old.status == "failed" and "submit it again" in str(
        old.results_json)
    assert store.query("PRAGMA user_version") == [(2,)]
    assert "stored_infusions" not in {r[1] for r in store.query("PRAGMA table_info(sites)")}
    store.close()


def test_closed_store_raises(tmp_path: Path) -> None:
    store = Store(tmp_path / "agg.sqlite")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.site_ids()


def test_transactions_nest_as_savepoints_and_after_commit_waits_for_the_commit(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "agg.sqlite")
    done: list[str] = []
    commits: list[str] = []
    store._conn.set_trace_callback(  # type: ignore[union-attr]
        lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
    with store.transaction():
        store.add_study(_record("s-001"), {"site-a": "t1"})
        store.after_commit(lambda: done.append("outer"))
        # a savepoint: its failure undoes only itself
        with pytest.raises(sqlite3.IntegrityError), store.transaction():
            store.add_study(_record("s-002"), {"site-a": "t2"})
            store.after_commit(lambda: done.append("dropped"))
            store.add_study(_record("s-002"), {"site-a": "t3"})
        with store.transaction():
            store.add_study(_record("s-003"), {"site-a": "t4"})
            store.after_commit(lambda: done.append("inner"))
        assert done == []  # nothing runs before the commit
    assert done == ["outer", "inner"]
    assert len(commits) == 1
    assert [s.study_id for s in store.list_studies()] == ["s-001", "s-003"]
    with pytest.raises(RuntimeError), store.transaction():
        store.add_study(_record("s-004"), {"site-a": "t5"})
        store.after_commit(lambda: done.append("rolled back"))
        raise RuntimeError("boom")
    assert store.get_study("s-004") is None and done == ["outer", "inner"]
    store.after_commit(lambda: done.append("now"))  # no transaction open: at once
    assert done[-1] == "now"
    store.close()


def test_a_round_saved_as_sent_and_unsent_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "agg.sqlite")
    store.add_study(_record(), {"site-a": "t-a", "site-b": "t-b"})
    store.save_round("s-001", 1, "{}", 2.0, {"site-a": "r-a", "site-b": "r-b"}, sent={"site-a"})
    assert [(t.site_id, t.state) for t in store.round_tasks("s-001", 1)] == [
        ("site-a", "sent"), ("site-b", "pending")]
    assert [(s.site_id, s.state, s.task_id) for s in store.study_sites("s-001")] == [
        ("site-a", "sent", "r-a"), ("site-b", "pending", "t-b")]
    assert [t.site_id for t in store.open_tasks("s-001", 1)] == ["site-a", "site-b"]
    store.mark_unsent("s-001", {"site-a": "r-a"}, 3.0)
    assert [t.state for t in store.round_tasks("s-001", 1)] == ["pending", "pending"]
    assert [s.state for s in store.study_sites("s-001")] == ["pending", "pending"]
    assert store.record_answer("s-001", "site-a", "r-a", "answered", 4.0, result=b"x",
                               participant=("released", ""))
    assert [t.site_id for t in store.open_tasks("s-001", 1)] == ["site-b"]
    store.close()


def test_a_snapshot_reads_the_committed_state_without_waiting_for_a_writer(
        tmp_path: Path) -> None:
    import threading

    store = Store(tmp_path / "agg.sqlite")
    store.add_study(_record(), {"site-a": "t-a"})
    inside, release, done = threading.Event(), threading.Event(), threading.Event()

    def writer() -> None:
        with store.transaction():
            store.finish_study("s-001", "completed", '{"heron": 1}', now=20.0)
            with store.snapshot():  # the writer's own thread reads its own change
                assert store.get_study("s-001").status == "completed"  # type: ignore[union-attr]
            inside.set()
            release.wait(15)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert inside.wait(15)
        read: list[str] = []
        reader = threading.Thread(target=lambda: read.append(_status(store)))
        reader.start()
        reader.join(15)  # the writer still holds the lock and its transaction
        assert read == ["running"]  # the committed state, not the open transaction's
    finally:
        release.set()
        thread.join(15)
    assert done.is_set()
    assert _status(store) == "completed"
    store.close()
    with pytest.raises(StoreError):
        _status(store)


def _status(store: Store) -> str:
    with store.snapshot():
        study = store.get_study("s-001")
    assert study is not None
    return study.status


def test_stored_answers_are_compressed_and_older_blobs_still_read() -> None:
    import numpy as np

    from aggregator.store import decode_task_result, encode_task_result
    from protocol.codec import Release, encode_release
    from protocol.v1 import node_link_pb2

    days = 1827
    events = np.zeros(days, dtype=np.int64)
    events[[3, 40, 41, 900]] = [1, 2, 1, 1]
    release = Release(analysis="os", kind="kaplan_meier",
                      vectors={"g0.events": events, "g0.censored": np.ones(days, np.int64)},
                      metadata={"groups": ["all"]})
    blob = encode_task_result("t-1", "s-1", [release])
    raw = node_link_pb2.TaskResult(task_id="t-1", study_id="s-1",
                                   releases=[encode_release(release)]).SerializeToString()
    assert len(blob) * 10 < len(raw)  # what each answer's commit writes
    for stored in (blob, raw):  # raw: a blob stored before compression
        (back,) = decode_task_result(stored)
        assert (back.analysis, back.kind, back.metadata) == ("os", "kaplan_meier",
                                                              {"groups": ["all"]})
        assert np.array_equal(back.vectors["g0.events"], events)
        assert np.array_equal(back.vectors["g0.censored"], np.ones(days, np.int64))
