"""Completion pushed to the coordinator (issue 9): ``WaitStudy`` and ``heron study submit --wait``
against a real aggregator server (gRPC, mutual TLS) with a test node."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.config import AggregatorConfig
from aggregator.server import AggregatorServer, create_server
from aggregator.transport import StudyTask, TaskReply
from heron import cli
from heron.coordinator import CoordinatorClient
from protocol.codec import answer_message
from protocol.keys import public_key_b64
from protocol.tls import channel_credentials
from protocol.v1 import coordinator_pb2 as cpb
from protocol.v1 import coordinator_pb2_grpc as cpb_grpc
from tests.aggregator_helpers import (
    GrpcTestNode,
    Network,
    fake_strategies,
    make_network,
    make_study,
    releasing_node,
    signed,
    silent_node,
)

KEY = Ed25519PrivateKey.generate()
ANSWER_AFTER_S = 0.6


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return make_network(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def server(network: Network, tmp_path: Path) -> Iterator[AggregatorServer]:
    config = AggregatorConfig(listen="127.0.0.1:0", credentials_dir=network.root / "aggregator",
                              db_path=tmp_path / "agg.sqlite",
                              trusted_coordinators=(public_key_b64(KEY.public_key()),),
                              heartbeat_interval_s=1, service_threads=3)
    srv = create_server(config, strategies=fake_strategies())  # FAKE statistics
    srv.start()
    yield srv
    srv.stop(0)


def _target(server: AggregatorServer) -> str:
    return f"127.0.0.1:{server.port}"


def _slow_node(task: StudyTask) -> TaskReply:
    time.sleep(ANSWER_AFTER_S)  # the study ends well after submit returned
    return releasing_node(2)(task)


def test_submit_wait_returns_the_final_status_when_the_study_ends(
        server: AggregatorServer, network: Network, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    node = GrpcTestNode(_target(server), network.site("site-a"), "site-a", _slow_node)
    try:
        assert node.welcomed.wait(15), node.error
        study = make_study("wait-cli", min_sites=1)
        path = tmp_path / "study.signed.json"
        signed(study, KEY).to_file(path)
        t0 = time.monotonic()
        code = cli.main(["study", "submit", str(path), "--aggregator", _target(server),
                         "--credentials", str(network.root / "coordinator"), "--wait"])
        elapsed = time.monotonic() - t0
    finally:
        node.close()
    out = capsys.readouterr().out
    assert code == 0, out
    assert elapsed >= ANSWER_AFTER_S  # it waited for the node's answer
    assert f"{study.id}: completed" in out and "site-a: released" in out
    assert server.engine.status(study.id).status == "completed"


def test_submit_wait_json_prints_the_final_status(server: AggregatorServer, network: Network,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    node = GrpcTestNode(_target(server), network.site("site-b"), "site-b", releasing_node(1))
    try:
        assert node.welcomed.wait(15), node.error
        study = make_study("wait-json", min_sites=1)
        path = tmp_path / "study.signed.json"
        signed(study, KEY).to_file(path)
        code = cli.main(["study", "submit", str(path), "--aggregator", _target(server),
                         "--credentials", str(network.root / "coordinator"), "--wait",
                         "--json"])
    finally:
        node.close()
    status = json.loads(capsys.readouterr().out)
    assert code == 0
    assert status["study_id"] == study.id and status["status"] == "completed"
    assert status["sites"]["site-b"]["state"] == "released"


def test_wait_study_returns_at_once_when_pushed_and_running_when_the_wait_is_over(
        server: AggregatorServer, network: Network) -> None:
    node = GrpcTestNode(_target(server), network.site("site-c"), "site-c", silent_node)
    channel = grpc.secure_channel(_target(server), channel_credentials(network.coordinator))
    stub = cpb_grpc.CoordinatorStub(channel)
    try:
        assert node.welcomed.wait(15), node.error
        study = make_study("wait-rpc", min_sites=1)
        server.engine.submit(signed(study, KEY))
        t0 = time.monotonic()
        reply = stub.WaitStudy(cpb.WaitStudyRequest(study_id=study.id, timeout_ms=300),
                               timeout=10)
        assert reply.status == "running" and time.monotonic() - t0 >= 0.3
        # a waiting call returns as soon as the study ends (here: its one site refuses)
        got: list[cpb.StudyStatus] = []
        waiter = threading.Thread(target=lambda: got.append(stub.WaitStudy(
            cpb.WaitStudyRequest(study_id=study.id, timeout_ms=20_000), timeout=30)))
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive()
        (task,) = node.tasks
        node.send(answer_message(task.task_id, task.study_id, None, "not today"))
        waiter.join(10)
        assert not waiter.is_alive()
        assert got[0].status == "completed"
        assert got[0].sites[0].state == "refused"
        with pytest.raises(grpc.RpcError) as err:
            stub.WaitStudy(cpb.WaitStudyRequest(study_id="no-such-study", timeout_ms=100),
                           timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        node.close()
        channel.close()


def test_client_waits_through_a_busy_aggregator(server: AggregatorServer,
                                                network: Network) -> None:
    """service_threads=3: one WaitStudy call may wait; another one is answered at once and
    the client asks again until the study has ended."""
    node = GrpcTestNode(_target(server), network.site("site-d"), "site-d", _slow_node)
    try:
        assert node.welcomed.wait(15), node.error
        study = make_study("wait-busy", min_sites=1)
        with CoordinatorClient(_target(server), network.root / "coordinator") as first, \
                CoordinatorClient(_target(server), network.root / "coordinator") as second:
            study_id = first.submit(signed(study, KEY))
            results: list[dict[str, object]] = []
            other = threading.Thread(target=lambda: results.append(
                first.wait_for_completion(study_id, 30)))
            other.start()
            status = second.wait_for_completion(study_id, 30)
            other.join(10)
        assert status["status"] == "completed"
        assert results and results[0]["status"] == "completed"
    finally:
        node.close()
