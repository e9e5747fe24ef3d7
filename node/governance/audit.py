"""The node's append-only, hash-chained audit trail (JSON lines).

Each line is one entry ``{"seq", "time", "event", "study_id", "details", "prev", "hash"}``:
``seq`` counts from 1, ``time`` is UTC ISO 8601, ``prev`` is the hash of the previous entry
(``"0" * 64`` for the first) and ``hash`` is the SHA-256 hex digest of the canonical JSON
(sorted keys, compact separators, ASCII) of the entry without ``hash``. A head file
(``<path>.head``) records the last ``seq`` and ``hash``, so that cutting entries off the end of
the trail is detected as well as edited, deleted, inserted or reordered lines.

Crash safety: an entry's line is fsynced before its head is written, so the head is never
ahead of the trail, and an append interrupted between the two leaves the head one entry behind
(tolerated by the next append, which brings the head up to date). The head is created (or
rewritten, when not of its fixed size) by a synced temporary file renamed over it and a synced
directory; every later head update overwrites the head's one fixed-size record (a
:data:`HEAD_SIZE`-byte JSON line padded with spaces, well inside one disk sector) in place with
one write and ``fdatasync``, so an append syncs two files and renames nothing. A single
sector-sized write at offset 0 is taken to be atomic, as PostgreSQL does for ``pg_control``; a
torn head would be refused as malformed (never taken as valid).

``details`` must never hold patient-level data: callers pass aggregates only (counts, reasons,
study and analysis names, policy settings). Pandas and numpy containers are rejected outright.

Events written by the node: ``study_received``, ``study_refused``, ``analysis_refused``,
``study_pending``, ``study_approved``, ``study_rejected``, ``release``, ``policy_loaded``,
``ingest``, ``node_initialised``.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import AuditError

__all__ = ["EVENTS", "GENESIS", "HEAD_SIZE", "AuditReport", "AuditTrail", "entry_hash",
           "unaudited_snapshot", "verify_audit"]

log = logging.getLogger(__name__)

GENESIS = "0" * 64
EVENTS = (
    "study_received",
    "study_refused",
    "analysis_refused",
    "study_pending",
    "study_approved",
    "study_rejected",
    "release",
    "policy_loaded",
    "ingest",
    "node_initialised",
)
_KEYS = frozenset({"seq", "time", "event", "study_id", "details", "prev", "hash"})
HEAD_SIZE = 128
"""Bytes of the head file: its JSON line padded with spaces (replaced in place by one write)."""


def _default(obj: Any) -> Any:
    """JSON fallback for scalars; containers of rows are refused (no patient-level data)."""
    if isinstance(obj, dt.datetime | dt.date):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item) and getattr(obj, "ndim", None) == 0:
        return item()
    raise TypeError(f"audit details cannot hold {type(obj).__name__} values "
                    "(aggregates only, never patient-level data)")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False, default=_default)


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of ``entry`` without its ``hash`` key."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(_canonical(body).encode("ascii")).hexdigest()


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _read_head(path: Path) -> dict[str, Any] | None:
    head = _head_path(path)
    try:
        obj = json.loads(head.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuditError(f"{head}: unreadable head file: {exc}") from exc
    if (not isinstance(obj, dict) or not isinstance(obj.get("seq"), int)
            or not isinstance(obj.get("hash"), str)):
        raise AuditError(f"{head}: malformed head file")
    return obj


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _head_record(seq: int, digest: str) -> bytes:
    """The head's JSON line, padded with spaces to :data:`HEAD_SIZE` bytes when it fits."""
    text = _canonical({"seq": seq, "hash": digest})
    return (text.ljust(HEAD_SIZE - 1) + "\n").encode("ascii")


def _write_head(path: Path, seq: int, digest: str) -> None:
    """Record ``(seq, digest)`` in the head file, durably: in place when the head already has
    the fixed size (one write, ``fdatasync``), else by a synced file renamed over it."""
    head = _head_path(path)
    record = _head_record(seq, digest)
    if len(record) == HEAD_SIZE:
        try:
            fd = os.open(head, os.O_WRONLY | os.O_NOFOLLOW)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_size == HEAD_SIZE:
                    if stat.S_IMODE(st.st_mode) != 0o600:
                        os.fchmod(fd, 0o600)
                    if os.pwrite(fd, record, 0) == HEAD_SIZE:
                        os.fdatasync(fd)  # the size is unchanged: data only
                        return
            finally:
                os.close(fd)
    tmp = head.with_name(head.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, record)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, head)
    _fsync_dir(head.parent)


