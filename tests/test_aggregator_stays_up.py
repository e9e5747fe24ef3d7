"""The aggregator stays up (issue 8, attack 12), over real gRPC with mutual TLS.

A valid site certificate must not stall the aggregator: streams that never say Hello are
closed after the deadline and cannot take the threads of health checks and the coordinator
API; one site cannot hold more than its share of node streams; a release for a task that is
not open is dropped before it is decoded, and one over the per-message cap is refused
undecoded; an answer larger than the transport limit reaches results.json as the site's refusal
with both sizes, not as "unreachable".
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

import aggregator.link
from aggregator.config import AggregatorConfig
from aggregator.link import MAX_STREAMS_PER_SITE
from aggregator.server import AggregatorServer, create_server
from heron.simulation import SimulatedSite, ingest_sites, make_study
from heron.synth import synthesize
from node.governance.audit import AuditTrail
from node.governance.policy import Policy
from node.runtime.daemon import NodeDaemon
from node.runtime.engine import NodeEngine
from protocol.codec import answer_message
from protocol.keys import public_key_b64
from protocol.pki import Credentials
from protocol.signing import sign_study
from protocol.tls import channel_credentials
from protocol.v1 import common_pb2
from protocol.v1 import coordinator_pb2 as cpb
from protocol.v1 import coordinator_pb2_grpc as cpb_grpc
from protocol.v1 import node_link_pb2 as pb
from protocol.v1 import node_link_pb2_grpc as pb_grpc
from tests.aggregator_helpers import (
    WAIT_S,
    GrpcTestNode,
    Network,
    fake_strategies,
    make_network,
    signed,
    site_releases,
    wait_until,
)
from tests.aggregator_helpers import make_study as make_fake_study

KEY = Ed25519PrivateKey.generate()
TODAY = dt.date(2026, 11, 1)
CALL_S = 5.0  # bound on a health check or coordinator call that must not be starved


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return make_network(Path(tmp_path_factory.mktemp("pki")))


def _config(network: Network, db: Path, **kw: Any) -> AggregatorConfig:
    return AggregatorConfig(listen="127.0.0.1:0", credentials_dir=network.root / "aggregator",
                            db_path=db, trusted_coordinators=(public_key_b64(KEY.public_key()),),
                            heartbeat_interval_s=1, **kw)


def _serve(network: Network, tmp_path: Path, strategies: Any = None,
           **kw: Any) -> AggregatorServer:
    srv = create_server(_config(network, tmp_path / "agg.sqlite", **kw), strategies=strategies)
    srv.start()
    return srv


def _target(server: AggregatorServer) -> str:
    return f"127.0.0.1:{server.port}"


class SilentStream:
    """A NodeLink stream opened with a valid site certificate that never sends a message."""

    def __init__(self, target: str, creds: Credentials) -> None:
        self._release = threading.Event()
        self.error: grpc.RpcError | None = None
        self.done = threading.Event()
        self._channel = grpc.secure_channel(target, channel_credentials(creds))
        self._call = pb_grpc.NodeLinkStub(self._channel).Connect(self._requests())
        threading.Thread(target=self._run, daemon=True).start()

    def _requests(self) -> Iterator[pb.NodeMessage]:
        self._release.wait()
        yield from ()

    def _run(self) -> None:
        try:
            for _ in self._call:
                pass
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.done.set()

    def code(self) -> grpc.StatusCode:
        """The status the stream ended with (waits, bounded)."""
        assert self.done.wait(WAIT_S), "the stream was not closed"
        assert self.error is not None
        return self.error.code()

    def close(self) -> None:
        self._release.set()
        self._call.cancel()
        self._channel.close()


def _health_and_coordinator_answer(server: AggregatorServer, network: Network) -> None:
    channel = grpc.secure_channel(_target(server), channel_credentials(network.coordinator))
    try:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        coord = cpb_grpc.CoordinatorStub(channel)
        coord.ListStudies(cpb.ListStudiesRequest(), timeout=CALL_S)
    finally:
        channel.close()


# -- (a) silent streams -------------------------------------------------------------------------

def test_silent_streams_leave_health_and_coordinator_threads_and_are_closed_at_the_deadline(
        network: Network, tmp_path: Path) -> None:
    # a pool of 4 + 4 workers: without the stream cap, eight silent streams would take them all
    srv = _serve(network, tmp_path, max_node_streams=4, service_threads=4, hello_timeout_s=4.0)
    silent = [SilentStream(_target(srv), network.site(f"silent-{i}")) for i in range(8)]
    nodes: list[GrpcTestNode] = []
    try:
        wait_until(lambda: srv.link.stream_count() == 4 and srv.link.stats.streams_refused == 4
                   and sum(s.done.is_set() for s in silent) == 4)
        refused = [s for s in silent if s.done.is_set()]
        assert {s.code() for s in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "at most 4 node streams" in refused[0].error.details()  # type: ignore[union-attr]

        _health_and_coordinator_answer(srv, network)
        assert srv.link.stream_count() == 4  # the silent streams were open meanwhile

        held = [s for s in silent if s not in refused]
        assert {s.code() for s in held} == {grpc.StatusCode.CANCELLED}  # after the deadline
        assert srv.link.stats.hello_timeouts == 4
        wait_until(lambda: srv.link.stream_count() == 0)
        # their workers and places are free again: four real nodes connect
        nodes = [GrpcTestNode(_target(srv), network.site(f"silent-{i}"), f"silent-{i}")
                 for i in range(4)]
        for node in nodes:
            assert node.welcomed.wait(WAIT_S), node.error
        assert srv.link.connected_sites() == [f"silent-{i}" for i in range(4)]
    finally:
        for s in silent:
            s.close()
        for node in nodes:
            node.close()
        srv.stop(0)


def test_a_stream_that_says_hello_in_time_is_not_cut_off(network: Network,
                                                         tmp_path: Path) -> None:
    srv = _serve(network, tmp_path, hello_timeout_s=1.0)
    node = GrpcTestNode(_target(srv), network.site("site-a"), "site-a")
    try:
        assert node.welcomed.wait(WAIT_S), node.error
        assert node.welcome.max_message_bytes == srv.config.max_message_bytes  # type: ignore
        wait_until(lambda: srv.link.stats.hello_timeouts == 0 and node.error is None)
        # well past the deadline the link is still up (heartbeats flow every second)
        assert not node.done.wait(2.5)
        assert srv.link.connected_sites() == ["site-a"]
    finally:
        node.close()
        srv.stop(0)


# -- (b) one site, many streams -----------------------------------------------------------------

def test_one_site_opening_many_streams_cannot_exhaust_the_pool(network: Network,
                                                               tmp_path: Path) -> None:
    srv = _serve(network, tmp_path, max_node_streams=4, service_threads=2, hello_timeout_s=30.0)
    greedy = [SilentStream(_target(srv), network.site("site-a")) for _ in range(10)]
    other: GrpcTestNode | None = None
    try:
        wait_until(lambda: srv.link.stats.streams_refused == 10 - MAX_STREAMS_PER_SITE
                   and sum(s.done.is_set() for s in greedy) == 10 - MAX_STREAMS_PER_SITE)
        refused = [s for s in greedy if s.done.is_set()]
        assert {s.code() for s in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "site 'site-a' already has 2 node streams" in refused[0].error.details()  # type: ignore[union-attr]
        assert srv.link.stream_count() == MAX_STREAMS_PER_SITE
        _health_and_coordinator_answer(srv, network)
        other = GrpcTestNode(_target(srv), network.site("site-b"), "site-b")
        assert other.welcomed.wait(WAIT_S), other.error
        assert srv.link.connected_sites() == ["site-b"]
    finally:
        for s in greedy:
            s.close()
        if other is not None:
            other.close()
        srv.stop(0)


# -- (c) releases checked before they are decoded -----------------------------------------------

def _huge_result(task_id: str, study_id: str, values: int, legacy: bool) -> pb.NodeMessage:
    """A result with one release of ``values`` integers (packed ``ints`` when ``legacy``: one
    byte a value on the wire, eight decoded)."""
    vec = common_pb2.NamedVector(key="counts")
    if legacy:
        vec.ints.extend([1] * values)
    else:
        vec.int64_le = np.ones(values, dtype="<i8").tobytes()
    release = common_pb2.AnalysisRelease(analysis="os", kind="kaplan_meier", vectors=[vec],
                                         metadata_json="{}")
    return pb.NodeMessage(result=pb.TaskResult(task_id=task_id, study_id=study_id,
                                               releases=[release]))


def test_a_release_is_checked_against_the_open_task_and_the_cap_before_decoding(
        network: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real_decode = aggregator.link.decode_release

    def spy(release: common_pb2.AnalysisRelease, *args: Any, **kw: Any) -> Any:
        decoded.append(release.analysis)
        return real_decode(release, *args, **kw)

    monkeypatch.setattr(aggregator.link, "decode_release", spy)
    limit = 1024 * 1024  # cap: 131072 values a message
    srv = _serve(network, tmp_path, fake_strategies(), max_message_bytes=limit)
    node = GrpcTestNode(_target(srv), network.site("site-a"), "site-a")  # answers by hand
    coord = cpb_grpc.CoordinatorStub(grpc.secure_channel(
        _target(srv), channel_credentials(network.coordinator)))
    try:
        assert node.welcomed.wait(WAIT_S), node.error
        # 1. a huge (in-limit) release naming no open task: dropped, never decoded
        node.send(_huge_result("no-such-task", "no-such-study", 120_000, legacy=False))
        wait_until(lambda: srv.link.stats.replies_not_open == 1)
        assert decoded == []

        # 2. an open task answered with more values than the cap: refused, never decoded
        first = make_fake_study("too-many-values", min_sites=1)
        ref = coord.SubmitStudy(signed(first, KEY).to_proto())
        wait_until(lambda: node.tasks)
        task = node.tasks[0]
        node.send(_huge_result(task.task_id, task.study_id, 600_000, legacy=True))
        wait_until(lambda: coord.GetStatus(ref).status == "completed")
        results = json.loads(coord.GetResults(ref).results_json)
        assert results["sites"]["refused"] == {
            "site-a": "release of 600000 values exceeds the cap of 131072 values per message"}
        assert (srv.link.stats.replies_over_cap, decoded) == (1, [])
        # the same task answered again is no longer open
        node.send(_huge_result(task.task_id, task.study_id, 10, legacy=False))
        wait_until(lambda: srv.link.stats.replies_not_open == 2)
        assert decoded == []

        # 3. a proper answer to an open task is decoded (the spy sees the real path)
        second = make_fake_study("proper", min_sites=1)
        ref = coord.SubmitStudy(signed(second, KEY).to_proto())
        wait_until(lambda: len(node.tasks) == 2)
        task = node.tasks[1]
        node.send(answer_message(task.task_id, task.study_id, site_releases(second, 2), None))
        wait_until(lambda: coord.GetStatus(ref).status == "completed")
        assert json.loads(coord.GetResults(ref).results_json)["analyses"]["os"]["total"] == 6
        assert sorted(decoded) == ["crs", "os"]
    finally:
        node.close()
        srv.stop(0)


# -- (d) an answer over the transport limit -----------------------------------------------------

@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> list[SimulatedSite]:
    tmp = tmp_path_factory.mktemp("sites")
    folders = {f.site_id: f.path for f in synthesize(tmp / "data", sites=2, patients=80,
                                                     seed=8, today=TODAY)}
    return ingest_sites(tmp / "stores", folders,
                        policy=Policy(min_cohort=1, min_cell=1, min_bin_events=1))


def _daemon(network: Network, srv: AggregatorServer, site: SimulatedSite, node_dir: Path,
            **kw: Any) -> NodeDaemon:
    creds = network.site(site.site_id)
    node_dir.mkdir(parents=True, exist_ok=True)
    engine = NodeEngine(site.site_id, site.policy, [KEY.public_key()], site.open_tables,
                        AuditTrail(node_dir / "audit.jsonl"), today=lambda: TODAY,
                        credentials=creds)
    return NodeDaemon(site.site_id, _target(srv), creds, engine.answer,
                      freshness=lambda: "", heartbeat_s=1.0, backoff_max_s=1.0, **kw)


def _run_study(network: Network, srv: AggregatorServer, sites: list[SimulatedSite],
               tmp_path: Path, limits: dict[str, int]) -> dict[str, Any]:
    daemons = [_daemon(network, srv, s, tmp_path / "nodes" / s.site_id,
                       **({"max_message_bytes": limits[s.site_id]} if s.site_id in limits
                          else {})) for s in sites]
    threads = [threading.Thread(target=d.run, daemon=True) for d in daemons]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(srv.link.connected_sites()) == len(sites))
        study = make_study("too-big", [
            {"name": "km", "kind": "kaplan_meier", "endpoint": "overall_survival",
             "group_by": "route"},
            {"name": "ae", "kind": "adverse_events", "terms": ["CRS", "ICANS"],
             "by_grade": True, "window_days": 1826}],
            horizon=1826, cohort={}, min_sites=1, expires=dt.date(2099, 1, 1))
        srv.engine.submit(sign_study(study, KEY))
        wait_until(lambda: srv.engine.results(study.id), timeout=60)
        results = srv.engine.results(study.id)
        assert results is not None
        return results
    finally:
        for d in daemons:
            d.stop(drain_s=1.0)
        for thread in threads:
            thread.join(WAIT_S)


SIZE_REASON = re.compile(r"release of (\d+) bytes exceeds the transport limit of (\d+) bytes")


def _size_reason(reason: str, limit: int) -> int:
    match = SIZE_REASON.fullmatch(reason)
    assert match is not None, reason
    assert int(match.group(2)) == limit and int(match.group(1)) > limit
    return int(match.group(1))


def test_a_release_over_the_node_limit_is_refused_with_its_size(
        network: Network, tmp_path: Path, sites: list[SimulatedSite]) -> None:
    small, big = sites[0].site_id, sites[1].site_id
    srv = _serve(network, tmp_path, site_timeout_s=30.0)
    try:
        results = _run_study(network, srv, sites, tmp_path, {small: 8192})
    finally:
        srv.stop(0)
    assert results["status"] == "completed"
    assert results["sites"]["participated"] == [big]
    assert results["sites"]["unreachable"] == []
    assert list(results["sites"]["refused"]) == [small]
    _size_reason(results["sites"]["refused"][small], 8192)
    assert "error" not in results["analyses"]["km"]


def test_a_release_over_the_aggregator_limit_is_refused_at_every_site(
        network: Network, tmp_path: Path, sites: list[SimulatedSite]) -> None:
    srv = _serve(network, tmp_path, site_timeout_s=30.0, max_message_bytes=16384)
    try:
        results = _run_study(network, srv, sites, tmp_path, {})
        assert srv.link.stats.replies_over_cap == 0
    finally:
        srv.stop(0)
    assert results["status"] == "completed"
    assert results["sites"]["participated"] == []
    assert results["sites"]["unreachable"] == []
    assert sorted(results["sites"]["refused"]) == sorted(s.site_id for s in sites)
    for reason in results["sites"]["refused"].values():
        _size_reason(reason, 16384)


def test_config_rejects_bad_limits(network: Network, tmp_path: Path) -> None:
    from aggregator.errors import ConfigError
    bad: list[tuple[str, Any]] = [("hello_timeout_s", 0), ("max_node_streams", 0),
                                  ("service_threads", 1), ("max_message_bytes", 100)]
    for key, value in bad:
        with pytest.raises(ConfigError, match=key):
            _config(network, tmp_path / "x.sqlite", **{key: value})
