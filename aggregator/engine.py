"""The study engine: signed studies in, tasks out to sites, releases pooled into results.json.

:class:`StudyEngine` is the aggregator's state machine. It is driven by the coordinator API
(:meth:`StudyEngine.submit`), by transport events (it is the transport's listener) and by a
ticker calling :meth:`StudyEngine.check_timeouts`; every state change goes to the
:class:`~aggregator.store.Store` first, so a restarted aggregator resumes where it stopped.
results.json is built by the pure :func:`results_document`.

A study's participants are fixed at submission: every site ever seen plus those connected. Each
participant ends ``released``, ``refused`` (with the site's reason) or ``unreachable`` (no answer
within ``site_timeout_s``); then the study completes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from aggregator.errors import DuplicateStudy, Rejected, UnknownStudy
from aggregator.results import Pool, json_default, results_document
from aggregator.rounds import Driver, Rounds
from aggregator.store import (
    OPEN_STATES,
    SiteRecord,
    Store,
    StudyRecord,
    decode_task_result,
    encode_task_result,
)
from aggregator.transport import HelloInfo, NodeTransport, StudyTask, TaskReply
from protocol.errors import ProtocolError
from protocol.signing import SignedStudy, verify_study
from protocol.study import Study, study_from_dict

__all__ = ["Pool", "SiteState", "StudyEngine", "StudyStatus", "results_document"]

logger = logging.getLogger(__name__)



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
    submitted_at: float


# -- imperative shell --------------------------------------------------------------------------

class StudyEngine:
    """The aggregator's study state machine (thread safe: one lock).

    Parameters
    ----------
    store
        Durable state.
    transport
        Reaches the site nodes; the engine registers itself as the transport's listener.
    pool
        ``pool(study, {site_id: releases}) -> {"analyses": {...}, "privacy": {...}}``.
    trusted_keys
        Coordinator public keys whose signatures are accepted (as :func:`verify_study` takes);
        when empty, studies are only parsed here and the nodes alone check signatures.
    clock
        Unix time in seconds.
    site_timeout_s
        How long a participant may stay unanswered (counted from submission, or from this
        engine's start when that is later) before it is marked unreachable; also the limit of
        one round of an iterative analysis.
    driver
        Logic of iterative analyses (Cox); ``None`` runs first rounds only.
    """

    def __init__(self, store: Store, transport: NodeTransport, pool: Pool,
                 trusted_keys: Collection[Any], *, clock: Callable[[], float] = time.time,
                 site_timeout_s: float = 60.0, driver: Driver | None = None) -> None:
        self._store = store
        self._transport = transport
        self._pool = pool
        self._trusted_keys = list(trusted_keys)
        self._clock = clock
        self._timeout = float(site_timeout_s)
        self._lock = threading.RLock()
        self._running: dict[str, _Running] = {}
        self._started_at = clock()
        self._rounds = Rounds(store, transport, driver, clock, self._timeout,
                              self._started_at) if driver is not None else None
        transport.set_listener(self)

    # -- coordinator side ----------------------------------------------------------------------

    def submit(self, signed: SignedStudy) -> str:
        """Verify, persist and fan out a signed study; return its id.

        Raises
        ------
        Rejected
            When the signature is invalid or untrusted (with trusted keys configured), or the
            study malformed or expired.
        DuplicateStudy
            When a study with this id was submitted before.
        """
        try:
            if self._trusted_keys:
                study = verify_study(signed, self._trusted_keys)
            else:  # no keys configured: only the nodes check signatures
                study = study_from_dict(signed.study_document())
        except ProtocolError as exc:
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
            tasks = {site: uuid.uuid4().hex for site in participants}
            record = StudyRecord(study.id, signed.canonical_study, signed.signature,
                                 signed.public_key, study.title, "running", now, None, None)
            try:
                self._store.add_study(record, tasks)
            except sqlite3.IntegrityError as exc:
                raise DuplicateStudy(f"study {study.id} was already submitted") from exc
            self._running[study.id] = _Running(study, signed, now)
            logger.info("study %s submitted: %d participants, %d connected", study.id,
                        len(participants), len(connected & set(participants)))
            for site in participants:
                if site in connected:
                    self._send(study.id, site, tasks[site])
            self._maybe_complete(study.id)
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
                if record.study_id in self._running:
                    continue
                signed = SignedStudy(record.canonical_study, record.signature, record.public_key)
                try:  # verified at submission; trusted keys may have changed since
                    study = study_from_dict(signed.study_document())
                except ProtocolError as exc:
                    logger.error("cannot resume study %s: %s", record.study_id, exc)
                    self._store.finish_study(record.study_id, "failed", json.dumps(
                        {"heron": 1, "study_id": record.study_id, "status": "failed",
                         "error": f"stored study unreadable: {exc}"}), now)
                    continue
                self._running[record.study_id] = _Running(study, signed, record.submitted_at)
            resumed = sorted(self._running)
            for site in connected:
                for task in self._store.open_tasks(site):
                    self._send(task.study_id, site, task.task_id)
            for study_id in resumed:
                self._maybe_complete(study_id)
            logger.info("resumed %d running studies", len(resumed))
            return resumed

    def check_timeouts(self) -> list[str]:
        """Mark participants silent for longer than the timeout unreachable; complete studies.

        Returns
        -------
        list of str
            Ids of the studies this call completed.
        """
        completed = []
        with self._lock:
            now = self._clock()
            for study_id, run in list(self._running.items()):
                if self._rounds is not None and self._rounds.started(study_id):
                    self._rounds.expire(study_id)
                    self._rounds.try_advance(run.study, run.signed)
                    if self._maybe_complete(study_id):
                        completed.append(study_id)
                    continue
                if now - max(run.submitted_at, self._started_at) < self._timeout:
                    continue
                for row in self._store.study_sites(study_id):
                    if row.state not in OPEN_STATES:
                        continue
                    what = "no answer" if row.state == "sent" else "not connected"
                    reason = f"{what} within {self._timeout:g} s"
                    if self._store.set_site_state(study_id, row.site_id, "unreachable", now,
                                                  reason=reason):
                        logger.info("study %s: site %s unreachable (%s)", study_id,
                                    row.site_id, reason)
                if self._maybe_complete(study_id):
                    completed.append(study_id)
        return completed

    # -- transport listener --------------------------------------------------------------------

    def on_connect(self, site_id: str, hello: HelloInfo) -> None:
        """Register the site and resend its outstanding tasks of running studies."""
        with self._lock:
            self._store.upsert_site(site_id, hello.software_version, hello.ingested_at,
                                    hello.stored_infusions, self._clock())
            tasks = self._store.open_tasks(site_id)
            logger.info("site %s connected (%s); %d outstanding tasks", site_id,
                        hello.software_version or "unknown version", len(tasks))
            for task in tasks:
                self._send(task.study_id, site_id, task.task_id)
            if self._rounds is not None:
                self._rounds.resend(site_id, {k: (r.study, r.signed)
                                              for k, r in self._running.items()})

    def on_disconnect(self, site_id: str) -> None:
        """Mark the site disconnected; its sent tasks are resent when it reconnects."""
        with self._lock:
            if site_id in self._transport.connected_sites():
                return  # a newer connection of the site is already up
            self._store.set_site_connected(site_id, False, self._clock())
        logger.info("site %s disconnected", site_id)

    def on_reply(self, site_id: str, reply: TaskReply) -> None:
        """Record a release or refusal; unknown, foreign or repeated answers are ignored."""
        with self._lock:
            owner = self._rounds.owns(reply.task_id) if self._rounds is not None else None
            if owner is not None and self._rounds is not None:
                run = self._running.get(owner)
                if run is not None and owner == reply.study_id:
                    self._rounds.record(site_id, reply)
                    self._rounds.try_advance(run.study, run.signed)
                    self._maybe_complete(owner)
                return
            if reply.study_id not in self._running:
                logger.warning("ignoring reply of %s for study %s: not running", site_id,
                               reply.study_id)
                return
            row = next((r for r in self._store.study_sites(reply.study_id)
                        if r.site_id == site_id), None)
            if row is None or row.task_id != reply.task_id:
                logger.warning("ignoring reply of %s: unknown task %s", site_id, reply.task_id)
                return
            now = self._clock()
            if reply.refusal is not None:
                reason = reply.refusal or "refused without a reason"
                changed = self._store.set_site_state(reply.study_id, site_id, "refused", now,
                                                     reason=reason)
            else:
                blob = encode_task_result(reply.task_id, reply.study_id, reply.releases or ())
                changed = self._store.set_site_state(reply.study_id, site_id, "released", now,
                                                     release=blob)
            if not changed:
                logger.info("ignoring repeated reply of %s to task %s", site_id, reply.task_id)
                return
            logger.info("study %s: site %s %s", reply.study_id, site_id,
                        "refused" if reply.refusal is not None else "released")
            self._maybe_complete(reply.study_id)

    # -- internals -----------------------------------------------------------------------------

    def _record(self, study_id: str) -> StudyRecord:
        record = self._store.get_study(study_id)
        if record is None:
            raise UnknownStudy(f"no study {study_id!r}")
        return record

    def _status(self, record: StudyRecord) -> StudyStatus:
        sites = tuple(SiteState(s.site_id, s.state, s.reason, s.updated_at)
                      for s in self._store.study_sites(record.study_id))
        return StudyStatus(record.study_id, record.status, record.title, record.submitted_at,
                           record.completed_at, sites)

    def _send(self, study_id: str, site_id: str, task_id: str) -> None:
        run = self._running[study_id]
        task = StudyTask(task_id=task_id, study_id=study_id, signed=run.signed, round=1)
        if self._transport.send_task(site_id, task):
            self._store.set_site_state(study_id, site_id, "sent", self._clock())

    def _maybe_complete(self, study_id: str) -> bool:
        run = self._running.get(study_id)
        if run is None:
            return False
        states = self._store.study_sites(study_id)
        if any(s.state in OPEN_STATES for s in states):
            return False
        iterative: dict[str, Any] = {}
        if self._rounds is not None:
            released = {s.site_id: decode_task_result(s.release or b"") for s in states
                        if s.state == "released"}
            if not self._rounds.started(study_id) and len(released) >= \
                    run.study.privacy.min_sites:
                self._rounds.begin(run.study, run.signed, released)
            if self._rounds.started(study_id) and not self._rounds.finished(study_id):
                return False
            iterative = self._rounds.results(study_id)
        status, doc = results_document(run.study, states, self._pool, iterative)
        text = json.dumps(doc, default=json_default)
        self._store.finish_study(study_id, status, text, self._clock())
        del self._running[study_id]
        logger.info("study %s %s: %d participated, %d refused, %d unreachable", study_id,
                    status, len(doc["sites"]["participated"]), len(doc["sites"]["refused"]),
                    len(doc["sites"]["unreachable"]))
        return True
