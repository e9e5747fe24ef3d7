"""One contract, every transport: LocalTransport and the gRPC node link (real mutual TLS)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.aio import AioServer
from aggregator.link import NodeLinkServicer
from aggregator.transport import HelloInfo, LocalTransport, NodeTransport, StudyTask, TaskReply
from protocol.tls import server_credentials, server_options
from protocol.v1 import node_link_pb2_grpc
from tests.aggregator_helpers import (
    WAIT_S,
    GrpcTestNode,
    Network,
    make_network,
    make_study,
    refusing_node,
    releasing_node,
    signed,
    silent_node,
    site_releases,
)


class RecordingListener:
    """Records transport events; tests wait (bounded) for the ones they expect."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self._cond = threading.Condition()

    def _add(self, event: tuple[str, str, Any]) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def on_connect(self, site_id: str, hello: HelloInfo) -> None:
        self._add(("connect", site_id, hello))

    def on_disconnect(self, site_id: str) -> None:
        self._add(("disconnect", site_id, None))

    def on_reply(self, site_id: str, reply: TaskReply) -> None:
        self._add(("reply", site_id, reply))

    def of(self, kind: str, site_id: str) -> list[Any]:
        with self._cond:
            return [e[2] for e in self.events if e[0] == kind and e[1] == site_id]

    def wait_for(self, kind: str, site_id: str, count: int = 1) -> list[Any]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.of(kind, site_id)) >= count, WAIT_S)
        assert ok, f"no {kind} event #{count} for {site_id}: {self.events}"
        return self.of(kind, site_id)


class LocalHarness:
    """Nodes are callables on threads."""

    def __init__(self, network: Network) -> None:
        self.transport = LocalTransport()

    def connect(self, site_id: str, handler: Callable[[StudyTask], TaskReply | None],
                hello: HelloInfo) -> Any:
        self.transport.connect(site_id, handler, hello)
        return site_id

    def disconnect(self, handle: Any) -> None:
        self.transport.disconnect(handle)

    def close(self) -> None:
        self.transport.close()


class GrpcHarness:
    """A real gRPC (asyncio) server with the NodeLink servicer; nodes are GrpcTestNode
    clients."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.transport = NodeLinkServicer(heartbeat_interval_s=1)
        self.server = AioServer(server_options())
        self.server.add(node_link_pb2_grpc.add_NodeLinkServicer_to_server, self.transport)
        port = self.server.add_secure_port("127.0.0.1:0", server_credentials(network.aggregator))
        self.target = f"127.0.0.1:{port}"
        self.server.start()
        self.nodes: list[GrpcTestNode] = []

    def connect(self, site_id: str, handler: Callable[[StudyTask], TaskReply | None],
                hello: HelloInfo) -> Any:
        node = GrpcTestNode(self.target, self.network.site(site_id), site_id, handler, hello)
        self.nodes.append(node)
        assert node.welcomed.wait(WAIT_S), f"no Welcome for {site_id}: {node.error}"
        return node

    def disconnect(self, handle: Any) -> None:
        handle.close()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.transport.close()
        self.server.stop(0)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return make_network(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture(params=["local", "grpc"])
def harness(request: pytest.FixtureRequest, network: Network) -> Iterator[Any]:
    h = LocalHarness(network) if request.param == "local" else GrpcHarness(network)
    yield h
    h.close()


@pytest.fixture
def listener(harness: Any) -> RecordingListener:
    rec = RecordingListener()
    harness.transport.set_listener(rec)
    return rec


def _task(site: str = "site-a", study_id: str = "contract-study") -> StudyTask:
    key = Ed25519PrivateKey.generate()
    return StudyTask(task_id=f"task-{site}", study_id=study_id,
                     signed=signed(make_study(study_id), key), round=1)


HELLO = HelloInfo("site-a", "node/9.9", "2026-02-01T10:00:00Z")


class TestTransportContract:
    """Behaviour every NodeTransport implementation must have."""

    def test_connect_reports_hello_and_lists_site(self, harness: Any,
                                                  listener: RecordingListener) -> None:
        transport: NodeTransport = harness.transport
        assert transport.connected_sites() == []
        harness.connect("site-a", silent_node, HELLO)
        (hello,) = listener.wait_for("connect", "site-a")
        assert hello == HELLO
        assert transport.connected_sites() == ["site-a"]

    def test_send_to_unconnected_site_returns_false(self, harness: Any,
                                                    listener: RecordingListener) -> None:
        assert harness.transport.send_task("nowhere", _task("nowhere")) is False

    def test_task_reaches_node_and_release_comes_back(self, harness: Any,
                                                      listener: RecordingListener) -> None:
        received: list[StudyTask] = []
        answer = releasing_node(7)

        def node(task: StudyTask) -> TaskReply:
            received.append(task)
            return answer(task)

        harness.connect("site-a", node, HELLO)
        listener.wait_for("connect", "site-a")
        task = _task()
        assert harness.transport.send_task("site-a", task) is True
        (reply,) = listener.wait_for("reply", "site-a")
        assert received == [task]
        assert (reply.task_id, reply.study_id, reply.refusal) == (task.task_id, task.study_id,
                                                                  None)
        assert reply.releases == site_releases(make_study("contract-study"), 7)

    def test_refusal_comes_back_with_reason(self, harness: Any,
                                            listener: RecordingListener) -> None:
        harness.connect("site-a", refusing_node("cohort below 10 patients"), HELLO)
        listener.wait_for("connect", "site-a")
        assert harness.transport.send_task("site-a", _task())
        (reply,) = listener.wait_for("reply", "site-a")
        assert reply.refusal == "cohort below 10 patients"
        assert reply.releases is None

    def test_disconnect_is_reported_and_ends_sending(self, harness: Any,
                                                     listener: RecordingListener) -> None:
        handle = harness.connect("site-a", silent_node, HELLO)
        listener.wait_for("connect", "site-a")
        harness.disconnect(handle)
        listener.wait_for("disconnect", "site-a")
        assert harness.transport.connected_sites() == []
        assert harness.transport.send_task("site-a", _task()) is False

    def test_second_connection_replaces_first(self, harness: Any,
                                              listener: RecordingListener) -> None:
        first: list[StudyTask] = []
        harness.connect("site-a", lambda t: first.append(t), HELLO)
        listener.wait_for("connect", "site-a")
        harness.connect("site-a", releasing_node(1), HELLO)
        listener.wait_for("connect", "site-a", count=2)
        assert harness.transport.connected_sites() == ["site-a"]
        assert harness.transport.send_task("site-a", _task())
        listener.wait_for("reply", "site-a")
        assert first == []
        assert listener.of("disconnect", "site-a") == []

    def test_each_site_gets_only_its_own_tasks(self, harness: Any,
                                               listener: RecordingListener) -> None:
        seen: dict[str, list[str]] = {"site-a": [], "site-b": []}
        for site in seen:
            def node(task: StudyTask, site: str = site) -> TaskReply:
                seen[site].append(task.task_id)
                return TaskReply(task.task_id, task.study_id, refusal=f"no ({site})")
            harness.connect(site, node, HelloInfo(site))
            listener.wait_for("connect", site)
        assert harness.transport.connected_sites() == ["site-a", "site-b"]
        for site in seen:
            assert harness.transport.send_task(site, _task(site))
        for site in seen:
            (reply,) = listener.wait_for("reply", site)
            assert reply.refusal == f"no ({site})"
            assert seen[site] == [f"task-{site}"]
