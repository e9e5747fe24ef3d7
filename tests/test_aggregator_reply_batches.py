"""Replies handed over in batches (issue 9): the node link's event thread and one commit for
answers that arrived together, with a real SQLite file and the engine's real round loop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.engine import StudyEngine
from aggregator.link_events import EventThread
from aggregator.store import Store
from aggregator.transport import LocalTransport, StudyTask, TaskReply
from tests.aggregator_helpers import (
    WAIT_S,
    fake_strategies,
    make_study,
    signed,
    site_releases,
    wait_until,
)

KEY = Ed25519PrivateKey.generate()
SITES = [f"site-{i:02d}" for i in range(8)]


def test_event_thread_runs_calls_and_batches_of_replies_in_order() -> None:
    seen: list[Any] = []
    events: EventThread[str] = EventThread(lambda batch: seen.append(list(batch)))
    release = threading.Event()
    blocked = events.call(lambda: release.wait(WAIT_S))  # keeps the thread busy
    events.reply("r1")
    events.reply("r2")
    middle = events.call(lambda x: seen.append(x) or x * 2, 21)
    events.reply("r3")

    def fail() -> None:
        raise ValueError("broken listener")

    failing = events.call(fail)
    release.set()
    assert blocked.result(WAIT_S) is True
    assert middle.result(WAIT_S) == 42
    with pytest.raises(ValueError, match="broken listener"):
        failing.result(WAIT_S)
    events.close(wait=True)
    # replies queued while the thread was busy came as one batch, in order around the call
    assert seen == [["r1", "r2"], 21, ["r3"]]
    events.reply("late")
    with pytest.raises(RuntimeError, match="closed"):
        events.call(lambda: None).result(WAIT_S)
    assert seen == [["r1", "r2"], 21, ["r3"]]


class Rig:
    """An engine on a real SQLite file whose nodes keep their tasks (answered by the test)."""

    def __init__(self, db: Path) -> None:
        self.store = Store(db)
        self.transport = LocalTransport()
        self.engine = StudyEngine(self.store, self.transport, [KEY.public_key()],
                                  strategies=fake_strategies())  # FAKE statistics
        self.tasks: dict[str, StudyTask] = {}
        self._lock = threading.Lock()
        self.commits = 0
        self.store._conn.set_trace_callback(self._trace)  # type: ignore[union-attr]
        for site in SITES:
            self.transport.connect(site, self._keep(site))

    def _trace(self, sql: str) -> None:
        if sql.strip().upper() == "COMMIT":
            self.commits += 1

    def _keep(self, site: str) -> Any:
        def handler(task: StudyTask) -> None:
            with self._lock:
                self.tasks[site] = task
        return handler

    def reply(self, site: str, value: int) -> TaskReply:
        task = self.tasks[site]
        study = make_study(task.study_id, min_sites=1)
        return TaskReply(task.task_id, task.study_id, releases=site_releases(study, value))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "agg.sqlite")
    yield r
    r.transport.close()
    r.store.close()


def test_answers_that_arrive_together_are_one_commit(rig: Rig) -> None:
    study = make_study("batched", min_sites=3)
    rig.engine.submit(signed(study, KEY))
    wait_until(lambda: len(rig.tasks) == len(SITES))
    before = rig.commits
    stray = TaskReply("no-such-task", study.id, refusal="not mine")
    rig.engine.on_replies([("site-00", stray)]
                          + [(s, rig.reply(s, i)) for i, s in enumerate(SITES, start=1)])
    assert rig.commits == before + 1  # every answer and the results: one transaction
    final = rig.engine.status(study.id)
    assert final.status == "completed"
    assert [s.state for s in final.sites] == ["released"] * len(SITES)
    results = rig.engine.results(study.id)
    assert results is not None
    assert results["analyses"]["os"]["total"] == 3 * sum(range(1, len(SITES) + 1))


def test_a_reply_that_fails_in_a_batch_is_undone_alone(rig: Rig,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    study = make_study("one-fails", min_sites=3)
    rig.engine.submit(signed(study, KEY))
    wait_until(lambda: len(rig.tasks) == len(SITES))
    real = rig.store.record_answer

    def broken(study_id: str, site_id: str, *args: Any, **kw: Any) -> bool:
        changed = real(study_id, site_id, *args, **kw)  # written, then the handling fails
        if site_id == "site-03":
            raise OSError("disk hiccup")
        return changed

    monkeypatch.setattr(rig.store, "record_answer", broken)
    rig.engine.on_replies([(s, rig.reply(s, 1)) for s in SITES])
    states = {s.site_id: s.state for s in rig.engine.status(study.id).sites}
    assert states.pop("site-03") == "sent"  # its savepoint was rolled back, memory too
    assert set(states.values()) == {"released"}
    assert rig.engine.status(study.id).status == "running"
    monkeypatch.setattr(rig.store, "record_answer", real)
    rig.engine.on_replies([("site-03", rig.reply("site-03", 1))])
    assert rig.engine.status(study.id).status == "completed"
    results = rig.engine.results(study.id)
    assert results is not None
    assert results["analyses"]["os"]["total"] == 3 * len(SITES)
