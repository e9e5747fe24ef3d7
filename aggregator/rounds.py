"""Rounds after the first: the network side of iterative analyses (Cox Newton steps).

The first round of a study is the engine's ordinary fan-out. When it ends and the study has
iterative analyses, a pure :class:`Driver` turns the first-round releases into an iteration
state; each further round sends every site still taking part its per-analysis inputs (one
round trip per Newton step), collects the answers, and lets the driver advance. State and
answers are persisted in the engine's SQLite store, so a restarted aggregator resumes the
current round.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from aggregator.store import Store, decode_task_result, encode_task_result
from aggregator.transport import NodeTransport, StudyTask, TaskReply
from protocol.codec import Release
from protocol.signing import SignedStudy
from protocol.study import Study

__all__ = ["Driver", "Rounds"]

logger = logging.getLogger(__name__)

State = dict[str, Any]
Answers = Mapping[str, "tuple[Release, ...] | str"]


class Driver(Protocol):
    """Pure logic of iterative analyses; every state is a JSON-ready dict."""

    def start(self, study: Study, first_round: Mapping[str, Sequence[Release]]) -> State | None:
        """The iteration state after the first round, or ``None`` with nothing to iterate."""

    def inputs(self, study: Study, state: State, site_id: str) -> tuple[Release, ...]:
        """This site's inputs for the next round (empty: the site is not needed)."""

    def advance(self, study: Study, state: State, answers: Answers) -> State:
        """Next state from one round's answers (site -> releases, or the reason it failed)."""

    def finished(self, state: State) -> bool:
        """Whether every iterative analysis is done."""

    def results(self, state: State) -> dict[str, Any]:
        """Final results of the iterative analyses, by analysis name."""


