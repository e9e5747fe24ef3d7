"""The aggregator's durable state in one SQLite file.

Five tables: the site registry (``sites``), submitted studies with their signed envelopes and
results (``studies``), the state of each participant of a study (``study_sites``), the round a
running study is in with its run state (``iterations``) and every task of every round with the
site's answer (``round_tasks``; see :mod:`aggregator.run`). Every state change is one
transaction, so a crash never leaves a half-written study; reopening the file gives the same
state (schema and migrations: :mod:`aggregator.schema`). A caller groups several changes into
one transaction with :meth:`Store.transaction` (a nested one is a savepoint) and defers what
must follow the commit (sending tasks) with :meth:`Store.after_commit`. Times are Unix seconds
(floats) as given by the caller's clock.

The store is shared by gRPC threads and the timeout ticker: it holds one connection guarded by a
re-entrant lock, with the database in WAL mode. Reads inside :meth:`Store.snapshot` (the
coordinator's status and list calls) use a read connection of the calling thread instead: they
see one committed state and wait neither for the lock nor for a writer's transaction.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.errors import StoreError
from aggregator.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from protocol.codec import Release, decode_release, encode_release
from protocol.v1 import node_link_pb2

__all__ = [
    "AWAITING_APPROVAL",
    "OPEN_STATES",
    "SITE_STATES",
    "STUDY_STATUSES",
    "RoundRecord",
    "RoundTaskRecord",
    "SiteRecord",
    "Store",
    "StudyRecord",
    "StudySiteRecord",
    "decode_task_result",
    "encode_task_result",
]

logger = logging.getLogger(__name__)

STUDY_STATUSES = ("running", "completed", "failed")
SITE_STATES = ("pending", "sent", "released", "refused", "unreachable")
OPEN_STATES = ("pending", "sent")
_ZLIB_LEVEL = 1
_ZLIB_FIRST_BYTE = b"\x78"  # a zlib stream's header; a TaskResult starts with a field tag
AWAITING_APPROVAL = "awaiting approval"
"""Reason prefix of an open task (and its participant) whose site awaits its data steward's
approval (:mod:`protocol.approval`): the task stays open and is sent again until answered."""



@dataclass(frozen=True)
class SiteRecord:
    """A site of the registry: what it said in its last ``Hello`` and whether it is connected."""

    site_id: str
    software_version: str
    ingested_at: str
    last_seen: float
    connected: bool


@dataclass(frozen=True)
class StudyRecord:
    """A submitted study: its signed envelope, status and (once finished) results JSON."""

    study_id: str
    canonical_study: bytes
    signature: bytes
    public_key: bytes
    title: str
    status: str
    submitted_at: float
    completed_at: float | None
    results_json: str | None


@dataclass(frozen=True)
class StudySiteRecord:
    """The state of one participant of one study (``task_id``: its latest task)."""

    study_id: str
    site_id: str
    state: str
    reason: str
    updated_at: float
    task_id: str


@dataclass(frozen=True)
class RoundRecord:
    """The round a running study is in, when it started, and the run state (JSON)."""

    study_id: str
    round: int
    started_at: float
    state_json: str


@dataclass(frozen=True)
class RoundTaskRecord:
    """One site's task of one round; ``result`` is a serialized ``TaskResult`` once answered."""

    study_id: str
    round: int
    site_id: str
    task_id: str
    state: str
    reason: str
    updated_at: float
    result: bytes | None


