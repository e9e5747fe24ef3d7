"""A restarted aggregator resumes a study in the middle of its rounds and gets the same results.

The first aggregator dies while the sites hold their answers to a Cox Newton round of a secure
study; a second aggregator on the same SQLite file resumes, resends the round's tasks to the
reconnecting sites (whose node engines, and ephemeral keys, lived on) and finishes the study.
The reference is the same study run without interruption.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.engine import StudyEngine
from aggregator.store import Store
from aggregator.transport import (
    HelloInfo,
    LocalTransport,
    NodeHandler,
    NullListener,
    StudyTask,
    TaskReply,
)
from heron.simulation import (
    SimulatedNetwork,
    SimulatedSite,
    make_study,
    node_handler,
    synthetic_sites,
)
from node.governance.policy import Policy
from protocol.rounds import parse_requests
from protocol.signing import sign_study
from tests.conftest import assert_close

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date.today()
ANALYSES = [
    {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival", "group_by": "route"},
    {"name": "cox", "kind": "cox", "endpoint": "overall_survival",
     "covariates": ["age_at_infusion", "sex", "ecog"]},
]


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[SimulatedSite]:
    return synthetic_sites(tmp_path_factory.mktemp("resume"), [110, 100, 90], seed=31,
                           policy=Policy(min_cohort=1, min_cell=1, min_bin_events=1))


def test_restart_in_a_secure_cox_round_resumes_and_gives_the_same_results(
        tmp_path: Path, sites: list[SimulatedSite]) -> None:
    study = make_study("resume-cox", ANALYSES, secure_aggregation=True, min_sites=3,
                       cohort={}, expires=TODAY + dt.timedelta(days=30))
    with SimulatedNetwork(tmp_path / "reference", sites, KEY, today=lambda: TODAY) as ref:
        expected = ref.run(study, timeout_s=120)
    assert "error" not in expected["analyses"]["cox"], expected["analyses"]["cox"]

    held: list[str] = []
    holding = threading.Event()

    def hold_newton(handler: NodeHandler) -> NodeHandler:
        def wrapped(task: StudyTask) -> TaskReply | None:
            if parse_requests(task.inputs).newton:
                held.append(task.task_id)
                holding.set()
                return None  # the answer never reaches the first aggregator
            return handler(task)
        return wrapped

    net = SimulatedNetwork(tmp_path / "first", sites, KEY, today=lambda: TODAY,
                           node_wrappers={s.site_id: hold_newton for s in sites})
    study_id = net.submit(sign_study(study, KEY))
    assert holding.wait(60), "no Newton round was reached"
    net.transport.set_listener(NullListener())  # the first aggregator dies mid-round

    store = Store(net.db_path)
    transport = LocalTransport()
    ca_pem = (net.ca_dir / "ca.pem").read_bytes()
    engine = StudyEngine(store, transport, [KEY.public_key()], ca_pem=ca_pem)
    try:
        assert engine.resume() == [study_id]
        for site in sites:
            transport.connect(site.site_id, node_handler(net.nodes[site.site_id]),
                              HelloInfo(site.site_id))
        done = threading.Event()
        for _ in range(1200):
            if engine.results(study_id) is not None:
                done.set()
                break
            done.wait(0.05)
        results = engine.results(study_id)
        assert results is not None, engine.status(study_id)
    finally:
        transport.close()
        net.close()
    assert held  # the resumed round was the one the first aggregator never saw answered
    assert results["status"] == "completed"
    assert_close(results["analyses"], expected["analyses"], rel=1e-9)
    assert results["sites"] == expected["sites"]
