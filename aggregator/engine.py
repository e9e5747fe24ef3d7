"""The study engine: signed studies in, rounds of tasks out to sites, results.json out.

:class:`StudyEngine` is the aggregator's imperative shell around the pure round loop of
:mod:`aggregator.run`. It is driven by the coordinator API (:meth:`StudyEngine.submit`), by
transport events (it is the transport's listener) and by a ticker calling
:meth:`StudyEngine.check_timeouts`. Every state change goes to the
:class:`~aggregator.store.Store` first, so a restarted aggregator resumes where it stopped.

A study's participants are fixed at submission: every site ever seen plus those connected.
Each round, every site the strategies ask gets one task; a round ends when every task is
answered, refused, or silent for longer than ``site_timeout_s``.

Fixed costs. Entering a round (its run state, its tasks, the participants' states, and at
submission the study itself) is one transaction, committed before any task is sent. Each
answer is one transaction (the last one of a round also holds the next round), or answers
that arrived together share one (:meth:`StudyEngine.on_replies`, as the node link hands
them over; answers of worker threads that meet at the engine's lock, as the in-process
transport's do, are group-committed by :meth:`StudyEngine.on_reply`). The current
round of every running study is kept in memory too: its run state, its tasks and the answers
so far, decoded once as they arrive, so a reply reads nothing back from the database and the
round is advanced from memory. After a restart, :meth:`StudyEngine.resume` rebuilds it from
the store (decoding the stored answers once). :meth:`StudyEngine.wait` returns when a study
ends, for callers that want completion pushed rather than polled.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from aggregator.errors import DuplicateStudy, Rejected, UnknownStudy
from aggregator.results import failed_document, json_default, results_document
from aggregator.run import Answer, Failure, RunState, StudyRun
from aggregator.store import (
    AWAITING_APPROVAL,
    OPEN_STATES,
    RoundTaskRecord,
    SiteRecord,
    Store,
    StudyRecord,
    decode_task_result,
    encode_task_result,
)
from aggregator.strategies import default_strategies
from aggregator.strategy import Strategy
from aggregator.transport import HelloInfo, NodeTransport, StudyTask, TaskReply
from protocol.approval import awaiting_digest
from protocol.codec import Release
from protocol.errors import ProtocolError
from protocol.signing import SignedStudy, verify_study
from protocol.study import Study, study_from_dict

__all__ = ["SiteState", "StudyEngine", "StudyStatus", "Waker"]

logger = logging.getLogger(__name__)

_MAX_EMPTY_ROUNDS = 1000


class Waker(Protocol):
    """Told when a watched study ends (:meth:`StudyEngine.watch`); ``threading.Event`` is one."""

    def set(self) -> None:
        """Wake the waiter (called from any thread, holding the engine's lock: be quick)."""


@dataclass(frozen=True)
class SiteState:
    """One participant's state in a study."""

    site_id: str
    state: str
    reason: str
    updated_at: float


@dataclass(frozen=True)
class StudyStatus:
    """A study's status and its participants' states."""

    study_id: str
    status: str
    title: str
    submitted_at: float
    completed_at: float | None
    sites: tuple[SiteState, ...]


@dataclass(frozen=True)
class _Running:
    study: Study
    signed: SignedStudy
    run: StudyRun


@dataclass
class _Round:
    """A running study's current round in memory (the store holds the same, durably)."""

    number: int
    started_at: float
    state_json: str
    state: RunState  # read only: a round is advanced from a fresh copy of ``state_json``
    requests: Mapping[str, tuple[Release, ...]]  # what each site is asked (its task's inputs)
    tasks: dict[str, str]  # site -> task id
    sites: dict[str, str]  # task id -> site
    answers: dict[str, Answer] = field(default_factory=dict)  # sites whose task has ended

    def complete(self) -> bool:
        return len(self.answers) >= len(self.tasks)


class StudyEngine:
    """The aggregator's study state machine (thread safe: one lock).

    Parameters
    ----------
    store
        Durable state.
    transport
        Reaches the site nodes; the engine registers itself as the transport's listener.
    trusted_keys
        Coordinator public keys whose signatures are accepted (as :func:`verify_study` takes);
        when empty, studies are only parsed here and the nodes alone check signatures.
    clock
        Unix time in seconds.
    site_timeout_s
        How long a task may stay unanswered (counted from the start of its round, or from
        this engine's start when that is later) before the site counts as silent.
    ca_pem
        The network CA: key announcements of secure aggregation are checked here too.
    strategies
        Strategy by analysis kind (default: :func:`aggregator.strategies.default_strategies`).
    approval_poll_s
        How often the task of a site that awaits its data steward's approval is sent again
        (the node answers once approved). Such a task is not subject to ``site_timeout_s``;
        it ends as a refusal when the study expires unapproved.
    """

    def __init__(self, store: Store, transport: NodeTransport, trusted_keys: Collection[Any],
                 *, clock: Callable[[], float] = time.time, site_timeout_s: float = 60.0,
                 ca_pem: bytes | None = None,
                 strategies: Mapping[str, Strategy[Any]] | None = None,
                 approval_poll_s: float = 30.0) -> None:
        self._store = store
        self._transport = transport
        self._trusted_keys = list(trusted_keys)
        self._clock = clock
        self._timeout = float(site_timeout_s)
        self._ca_pem = ca_pem
        self._strategies = dict(strategies or default_strategies())
        self._approval_poll = float(approval_poll_s)
        self._lock = threading.RLock()
        self._running: dict[str, _Running] = {}
        self._rounds: dict[str, _Round] = {}
        self._waiters: dict[str, set[Waker]] = {}
        self._inbox: deque[tuple[str, TaskReply, bytes | None]] = deque()
        """Replies waiting for the lock (:meth:`on_reply`; ``deque`` appends are atomic)."""
        self._started_at = clock()
        transport.set_listener(self)

    # -- coordinator side ----------------------------------------------------------------------

    def submit(self, signed: SignedStudy) -> str:
        """Verify, persist and start a signed study; return its id.

        Raises
        ------
        Rejected
            When the signature is invalid or untrusted (with trusted keys configured), the
            study malformed or expired, or it names an analysis kind this aggregator lacks.
        DuplicateStudy
            When a study with this id was submitted before.
        """
        try:
            if self._trusted_keys:
                study = verify_study(signed, self._trusted_keys)
            else:  # no keys configured: only the nodes check signatures
                study = study_from_dict(signed.study_document())
            run = StudyRun(study, self._strategies, self._ca_pem)
        except (ProtocolError, ValueError) as exc:
            raise Rejected(f"study rejected: {exc}") from exc
        with self._lock:
            now = self._clock()
            # in permissive mode (no keys) the nodes judge expiry too, and say so in results
            if self._trusted_keys and study.expires < dt.datetime.fromtimestamp(
                    now, dt.UTC).date():
                raise Rejected(f"study rejected: {study.id} expired on {study.expires}")
            if self._store.get_study(study.id) is not None:
                raise DuplicateStudy(f"study {study.id} was already submitted")
            connected = set(self._transport.connected_sites())
            participants = sorted(set(self._store.site_ids()) | connected)
            record = StudyRecord(study.id, signed.canonical_study, signed.signature,
                                 signed.public_key, study.title, "running", now, None, None)
            self._running[study.id] = _Running(study, signed, run)
            try:  # the study and its first round: one transaction
                with self._store.transaction():
                    self._store.add_study(record, {s: uuid.uuid4().hex for s in participants})
                    self._enter_round(study.id, run.start(participants))
            except sqlite3.IntegrityError as exc:
                self._forget(study.id)
                raise DuplicateStudy(f"study {study.id} was already submitted") from exc
            except BaseException:
                self._forget(study.id)
                raise
            logger.info("study %s submitted: %d participants, %d connected", study.id,
                        len(participants), len(connected & set(participants)))
        return study.id

    def status(self, study_id: str) -> StudyStatus:
        """The study's status and participants; raise :class:`UnknownStudy` if unknown.
        (Committed state, read without the engine's lock, as every read of the coordinator.)"""
        with self._store.snapshot():
            return self._status(self._record(study_id))

    def wait(self, study_id: str, timeout_s: float,
             wake: threading.Event | None = None) -> StudyStatus:
        """The study's status once it is no longer running, or after ``timeout_s`` seconds
        (or when ``wake`` is set, e.g. by a cancelled call), whichever comes first; raise
        :class:`UnknownStudy` if unknown."""
        event = wake or threading.Event()
        status = self.watch(study_id, event) if timeout_s > 0 else self.status(study_id)
        if status.status != "running" or timeout_s <= 0:
            return status
        try:
            event.wait(timeout_s)
        finally:
            self.unwatch(study_id, event)
        return self.status(study_id)

    def watch(self, study_id: str, waker: Waker) -> StudyStatus:
        """The study's status; while it runs, ``waker.set()`` is also called (from any
        thread) when it ends or at :meth:`wake_waiters`, until :meth:`unwatch`. Raise
        :class:`UnknownStudy` if unknown."""
        with self._lock:
            status = self._status(self._record(study_id))
            if status.status == "running":
                self._waiters.setdefault(study_id, set()).add(waker)
            return status

    def unwatch(self, study_id: str, waker: Waker) -> None:
        """Stop calling ``waker`` for the study (no-op when it is not watching)."""
        with self._lock:
            waiting = self._waiters.get(study_id)
            if waiting is not None:
                waiting.discard(waker)
                if not waiting:
                    del self._waiters[study_id]

    def wake_waiters(self) -> None:
        """End every :meth:`wait` now (they return the current status): at shutdown."""
        with self._lock:
            for waiting in self._waiters.values():
                for event in waiting:
                    event.set()

    def results(self, study_id: str) -> dict[str, Any] | None:
        """results.json of a finished study, ``None`` while it runs."""
        with self._store.snapshot():
            record = self._record(study_id)
        return None if record.results_json is None else json.loads(record.results_json)

    def list_studies(self) -> list[StudyStatus]:
        """Every study, oldest first."""
        with self._store.snapshot():
            return [self._status(r) for r in self._store.list_studies()]

    def list_sites(self) -> list[SiteRecord]:
        """The site registry."""
        with self._store.snapshot():
            return self._store.list_sites()

    # -- lifecycle -----------------------------------------------------------------------------

    def resume(self) -> list[str]:
        """Reload running studies after a (re)start; return their ids.

        Connections do not survive a restart: sites not connected to the transport are marked
        disconnected and tasks that were sent go back to pending, to be resent on reconnect.
        """
        with self._lock:
            now = self._clock()
            connected = set(self._transport.connected_sites())
            for site in self._store.list_sites():
                if site.connected and site.site_id not in connected:
                    self._store.set_site_connected(site.site_id, False, site.last_seen)
            self._store.reset_sent_tasks(now)
            for record in self._store.list_studies("running"):
                if record.study_id not in self._running:
                    self._reload(record)
            resumed = sorted(self._running)
            for study_id in resumed:
                loaded = self._load_round(study_id)
                if loaded is not None:
                    self._rounds[study_id] = loaded
                else:  # stopped inside submit (by an aggregator that committed it in parts)
                    run = self._running[study_id].run
                    with self._store.transaction():
                        self._enter_round(study_id, run.start(
                            [s.site_id for s in self._store.study_sites(study_id)]))
            for site_id in connected:
                self._resend(site_id)
            for study_id in resumed:
                self._try_advance(study_id)
            logger.info("resumed %d running studies", len(resumed))
            return resumed

    def check_timeouts(self) -> list[str]:
        """Count tasks unanswered for longer than the timeout as silent; advance studies.

        Tasks of sites awaiting approval are sent again every ``approval_poll_s`` and end as
        a refusal once the study has expired.

        Returns
        -------
        list of str
            Ids of the studies this call completed.
        """
        completed = []
        with self._lock:
            now = self._clock()
            for study_id in list(self._running):
                current = self._rounds.get(study_id)
                if current is None or current.complete():
                    continue
                timed_out = now - max(current.started_at, self._started_at) >= self._timeout
                with self._round_change(study_id):
                    for task in self._store.open_tasks(study_id, current.number):
                        if task.reason.startswith(AWAITING_APPROVAL):
                            self._poll_approval(study_id, task, now)
                            continue
                        if not timed_out:
                            continue
                        what = "no answer" if task.state == "sent" else "not connected"
                        reason = f"{what} within {self._timeout:g} s"
                        if self._store.set_round_task(task.task_id, "silent", now,
                                                      reason=reason):
                            current.answers[task.site_id] = Failure(reason, silent=True)
                            logger.info("study %s: site %s silent in round %d (%s)", study_id,
                                        task.site_id, current.number, reason)
                    if self._try_advance(study_id):
                        completed.append(study_id)
        return completed

    # -- transport listener --------------------------------------------------------------------

    def on_connect(self, site_id: str, hello: HelloInfo) -> None:
        """Register the site and resend its outstanding tasks of running studies."""
        with self._lock:
            self._store.upsert_site(site_id, hello.software_version, hello.ingested_at,
                                    self._clock())
            logger.info("site %s connected (%s)", site_id,
                        hello.software_version or "unknown version")
            self._resend(site_id)

    def on_disconnect(self, site_id: str) -> None:
        """Mark the site disconnected; its sent tasks are resent when it reconnects."""
        with self._lock:
            if site_id in self._transport.connected_sites():
                return  # a newer connection of the site is already up
            self._store.set_site_connected(site_id, False, self._clock())
        logger.info("site %s disconnected", site_id)

    def on_replies(self, replies: Sequence[tuple[str, TaskReply]]) -> None:
        """Record replies that arrived together in one transaction (one commit): each as
        :meth:`on_reply` does, inside a savepoint of its own; one that fails is logged and
        undone alone. Tasks of a round entered meanwhile are sent once it has committed."""
        self._record_together([(site_id, reply, None) for site_id, reply in replies])

    def _record_together(self, replies: Sequence[tuple[str, TaskReply, bytes | None]]) -> None:
        with self._lock:
            try:
                with self._store.transaction():
                    for site_id, reply, blob in replies:
                        try:
                            self._record_reply(site_id, reply, blob)
                        except Exception:
                            logger.exception("handling the reply of %s failed", site_id)
            except BaseException:  # the commit failed: memory is read back from the store
                for study_id in {reply.study_id for _, reply, _ in replies}:
                    self._reload_round(study_id)
                raise

    def on_reply(self, site_id: str, reply: TaskReply) -> None:
        """Record an answer or refusal; unknown, foreign, stale or repeated ones are ignored.

        Replies of several threads (the in-process transport's workers) are group-committed:
        each joins a queue, and the thread holding the engine's lock records every queued
        reply in one transaction, so a reply is committed when this returns (by this thread
        or by the one that held the lock). An answer is serialised before the lock is taken.
        """
        blob = None
        if reply.refusal is None and reply.releases and awaiting_digest(reply.releases) is None:
            blob = encode_task_result(reply.task_id, reply.study_id, reply.releases)
        self._inbox.append((site_id, reply, blob))
        with self._lock:
            batch = []
            while self._inbox:
                batch.append(self._inbox.popleft())
            if len(batch) == 1:  # alone: recorded as before (errors reach the caller)
                self._record_reply(*batch[0])
            elif batch:
                self._record_together(batch)

    def _record_reply(self, site_id: str, reply: TaskReply, blob: bytes | None = None) -> None:
        """:meth:`on_reply` of one reply, under the engine's lock (``blob``: the answer's
        stored form, when already encoded)."""
        with self._lock:
            study_id = reply.study_id
            current = self._rounds.get(study_id)
            if current is None or current.sites.get(reply.task_id) != site_id \
                    or study_id not in self._running:
                logger.warning("ignoring reply of %s to task %s: not an open task of a "
                               "running study", site_id, reply.task_id)
                return
            if site_id in current.answers:
                logger.info("ignoring repeated reply of %s to task %s", site_id, reply.task_id)
                return
            now = self._clock()
            if reply.refusal is None and awaiting_digest(reply.releases) is not None:
                # not an answer and not a refusal: the task stays open and is sent again
                task = self._store.round_task(reply.task_id)
                if task is not None and self._store.mark_awaiting(
                        task, now, f"{AWAITING_APPROVAL} at {site_id}") \
                        and not task.reason.startswith(AWAITING_APPROVAL):
                    logger.info("study %s: %s awaits its data steward's approval",
                                study_id, site_id)
                return
            with self._round_change(study_id):
                answer: Answer
                if reply.refusal is not None:
                    reason = reply.refusal or "refused without a reason"
                    # refused before it ever answered: out of the study (aggregator.run)
                    first = site_id not in current.state.answered
                    changed = self._store.record_answer(
                        study_id, site_id, reply.task_id, "refused", now, reason=reason,
                        participant=("refused", reason) if first else None)
                    answer = Failure(reason)
                else:
                    answer = reply.releases or ()
                    if blob is None:
                        blob = encode_task_result(reply.task_id, study_id, answer)
                    changed = self._store.record_answer(
                        study_id, site_id, reply.task_id, "answered", now, result=blob,
                        participant=("released", ""))
                if not changed:
                    logger.info("ignoring repeated reply of %s to task %s", site_id,
                                reply.task_id)
                    return
                current.answers[site_id] = answer
                logger.info("study %s: round %d %s by %s", study_id, current.number,
                            "refused" if reply.refusal is not None else "answered", site_id)
                self._try_advance(study_id)

    # -- internals -----------------------------------------------------------------------------

    def _record(self, study_id: str) -> StudyRecord:
        record = self._store.get_study(study_id)
        if record is None:
            raise UnknownStudy(f"no study {study_id!r}")
        return record

    def _status(self, record: StudyRecord) -> StudyStatus:
        sites = tuple(SiteState(s.site_id, "awaiting_approval" if s.state in OPEN_STATES and
                                s.reason.startswith(AWAITING_APPROVAL) else s.state,
                                s.reason, s.updated_at)
                      for s in self._store.study_sites(record.study_id))
        return StudyStatus(record.study_id, record.status, record.title, record.submitted_at,
                           record.completed_at, sites)

    def _reload(self, record: StudyRecord) -> None:
        signed = SignedStudy(record.canonical_study, record.signature, record.public_key)
        try:  # verified at submission; trusted keys may have changed since
            study = study_from_dict(signed.study_document())
            run = StudyRun(study, self._strategies, self._ca_pem)
        except (ProtocolError, ValueError) as exc:
            logger.error("cannot resume study %s: %s", record.study_id, exc)
            self._store.finish_study(record.study_id, "failed", json.dumps(failed_document(
                record.study_id, f"stored study unreadable: {exc}")), self._clock())
            return
        self._running[record.study_id] = _Running(study, signed, run)

    def _load_round(self, study_id: str) -> _Round | None:
        """The study's current round from the store (its answers decoded once), or ``None``
        before its first."""
        current = self._store.current_round(study_id)
        if current is None:
            return None
        state = RunState.from_dict(json.loads(current.state_json))
        requests = self._running[study_id].run.requests(state)
        loaded = _Round(current.round, current.started_at, current.state_json, state, requests,
                        {}, {})
        for task in self._store.round_tasks(study_id, current.round):
            loaded.tasks[task.site_id] = task.task_id
            loaded.sites[task.task_id] = task.site_id
            if task.state == "answered":
                try:
                    loaded.answers[task.site_id] = decode_task_result(task.result or b"")
                except (ProtocolError, ValueError, TypeError) as exc:
                    loaded.answers[task.site_id] = Failure(f"stored answer unreadable: {exc}")
            elif task.state not in OPEN_STATES:
                loaded.answers[task.site_id] = Failure(task.reason,
                                                       silent=task.state == "silent")
        return loaded

    @contextmanager
    def _round_change(self, study_id: str) -> Iterator[None]:
        """One transaction of changes to a study's current round; when it fails, the round
        in memory is read back from the store, so memory never runs ahead of it."""
        try:
            with self._store.transaction():
                yield
        except BaseException:
            self._reload_round(study_id)
            raise

    def _reload_round(self, study_id: str) -> None:
        """Read a running study's current round back from the store into memory."""
        if study_id in self._running:
            loaded = self._load_round(study_id)
            if loaded is not None:
                self._rounds[study_id] = loaded

    def _forget(self, study_id: str) -> None:
        """Drop a study from memory and wake whoever waits for it."""
        self._running.pop(study_id, None)
        self._rounds.pop(study_id, None)
        for event in self._waiters.pop(study_id, ()):
            event.set()

    def _enter_round(self, study_id: str, state: RunState) -> bool:
        """Persist ``state`` as the next round and send its tasks; finish when done.

        Everything is one transaction (joining the caller's); the tasks are sent, and memory
        follows, once it has committed. Returns whether the study completed.
        """
        run = self._running[study_id].run
        with self._store.transaction():
            for _ in range(_MAX_EMPTY_ROUNDS):
                self._sync_participants(study_id, state)
                if run.finished(state):
                    self._finish(study_id, state)
                    return True
                requests = run.requests(state)
                if requests:
                    break
                state = run.advance(state, {})  # nobody to ask: the strategies settle
            else:
                raise RuntimeError(f"study {study_id}: no progress after "
                                   f"{_MAX_EMPTY_ROUNDS} rounds")
            tasks = {site: uuid.uuid4().hex for site in sorted(requests)}
            connected = set(self._transport.connected_sites())
            state_json = json.dumps(state.to_dict())
            now = self._clock()
            self._store.save_round(study_id, state.round, state_json, now, tasks,
                                   sent=connected & set(tasks))
            entered = _Round(state.round, now, state_json, state, requests, tasks,
                             {t: s for s, t in tasks.items()})

            def sent() -> None:
                self._rounds[study_id] = entered
                self._dispatch(study_id, entered, connected)

            self._store.after_commit(sent)
        return False

    def _dispatch(self, study_id: str, entered: _Round, connected: Collection[str]) -> None:
        """Send a committed round's tasks to the sites it recorded as sent; a site that went
        away meanwhile gets its task back to pending (it is resent when it reconnects)."""
        signed = self._running[study_id].signed
        unsent = {site: task_id for site, task_id in entered.tasks.items() if site in connected
                  and not self._transport.send_task(site, StudyTask(
                      task_id, study_id, signed, entered.number, entered.requests[site]))}
        if unsent:
            self._store.mark_unsent(study_id, unsent, self._clock())

    def _send(self, study_id: str, round: int,
              tasks: Mapping[str, tuple[str, tuple[Any, ...]]]) -> None:
        """Send tasks (``site -> (task id, requests)``); record those sent in one transaction
        (replies wait for the engine's lock, so none can overtake the record)."""
        signed = self._running[study_id].signed
        sent = {site: task_id for site, (task_id, requests) in tasks.items()
                if self._transport.send_task(site, StudyTask(task_id, study_id, signed, round,
                                                             requests))}
        if sent:
            self._store.mark_sent(study_id, sent, self._clock())

    def _resend(self, site_id: str) -> None:
        for task in self._store.open_round_tasks(site_id):
            running = self._running.get(task.study_id)
            current = self._rounds.get(task.study_id)
            if running is None or current is None:
                continue
            requests = current.requests.get(site_id)
            if requests:
                self._send(task.study_id, task.round, {site_id: (task.task_id, requests)})

    def _poll_approval(self, study_id: str, task: RoundTaskRecord, now: float) -> None:
        """A task whose site awaits approval: refuse it once the study has expired, else send
        it again every ``approval_poll_s`` (the node answers once its steward approved)."""
        expires = self._running[study_id].study.expires
        deadline = dt.datetime.combine(expires + dt.timedelta(days=1), dt.time(),
                                       dt.UTC).timestamp()
        if now >= deadline:
            reason = f"no approval at {task.site_id} before the end of {expires.isoformat()}" \
                " (study expiry)"
            current = self._rounds[study_id]
            first = task.site_id not in current.state.answered
            if self._store.record_reply(task, "refused", now, reason=reason,
                                        participant=("refused", reason) if first else None):
                current.answers[task.site_id] = Failure(reason)
                logger.info("study %s: %s", study_id, reason)
            return
        if now - task.updated_at < self._approval_poll:
            return
        requests = self._rounds[study_id].requests.get(task.site_id)
        if requests:
            self._send(study_id, task.round, {task.site_id: (task.task_id, requests)})

    def _try_advance(self, study_id: str) -> bool:
        """Advance the study when every task of its round is final; return if it completed."""
        current = self._rounds.get(study_id)
        if study_id not in self._running or current is None or not current.complete():
            return False
        rnd = current.number
        state = RunState.from_dict(json.loads(current.state_json))  # advance changes it
        try:
            return self._enter_round(study_id,
                                     self._running[study_id].run.advance(state, current.answers))
        except Exception as exc:  # a bug must not leave the study running for ever
            logger.exception("study %s: round %d could not be advanced", study_id, rnd)
            self._fail(study_id, f"internal error in round {rnd}: {exc}")
            return True

    def _sync_participants(self, study_id: str, state: RunState) -> None:
        for site in state.participants:  # a site that rejoined a new attempt takes part again
            if site in state.answered:
                self._store.set_site_state(study_id, site, "released", self._clock(),
                                           only_from=("refused", "unreachable"))
        self._store.set_final_states(study_id, {
            **{s: ("unreachable", r) for s, r in {**state.unreachable, **state.dropped}.items()},
            **{s: ("refused", r) for s, r in state.refused.items()}},
            self._clock())

    def _fail(self, study_id: str, reason: str) -> None:
        run = self._running[study_id]
        with self._store.transaction():
            self._store.finish_study(study_id, "failed", json.dumps(
                failed_document(study_id, reason, run.study)), self._clock())
            self._store.after_commit(lambda: self._forget(study_id))

    def _finish(self, study_id: str, state: RunState) -> None:
        run = self._running[study_id]
        doc = results_document(run.study, state, run.run.results(state))
        self._store.finish_study(study_id, "completed", json.dumps(doc, default=json_default),
                                 self._clock())
        self._store.after_commit(lambda: self._forget(study_id))
        logger.info("study %s completed: %d participated, %d refused, %d unreachable",
                    study_id, len(doc["sites"]["participated"]), len(doc["sites"]["refused"]),
                    len(doc["sites"]["unreachable"]))
