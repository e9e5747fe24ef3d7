"""The study engine: signed studies in, rounds of tasks out to sites, results.json out.

:class:`StudyEngine` is the aggregator's imperative shell around the pure round loop of
:mod:`aggregator.run`. It is driven by the coordinator API (:meth:`StudyEngine.submit`), by
transport events (it is the transport's listener) and by a ticker calling
:meth:`StudyEngine.check_timeouts`. Every state change goes to the
:class:`~aggregator.store.Store` first, so a restarted aggregator resumes where it stopped.

A study's participants are fixed at submission: every site ever seen plus those connected.
Each round, every site the strategies ask gets one task; a round ends when every task is
answered, refused, or silent for longer than ``site_timeout_s``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

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
from protocol.errors import ProtocolError
from protocol.signing import SignedStudy, verify_study
from protocol.study import Study, study_from_dict

__all__ = ["SiteState", "StudyEngine", "StudyStatus"]

logger = logging.getLogger(__name__)

_MAX_EMPTY_ROUNDS = 1000


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
            try:
                self._store.add_study(record, {s: uuid.uuid4().hex for s in participants})
            except sqlite3.IntegrityError as exc:
                raise DuplicateStudy(f"study {study.id} was already submitted") from exc
            self._running[study.id] = _Running(study, signed, run)
            logger.info("study %s submitted: %d participants, %d connected", study.id,
                        len(participants), len(connected & set(participants)))
            self._enter_round(study.id, run.start(participants))
        return study.id

    def status(self, study_id: str) -> StudyStatus:
        """The study's status and participants; raise :class:`UnknownStudy` if unknown."""
        with self._lock:
            return self._status(self._record(study_id))

    def results(self, study_id: str) -> dict[str, Any] | None:
        """results.json of a finished study, ``None`` while it runs."""
        with self._lock:
            record = self._record(study_id)
        return None if record.results_json is None else json.loads(record.results_json)

    def list_studies(self) -> list[StudyStatus]:
        """Every study, oldest first."""
        with self._lock:
            return [self._status(r) for r in self._store.list_studies()]

    def list_sites(self) -> list[SiteRecord]:
        """The site registry."""
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
                if self._store.current_round(study_id) is None:  # stopped inside submit
                    run = self._running[study_id].run
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
                current = self._store.current_round(study_id)
                if current is None:
                    continue
                timed_out = now - max(current.started_at, self._started_at) >= self._timeout
                for task in self._store.round_tasks(study_id, current.round):
                    if task.state not in OPEN_STATES:
                        continue
                    if task.reason.startswith(AWAITING_APPROVAL):
                        self._poll_approval(study_id, task, now)
                        continue
                    if not timed_out:
                        continue
                    what = "no answer" if task.state == "sent" else "not connected"
                    reason = f"{what} within {self._timeout:g} s"
                    if self._store.set_round_task(task.task_id, "silent", now, reason=reason):
                        logger.info("study %s: site %s silent in round %d (%s)", study_id,
                                    task.site_id, current.round, reason)
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

    def on_reply(self, site_id: str, reply: TaskReply) -> None:
        """Record an answer or refusal; unknown, foreign, stale or repeated ones are ignored."""
        with self._lock:
            task = self._store.round_task(reply.task_id)
            current = self._store.current_round(reply.study_id)
            if task is None or task.site_id != site_id or task.study_id != reply.study_id \
                    or reply.study_id not in self._running or current is None \
                    or current.round != task.round:
                logger.warning("ignoring reply of %s to task %s: not an open task of a "
                               "running study", site_id, reply.task_id)
                return
            now = self._clock()
            if reply.refusal is None and awaiting_digest(reply.releases) is not None:
                # not an answer and not a refusal: the task stays open and is sent again
                if self._store.mark_awaiting(task, now, f"{AWAITING_APPROVAL} at {site_id}") \
                        and not task.reason.startswith(AWAITING_APPROVAL):
                    logger.info("study %s: %s awaits its data steward's approval",
                                task.study_id, site_id)
                return
            if reply.refusal is not None:
                reason = reply.refusal or "refused without a reason"
                # refused before it ever answered: out of the study (aggregator.run)
                first = site_id not in self._state(task.study_id)[1].answered
                changed = self._store.record_reply(
                    task, "refused", now, reason=reason,
                    participant=("refused", reason) if first else None)
            else:
                blob = encode_task_result(task.task_id, task.study_id, reply.releases or ())
                changed = self._store.record_reply(task, "answered", now, result=blob,
                                                   participant=("released", ""))
            if not changed:
                logger.info("ignoring repeated reply of %s to task %s", site_id, task.task_id)
                return
            logger.info("study %s: round %d %s by %s", task.study_id, task.round,
                        "refused" if reply.refusal is not None else "answered", site_id)
            self._try_advance(task.study_id)

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

    def _state(self, study_id: str) -> tuple[int, RunState]:
        current = self._store.current_round(study_id)
        assert current is not None
        return current.round, RunState.from_dict(json.loads(current.state_json))

    def _enter_round(self, study_id: str, state: RunState) -> bool:
        """Persist ``state`` as the next round and send its tasks; finish when done.

        Returns whether the study completed.
        """
        run = self._running[study_id].run
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
            raise RuntimeError(f"study {study_id}: no progress after {_MAX_EMPTY_ROUNDS} rounds")
        tasks = {site: uuid.uuid4().hex for site in sorted(requests)}
        self._store.save_round(study_id, state.round, json.dumps(state.to_dict()),
                               self._clock(), tasks)
        self._send(study_id, state.round, {s: (t, requests[s]) for s, t in tasks.items()})
        return False

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
            if running is None:
                continue
            _, state = self._state(task.study_id)
            requests = running.run.requests(state).get(site_id)
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
            first = task.site_id not in self._state(study_id)[1].answered
            if self._store.record_reply(task, "refused", now, reason=reason,
                                        participant=("refused", reason) if first else None):
                logger.info("study %s: %s", study_id, reason)
            return
        if now - task.updated_at < self._approval_poll:
            return
        running = self._running[study_id]
        requests = running.run.requests(self._state(study_id)[1]).get(task.site_id)
        if requests:
            self._send(study_id, task.round, {task.site_id: (task.task_id, requests)})

    def _try_advance(self, study_id: str) -> bool:
        """Advance the study when every task of its round is final; return if it completed."""
        current = self._store.current_round(study_id)
        if study_id not in self._running or current is None or \
                self._store.open_task_count(study_id, current.round):
            return False
        rnd, state = current.round, RunState.from_dict(json.loads(current.state_json))
        tasks = self._store.round_tasks(study_id, rnd)
        answers: dict[str, Answer] = {}
        for t in tasks:
            if t.state == "answered":
                answers[t.site_id] = decode_task_result(t.result or b"")
            else:
                answers[t.site_id] = Failure(t.reason, silent=t.state == "silent")
        try:
            return self._enter_round(study_id,
                                     self._running[study_id].run.advance(state, answers))
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
        run = self._running.pop(study_id)
        self._store.finish_study(study_id, "failed", json.dumps(
            failed_document(study_id, reason, run.study)), self._clock())

    def _finish(self, study_id: str, state: RunState) -> None:
        run = self._running.pop(study_id)
        doc = results_document(run.study, state, run.run.results(state))
        self._store.finish_study(study_id, "completed", json.dumps(doc, default=json_default),
                                 self._clock())
        logger.info("study %s completed: %d participated, %d refused, %d unreachable",
                    study_id, len(doc["sites"]["participated"]), len(doc["sites"]["refused"]),
                    len(doc["sites"]["unreachable"]))