class Rounds:
    """Runs the rounds of iterative analyses for the study engine (the engine's lock held)."""

    def __init__(self, store: Store, transport: NodeTransport, driver: Driver,
                 clock: Callable[[], float], timeout_s: float, started_at: float) -> None:
        self._started_at = started_at
        self._store = store
        self._transport = transport
        self._driver = driver
        self._clock = clock
        self._timeout = timeout_s

    # -- persistence ---------------------------------------------------------------------------

    def _load(self, study_id: str) -> tuple[int, float, State] | None:
        rows = self._store.query(
            "SELECT round, round_started_at, state_json FROM iterations WHERE study_id=?",
            (study_id,))
        return (int(rows[0][0]), float(rows[0][1]), json.loads(rows[0][2])) if rows else None

    def _save(self, study_id: str, rnd: int, state: State, tasks: Mapping[str, str]) -> None:
        now = self._clock()
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT INTO iterations (study_id, round, round_started_at, state_json)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(study_id) DO UPDATE SET round=excluded.round,"
                " round_started_at=excluded.round_started_at, state_json=excluded.state_json",
                (study_id, rnd, now, json.dumps(state)))
            conn.executemany(
                "INSERT INTO round_tasks (study_id, round, site_id, task_id, state, updated_at)"
                " VALUES (?, ?, ?, ?, 'pending', ?)",
                [(study_id, rnd, site, task, now) for site, task in sorted(tasks.items())])

    def _tasks(self, study_id: str, rnd: int) -> list[tuple[str, str, str, str, bytes | None]]:
        return self._store.query(
            "SELECT site_id, task_id, state, reason, result FROM round_tasks"
            " WHERE study_id=? AND round=? ORDER BY site_id", (study_id, rnd))

    def _set(self, task_id: str, state: str, reason: str = "", result: bytes | None = None,
             only_from: tuple[str, ...] = ("pending", "sent")) -> bool:
        marks = ", ".join("?" for _ in only_from)
        with self._store.transaction() as conn:
            cur = conn.execute(
                "UPDATE round_tasks SET state=?, reason=?, result=?, updated_at=?"
                f" WHERE task_id=? AND state IN ({marks})",
                (state, reason, result, self._clock(), task_id, *only_from))
            return cur.rowcount > 0

    # -- driving -------------------------------------------------------------------------------

    def started(self, study_id: str) -> bool:
        """Whether the study has entered its iteration rounds."""
        return self._load(study_id) is not None

    def begin(self, study: Study, signed: SignedStudy,
              first_round: Mapping[str, Sequence[Release]]) -> None:
        """Start the rounds after the first (nothing is stored when nothing follows)."""
        state = self._driver.start(study, first_round)
        if state is not None:
            self._next_round(study, signed, 1, state)

    def _next_round(self, study: Study, signed: SignedStudy, last: int, state: State) -> None:
        rnd = last + 1
        tasks: dict[str, str] = {}
        if not self._driver.finished(state):
            for site in sorted(state.get("sites", [])):
                if self._driver.inputs(study, state, site):
                    tasks[site] = uuid.uuid4().hex
        self._save(study.id, rnd, state, tasks)
        for site, task_id in tasks.items():
            self._send(study, signed, state, rnd, site, task_id)
        if not tasks and not self._driver.finished(state):
            # nobody to ask: the driver must settle the analyses (e.g. too few sites)
            self._next_round(study, signed, rnd, self._driver.advance(study, state, {}))

    def _send(self, study: Study, signed: SignedStudy, state: State, rnd: int, site: str,
              task_id: str) -> None:
        task = StudyTask(task_id=task_id, study_id=study.id, signed=signed, round=rnd,
                         inputs=self._driver.inputs(study, state, site))
        if self._transport.send_task(site, task):
            self._set(task_id, "sent", only_from=("pending", "sent"))

    def finished(self, study_id: str) -> bool:
        """Whether all iterative analyses of a started study are done."""
        loaded = self._load(study_id)
        return loaded is not None and self._driver.finished(loaded[2])

    def results(self, study_id: str) -> dict[str, Any]:
        """Results of the iterative analyses (empty when the study has none)."""
        loaded = self._load(study_id)
        return self._driver.results(loaded[2]) if loaded else {}

    def owns(self, task_id: str) -> str | None:
        """The study id of a round task, or ``None`` for a first-round task."""
        rows = self._store.query("SELECT study_id FROM round_tasks WHERE task_id=?", (task_id,))
        return rows[0][0] if rows else None

    def record(self, site_id: str, reply: TaskReply) -> None:
        """Store one answer to a round task (repeats are ignored)."""
        if reply.refusal is not None:
            self._set(reply.task_id, "failed", reason=reply.refusal or "refused")
        else:
            blob = encode_task_result(reply.task_id, reply.study_id, reply.releases or ())
            self._set(reply.task_id, "answered", result=blob)
        logger.info("study %s: round answer from %s", reply.study_id, site_id)

    def expire(self, study_id: str) -> None:
        """Fail the current round's tasks that stayed unanswered past the timeout."""
        loaded = self._load(study_id)
        if loaded is None or self._clock() - max(loaded[1], self._started_at) < self._timeout:
            return
        for site, task_id, state, _, _ in self._tasks(study_id, loaded[0]):
            if state in ("pending", "sent"):
                self._set(task_id, "failed", reason=f"no answer within {self._timeout:g} s")
                logger.info("study %s: site %s silent in round %d", study_id, site, loaded[0])

    def try_advance(self, study: Study, signed: SignedStudy) -> None:
        """When every task of the current round is final, advance the driver (maybe again)."""
        loaded = self._load(study.id)
        if loaded is None:
            return
        rnd, _, state = loaded
        rows = self._tasks(study.id, rnd)
        if self._driver.finished(state) or any(r[2] in ("pending", "sent") for r in rows):
            return
        answers: dict[str, tuple[Release, ...] | str] = {
            site: decode_task_result(result or b"") if st == "answered" else reason
            for site, _, st, reason, result in rows}
        self._next_round(study, signed, rnd, self._driver.advance(study, state, answers))

    def resend(self, site_id: str, running: Mapping[str, tuple[Study, SignedStudy]]) -> None:
        """Send a (re)connected site its open tasks of the current rounds."""
        for study_id, (study, signed) in running.items():
            loaded = self._load(study_id)
            if loaded is None:
                continue
            rnd, _, state = loaded
            for site, task_id, st, _, _ in self._tasks(study_id, rnd):
                if site == site_id and st in ("pending", "sent"):
                    self._send(study, signed, state, rnd, site, task_id)