def _last_line(fd: int) -> bytes | None:
    """The last non-empty line of an open file, read backwards from its end."""
    end = os.lseek(fd, 0, os.SEEK_END)
    buf = b""
    pos = end
    while pos > 0:
        step = min(8192, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        stripped = buf.rstrip(b"\n")
        if b"\n" in stripped:
            return stripped.rsplit(b"\n", 1)[1]
    stripped = buf.rstrip(b"\n")
    return stripped or None


def _check_body(entry: Any) -> str | None:
    """Why a decoded line is not a well-formed entry, or None."""
    if not isinstance(entry, dict) or set(entry) != _KEYS:
        return "entry does not have exactly the audit keys"
    if isinstance(entry["seq"], bool) or not isinstance(entry["seq"], int):
        return "seq is not an integer"
    return None


class AuditTrail:
    """Append-only audit trail at ``path`` (JSON lines, mode 0600) with its head file.

    Appends are serialised by a thread lock and an exclusive ``flock`` on the trail, so several
    threads or processes of one node may share it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _tail_state(self, fd: int) -> tuple[int, str]:
        """(last seq, last hash) of the trail, cross-checked with the head file."""
        line = _last_line(fd)
        head = _read_head(self.path)
        if line is None:
            if head is not None and head["seq"] != 0:
                raise AuditError(f"{self.path}: trail is empty but the head file records "
                                 f"seq {head['seq']}; refusing to append")
            return 0, GENESIS
        try:
            last = json.loads(line)
        except ValueError as exc:
            raise AuditError(f"{self.path}: last line is not valid JSON; refusing to append") \
                from exc
        problem = _check_body(last)
        if problem:
            raise AuditError(f"{self.path}: last entry is malformed ({problem})")
        seq, digest = last["seq"], last["hash"]
        if head is None or (head["seq"], head["hash"]) != (seq, digest):
            # One entry ahead of the head whose prev is the head's hash: an append interrupted
            # between the line's fsync and the head update. The next head write covers it.
            if head is not None and seq == head["seq"] + 1 and last["prev"] == head["hash"]:
                log.warning("audit head was one entry behind (interrupted append); continuing")
            else:
                raise AuditError(f"{self.path}: trail and head file disagree; refusing to "
                                 "append (run verify_audit)")
        return seq, digest

    def append(self, event: str, study_id: str | None = None, **details: Any) -> dict[str, Any]:
        """Append one entry and return it as stored.

        ``details`` are aggregates only (never patient-level data) and must be JSON-ready
        (dates, paths and numpy scalars are converted).

        Raises
        ------
        AuditError
            When the trail or head file is damaged, or ``details`` cannot be recorded.
        """
        if event not in EVENTS:
            log.warning("audit event %r is not one of the node's standard events", event)
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            except FileNotFoundError:  # the first entry: its folder is made too
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
                    os.fchmod(fd, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                seq, prev = self._tail_state(fd)
                now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
                body = {"seq": seq + 1, "time": now.replace("+00:00", "Z"), "event": event,
                        "study_id": study_id, "details": details, "prev": prev}
                try:
                    entry = json.loads(_canonical(body))  # normalised: equals what is read back
                except (TypeError, ValueError) as exc:
                    raise AuditError(f"audit details not recordable: {exc}") from exc
                entry["hash"] = entry_hash(entry)
                os.write(fd, (_canonical(entry) + "\n").encode("ascii"))
                os.fdatasync(fd)  # the line is durable before the head moves
                _write_head(self.path, entry["seq"], entry["hash"])
            finally:
                os.close(fd)  # releases the flock
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Every entry of the trail, in file order (no verification; see :func:`verify_audit`).

        Raises
        ------
        AuditError
            When a line is not valid JSON.
        """
        out = []
        for lineno, line in _lines(self.path):
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                raise AuditError(f"{self.path}: line {lineno} is not valid JSON") from exc
        return out


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        fh = path.open("r", encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                yield lineno, line


@dataclass(frozen=True)
class AuditReport:
    """Result of :func:`verify_audit`; ``first_bad_seq`` is the first position that fails."""

    ok: bool
    entries: int
    first_bad_seq: int | None
    reason: str


def verify_audit(path: str | os.PathLike[str],
                 store_dir: str | os.PathLike[str] | None = None) -> AuditReport:
    """Check the hash chain, the sequence and the head file of the audit trail at ``path``
    and, given the node's ``store_dir``, that its current snapshot has an ``ingest`` entry
    (:func:`unaudited_snapshot`).

    ``entries`` counts the lines verified before the first failure. ``first_bad_seq`` is the
    sequence number expected at the first failing position: the edited, missing, inserted or
    out-of-order entry, or for a truncated tail the first entry the head file vouches for
    that is no longer present (None for an unaudited snapshot).
    """
    report = _verify_chain(Path(path))
    if not report.ok or store_dir is None:
        return report
    problem = unaudited_snapshot(path, store_dir)
    return report if problem is None else AuditReport(False, report.entries, None, problem)


def _snapshot_time(snapshot_id: str, manifest: dict[str, Any]) -> dt.datetime | None:
    """When the snapshot was begun: its id starts with the UTC time (store.new_snapshot_id),
    else the manifest's ``ingested_at``."""
    for text, fmt in ((snapshot_id.split("-", 1)[0], "%Y%m%dT%H%M%S%fZ"),
                      (str(manifest.get("ingested_at", "")), "%Y-%m-%dT%H:%M:%SZ")):
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    return None


def unaudited_snapshot(path: str | os.PathLike[str],
                       store_dir: str | os.PathLike[str]) -> str | None:
    """Why the store's current snapshot is not accounted for by the audit trail, or None.

    An ingestion makes its snapshot current and then appends an ``ingest`` entry; a crash in
    between leaves data the trail does not mention while the chain still verifies. The
    snapshot is accounted for by an ``ingest`` entry naming it (``snapshot``) or written after
    it was begun (its id starts with that UTC time). No store, or nothing ingested: None.
    """
    from node.errors import StoreError
    from node.ingestion.store import open_store

    try:
        store = open_store(Path(store_dir))
    except StoreError:
        return None
    sid = store.snapshot_id
    began = _snapshot_time(sid, store.manifest)
    for entry in reversed(AuditTrail(path).entries()):
        if not isinstance(entry, dict) or entry.get("event") != "ingest":
            continue
        details = entry.get("details")
        details = details if isinstance(details, dict) else {}
        if details.get("snapshot") == sid:
            return None
        try:
            when = dt.datetime.fromisoformat(str(entry.get("time", "")).replace("Z", "+00:00"))
        except ValueError:
            continue
        if began is not None and when >= began:
            return None
    return (f"the store's current snapshot {sid} has no ingest entry in the audit trail "
            "(interrupted between the snapshot switch and the audit append?); re-run the "
            "ingestion to record it")


def _verify_chain(p: Path) -> AuditReport:
    prev, count = GENESIS, 0
    for lineno, line in _lines(p):
        want = count + 1
        try:
            entry = json.loads(line)
        except ValueError:
            return AuditReport(False, count, want, f"line {lineno}: not valid JSON")
        problem = _check_body(entry)
        if problem:
            return AuditReport(False, count, want, f"line {lineno}: {problem}")
        if entry["seq"] != want:
            return AuditReport(False, count, want, f"line {lineno}: seq {entry['seq']} where "
                               f"{want} was expected (line deleted, inserted or reordered)")
        if entry["prev"] != prev:
            return AuditReport(False, count, want,
                               f"line {lineno}: prev does not match the previous entry's hash")
        try:
            digest = entry_hash(entry)
        except (TypeError, ValueError):
            return AuditReport(False, count, want, f"line {lineno}: entry cannot be hashed")
        if entry["hash"] != digest:
            return AuditReport(False, count, want,
                               f"line {lineno}: hash mismatch (entry was edited)")
        prev, count = digest, want
    try:
        head = _read_head(p)
    except AuditError as exc:
        return AuditReport(False, count, None, str(exc))
    if head is None:
        if count == 0:
            return AuditReport(True, 0, None, "empty audit trail")
        return AuditReport(False, count, None, "head file missing")
    if head["seq"] > count:
        return AuditReport(False, count, count + 1, f"head file records seq {head['seq']} but "
                           f"the trail ends at {count} (tail truncated)")
    if head["seq"] < count:
        return AuditReport(False, count, head["seq"] + 1, f"trail runs to seq {count} beyond "
                           f"the head file's seq {head['seq']} (interrupted append or added line)")
    if head["hash"] != prev:
        return AuditReport(False, count, count, "head file hash does not match the last entry")
    return AuditReport(True, count, None, f"{count} entries verified")
