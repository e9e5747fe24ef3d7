"""The aggregator server over real gRPC with mutual TLS: node link, coordinator API, health."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator.config import AggregatorConfig
from aggregator.server import AggregatorServer, create_server
from protocol.keys import public_key_b64
from protocol.pki import Credentials
from protocol.tls import channel_credentials
from protocol.v1 import coordinator_pb2 as cpb
from protocol.v1 import coordinator_pb2_grpc as cpb_grpc
from protocol.v1 import node_link_pb2 as pb
from tests.aggregator_helpers import (
    GrpcTestNode,
    Network,
    fake_strategies,
    make_network,
    make_study,
    refusing_node,
    releasing_node,
    signed,
    silent_node,
    wait_until,
)

KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return make_network(Path(tmp_path_factory.mktemp("pki")))


def _config(network: Network, db: Path, **kw: object) -> AggregatorConfig:
    return AggregatorConfig(listen="127.0.0.1:0", credentials_dir=network.root / "aggregator",
                            db_path=db, trusted_coordinators=(public_key_b64(KEY.public_key()),),
                            heartbeat_interval_s=1, **kw)  # type: ignore[arg-type]


@pytest.fixture
def server(network: Network, tmp_path: Path) -> Iterator[AggregatorServer]:
    srv = create_server(_config(network, tmp_path / "agg.sqlite"),
                        strategies=fake_strategies())  # FAKE statistics
    srv.start()
    yield srv
    srv.stop(0)


def _target(server: AggregatorServer) -> str:
    return f"127.0.0.1:{server.port}"


def _channel(server: AggregatorServer, creds: Credentials) -> grpc.Channel:
    return grpc.secure_channel(_target(server), channel_credentials(creds))


def _coordinator(server: AggregatorServer, creds: Credentials) -> cpb_grpc.CoordinatorStub:
    return cpb_grpc.CoordinatorStub(_channel(server, creds))


def _denied(node: GrpcTestNode) -> grpc.StatusCode:
    error = node.wait_done()
    assert error is not None, "the stream was not refused"
    return error.code()


def test_site_gets_task_and_its_result_is_recorded(server: AggregatorServer,
                                                   network: Network) -> None:
    node = GrpcTestNode(_target(server), network.site("site-a"), "site-a", releasing_node(4))
    assert node.welcomed.wait(15), node.error
    assert node.welcome.heartbeat_interval_s == 1  # type: ignore[union-attr]
    coord = _coordinator(server, network.coordinator)
    (site,) = coord.ListSites(cpb.ListSitesRequest()).sites
    assert (site.site_id, site.connected, site.software_version,
            site.ingested_at) == ("site-a", True, "test-node/1", "2026-01-01T00:00:00Z")
    study = make_study(min_sites=1)
    ref = coord.SubmitStudy(signed(study, KEY).to_proto())
    assert ref.study_id == study.id
    wait_until(lambda: coord.GetStatus(ref).status == "completed")
    assert [t.study_id for t in node.tasks] == [study.id]
    status = coord.GetStatus(ref)
    assert [(s.site_id, s.state) for s in status.sites] == [("site-a", "released")]
    assert status.submitted_at.endswith("Z") and status.completed_at.endswith("Z")
    res = coord.GetResults(ref)
    results = json.loads(res.results_json)
    assert (res.status, results["status"], results["sites"]["participated"]) == (
        "completed", "completed", ["site-a"])
    assert results["analyses"]["os"]["total"] == 12
    assert [s.study_id for s in coord.ListStudies(cpb.ListStudiesRequest()).studies] == [
        study.id]
    node.close()
    wait_until(lambda: not coord.ListSites(cpb.ListSitesRequest()).sites[0].connected)


def test_refusal_and_silent_site_reach_results_through_the_ticker(
        network: Network, tmp_path: Path) -> None:
    srv = create_server(_config(network, tmp_path / "agg.sqlite", site_timeout_s=0.5),
                        strategies=fake_strategies())  # FAKE statistics
    srv.start()
    nodes = [GrpcTestNode(_target(srv), network.site("site-a"), "site-a", releasing_node(1)),
             GrpcTestNode(_target(srv), network.site("site-b"), "site-b",
                          refusing_node("cohort below 10 patients")),
             GrpcTestNode(_target(srv), network.site("site-c"), "site-c", silent_node)]
    try:
        for node in nodes:
            assert node.welcomed.wait(15), node.error
        coord = _coordinator(srv, network.coordinator)
        ref = coord.SubmitStudy(signed(make_study(min_sites=1), KEY).to_proto())
        wait_until(lambda: coord.GetStatus(ref).status == "completed")
        results = json.loads(coord.GetResults(ref).results_json)
        assert results["sites"] == {"participated": ["site-a"],
                                    "refused": {"site-b": "cohort below 10 patients"},
                                    "unreachable": ["site-c"]}
    finally:
        for node in nodes:
            node.close()
        srv.stop(0)


def test_site_certificate_from_another_ca_is_rejected(server: AggregatorServer,
                                                      network: Network, tmp_path: Path) -> None:
    other = make_network(tmp_path / "other-network")
    node = GrpcTestNode(_target(server), other.site("site-a"), "site-a")
    assert _denied(node) == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
    assert server.engine.list_sites() == []


def test_coordinator_certificate_cannot_open_node_link(server: AggregatorServer,
                                                       network: Network) -> None:
    node = GrpcTestNode(_target(server), network.coordinator, "ecc")
    assert _denied(node) == grpc.StatusCode.PERMISSION_DENIED
    assert server.engine.list_sites() == []


def test_site_certificate_cannot_use_coordinator_api(server: AggregatorServer,
                                                     network: Network) -> None:
    stub = _coordinator(server, network.site("site-a"))
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitStudy(signed(make_study(), KEY).to_proto())
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as info:
        stub.ListSites(cpb.ListSitesRequest())
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert server.engine.list_studies() == []


def test_hello_must_name_the_certificate_site(server: AggregatorServer,
                                              network: Network) -> None:
    node = GrpcTestNode(_target(server), network.site("site-a"), "site-b")
    assert _denied(node) == grpc.StatusCode.PERMISSION_DENIED
    assert "certificate" in node.error.details()  # type: ignore[union-attr]
    assert server.engine.list_sites() == []


def test_first_message_must_be_hello(server: AggregatorServer, network: Network) -> None:
    beat = pb.NodeMessage(heartbeat=pb.Heartbeat(sent_unix_ms=1))
    node = GrpcTestNode(_target(server), network.site("site-a"), "site-a", first_message=beat)
    assert _denied(node) == grpc.StatusCode.FAILED_PRECONDITION


def test_coordinator_errors_map_to_status_codes(server: AggregatorServer,
                                                network: Network) -> None:
    coord = _coordinator(server, network.coordinator)
    with pytest.raises(grpc.RpcError) as info:
        coord.GetStatus(cpb.StudyRef(study_id="no-such-study"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    good = signed(make_study(min_sites=1), KEY)
    tampered = dataclasses.replace(good, signature=bytes(64))
    with pytest.raises(grpc.RpcError) as info:
        coord.SubmitStudy(tampered.to_proto())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not verify" in info.value.details()
    # a known, disconnected site keeps the study running
    node = GrpcTestNode(_target(server), network.site("site-a"), "site-a")
    assert node.welcomed.wait(15)
    node.close()
    wait_until(lambda: not server.engine.list_sites()[0].connected)
    ref = coord.SubmitStudy(good.to_proto())
    res = coord.GetResults(ref)
    assert (res.status, res.results_json) == ("running", "")
    with pytest.raises(grpc.RpcError) as info:
        coord.SubmitStudy(good.to_proto())
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_health_serving_then_not_serving_on_shutdown(server: AggregatorServer,
                                                     network: Network) -> None:
    health = health_pb2_grpc.HealthStub(_channel(server, network.coordinator))
    for service in ("", "heron.v1.NodeLink", "heron.v1.Coordinator"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    server.begin_shutdown()
    reply = health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_stop_ends_node_links_and_state_survives(network: Network, tmp_path: Path) -> None:
    db = tmp_path / "agg.sqlite"
    srv = create_server(_config(network, db), strategies=fake_strategies())  # FAKE
    srv.start()
    node = GrpcTestNode(_target(srv), network.site("site-a"), "site-a", silent_node)
    assert node.welcomed.wait(15)
    coord = _coordinator(srv, network.coordinator)
    ref = coord.SubmitStudy(signed(make_study(min_sites=1), KEY).to_proto())
    wait_until(lambda: node.tasks)
    srv.stop(2.0)
    node.wait_done()  # the link was closed by the aggregator
    node.close()

    again = create_server(_config(network, db), strategies=fake_strategies())  # FAKE
    again.start()
    try:
        node = GrpcTestNode(_target(again), network.site("site-a"), "site-a", releasing_node(2))
        coord = _coordinator(again, network.coordinator)
        wait_until(lambda: coord.GetStatus(ref).status == "completed")
        assert json.loads(coord.GetResults(ref).results_json)["analyses"]["os"]["total"] == 6
        node.close()
    finally:
        again.stop(0)