class Store:
    """SQLite persistence of sites, studies and per-site study states.

    Parameters
    ----------
    path
        The database file; created (with its folder) when missing.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0  # transactions open on the lock's thread (nested ones are savepoints)
        self._on_commit: list[list[Callable[[], None]]] = []  # per open level
        self._writer = 0  # the thread holding the open transaction (with _depth > 0)
        self._local = threading.local()  # a thread's read connection and snapshot flag
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this aggregator "
                             f"understands up to {SCHEMA_VERSION}")
        with self._tx() as conn:
            existing = conn.execute("SELECT 1 FROM sqlite_master WHERE name='sites'").fetchall()
            for old in range(version if existing else SCHEMA_VERSION, SCHEMA_VERSION):
                for statement in MIGRATIONS[old]:
                    conn.execute(statement)
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the database; later calls raise :class:`StoreError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            with self._readers_lock:
                for reader in self._readers:
                    reader.close()
                self._readers.clear()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Make the block's reads on this thread one read transaction on the thread's own
        connection: a committed state, read without waiting for the writers. Inside this
        thread's open write transaction, or nested, reads go on as before."""
        local = self._local
        if getattr(local, "reading", False) or (self._depth and self._writer ==
                                                threading.get_ident()):
            yield
            return
        self._connection()  # raises once the store is closed
        conn = self._reader()
        conn.execute("BEGIN")
        local.reading = True
        try:
            yield
        finally:
            local.reading = False
            conn.execute("COMMIT")

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA query_only=ON")
            with self._readers_lock:  # not the writers' lock: a reader never waits for it
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every change of the block one transaction: committed when the outermost block
        ends, rolled back on any error. Inside another transaction it is a savepoint: an error
        undoes only the changes of this block (and drops its :meth:`after_commit` calls)."""
        with self._tx():
            yield

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the open transaction has committed (at once when none is
        open); it is dropped if the transaction, or the savepoint it was made in, rolls
        back. Callbacks run on the committing thread, in order, holding the store's lock."""
        with self._lock:
            if not self._depth:
                callback()
            else:
                self._on_commit[-1].append(callback)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (a savepoint when nested): committed on success, rolled
        back on any error."""
        with self._lock:
            conn = self._connection()
            level = self._depth
            conn.execute("BEGIN IMMEDIATE" if level == 0 else f"SAVEPOINT tx{level}")
            self._writer = threading.get_ident()
            self._depth += 1
            self._on_commit.append([])
            try:
                yield conn
            except BaseException:
                self._depth -= 1
                self._on_commit.pop()
                if level == 0:
                    conn.execute("ROLLBACK")
                else:
                    conn.execute(f"ROLLBACK TO tx{level}")
                    conn.execute(f"RELEASE tx{level}")
                raise
            self._depth -= 1
            callbacks = self._on_commit.pop()
            if level:
                conn.execute(f"RELEASE tx{level}")
                self._on_commit[-1].extend(callbacks)
                return
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            for callback in callbacks:
                callback()

    def query(self, sql: str, params: Iterable[object] = ()) -> list[tuple[Any, ...]]:
        """Run a read query (for inspection and tests)."""
        return self._query(sql, params)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._conn

    def _query(self, sql: str, params: Iterable[object] = ()) -> list[tuple[Any, ...]]:
        if getattr(self._local, "reading", False):
            return self._local.conn.execute(sql, tuple(params)).fetchall()  # type: ignore[no-any-return]
        with self._lock:
            return self._connection().execute(sql, tuple(params)).fetchall()

    # -- sites -------------------------------------------------------------------------------

    def upsert_site(self, site_id: str, software_version: str, ingested_at: str,
                    now: float) -> None:
        """Record a site's ``Hello``: add it to the registry or update it; mark it connected."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO sites (site_id, software_version, ingested_at,"
                " last_seen, connected) VALUES (?, ?, ?, ?, 1)"
                " ON CONFLICT(site_id) DO UPDATE SET software_version=excluded.software_version,"
                " ingested_at=excluded.ingested_at,"
                " last_seen=excluded.last_seen, connected=1",
                (site_id, software_version, ingested_at, now))

    def set_site_connected(self, site_id: str, connected: bool, now: float) -> None:
        """Set a known site's connected flag and its last-seen time."""
        with self._tx() as conn:
            conn.execute("UPDATE sites SET connected=?, last_seen=? WHERE site_id=?",
                         (int(connected), now, site_id))

    def disconnect_all_sites(self) -> None:
        """Mark every site disconnected (no connection survives an aggregator restart)."""
        with self._tx() as conn:
            conn.execute("UPDATE sites SET connected=0")

    def site_ids(self) -> list[str]:
        """Ids of every site ever seen, sorted."""
        return [r[0] for r in self._query("SELECT site_id FROM sites ORDER BY site_id")]

    def list_sites(self) -> list[SiteRecord]:
        """The registry, sorted by site id."""
        rows = self._query("SELECT site_id, software_version, ingested_at,"
                           " last_seen, connected FROM sites ORDER BY site_id")
        return [SiteRecord(r[0], r[1], r[2], float(r[3]), bool(r[4])) for r in rows]

    # -- studies -----------------------------------------------------------------------------

    def add_study(self, study: StudyRecord, tasks: Mapping[str, str]) -> None:
        """Insert a study and its participants (``site_id -> task_id``, all ``pending``).

        Raises
        ------
        sqlite3.IntegrityError
            When the study id (or a task id) already exists; nothing is written then.
        """
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO studies (study_id, canonical_study, signature, public_key, title,"
                " status, submitted_at, completed_at, results_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (study.study_id, study.canonical_study, study.signature, study.public_key,
                 study.title, study.status, study.submitted_at, study.completed_at,
                 study.results_json))
            conn.executemany(
                "INSERT INTO study_sites (study_id, site_id, state, reason, updated_at, task_id)"
                " VALUES (?, ?, 'pending', '', ?, ?)",
                [(study.study_id, site, study.submitted_at, task) for site, task in
                 sorted(tasks.items())])

    def get_study(self, study_id: str) -> StudyRecord | None:
        """The study with this id, or ``None``."""
        rows = self._query(f"{_STUDY_SELECT} WHERE study_id=?", (study_id,))
        return _study(rows[0]) if rows else None

    def list_studies(self, status: str | None = None) -> list[StudyRecord]:
        """Studies (optionally only those with ``status``), oldest first."""
        if status is None:
            rows = self._query(f"{_STUDY_SELECT} ORDER BY submitted_at, study_id")
        else:
            rows = self._query(f"{_STUDY_SELECT} WHERE status=? ORDER BY submitted_at, study_id",
                               (status,))
        return [_study(r) for r in rows]

    def finish_study(self, study_id: str, status: str, results_json: str, now: float) -> None:
        """Set a running study's final status and results."""
        if status not in STUDY_STATUSES or status == "running":
            raise ValueError(f"not a final study status: {status!r}")
        with self._tx() as conn:
            conn.execute("UPDATE studies SET status=?, results_json=?, completed_at=?"
                         " WHERE study_id=? AND status='running'",
                         (status, results_json, now, study_id))

    # -- per-site study states ---------------------------------------------------------------

    def study_sites(self, study_id: str) -> list[StudySiteRecord]:
        """The participants of a study with their states and release blobs, by site id."""
        rows = self._query(f"{_SITE_STATE_SELECT} WHERE study_id=? ORDER BY site_id",
                           (study_id,))
        return [StudySiteRecord(*r) for r in rows]

    def set_site_state(self, study_id: str, site_id: str, state: str, now: float, *,
                       reason: str = "", task_id: str | None = None,
                       only_from: Iterable[str] = OPEN_STATES) -> bool:
        """Move one participant to ``state`` if it is now in one of ``only_from``.

        Returns
        -------
        bool
            Whether a row changed (``False`` for an unknown participant or a final state).
        """
        if state not in SITE_STATES:
            raise ValueError(f"not a site state: {state!r}")
        allowed = tuple(only_from)
        marks = ", ".join("?" for _ in allowed)
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE study_sites SET state=?, reason=?, updated_at=?,"
                " task_id=COALESCE(?, task_id)"
                f" WHERE study_id=? AND site_id=? AND state IN ({marks})",
                (state, reason, now, task_id, study_id, site_id, *allowed))
            return cur.rowcount > 0

    def set_final_states(self, study_id: str, states: Mapping[str, tuple[str, str]],
                         now: float) -> None:
        """Give participants their final state and reason (``site -> (state, reason)``) in
        one transaction; participants already in a final state keep it."""
        with self._tx() as conn:
            conn.executemany(
                "UPDATE study_sites SET state=?, reason=?, updated_at=? WHERE study_id=?"
                " AND site_id=? AND state IN ('pending', 'sent', 'released')",
                [(st, reason, now, study_id, site) for site, (st, reason) in
                 sorted(states.items())])

    # -- rounds ------------------------------------------------------------------------------

    def save_round(self, study_id: str, round: int, state_json: str, now: float,
                   tasks: Mapping[str, str], sent: Collection[str] = ()) -> None:
        """Enter round ``round`` of a study: its run state and its tasks (site -> task id).

        The tasks of the sites in ``sent`` are recorded as sent, with their participants, as
        :meth:`mark_sent` does (for a caller that sends them once this has committed); the
        others are ``pending``.
        """
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO iterations (study_id, round, round_started_at, state_json)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(study_id) DO UPDATE SET round=excluded.round,"
                " round_started_at=excluded.round_started_at, state_json=excluded.state_json",
                (study_id, round, now, state_json))
            conn.executemany(
                "INSERT INTO round_tasks (study_id, round, site_id, task_id, state, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(study_id, round, site, task, "sent" if site in sent else "pending", now)
                 for site, task in sorted(tasks.items())])
            conn.executemany(
                "UPDATE study_sites SET state='sent', updated_at=?, task_id=? WHERE study_id=?"
                " AND site_id=? AND state IN ('pending', 'sent', 'released')",
                [(now, task, study_id, site) for site, task in sorted(tasks.items())
                 if site in sent])

    def current_round(self, study_id: str) -> RoundRecord | None:
        """The round a study is in, or ``None`` before its first."""
        rows = self._query("SELECT study_id, round, round_started_at, state_json FROM iterations"
                           " WHERE study_id=?", (study_id,))
        return RoundRecord(rows[0][0], int(rows[0][1]), float(rows[0][2]), rows[0][3]) \
            if rows else None

    def round_tasks(self, study_id: str, round: int) -> list[RoundTaskRecord]:
        """The tasks of one round of a study, by site id."""
        rows = self._query(f"{_TASK_SELECT} WHERE r.study_id=? AND r.round=? ORDER BY r.site_id",
                           (study_id, round))
        return [_task(r) for r in rows]

    def open_task_count(self, study_id: str, round: int) -> int:
        """How many tasks of a round are still pending or sent (a cheap check per reply)."""
        rows = self._query("SELECT COUNT(*) FROM round_tasks WHERE study_id=? AND round=?"
                           " AND state IN ('pending', 'sent')", (study_id, round))
        return int(rows[0][0])

    def open_tasks(self, study_id: str, round: int) -> list[RoundTaskRecord]:
        """The pending or sent tasks of a round, by site id (no answers to read)."""
        rows = self._query(f"{_TASK_SELECT} WHERE r.study_id=? AND r.round=?"
                           " AND r.state IN ('pending', 'sent') ORDER BY r.site_id",
                           (study_id, round))
        return [_task(r) for r in rows]

    def round_task(self, task_id: str) -> RoundTaskRecord | None:
        """The task with this id, or ``None``."""
        rows = self._query(f"{_TASK_SELECT} WHERE r.task_id=?", (task_id,))
        return _task(rows[0]) if rows else None

    def open_round_tasks(self, site_id: str) -> list[RoundTaskRecord]:
        """Pending or sent tasks of a site in the current rounds of running studies."""
        rows = self._query(
            f"{_TASK_SELECT}"
            " JOIN iterations i ON i.study_id = r.study_id AND i.round = r.round"
            " JOIN studies t ON t.study_id = r.study_id"
            " WHERE r.site_id=? AND t.status='running' AND r.state IN ('pending', 'sent')"
            " ORDER BY t.submitted_at, r.study_id", (site_id,))
        return [_task(r) for r in rows]

    def set_round_task(self, task_id: str, state: str, now: float, *, reason: str = "",
                       result: bytes | None = None,
                       only_from: Iterable[str] = OPEN_STATES) -> bool:
        """Move a round task to ``state`` (``sent``, ``answered``, ``refused``, ``silent``) if in
        one of ``only_from``; return whether it changed."""
        allowed = tuple(only_from)
        marks = ", ".join("?" for _ in allowed)
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE round_tasks SET state=?, reason=?, result=?, updated_at=?"
                f" WHERE task_id=? AND state IN ({marks})",
                (state, reason, result, now, task_id, *allowed))
            return cur.rowcount > 0

    def mark_sent(self, study_id: str, tasks: Mapping[str, str], now: float) -> None:
        """Record in one transaction that round tasks (``site -> task id``) were sent: the
        tasks and their participants become ``sent``."""
        with self._tx() as conn:
            conn.executemany(
                "UPDATE round_tasks SET state='sent', updated_at=?"
                " WHERE task_id=? AND state IN ('pending', 'sent')",
                [(now, task) for task in tasks.values()])
            conn.executemany(
                "UPDATE study_sites SET state='sent', updated_at=?, task_id=? WHERE study_id=?"
                " AND site_id=? AND state IN ('pending', 'sent', 'released')",
                [(now, task, study_id, site) for site, task in sorted(tasks.items())])

    def record_reply(self, task: RoundTaskRecord, state: str, now: float, *, reason: str = "",
                     result: bytes | None = None,
                     participant: tuple[str, str] | None = None) -> bool:
        """Record a site's answer (``answered``) or refusal (``refused``) to an open task and,
        in the same transaction, its participant's new ``(state, reason)``; return whether the
        task was still open."""
        return self.record_answer(task.study_id, task.site_id, task.task_id, state, now,
                                  reason=reason, result=result, participant=participant)

    def record_answer(self, study_id: str, site_id: str, task_id: str, state: str,
                      now: float, *, reason: str = "", result: bytes | None = None,
                      participant: tuple[str, str] | None = None) -> bool:
        """:meth:`record_reply` of the task ``task_id`` of ``site_id`` in ``study_id``."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE round_tasks SET state=?, reason=?, result=?, updated_at=?"
                " WHERE task_id=? AND state IN ('pending', 'sent')",
                (state, reason, result, now, task_id))
            if cur.rowcount and participant is not None:
                conn.execute(
                    "UPDATE study_sites SET state=?, reason=?, updated_at=? WHERE study_id=?"
                    " AND site_id=? AND state IN ('pending', 'sent', 'released')",
                    (*participant, now, study_id, site_id))
            return cur.rowcount > 0

    def mark_unsent(self, study_id: str, tasks: Mapping[str, str], now: float) -> None:
        """Undo :meth:`save_round`'s ``sent`` for tasks (``site -> task id``) that could not be
        sent after all: they and their participants go back to ``pending``."""
        with self._tx() as conn:
            conn.executemany(
                "UPDATE round_tasks SET state='pending', updated_at=?"
                " WHERE task_id=? AND state='sent'", [(now, task) for task in tasks.values()])
            conn.executemany(
                "UPDATE study_sites SET state='pending', updated_at=? WHERE study_id=?"
                " AND site_id=? AND task_id=? AND state='sent'",
                [(now, study_id, site, task) for site, task in sorted(tasks.items())])

    def mark_awaiting(self, task: RoundTaskRecord, now: float, reason: str) -> bool:
        """Record that an open task's site awaits approval (``reason`` starts with
        :data:`AWAITING_APPROVAL`): the task stays open; its open participant shows the reason.
        Return whether the task was still open."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE round_tasks SET reason=?, updated_at=?"
                " WHERE task_id=? AND state IN ('pending', 'sent')",
                (reason, now, task.task_id))
            if cur.rowcount:
                conn.execute(
                    "UPDATE study_sites SET reason=?, updated_at=? WHERE study_id=?"
                    " AND site_id=? AND state IN ('pending', 'sent')",
                    (reason, now, task.study_id, task.site_id))
            return cur.rowcount > 0

    def reset_sent_tasks(self, now: float) -> int:
        """Turn ``sent`` tasks of running studies back into ``pending``; return how many."""
        running = "SELECT study_id FROM studies WHERE status='running'"
        with self._tx() as conn:
            cur = conn.execute("UPDATE round_tasks SET state='pending', updated_at=?"
                               f" WHERE state='sent' AND study_id IN ({running})", (now,))
            conn.execute("UPDATE study_sites SET state='pending', updated_at=?"
                         f" WHERE state='sent' AND study_id IN ({running})", (now,))
            return cur.rowcount


