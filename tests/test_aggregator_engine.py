"""The study engine over LocalTransport with a real SQLite file, a fake clock and a fake pool."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.engine import StudyEngine
from aggregator.errors import DuplicateStudy, Rejected, UnknownStudy
from aggregator.store import Store
from aggregator.transport import HelloInfo, LocalTransport, NullListener, StudyTask, TaskReply
from tests.aggregator_helpers import (
    FakeClock,
    FakeStrategy,
    fake_strategies,
    make_study,
    refusing_node,
    releasing_node,
    signed,
    silent_node,
    site_releases,
    wait_until,
)

KEY = Ed25519PrivateKey.generate()
TIMEOUT_S = 60.0


class Rig:
    """An engine on a real SQLite file with an in-process transport."""

    def __init__(self, db: Path, clock: FakeClock, broken: str = "") -> None:
        self.clock = clock
        self.store = Store(db)
        self.transport = LocalTransport()
        strategies = fake_strategies(broken)  # FAKE statistics
        self.pooled = strategies["kaplan_meier"].pooled
        self.engine = StudyEngine(self.store, self.transport, [KEY.public_key()], clock=clock,
                                  site_timeout_s=TIMEOUT_S, strategies=strategies)

    def finished(self, study_id: str) -> Any:
        return self.engine.status(study_id).status != "running"

    def close(self) -> None:
        self.transport.close()
        self.store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rig(tmp_path: Path, clock: FakeClock) -> Iterator[Rig]:
    r = Rig(tmp_path / "agg.sqlite", clock)
    yield r
    r.close()


def test_all_sites_release_and_study_completes(rig: Rig) -> None:
    for i, site in enumerate(["site-a", "site-b", "site-c"], start=1):
        rig.transport.connect(site, releasing_node(i), HelloInfo(site, "node/1", ""))
    study = make_study(min_sites=3)
    assert rig.engine.submit(signed(study, KEY)) == study.id
    wait_until(lambda: rig.finished(study.id))
    results = rig.engine.results(study.id)
    assert results is not None
    assert results["heron"] == 1 and results["study_id"] == study.id
    assert results["status"] == "completed"
    assert results["sites"] == {"participated": ["site-a", "site-b", "site-c"], "refused": {},
                                "unreachable": []}
    assert results["privacy"] == {"secure_aggregation": False, "min_sites": 3,
                                  "time_resolution_days": 1, "coarsened": False,
                                  "site_thresholds": []}
    assert results["analyses"]["os"] == {"kind": "kaplan_meier",
                                         "sites": ["site-a", "site-b", "site-c"],
                                         "total": 3 * (1 + 2 + 3)}
    km, ae = rig.pooled  # one call per analysis
    assert (km["site-b"], ae["site-b"]) == site_releases(study, 2)
    status = rig.engine.status(study.id)
    assert [s.state for s in status.sites] == ["released"] * 3
    assert status.completed_at == rig.clock.now
    assert {s.site_id: s.software_version for s in rig.engine.list_sites()} == {
        "site-a": "node/1", "site-b": "node/1", "site-c": "node/1"}


def test_refusal_reason_reaches_results(rig: Rig) -> None:
    rig.transport.connect("site-a", releasing_node(1))
    rig.transport.connect("site-b", releasing_node(1))
    rig.transport.connect("mt-valletta", refusing_node("cohort below 10 patients"))
    study = make_study(min_sites=2)
    rig.engine.submit(signed(study, KEY))
    wait_until(lambda: rig.finished(study.id))
    results = rig.engine.results(study.id)
    assert results["sites"]["refused"] == {"mt-valletta": "cohort below 10 patients"}
    assert results["sites"]["participated"] == ["site-a", "site-b"]
    assert results["analyses"]["crs"]["sites"] == ["site-a", "site-b"]


def test_silent_site_becomes_unreachable_after_timeout(rig: Rig) -> None:
    rig.transport.connect("site-a", releasing_node(1))
    rig.transport.connect("site-b", silent_node)
    study = make_study(min_sites=1)
    rig.engine.submit(signed(study, KEY))
    wait_until(lambda: rig.engine.status(study.id).sites[0].state == "released")
    rig.clock.advance(TIMEOUT_S - 1)
    assert rig.engine.check_timeouts() == []
    assert rig.engine.status(study.id).status == "running"
    rig.clock.advance(1)
    assert rig.engine.check_timeouts() == [study.id]
    status = rig.engine.status(study.id)
    assert status.status == "completed"
    assert (status.sites[1].state, status.sites[1].reason) == ("unreachable",
                                                               "no answer within 60 s")
    results = rig.engine.results(study.id)
    assert results["sites"]["unreachable"] == ["site-b"]
    assert results["analyses"]["os"]["sites"] == ["site-a"]


def test_fewer_than_min_sites_gives_no_pooled_release(rig: Rig) -> None:
    rig.transport.connect("site-a", releasing_node(1))
    rig.transport.connect("site-b", releasing_node(1))
    rig.transport.connect("site-c", refusing_node("policy"))
    study = make_study(min_sites=3)
    rig.engine.submit(signed(study, KEY))
    wait_until(lambda: rig.finished(study.id))
    results = rig.engine.results(study.id)
    assert results["status"] == "completed"
    assert results["analyses"] == {
        "os": {"kind": "kaplan_meier",
               "error": "fewer than 3 participating sites (min_sites)"},
        "crs": {"kind": "adverse_events",
                "error": "fewer than 3 participating sites (min_sites)"}}
    assert rig.pooled == []


def test_known_but_disconnected_site_gets_task_when_it_connects(rig: Rig) -> None:
    rig.transport.connect("site-a", silent_node)
    rig.transport.disconnect("site-a")
    rig.transport.connect("site-b", releasing_node(1))
    study = make_study(min_sites=2)
    rig.engine.submit(signed(study, KEY))
    wait_until(lambda: rig.engine.status(study.id).sites[1].state == "released")
    assert rig.engine.status(study.id).sites[0].state == "pending"
    rig.transport.connect("site-a", releasing_node(5))
    wait_until(lambda: rig.finished(study.id))
    assert rig.engine.results(study.id)["analyses"]["os"]["total"] == 3 * (1 + 5)


def test_reconnecting_site_gets_its_outstanding_task_again(rig: Rig) -> None:
    seen: list[StudyTask] = []

    def forgetful(task: StudyTask) -> None:
        seen.append(task)

    rig.transport.connect("site-a", forgetful)
    study = make_study(min_sites=1)
    rig.engine.submit(signed(study, KEY))
    wait_until(lambda: seen)
    assert rig.engine.status(study.id).sites[0].state == "sent"
    rig.transport.disconnect("site-a")
    again: list[StudyTask] = []
    answer = releasing_node(1)

    def node(task: StudyTask) -> TaskReply:
        again.append(task)
        return answer(task)

    rig.transport.connect("site-a", node)
    wait_until(lambda: rig.finished(study.id))
    assert again == seen  # the same task id: node answers are idempotent


def test_unknown_and_repeated_replies_are_ignored(rig: Rig) -> None:
    rig.transport.connect("site-a", silent_node)
    rig.transport.connect("site-b", silent_node)
    study = make_study(min_sites=1)
    rig.engine.submit(signed(study, KEY))
    task_a = rig.store.study_sites(study.id)[0].task_id
    rig.engine.on_reply("site-a", TaskReply("bogus", study.id, refusal="x"))
    rig.engine.on_reply("site-a", TaskReply(task_a, "no-such-study", refusal="x"))
    rig.engine.on_reply("site-b", TaskReply(task_a, study.id, refusal="not your task"))
    assert [s.state for s in rig.engine.status(study.id).sites] == ["sent", "sent"]
    rig.engine.on_reply("site-a", TaskReply(task_a, study.id, refusal="first answer"))
    rig.engine.on_reply("site-a", TaskReply(task_a, study.id, releases=site_releases(study)))
    site_a = rig.engine.status(study.id).sites[0]
    assert (site_a.state, site_a.reason) == ("refused", "first answer")


def test_submit_rejects_bad_studies(rig: Rig) -> None:
    study = make_study()
    good = signed(study, KEY)
    tampered = dataclasses.replace(good, canonical_study=good.canonical_study.replace(
        b"Study", b"Ztudy"))
    with pytest.raises(Rejected, match="does not verify"):
        rig.engine.submit(tampered)
    with pytest.raises(Rejected, match="untrusted"):
        rig.engine.submit(signed(study, Ed25519PrivateKey.generate()))
    with pytest.raises(Rejected, match="expired"):
        rig.engine.submit(signed(make_study("old-study", expires="2020-01-01"), KEY))
    rig.engine.submit(good)
    with pytest.raises(DuplicateStudy):
        rig.engine.submit(good)
    with pytest.raises(UnknownStudy):
        rig.engine.status("nope")
    with pytest.raises(UnknownStudy):
        rig.engine.results("nope")
    assert [s.study_id for s in rig.engine.list_studies()] == [study.id]


def test_study_without_any_site_completes_at_once(rig: Rig) -> None:
    study = make_study(min_sites=1)
    rig.engine.submit(signed(study, KEY))
    results = rig.engine.results(study.id)
    assert results["sites"] == {"participated": [], "refused": {}, "unreachable": []}
    assert results["analyses"]["os"]["error"].startswith("fewer than 1 participating")


def test_failing_pooling_ends_the_analysis_with_its_reason(tmp_path: Path,
                                                            clock: FakeClock) -> None:
    rig = Rig(tmp_path / "agg.sqlite", clock, broken="vectors of unequal length")
    try:
        rig.transport.connect("site-a", releasing_node(1))
        study = make_study(min_sites=1)
        rig.engine.submit(signed(study, KEY))
        wait_until(lambda: rig.finished(study.id))
        results = rig.engine.results(study.id)
        assert results["status"] == "completed" == rig.engine.status(study.id).status
        assert results["analyses"]["os"] == {
            "kind": "kaplan_meier", "error": "vectors of unequal length"}
    finally:
        rig.close()


def test_restarted_aggregator_finishes_the_study(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "agg.sqlite"
    first = Rig(db, clock)
    for site in ("site-a", "site-b", "site-c"):
        first.transport.connect(site, silent_node)
    study = make_study(min_sites=3)
    first.engine.submit(signed(study, KEY))
    first.transport.connect("site-a", releasing_node(1))  # reconnects and answers at once
    wait_until(lambda: first.engine.status(study.id).sites[0].state == "released")
    first.store.close()  # the aggregator dies; no disconnects are recorded
    clock.advance(10 * TIMEOUT_S)  # down for a long time

    second = Rig(db, clock)
    try:
        assert second.engine.resume() == [study.id]
        assert [s.state for s in second.engine.status(study.id).sites] == [
            "released", "pending", "pending"]
        assert not any(s.connected for s in second.engine.list_sites())
        clock.advance(TIMEOUT_S - 1)  # sites get a full timeout from the restart
        assert second.engine.check_timeouts() == []
        second.transport.connect("site-b", releasing_node(2))
        second.transport.connect("site-c", releasing_node(3))
        wait_until(lambda: second.finished(study.id))
        results = second.engine.results(study.id)
        assert results["sites"]["participated"] == ["site-a", "site-b", "site-c"]
        assert results["analyses"]["os"]["total"] == 3 * (1 + 2 + 3)
    finally:
        second.close()
        first.transport.set_listener(NullListener())  # the first engine is gone with its store
        first.transport.close()



    def on_disconnect(self, site_id: str) -> None:
        pass

    def on_reply(self, site_id: str, reply: TaskReply) -> None:
        pass


def test_without_trusted_keys_only_nodes_check_signatures(tmp_path: Path,
                                                          clock: FakeClock) -> None:
    store = Store(tmp_path / "agg.sqlite")
    transport = LocalTransport()
    engine = StudyEngine(store, transport, [], clock=clock, strategies=fake_strategies())
    try:
        study = make_study()
        other = signed(study, Ed25519PrivateKey.generate())
        assert engine.submit(other) == study.id  # forwarded: the nodes will verify it
        junk = dataclasses.replace(other, canonical_study=b"not json")
        with pytest.raises(Rejected, match="not UTF-8 JSON"):
            engine.submit(junk)
    finally:
        transport.close()
        store.close()


def test_a_bug_in_a_round_fails_the_study_instead_of_leaving_it_running(
        tmp_path: Path, clock: FakeClock) -> None:
    class Unstorable(FakeStrategy):  # a FAKE strategy whose finished state cannot be stored
        def dump(self, state: Any) -> dict[str, Any]:
            if state.done:
                raise RuntimeError("state not serialisable")
            return super().dump(state)

    store = Store(tmp_path / "agg.sqlite")
    transport = LocalTransport()
    bug = Unstorable()
    engine = StudyEngine(store, transport, [KEY.public_key()], clock=clock,
                         strategies={"kaplan_meier": bug, "adverse_events": bug})
    try:
        transport.connect("site-a", releasing_node(1))
        study = make_study(min_sites=1)
        engine.submit(signed(study, KEY))
        wait_until(lambda: engine.status(study.id).status != "running")
        results = engine.results(study.id)
        assert engine.status(study.id).status == "failed" == results["status"]
        assert results["analyses"]["os"]["error"] == (
            "internal error in round 1: state not serialisable")
    finally:
        transport.close()
        store.close()


def test_fixed_costs_one_transaction_per_fan_out_and_per_answer_answers_kept_in_memory(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    sites = [f"site-{i:02d}" for i in range(8)]
    for i, site in enumerate(sites, start=1):
        rig.transport.connect(site, releasing_node(i), HelloInfo(site, "node/1", ""))
    commits: list[str] = []
    rig.store._conn.set_trace_callback(  # type: ignore[union-attr]
        lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)

    def no_rereading(*args: object) -> None:
        raise AssertionError("a stored answer was read back while the study ran")

    # answers are decoded once, as they arrive: none is read back or decoded again
    monkeypatch.setattr("aggregator.engine.decode_task_result", no_rereading)
    monkeypatch.setattr(rig.store, "round_tasks", no_rereading)
    study = make_study("costs", min_sites=3)
    rig.engine.submit(signed(study, KEY))
    assert len(commits) == 1  # the study, its first round and its tasks marked sent
    final = rig.engine.wait(study.id, 15.0)
    assert final.status == "completed"
    assert [s.state for s in final.sites] == ["released"] * len(sites)
    # at most one per answer (answers of worker threads that meet at the engine's lock are
    # group-committed); the last answer's transaction also holds the results
    assert 2 <= len(commits) <= 1 + len(sites)
    assert rig.engine.results(study.id)["analyses"]["os"]["total"] == 3 * sum(  # type: ignore[index]
        range(1, len(sites) + 1))


def test_a_task_that_could_not_be_sent_goes_back_to_pending(rig: Rig) -> None:
    rig.transport.connect("site-a", releasing_node(1))
    rig.transport.connect("site-b", releasing_node(2))
    refused: list[str] = []
    send = rig.transport.send_task

    def flaky(site_id: str, task: StudyTask) -> bool:
        if site_id == "site-b" and not refused:
            refused.append(task.task_id)
            return False  # the site went away between the round's commit and the send
        return send(site_id, task)

    rig.transport.send_task = flaky  # type: ignore[method-assign]
    study = make_study("flaky", min_sites=1)
    rig.engine.submit(signed(study, KEY))
    wait_until(lambda: rig.engine.status(study.id).sites[0].state == "released")
    assert [(t.site_id, t.state) for t in rig.store.open_tasks(study.id, 1)] == [
        ("site-b", "pending")]
    rig.transport.connect("site-b", releasing_node(2))  # it comes back: the task is resent
    assert rig.engine.wait(study.id, 15.0).status == "completed"
    assert rig.engine.results(study.id)["sites"]["participated"] == [  # type: ignore[index]
        "site-a", "site-b"]


def test_replies_that_meet_at_the_lock_are_one_commit_and_each_recorded(rig: Rig) -> None:
    sites = ["site-a", "site-b", "site-c"]
    go = threading.Event()

    def held(value: int) -> Any:
        inner = releasing_node(value)

        def handler(task: StudyTask) -> TaskReply:
            go.wait(TIMEOUT_S)
            return inner(task)
        return handler

    for i, site in enumerate(sites, start=1):
        rig.transport.connect(site, held(i))
    commits: list[str] = []
    rig.store._conn.set_trace_callback(  # type: ignore[union-attr]
        lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
    study = make_study("together", min_sites=3)
    rig.engine.submit(signed(study, KEY))
    assert len(commits) == 1
    with rig.engine._lock:  # every worker's reply queues behind the lock
        go.set()
        wait_until(lambda: len(rig.engine._inbox) == len(sites))
    final = rig.engine.wait(study.id, 15.0)
    assert final.status == "completed"
    assert [s.state for s in final.sites] == ["released"] * len(sites)
    assert len(commits) == 2  # the three answers and the results: one transaction
    assert rig.engine.results(study.id)["analyses"]["os"]["total"] == 3 * 6  # type: ignore[index]
