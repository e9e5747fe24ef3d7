"""Audit trail: append, hash chain, head file, and detection of each kind of tampering."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from node.errors import AuditError
from node.governance.audit import GENESIS, HEAD_SIZE, AuditTrail, entry_hash, verify_audit


def _trail(tmp_path: Path, n: int = 4) -> Path:
    path = tmp_path / "audit" / "audit.jsonl"
    trail = AuditTrail(path)
    trail.append("policy_loaded", policy={"min_cell": 5})
    for i in range(2, n + 1):
        trail.append("study_received", f"study-{i}", analyses=i)
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def test_append_writes_chained_entries(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(path)
    first = trail.append("policy_loaded", policy={"min_cohort": 10})
    second = trail.append("release", "lbcl-os", cohort_size=42, analyses=["os"])
    assert set(first) == {"seq", "time", "event", "study_id", "details", "prev", "hash"}
    assert first["seq"] == 1 and second["seq"] == 2
    assert first["prev"] == GENESIS == "0" * 64
    assert second["prev"] == first["hash"]
    assert first["study_id"] is None and second["study_id"] == "lbcl-os"
    assert second["details"] == {"cohort_size": 42, "analyses": ["os"]}
    parsed = dt.datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert parsed.utcoffset() == dt.timedelta(0)
    # hash = sha256 of the canonical JSON (sorted keys, compact) without "hash"
    body = {k: v for k, v in second.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert second["hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert entry_hash(second) == second["hash"]
    assert [json.loads(line) for line in _lines(path)] == [first, second]
    assert trail.entries() == [first, second]


def test_files_are_private_and_head_tracks_last_entry(tmp_path: Path) -> None:
    path = _trail(tmp_path, 3)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    head_path = Path(str(path) + ".head")
    assert stat.S_IMODE(head_path.stat().st_mode) == 0o600
    last = json.loads(_lines(path)[-1])
    assert json.loads(head_path.read_text()) == {"seq": 3, "hash": last["hash"]}


def test_new_instance_continues_the_chain(tmp_path: Path) -> None:
    path = _trail(tmp_path, 2)
    entry = AuditTrail(path).append("study_approved", "study-2")
    assert entry["seq"] == 3
    assert verify_audit(path).ok


def test_details_are_normalised_and_rows_refused(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    entry = trail.append("ingest", rows=np.int64(12), day=dt.date(2024, 5, 1),
                         folder=Path("/data/site"))
    assert entry["details"] == {"rows": 12, "day": "2024-05-01", "folder": "/data/site"}
    with pytest.raises(AuditError, match="patient-level"):
        trail.append("release", "s-1", table=pd.DataFrame({"duration": [1, 2]}))
    with pytest.raises(AuditError):
        trail.append("release", "s-1", value=float("nan"))
    report = verify_audit(tmp_path / "audit.jsonl")
    assert (report.ok, report.entries) == (True, 1)


def test_verify_intact_and_empty(tmp_path: Path) -> None:
    report = verify_audit(_trail(tmp_path, 4))
    assert (report.ok, report.entries, report.first_bad_seq) == (True, 4, None)
    empty = verify_audit(tmp_path / "none.jsonl")
    assert (empty.ok, empty.entries, empty.first_bad_seq) == (True, 0, None)


def test_edited_field_detected(tmp_path: Path) -> None:
    path = _trail(tmp_path, 4)
    lines = _lines(path)
    entry = json.loads(lines[1])
    entry["details"]["analyses"] = 99
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    _rewrite(path, lines)
    report = verify_audit(path)
    assert (report.ok, report.entries, report.first_bad_seq) == (False, 1, 2)
    assert "hash" in report.reason


def test_edited_field_with_recomputed_hash_breaks_the_chain(tmp_path: Path) -> None:
    path = _trail(tmp_path, 4)
    lines = _lines(path)
    entry = json.loads(lines[1])
    entry["event"] = "study_refused"
    entry["hash"] = entry_hash(entry)
    lines[1] = json.dumps(entry) + "\n"
    _rewrite(path, lines)
    report = verify_audit(path)
    assert (report.ok, report.first_bad_seq) == (False, 3)
    assert "prev" in report.reason


def test_deleted_line_detected(tmp_path: Path) -> None:
    path = _trail(tmp_path, 4)
    lines = _lines(path)
    del lines[2]
    _rewrite(path, lines)
    report = verify_audit(path)
    assert (report.ok, report.entries, report.first_bad_seq) == (False, 2, 3)


def test_inserted_line_detected(tmp_path: Path) -> None:
    path = _trail(tmp_path, 4)
    lines = _lines(path)
    lines.insert(2, lines[1])
    _rewrite(path, lines)
    report = verify_audit(path)
    assert (report.ok, report.entries, report.first_bad_seq) == (False, 2, 3)


def test_reordered_lines_detected(tmp_path: Path) -> None:
    path = _trail(tmp_path, 4)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(path, lines)
    report = verify_audit(path)
    assert (report.ok, report.entries, report.first_bad_seq) == (False, 1, 2)


def test_truncated_tail_detected_by_head(tmp_path: Path) -> None:
    path = _trail(tmp_path, 4)
    _rewrite(path, _lines(path)[:2])
    report = verify_audit(path)
    assert (report.ok, report.entries, report.first_bad_seq) == (False, 2, 3)
    assert "truncated" in report.reason
    _rewrite(path, [])
    report = verify_audit(path)
    assert (report.ok, report.entries, report.first_bad_seq) == (False, 0, 1)


def test_bad_json_detected(tmp_path: Path) -> None:
    path = _trail(tmp_path, 4)
    lines = _lines(path)
    lines[2] = lines[2][:40] + "\n"
    _rewrite(path, lines)
    report = verify_audit(path)
    assert (report.ok, report.entries, report.first_bad_seq) == (False, 2, 3)
    assert "JSON" in report.reason
    with pytest.raises(AuditError, match="line 3"):
        AuditTrail(path).entries()


def test_missing_or_damaged_head_detected(tmp_path: Path) -> None:
    path = _trail(tmp_path, 2)
    head = Path(str(path) + ".head")
    head.write_text('{"seq": 2, "hash": "' + "f" * 64 + '"}\n')
    report = verify_audit(path)
    assert (report.ok, report.first_bad_seq) == (False, 2)
    head.unlink()
    report = verify_audit(path)
    assert not report.ok and "head" in report.reason


def test_append_refuses_a_tampered_tail(tmp_path: Path) -> None:
    path = _trail(tmp_path, 4)
    _rewrite(path, _lines(path)[:2])
    with pytest.raises(AuditError, match="disagree"):
        AuditTrail(path).append("release", "s")
    _rewrite(path, [])
    with pytest.raises(AuditError, match="empty"):
        AuditTrail(path).append("release", "s")


def test_interrupted_append_is_reported_then_recovered(tmp_path: Path) -> None:
    path = _trail(tmp_path, 3)
    lines = _lines(path)
    second = json.loads(lines[1])
    # as if the process died after writing entry 3 but before replacing the head file
    Path(str(path) + ".head").write_text(json.dumps({"seq": 2, "hash": second["hash"]}))
    report = verify_audit(path)
    assert (report.ok, report.first_bad_seq) == (False, 3)
    assert AuditTrail(path).append("release", "s")["seq"] == 4
    assert verify_audit(path).ok


def test_head_is_one_fixed_record_updated_in_place(tmp_path: Path) -> None:
    path = _trail(tmp_path, 2)
    head = Path(str(path) + ".head")
    inode = head.stat().st_ino
    assert head.stat().st_size == HEAD_SIZE
    last = AuditTrail(path).append("release", "s", round=1)
    # the same file (no rename), still private, holding the last entry padded to its size
    assert head.stat().st_ino == inode and head.stat().st_size == HEAD_SIZE
    assert stat.S_IMODE(head.stat().st_mode) == 0o600
    text = head.read_text()
    assert text.endswith("\n") and json.loads(text) == {"seq": 3, "hash": last["hash"]}
    assert not Path(str(head) + ".tmp").exists()
    assert verify_audit(path).ok


def test_head_of_another_size_is_replaced_and_the_chain_continues(tmp_path: Path) -> None:
    path = _trail(tmp_path, 2)
    head = Path(str(path) + ".head")
    second = json.loads(_lines(path)[-1])
    head.write_text(json.dumps({"seq": 2, "hash": second["hash"]}))  # as older nodes wrote it
    assert verify_audit(path).ok
    assert AuditTrail(path).append("release", "s")["seq"] == 3
    assert head.stat().st_size == HEAD_SIZE and verify_audit(path).ok


def test_torn_head_record_is_refused(tmp_path: Path) -> None:
    path = _trail(tmp_path, 3)
    head = Path(str(path) + ".head")
    data = bytearray(head.read_bytes())
    data[20:] = b"\0" * (len(data) - 20)  # a write cut short: not a valid head
    head.write_bytes(bytes(data))
    assert not verify_audit(path).ok
    with pytest.raises(AuditError, match="head"):
        AuditTrail(path).append("release", "s")