_STUDY_SELECT = ("SELECT study_id, canonical_study, signature, public_key, title, status,"
                 " submitted_at, completed_at, results_json FROM studies")
_SITE_STATE_SELECT = ("SELECT study_id, site_id, state, reason, updated_at, task_id"
                      " FROM study_sites")
_TASK_SELECT = ("SELECT r.study_id, r.round, r.site_id, r.task_id, r.state, r.reason,"
                " r.updated_at, r.result FROM round_tasks r")


def _task(row: tuple[Any, ...]) -> RoundTaskRecord:
    return RoundTaskRecord(row[0], int(row[1]), row[2], row[3], row[4], row[5], float(row[6]),
                           None if row[7] is None else bytes(row[7]))


def _study(row: tuple[Any, ...]) -> StudyRecord:
    return StudyRecord(row[0], bytes(row[1]), bytes(row[2]), bytes(row[3]), row[4], row[5],
                       float(row[6]), None if row[7] is None else float(row[7]), row[8])


def encode_task_result(task_id: str, study_id: str, releases: Sequence[Release]) -> bytes:
    """Serialize a site's releases as a ``TaskResult`` protobuf, zlib-compressed (the stored
    release blob: fixed-width vectors over the horizon shrink 20-60 fold, and so do the bytes
    each answer's commit writes and syncs)."""
    msg = node_link_pb2.TaskResult(task_id=task_id, study_id=study_id,
                                   releases=[encode_release(r) for r in releases])
    return zlib.compress(msg.SerializeToString(), _ZLIB_LEVEL)


def decode_task_result(blob: bytes) -> tuple[Release, ...]:
    """Read back the releases of :func:`encode_task_result` (also an uncompressed blob, as
    stored before: a serialized ``TaskResult`` never starts with zlib's first byte)."""
    raw = zlib.decompress(blob) if blob[:1] == _ZLIB_FIRST_BYTE else blob
    msg = node_link_pb2.TaskResult.FromString(raw)
    return tuple(decode_release(r) for r in msg.releases)
